"""Helpers for the in-VM hardware tests: the real drivers, driven directly.

Each helper talks to a kernel driver through the same libraries the runtime
uses (v4l2-python3, pyalsaaudio) or through the driver's documented ioctls
(the framebuffer), so a test can hold what the runtime shows against what the
device itself says.
"""
from __future__ import annotations

import ctypes
import fcntl
import logging
import mmap
import os
import select
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import alsaaudio
import numpy as np
import v4l2

log = logging.getLogger("hwlab")

# --- kernel modules -----------------------------------------------------------

# vivid: one instance with only its video capture node (/dev/video0) and one
# webcam input. vfb: room for 1024x768 at 32 bpp. snd-aloop: card "Loopback".
MODULES: Dict[str, List[str]] = {
    "vivid": ["n_devs=1", "node_types=0x1", "num_inputs=1", "input_types=0x0"],
    "vfb": ["vfb_enable=1", "videomemorysize=4194304", "mode_option=640x480-32@60"],
    "snd-aloop": ["index=0", "id=Loopback", "pcm_substreams=4"],
}


def load_module(name: str) -> None:
    subprocess.run(["modprobe", name, *MODULES[name]], check=True)


def reload_module(name: str, device: str, timeout: float = 10.0) -> None:
    """Unload (if loaded) and load a driver again, then wait for its node."""
    subprocess.run(["modprobe", "-r", name], check=False)
    load_module(name)
    deadline = time.monotonic() + timeout
    while not os.path.exists(device):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{device} did not appear after loading {name}")
        time.sleep(0.05)


# --- V4L2 (vivid) -----------------------------------------------------------------

VIDEO = "/dev/video0"


def fourcc_name(code: int) -> str:
    return "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))


def fourcc(name: str) -> int:
    return v4l2.v4l2_fourcc(*name)


def query_capability(fd: int) -> v4l2.v4l2_capability:
    cap = v4l2.v4l2_capability()
    fcntl.ioctl(fd, v4l2.VIDIOC_QUERYCAP, cap)
    return cap


def capture_formats(fd: int) -> List[str]:
    """The pixel formats the capture node offers (VIDIOC_ENUM_FMT)."""
    names = []
    index = 0
    while True:
        desc = v4l2.v4l2_fmtdesc()
        desc.type = v4l2.V4L2_BUF_TYPE_VIDEO_CAPTURE
        desc.index = index
        try:
            fcntl.ioctl(fd, v4l2.VIDIOC_ENUM_FMT, desc)
        except OSError:
            return names
        names.append(fourcc_name(desc.pixelformat))
        index += 1


def controls(fd: int) -> Dict[str, v4l2.v4l2_queryctrl]:
    """Every control of the device by name (VIDIOC_QUERYCTRL, NEXT_CTRL)."""
    found = {}
    query = v4l2.v4l2_queryctrl()
    query.id = v4l2.V4L2_CTRL_FLAG_NEXT_CTRL
    while True:
        try:
            fcntl.ioctl(fd, v4l2.VIDIOC_QUERYCTRL, query)
        except OSError:
            return found
        found[query.name.decode()] = query
        next_query = v4l2.v4l2_queryctrl()
        next_query.id = query.id | v4l2.V4L2_CTRL_FLAG_NEXT_CTRL
        query = next_query


def menu_index(fd: int, control: v4l2.v4l2_queryctrl, item: str) -> int:
    for index in range(control.minimum, control.maximum + 1):
        menu = v4l2.v4l2_querymenu()
        menu.id = control.id
        menu.index = index
        try:
            fcntl.ioctl(fd, v4l2.VIDIOC_QUERYMENU, menu)
        except OSError:
            continue
        if menu.name.decode() == item:
            return index
    raise LookupError(f"control {control.name!r} has no menu item {item!r}")


def set_control(fd: int, name: str, value) -> None:
    """Set a control by its name; a string value names a menu item."""
    control = controls(fd)[name]
    if isinstance(value, str):
        value = menu_index(fd, control, value)
    setting = v4l2.v4l2_control()
    setting.id = control.id
    setting.value = value
    fcntl.ioctl(fd, v4l2.VIDIOC_S_CTRL, setting)


