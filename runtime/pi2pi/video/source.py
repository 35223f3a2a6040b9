"""Frame sources for the camera: a V4L2 device, the test pattern, or a raw I420 clip file.

A source hands out the newest frame it has, either as a JPEG to pass through
(a device's MJPEG/JPEG output) or as planar YUV for TurboJPEG to encode without
a colour conversion. The V4L2 source drains the driver's queue on every read
and keeps only the newest buffer, so a slow consumer never sees old frames.

The V4L2 calls go through `DeviceIO` (open/ioctl/mmap/wait/close), so the
ioctl sequence can be tested against a fake device; the real one is the kernel.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import select
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import numpy as np

from pi2pi import wire
from pi2pi.video import jpeg as jpeglib
from pi2pi.video.testpattern import TestPattern

log = logging.getLogger(__name__)

MAX_CLIP_BYTES = 1 << 30


class SourceError(Exception):
    """The source cannot be opened or used as asked."""


@dataclass
class Frame:
    seq: int
    stamp_us: int                      # capture time, microseconds since the epoch
    jpeg: Optional[bytes] = None       # pass through as is
    yuv: Optional[np.ndarray] = None   # or encode: pad-4 planar YUV
    subsample: int = jpeglib.SAMP_420
    width: int = 0
    height: int = 0


class Pacer:
    """Release one frame per period on a fixed schedule; fps 0 = as fast as asked."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps if fps > 0 else 0.0
        self.next_at = time.monotonic()

    def wait(self, stop: Any) -> bool:
        """Sleep until the next frame is due; False if stop was set meanwhile."""
        if self.period == 0:
            return not stop.is_set()
        delay = self.next_at - time.monotonic()
        if delay > 0 and stop.wait(delay):
            return False
        now = time.monotonic()
        self.next_at += self.period
        if self.next_at < now:  # fell behind (a slow encode): skip ahead, never burst
            self.next_at = now + self.period
        return not stop.is_set()


class PacedSource:
    """A made-up source (test pattern, clip): one picture per period, sequence from 0."""

    description = "paced"

    def __init__(self, width: int, height: int, fps: float) -> None:
        self.width, self.height = width, height
        self.pacer = Pacer(fps)
        self.seq = 0
        self.dropped = 0

    def picture(self, seq: int) -> Any:
        raise NotImplementedError

    def read(self, stop: Any) -> Optional[Frame]:
        if not self.pacer.wait(stop):
            return None
        seq = self.seq
        self.seq += 1
        stamp = wire.now_us()
        return Frame(seq, stamp, yuv=self.picture(seq), width=self.width, height=self.height)

    def close(self) -> None:
        pass


class TestPatternSource(PacedSource):
    description = "test pattern"

    def __init__(self, width: int, height: int, fps: float, host: str) -> None:
        try:
            self.pattern = TestPattern(width, height, host)
        except ValueError as err:
            raise SourceError(str(err)) from None
        super().__init__(width, height, fps)

    def picture(self, seq: int) -> Any:
        # A copy: the pattern draws the next frame into the same buffer while this one is encoded.
        return self.pattern.render(seq).copy()


class ClipSource(PacedSource):
    """Raw I420 frames of the given size from a file, replayed in a loop (benchmarks, repeatable tests)."""

    description = "I420 clip"

    def __init__(self, path: str, width: int, height: int, fps: float) -> None:
        if width % 8 or height % 2:
            raise SourceError(f"clip frames {width}x{height}: want a width divisible by 8 and an even height")
        frame_size = width * height * 3 // 2
        try:
            size = os.path.getsize(path)
            if size > MAX_CLIP_BYTES:
                raise SourceError(f"clip {path}: {size} bytes is beyond {MAX_CLIP_BYTES}")
            data = np.fromfile(path, dtype=np.uint8)
        except OSError as err:
            raise SourceError(f"clip {path}: {err.strerror}") from None
        if size < frame_size or size % frame_size:
            raise SourceError(f"clip {path}: {size} bytes is not a whole number of {width}x{height} I420 frames")
        self.frames = data.reshape(-1, frame_size)
        super().__init__(width, height, fps)

    def picture(self, seq: int) -> Any:
        return self.frames[seq % len(self.frames)]


