"""ALSA capture and playback through pyalsaaudio, and the mixer.

pyalsaaudio 0.11 pitfalls handled here (DESIGN.md): the constructor ignores
set-up failures, so the real settings are read back with `info()`; `read()`
returns one period, re-chunked here into whole codec frames; `write()` may be
partial, and on an underrun returns -EPIPE having written nothing.

`pace="clock"` is for devices that are not paced in real time (ALSA's null
and file plugins): the wall clock then stands in for the sound card's clock,
as if the device had `periods` periods of buffer. On a real card use "device".
"""
from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass
from typing import Optional

import alsaaudio

from pi2pi.config import ConfigError

log = logging.getLogger(__name__)

PACES = ("device", "clock")
DeviceError = alsaaudio.ALSAAudioError   # the device failed mid-call (unplugged, ...)
SAMPLE_BYTES = 2   # S16_LE


@dataclass(frozen=True)
class DeviceSettings:
    device: str = "default"
    rate: int = 48000
    channels: int = 1
    period_ms: float = 5.0
    periods: int = 4
    pace: str = "device"

    @property
    def period_frames(self) -> int:
        return max(16, int(self.rate * self.period_ms / 1000))


def _open(kind: int, s: DeviceSettings) -> "alsaaudio.PCM":
    what = "capture" if kind == alsaaudio.PCM_CAPTURE else "playback"
    try:
        pcm = alsaaudio.PCM(type=kind, mode=alsaaudio.PCM_NORMAL, device=s.device, rate=s.rate,
                            channels=s.channels, format=alsaaudio.PCM_FORMAT_S16_LE,
                            periodsize=s.period_frames, periods=s.periods)
    except alsaaudio.ALSAAudioError as err:
        raise ConfigError(f"ALSA {what} device {s.device!r}: {err}") from None
    info = pcm.info()
    got = (info["rate"], info["channels"], info["format_name"])
    if got != (s.rate, s.channels, "S16_LE"):
        pcm.close()
        raise ConfigError(
            f"ALSA {what} device {s.device!r} runs at {got[0]} Hz, {got[1]} channel(s), {got[2]}; "
            f"want {s.rate} Hz, {s.channels}, S16_LE (try plughw:CARD,DEV, which converts)")
    log.info("%s %s: %d Hz, %d ch, period %d frames, buffer %d frames", what, s.device,
             info["rate"], info["channels"], info["period_size"], info["buffer_size"])
    return pcm


class Capture:
    """Whole frames of interleaved S16_LE from an ALSA capture device."""

    def __init__(self, settings: DeviceSettings, frame_samples: int) -> None:
        self.settings = settings
        self.pcm = _open(alsaaudio.PCM_CAPTURE, settings)
        self.frame_bytes = frame_samples * settings.channels * SAMPLE_BYTES
        self._pending = bytearray()
        self.overruns = 0
        self.frames_read = 0          # sample frames (per channel) delivered by the device
        self.start: Optional[float] = None   # wall time (time.time) of the first sample
        self._start_mono = 0.0

    def read_frame(self) -> bytes:
        """Block until one whole codec frame is captured."""
        while len(self._pending) < self.frame_bytes:
            length, data = self.pcm.read()
            if length < 0:
                # -EPIPE: the device overran (we were late); ALSA has been prepared again
                self.overruns += 1
                log.warning("capture overrun (%s); continuing", errno.errorcode.get(-length, length))
                continue
            if length == 0:
                continue
            if self.start is None:
                # the first period's first sample entered the device one period ago
                self._start_mono = time.monotonic() - length / self.settings.rate
                self.start = time.time() - length / self.settings.rate
            self.frames_read += length
            self._pending += data
            if self.settings.pace == "clock":
                due = self._start_mono + self.frames_read / self.settings.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        frame = bytes(self._pending[:self.frame_bytes])
        del self._pending[:self.frame_bytes]
        return frame

    def drift_ppm(self) -> Optional[float]:
        """The device's sample clock against the system's (positive = device fast)."""
        if self.start is None:
            return None
        elapsed = time.monotonic() - self._start_mono
        if elapsed < 5.0 or self.settings.pace == "clock":
            return None
        return round((self.frames_read / self.settings.rate / elapsed - 1.0) * 1e6, 1)

    def close(self) -> None:
        self.pcm.close()