def make_pattern_static(device: str = VIDEO) -> None:
    """vivid's picture without its moving text: colour squares, no OSD.

    Colour squares vary both across and down the picture, so a picture painted
    at the wrong offset or with the wrong line length does not match.
    """
    fd = os.open(device, os.O_RDWR)
    try:
        set_control(fd, "Test Pattern", "100% Color Squares")
        set_control(fd, "OSD Text Mode", "None")
    finally:
        os.close(fd)


@dataclass
class Frame:
    pixel_format: str
    width: int
    height: int
    bytes_per_line: int
    data: bytes


def set_format(fd: int, pixel_format: str, width: int, height: int) -> v4l2.v4l2_format:
    fmt = v4l2.v4l2_format()
    fmt.type = v4l2.V4L2_BUF_TYPE_VIDEO_CAPTURE
    fmt.fmt.pix.width = width
    fmt.fmt.pix.height = height
    fmt.fmt.pix.pixelformat = fourcc(pixel_format)
    fmt.fmt.pix.field = v4l2.V4L2_FIELD_NONE
    fcntl.ioctl(fd, v4l2.VIDIOC_S_FMT, fmt)
    return fmt


def capture_frame(pixel_format: str, width: int, height: int,
                  device: str = VIDEO, skip: int = 2, timeout: float = 20.0) -> Frame:
    """One frame straight from the device, through mmap streaming I/O."""
    fd = os.open(device, os.O_RDWR | os.O_NONBLOCK)
    buffers: List[mmap.mmap] = []
    try:
        fmt = set_format(fd, pixel_format, width, height)
        got = fourcc_name(fmt.fmt.pix.pixelformat)
        if got != pixel_format or (fmt.fmt.pix.width, fmt.fmt.pix.height) != (width, height):
            raise ValueError(f"device chose {got} {fmt.fmt.pix.width}x{fmt.fmt.pix.height}")
        request = v4l2.v4l2_requestbuffers()
        request.count = 2
        request.type = v4l2.V4L2_BUF_TYPE_VIDEO_CAPTURE
        request.memory = v4l2.V4L2_MEMORY_MMAP
        fcntl.ioctl(fd, v4l2.VIDIOC_REQBUFS, request)
        for index in range(request.count):
            buf = v4l2.v4l2_buffer()
            buf.type = v4l2.V4L2_BUF_TYPE_VIDEO_CAPTURE
            buf.memory = v4l2.V4L2_MEMORY_MMAP
            buf.index = index
            fcntl.ioctl(fd, v4l2.VIDIOC_QUERYBUF, buf)
            buffers.append(mmap.mmap(fd, buf.length, mmap.MAP_SHARED,
                                     mmap.PROT_READ | mmap.PROT_WRITE, offset=buf.m.offset))
            fcntl.ioctl(fd, v4l2.VIDIOC_QBUF, buf)
        kind = ctypes.c_int(v4l2.V4L2_BUF_TYPE_VIDEO_CAPTURE)
        fcntl.ioctl(fd, v4l2.VIDIOC_STREAMON, kind)
        deadline = time.monotonic() + timeout
        # The first frames after STREAMON may predate a control change.
        for _ in range(skip + 1):
            buf = v4l2.v4l2_buffer()
            buf.type = v4l2.V4L2_BUF_TYPE_VIDEO_CAPTURE
            buf.memory = v4l2.V4L2_MEMORY_MMAP
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no frame from {device} in {timeout} s")
                select.select([fd], [], [], remaining)
                try:
                    fcntl.ioctl(fd, v4l2.VIDIOC_DQBUF, buf)
                    break
                except BlockingIOError:
                    continue
            data = bytes(buffers[buf.index][:buf.bytesused])
            fcntl.ioctl(fd, v4l2.VIDIOC_QBUF, buf)
        fcntl.ioctl(fd, v4l2.VIDIOC_STREAMOFF, kind)
        return Frame(pixel_format, width, height, fmt.fmt.pix.bytesperline, data)
    finally:
        for mapped in buffers:
            mapped.close()
        os.close(fd)