class DeviceIO:
    """The kernel's side of V4L2: what a fake device replaces in tests."""

    def open(self, path: str) -> int:
        return os.open(path, os.O_RDWR | os.O_NONBLOCK)

    def ioctl(self, fd: int, request: int, arg: Any) -> None:
        fcntl.ioctl(fd, request & 0xFFFFFFFF, arg)

    def mmap(self, fd: int, length: int, offset: int) -> Any:
        return mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)

    def wait(self, fd: int, timeout_s: float) -> bool:
        readable, _, _ = select.select([fd], [], [], timeout_s)
        return bool(readable)

    def close(self, fd: int) -> None:
        os.close(fd)


# Preference: the device's own JPEG first (pass through), then YUV layouts we encode from.
FORMAT_PREFERENCE = ("MJPG", "JPEG", "YUYV", "YU12", "NV12")
V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC = 0x2000
V4L2_BUF_FLAG_TIMESTAMP_MASK = 0xE000


def fourcc(code: int) -> str:
    return "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))


class V4L2Source:
    """Capture through V4L2 streaming I/O with mmapped buffers (v4l2-python3's structures)."""

    def __init__(self, path: str, width: int, height: int, fps: float, quality: int,
                 buffers: int = 4, io: Optional[DeviceIO] = None, max_frame: int = 4 << 20,
                 pixel_format: Optional[str] = None) -> None:
        import v4l2  # imported here: only a camera with a device needs it

        self.v4l2 = v4l2
        self.io = io or DeviceIO()
        self.path = path
        self.quality = quality
        self.max_frame = max_frame
        self.seq = 0
        self.dropped = 0     # buffers drained unseen because a newer one was there
        self.corrupt = 0     # device buffers that were not a whole JPEG
        self.maps: List[Any] = []
        self.streaming = False
        self.wanted_format = pixel_format  # None: the first of FORMAT_PREFERENCE the device offers
        try:
            self.fd = self.io.open(path)
        except OSError as err:
            raise SourceError(f"camera {path}: {err.strerror}") from None
        try:
            self._setup(width, height, fps, buffers)
        except OSError as err:
            self.close()
            raise SourceError(f"camera {path}: {err.strerror or err}") from None
        except SourceError:
            self.close()
            raise

    def _ioctl(self, request: int, arg: Any) -> None:
        self.io.ioctl(self.fd, request, arg)

    def _setup(self, width: int, height: int, fps: float, count: int) -> None:
        v4l2 = self.v4l2
        cap = v4l2.v4l2_capability()
        self._ioctl(v4l2.VIDIOC_QUERYCAP, cap)
        if not cap.capabilities & v4l2.V4L2_CAP_VIDEO_CAPTURE or not cap.capabilities & v4l2.V4L2_CAP_STREAMING:
            raise SourceError(f"camera {self.path} ({cap.card.decode(errors='replace')}) cannot stream video capture")
        log.info("camera %s: %s (%s)", self.path, cap.card.decode(errors="replace"), cap.driver.decode(errors="replace"))
        offered = self._formats()
        if self.wanted_format is not None:
            if self.wanted_format not in offered:
                raise SourceError(f"camera {self.path} does not offer {self.wanted_format} "
                                  f"(it offers {', '.join(offered) or 'no formats'})")
            chosen: Optional[str] = self.wanted_format
        else:
            chosen = next((f for f in FORMAT_PREFERENCE if f in offered), None)
        if chosen is None:
            raise SourceError(f"camera {self.path} offers {', '.join(offered) or 'no formats'}; "
                              f"pi2pi takes {', '.join(FORMAT_PREFERENCE)}")
        fmt = v4l2.v4l2_format()
        fmt.type = v4l2.V4L2_BUF_TYPE_VIDEO_CAPTURE
        fmt.fmt.pix.width, fmt.fmt.pix.height = width, height
        fmt.fmt.pix.pixelformat = offered[chosen]
        fmt.fmt.pix.field = v4l2.V4L2_FIELD_NONE
        self._ioctl(v4l2.VIDIOC_S_FMT, fmt)
        self.format = fourcc(fmt.fmt.pix.pixelformat)
        if self.format != chosen:  # a driver may substitute another format instead of failing
            raise SourceError(f"camera {self.path} refused {chosen} and offered {self.format} instead")
        self.width, self.height = fmt.fmt.pix.width, fmt.fmt.pix.height
        self.bytesperline = fmt.fmt.pix.bytesperline
        if self.format not in FORMAT_PREFERENCE:
            raise SourceError(f"camera {self.path} switched to format {self.format}")
        if (self.width, self.height) != (width, height):
            log.warning("camera %s gives %dx%d instead of %dx%d", self.path, self.width, self.height, width, height)
        self.passthrough = self.format in ("MJPG", "JPEG")
        if not self.passthrough:
            self._check_yuv_layout()
        log.info("camera %s: %s %dx%d (%s)", self.path, self.format, self.width, self.height,
                 "passed through" if self.passthrough else "encoded with TurboJPEG")
        if fps > 0:
            parm = v4l2.v4l2_streamparm()
            parm.type = v4l2.V4L2_BUF_TYPE_VIDEO_CAPTURE
            parm.parm.capture.timeperframe.numerator = 1000
            parm.parm.capture.timeperframe.denominator = int(round(fps * 1000))
            try:
                self._ioctl(v4l2.VIDIOC_S_PARM, parm)
                tpf = parm.parm.capture.timeperframe
                if tpf.numerator:
                    log.info("camera %s: %.2f fps", self.path, tpf.denominator / tpf.numerator)
            except OSError as err:
                log.warning("camera %s: cannot set the frame rate: %s", self.path, err.strerror)
        req = v4l2.v4l2_requestbuffers()
        req.count = count
        req.type = v4l2.V4L2_BUF_TYPE_VIDEO_CAPTURE
        req.memory = v4l2.V4L2_MEMORY_MMAP
        self._ioctl(v4l2.VIDIOC_REQBUFS, req)
        if req.count < 2:
            raise SourceError(f"camera {self.path}: only {req.count} capture buffer(s)")
        for index in range(req.count):
            buf = self._buffer(index)
            self._ioctl(v4l2.VIDIOC_QUERYBUF, buf)
            self.maps.append(self.io.mmap(self.fd, buf.length, buf.m.offset))
        for index in range(req.count):
            self._ioctl(v4l2.VIDIOC_QBUF, self._buffer(index))
        buf_type = v4l2.ctypes.c_int(v4l2.V4L2_BUF_TYPE_VIDEO_CAPTURE)
        try:
            self._ioctl(v4l2.VIDIOC_STREAMON, buf_type)
        except OSError as err:
            raise SourceError(f"camera {self.path}: cannot start streaming: {err.strerror or err}") from None
        self.streaming = True
        if not self.passthrough:
            subsample = jpeglib.SAMP_422 if self.format == "YUYV" else jpeglib.SAMP_420
            self.subsample = subsample
            self.yuv = np.zeros(jpeglib.yuv_buffer_size(self.width, self.height, subsample), dtype=np.uint8)

    def _formats(self) -> dict:
        v4l2 = self.v4l2
        offered = {}
        for index in range(64):
            desc = v4l2.v4l2_fmtdesc()
            desc.index = index
            desc.type = v4l2.V4L2_BUF_TYPE_VIDEO_CAPTURE
            try:
                self._ioctl(v4l2.VIDIOC_ENUM_FMT, desc)
            except OSError:
                break
            offered[fourcc(desc.pixelformat)] = desc.pixelformat
        log.info("camera %s offers %s", self.path, ", ".join(offered))
        return offered

    def _check_yuv_layout(self) -> None:
        want = self.width * 2 if self.format == "YUYV" else self.width
        if self.bytesperline not in (0, want) or self.width % 2 or self.height % 2:
            raise SourceError(f"camera {self.path}: {self.format} {self.width}x{self.height} with "
                              f"{self.bytesperline} bytes per line is not supported (want {want}, even sizes)")

    def _buffer(self, index: int) -> Any:
        buf = self.v4l2.v4l2_buffer()
        buf.index = index
        buf.type = self.v4l2.V4L2_BUF_TYPE_VIDEO_CAPTURE
        buf.memory = self.v4l2.V4L2_MEMORY_MMAP
        return buf

    def _dequeue(self) -> Optional[Any]:
        buf = self._buffer(0)
        try:
            self._ioctl(self.v4l2.VIDIOC_DQBUF, buf)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return None
            raise
        return buf

    def read(self, stop: Any) -> Optional[Frame]:
        """The newest captured frame; older ready buffers go straight back to the driver."""
        newest = None
        while newest is None:
            if stop.is_set():
                return None
            if not self.io.wait(self.fd, 0.5):
                continue
            try:
                while True:  # drain: keep only the newest
                    buf = self._dequeue()
                    if buf is None:
                        break
                    if newest is not None:
                        self.dropped += 1
                        self._ioctl(self.v4l2.VIDIOC_QBUF, newest)
                    newest = buf
            except OSError as err:
                raise SourceError(f"camera {self.path}: capture failed: {err.strerror}") from None
        try:
            return self._frame(newest)
        finally:
            self._ioctl(self.v4l2.VIDIOC_QBUF, newest)

    def _stamp_us(self, buf: Any) -> int:
        """The driver's capture time on the wall clock (its stamps are CLOCK_MONOTONIC)."""
        wall = wire.now_us()
        if buf.flags & V4L2_BUF_FLAG_TIMESTAMP_MASK != V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC:
            return wall
        taken = buf.timestamp.secs * 1_000_000 + buf.timestamp.usecs
        age = time.monotonic_ns() // 1000 - taken
        return wall - age if 0 <= age < 5_000_000 else wall

    def _frame(self, buf: Any) -> Optional[Frame]:
        used = buf.bytesused or buf.length
        data = self.maps[buf.index]
        seq = self.seq
        self.seq += 1
        stamp = self._stamp_us(buf)
        if self.passthrough:
            payload = jpeglib.trim_jpeg(bytes(data[:used]))
            try:
                jpeglib.check_jpeg(payload, self.max_frame)
            except jpeglib.JpegError as err:
                self.corrupt += 1
                log.warning("camera %s: buffer %d skipped: %s", self.path, buf.index, err)
                return None
            return Frame(seq, stamp, jpeg=payload, width=self.width, height=self.height)
        raw = np.frombuffer(data, dtype=np.uint8, count=used)
        out = np.zeros_like(self.yuv)  # a new buffer per frame: the sender encodes it while we capture
        need = self.width * self.height * (2 if self.format == "YUYV" else 3) // (1 if self.format == "YUYV" else 2)
        if used < need:
            self.corrupt += 1
            log.warning("camera %s: short buffer (%d of %d bytes) skipped", self.path, used, need)
            return None
        if self.format == "YUYV":
            yuv = jpeglib.yuyv_to_planar422(raw, self.width, self.height, out)
        elif self.format == "NV12":
            yuv = jpeglib.nv12_to_planar420(raw, self.width, self.height, out)
        else:
            yuv = jpeglib.i420_padded(raw, self.width, self.height, out)
            if yuv is not out:
                yuv = np.copy(yuv)  # the driver reuses this buffer once it is queued again
        return Frame(seq, stamp, yuv=yuv, subsample=self.subsample, width=self.width, height=self.height)

    @property
    def description(self) -> str:
        return f"V4L2 {self.path} {self.format}"

    def close(self) -> None:
        if self.streaming:
            try:
                self._ioctl(self.v4l2.VIDIOC_STREAMOFF, self.v4l2.ctypes.c_int(self.v4l2.V4L2_BUF_TYPE_VIDEO_CAPTURE))
            except OSError as err:
                log.warning("camera %s: stream off failed: %s", self.path, err.strerror)
            self.streaming = False
        for m in self.maps:
            try:
                m.close()
            except (BufferError, AttributeError):
                pass
        self.maps = []
        if getattr(self, "fd", None) is not None:
            self.io.close(self.fd)
            self.fd = None


def open_source(name: str, width: int, height: int, fps: float, quality: int, host: str,
                max_frame: int, buffers: int = 4, pixel_format: Optional[str] = None) -> Any:
    if name == "testpattern":
        return TestPatternSource(width, height, fps, host)
    if name.startswith("/dev/"):
        return V4L2Source(name, width, height, fps, quality, buffers=buffers, max_frame=max_frame,
                          pixel_format=pixel_format)
    if Path(name).suffix in (".yuv", ".i420"):
        return ClipSource(name, width, height, fps)
    raise SourceError(f"source {name!r}: want testpattern, a /dev/videoN device or a raw I420 clip file (.yuv)")