class Playback:
    """Writes PCM to an ALSA playback device; underruns cost a bounded gap."""

    def __init__(self, settings: DeviceSettings) -> None:
        self.settings = settings
        self.pcm = _open(alsaaudio.PCM_PLAYBACK, settings)
        info = self.pcm.info()
        self.buffer_frames = int(info["buffer_size"])
        self.frame_bytes = settings.channels * SAMPLE_BYTES
        self.underruns = 0
        self.written = 0                  # sample frames accepted by the device
        self._clock_start: Optional[float] = None   # pace=clock: when sample 0 plays
        self._silence = bytes(settings.period_frames * self.frame_bytes)

    def queued_frames(self) -> int:
        """Sample frames written but not yet played."""
        if self.settings.pace == "clock":
            if self._clock_start is None:
                return 0
            played = (time.monotonic() - self._clock_start) * self.settings.rate
            return max(0, int(self.written - played))
        try:
            avail = self.pcm.avail()
        except alsaaudio.ALSAAudioError:
            return 0
        return max(0, self.buffer_frames - int(avail))

    def play_time_of_next(self) -> float:
        """Wall time (time.time) at which the next sample written will be heard."""
        return time.time() + self.queued_frames() / self.settings.rate

    def write(self, pcm: bytes) -> int:
        """Play pcm; returns the sample frames of silence heard before it (underruns)."""
        if self.settings.pace == "clock":
            return self._write_clocked(pcm)
        gap = 0
        view = memoryview(pcm)
        while view:
            result = self.pcm.write(view)
            if result < 0:
                if result != -errno.EPIPE:
                    raise OSError(-result, f"ALSA write: {errno.errorcode.get(-result, result)}")
                # Nothing was written and ALSA prepared the device again. One period of
                # silence in front restores a cushion, so the next write does not
                # underrun again at once; the gap stays one xrun plus one period.
                self.underruns += 1
                log.warning("playback underrun; restarting with %d frames of silence",
                            self.settings.period_frames)
                self.pcm.write(self._silence)
                gap += self.settings.period_frames
                continue
            frames = result
            if frames == 0:
                time.sleep(0.001)
                continue
            self.written += frames
            view = view[frames * self.frame_bytes:]
        return gap

    def _write_clocked(self, pcm: bytes) -> int:
        frames = len(pcm) // self.frame_bytes
        gap = 0
        now = time.monotonic()
        if self._clock_start is None:
            self._clock_start = now
        elif (now - self._clock_start) * self.settings.rate > self.written:
            # an emulated underrun: the device played everything and waited
            self.underruns += 1
            gap = int((now - self._clock_start) * self.settings.rate) - self.written
            self._clock_start = now - self.written / self.settings.rate
        self.pcm.write(pcm)   # the file/null device takes it at once
        self.written += frames
        # block like a full device buffer would
        due = self._clock_start + (self.written - self.buffer_frames) / self.settings.rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return gap

    def close(self) -> None:
        self.pcm.close()


@dataclass(frozen=True)
class MixerSettings:
    control: Optional[str] = None      # e.g. "Mic", "Capture", "PCM", "Headphone"; None: leave alone
    device: str = "default"            # the mixer's ALSA ctl device, e.g. "hw:1"
    volume: Optional[int] = None       # percent
    mute: bool = False


def apply_mixer(settings: MixerSettings, capture: bool) -> bool:
    """Set volume/mute as the seed's scripts did; a missing control is logged, not fatal."""
    if settings.control is None:
        if settings.volume is not None or settings.mute:
            log.warning("volume/mute given but no mixer control named (--mixer); left alone")
        return False
    direction = "capture" if capture else "playback"
    try:
        mixer = alsaaudio.Mixer(control=settings.control, device=settings.device)
    except alsaaudio.ALSAAudioError as err:
        log.warning("no mixer control %r on %r (%s); %s volume left alone",
                    settings.control, settings.device, err, direction)
        return False
    pcmtype = alsaaudio.PCM_CAPTURE if capture else alsaaudio.PCM_PLAYBACK
    try:
        if settings.volume is not None:
            mixer.setvolume(int(settings.volume), pcmtype=pcmtype)
            log.info("%s volume of %r set to %d%%", direction, settings.control, settings.volume)
        if capture:
            if "Capture Mute" in mixer.switchcap() or "Joined Capture Mute" in mixer.switchcap():
                mixer.setrec(0 if settings.mute else 1)
        elif mixer.switchcap():
            mixer.setmute(1 if settings.mute else 0)
    except alsaaudio.ALSAAudioError as err:
        log.warning("mixer control %r on %r: %s", settings.control, settings.device, err)
        return False
    finally:
        mixer.close()
    return True