def frame_to_rgb(frame: Frame) -> np.ndarray:
    """A captured YUYV or YU12 frame as RGB, by JPEG's (JFIF) equations.

    The camera puts the device's YUV planes into the JPEG as they are (no
    colour conversion), so JFIF's full-range equations give what a viewer
    shows of this frame. Chroma is upsampled by repetition.
    """
    w, h = frame.width, frame.height
    raw = np.frombuffer(frame.data, dtype=np.uint8)
    if frame.pixel_format == "YUYV":
        rows = raw[:frame.bytes_per_line * h].reshape(h, frame.bytes_per_line)[:, :w * 2]
        y = rows[:, 0::2].astype(np.float32)
        u = np.repeat(rows[:, 1::4], 2, axis=1).astype(np.float32)
        v = np.repeat(rows[:, 3::4], 2, axis=1).astype(np.float32)
    elif frame.pixel_format == "YU12":
        y = raw[:w * h].reshape(h, w).astype(np.float32)
        quarter = (w // 2) * (h // 2)
        u_plane = raw[w * h:w * h + quarter].reshape(h // 2, w // 2)
        v_plane = raw[w * h + quarter:w * h + 2 * quarter].reshape(h // 2, w // 2)
        u = u_plane.repeat(2, axis=0).repeat(2, axis=1).astype(np.float32)
        v = v_plane.repeat(2, axis=0).repeat(2, axis=1).astype(np.float32)
    else:
        raise ValueError(f"no conversion for {frame.pixel_format}")
    u -= 128.0
    v -= 128.0
    rgb = np.stack([y + 1.402 * v, y - 0.344136 * u - 0.714136 * v, y + 1.772 * u], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# --- framebuffer (vfb) ----------------------------------------------------------

FB = "/dev/fb0"
FBIOGET_VSCREENINFO = 0x4600
FBIOPUT_VSCREENINFO = 0x4601
FBIOGET_FSCREENINFO = 0x4602


class FbBitfield(ctypes.Structure):
    _fields_ = [("offset", ctypes.c_uint32), ("length", ctypes.c_uint32),
                ("msb_right", ctypes.c_uint32)]


class FbVarScreeninfo(ctypes.Structure):
    """struct fb_var_screeninfo (linux/fb.h)."""
    _fields_ = [
        ("xres", ctypes.c_uint32), ("yres", ctypes.c_uint32),
        ("xres_virtual", ctypes.c_uint32), ("yres_virtual", ctypes.c_uint32),
        ("xoffset", ctypes.c_uint32), ("yoffset", ctypes.c_uint32),
        ("bits_per_pixel", ctypes.c_uint32), ("grayscale", ctypes.c_uint32),
        ("red", FbBitfield), ("green", FbBitfield), ("blue", FbBitfield),
        ("transp", FbBitfield),
        ("nonstd", ctypes.c_uint32), ("activate", ctypes.c_uint32),
        ("height", ctypes.c_uint32), ("width", ctypes.c_uint32),
        ("accel_flags", ctypes.c_uint32), ("pixclock", ctypes.c_uint32),
        ("left_margin", ctypes.c_uint32), ("right_margin", ctypes.c_uint32),
        ("upper_margin", ctypes.c_uint32), ("lower_margin", ctypes.c_uint32),
        ("hsync_len", ctypes.c_uint32), ("vsync_len", ctypes.c_uint32),
        ("sync", ctypes.c_uint32), ("vmode", ctypes.c_uint32),
        ("rotate", ctypes.c_uint32), ("colorspace", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32 * 4),
    ]


class FbFixScreeninfo(ctypes.Structure):
    """struct fb_fix_screeninfo (linux/fb.h)."""
    _fields_ = [
        ("id", ctypes.c_char * 16), ("smem_start", ctypes.c_ulong),
        ("smem_len", ctypes.c_uint32), ("type", ctypes.c_uint32),
        ("type_aux", ctypes.c_uint32), ("visual", ctypes.c_uint32),
        ("xpanstep", ctypes.c_uint16), ("ypanstep", ctypes.c_uint16),
        ("ywrapstep", ctypes.c_uint16), ("line_length", ctypes.c_uint32),
        ("mmio_start", ctypes.c_ulong), ("mmio_len", ctypes.c_uint32),
        ("accel", ctypes.c_uint32), ("capabilities", ctypes.c_uint16),
        ("reserved", ctypes.c_uint16 * 2),
    ]


def fb_info(device: str = FB):
    with open(device, "rb") as fb:
        var = FbVarScreeninfo()
        fix = FbFixScreeninfo()
        fcntl.ioctl(fb.fileno(), FBIOGET_VSCREENINFO, var)
        fcntl.ioctl(fb.fileno(), FBIOGET_FSCREENINFO, fix)
    return var, fix


def fb_set_mode(width: int, height: int, bpp: int, virtual_width: Optional[int] = None,
                device: str = FB):
    """Set the framebuffer's geometry and depth (FBIOPUT_VSCREENINFO).

    A virtual width wider than the visible one makes the line length longer
    than width * bytes per pixel, as on real hardware with padded lines.
    """
    with open(device, "r+b") as fb:
        var = FbVarScreeninfo()
        fcntl.ioctl(fb.fileno(), FBIOGET_VSCREENINFO, var)
        var.xres, var.yres = width, height
        var.xres_virtual = virtual_width or width
        var.yres_virtual = height
        var.xoffset = var.yoffset = 0
        var.bits_per_pixel = bpp
        # Cleared bitfields let the driver pick its layout for the depth: with
        # no alpha asked for, vfb gives RGB565 at 16 bpp, as a Pi does.
        for field in (var.red, var.green, var.blue, var.transp):
            field.offset = field.length = field.msb_right = 0
        fcntl.ioctl(fb.fileno(), FBIOPUT_VSCREENINFO, var)
    return fb_info(device)


def fb_fill(value: int = 0, device: str = FB) -> None:
    _, fix = fb_info(device)
    with open(device, "r+b") as fb:
        fb.write(bytes([value]) * fix.smem_len)


def fb_read_rgb(device: str = FB) -> np.ndarray:
    """The visible framebuffer as RGB, decoded with the driver's own bitfields."""
    var, fix = fb_info(device)
    with open(device, "rb") as fb:
        raw = fb.read(fix.line_length * var.yres)
    bytes_pp = var.bits_per_pixel // 8
    dtype = {2: np.uint16, 4: np.uint32}[bytes_pp]
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(var.yres, fix.line_length)
    pixels = rows[:, :var.xres * bytes_pp].copy().view(dtype).astype(np.uint32)
    channels = []
    for field in (var.red, var.green, var.blue):
        values = (pixels >> field.offset) & ((1 << field.length) - 1)
        channels.append(values * 255 // ((1 << field.length) - 1))
    return np.stack(channels, axis=-1).astype(np.uint8)


# --- ALSA (snd-aloop) ---------------------------------------------------------------

RATE = 48000
PERIOD = 960  # 20 ms at 48 kHz, the runtime's Opus frame


def chirp(seconds: float = 0.5, low: float = 300.0, high: float = 4000.0,
          amplitude: float = 0.5, rate: int = RATE) -> np.ndarray:
    """A linear sine sweep: its autocorrelation has one sharp peak."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * (low * t + (high - low) * t * t / (2 * seconds))
    fade = np.minimum(1.0, np.minimum(t, seconds - t) / 0.01)  # no clicks at the edges
    return (amplitude * 32767 * fade * np.sin(phase)).astype(np.int16)


def open_pcm(device: str, playback: bool, rate: int = RATE, period: int = PERIOD):
    pcm = alsaaudio.PCM(
        type=alsaaudio.PCM_PLAYBACK if playback else alsaaudio.PCM_CAPTURE,
        mode=alsaaudio.PCM_NORMAL, rate=rate, channels=1,
        format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=period, periods=4, device=device)
    # pyalsaaudio's constructor ignores set-up failures: check what was set.
    info = pcm.info()
    if info["rate"] != rate or info["channels"] != 1 or info["period_size"] != period:
        raise RuntimeError(f"{device}: asked {rate} Hz mono {period}-frame periods, got {info}")
    return pcm


class Player:
    """Play on an ALSA hw device, knowing when each played sample leaves the buffer.

    The device paces the writes; after each write, the frames still queued
    (buffer size - avail) say when the next sample will be played, on
    time.monotonic(): the mouth's clock for a latency measurement.
    """

    def __init__(self, device: str, period: int = PERIOD) -> None:
        self.period = period
        self.pcm = open_pcm(device, playback=True, period=period)
        self.buffer_size = self.pcm.info()["buffer_size"]
        self.written = 0

    def write(self, samples: np.ndarray) -> float:
        """Queue samples (whole periods); the monotonic time the first will be played."""
        samples = np.concatenate([samples, np.zeros(-len(samples) % self.period, np.int16)])
        first_at = None
        for start in range(0, len(samples), self.period):
            chunk = samples[start:start + self.period].tobytes()
            while chunk:
                written = self.pcm.write(chunk)
                if written < 0:  # -EPIPE: underrun, nothing written; write again
                    continue
                if first_at is None:
                    queued = self.buffer_size - self.pcm.avail()  # includes what was just written
                    first_at = time.monotonic() + (queued - written) / RATE
                chunk = chunk[written * 2:]
        self.written += len(samples)
        return first_at

    def close(self) -> None:
        # Let the queued periods reach the far side before closing.
        time.sleep((self.buffer_size + self.period) / RATE)
        self.pcm.close()


def play(device: str, samples: np.ndarray, lead_silence: float = 0.2,
         tail_silence: float = 0.3) -> float:
    """Play samples between silences (blocking); when their first one was played."""
    player = Player(device)
    try:
        player.write(np.zeros(int(lead_silence * RATE), np.int16))
        first_at = player.write(samples)
        player.write(np.zeros(int(tail_silence * RATE), np.int16))
        return first_at
    finally:
        player.close()


class Recorder:
    """Capture from an ALSA hw device in a thread until stopped.

    After each read the frames still waiting (avail) say when the last sample
    read was captured, on time.monotonic(): the ear's clock.
    """

    def __init__(self, device: str, period: int = PERIOD) -> None:
        self.device = device
        self.period = period
        self.chunks: List[bytes] = []
        self.marks: List[tuple] = []   # (samples read so far, monotonic time of the last one)
        self.error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            pcm = open_pcm(self.device, playback=False, period=self.period)
        except BaseException as error:  # reported by start()
            self.error = error
            self._ready.set()
            return
        self._ready.set()
        total = 0
        try:
            while not self._stop.is_set():
                length, data = pcm.read()
                if length > 0:
                    now = time.monotonic()
                    waiting = max(0, pcm.avail())
                    self.chunks.append(data)
                    total += length
                    self.marks.append((total, now - waiting / RATE))
        except BaseException as error:
            self.error = error
        finally:
            pcm.close()

    def start(self) -> "Recorder":
        self._thread.start()
        self._ready.wait(10)
        if self.error:
            raise self.error
        return self

    def stop(self) -> np.ndarray:
        self._stop.set()
        self._thread.join(10)
        if self.error:
            raise self.error
        return np.frombuffer(b"".join(self.chunks), dtype=np.int16)

    def time_of(self, index: int) -> float:
        """When the sample at this index of the recording was captured.

        Takes the median over every read of (its time - the samples between
        it and index), so one late wake-up of this thread does not count.
        """
        estimates = [at - (total - 1 - index) / RATE for total, at in self.marks]
        return float(np.median(estimates))


def find(signal: np.ndarray, recording: np.ndarray):
    """Where signal occurs in recording: (sample index, normalised correlation).

    FFT cross-correlation: a direct one is far too slow in the emulated VM.
    """
    sig = signal.astype(np.float64)
    rec = recording.astype(np.float64)
    size = 1 << int(np.ceil(np.log2(len(sig) + len(rec))))
    corr = np.fft.irfft(np.fft.rfft(rec, size) * np.conj(np.fft.rfft(sig, size)), size)
    corr = corr[:len(rec) - len(sig) + 1]
    lag = int(np.argmax(np.abs(corr)))
    window = rec[lag:lag + len(sig)]
    norm = np.sqrt(np.sum(sig * sig) * np.sum(window * window))
    score = float(corr[lag] / norm) if norm > 0 else 0.0
    return lag, score
