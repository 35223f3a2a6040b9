"""What the listener hears, to one WAV file or a set of numbered files.

The seed wrote either one file or a set of individual files. `split_s` = 0
writes FILE.wav; otherwise FILE-0001.wav, FILE-0002.wav, ... each `split_s`
seconds long, so a long call can be copied off while it runs.
"""
from __future__ import annotations

import logging
import wave
from pathlib import Path
from typing import List, Optional

from pi2pi.config import ConfigError

log = logging.getLogger(__name__)


class Recorder:
    def __init__(self, path: str, rate: int, channels: int, split_s: float = 0.0) -> None:
        self.path = Path(path).expanduser()
        self.rate = rate
        self.channels = channels
        self.split_frames = int(split_s * rate) if split_s > 0 else 0
        self.files: List[Path] = []
        self._wav: Optional[wave.Wave_write] = None
        self._in_file = 0
        if not self.path.parent.is_dir():
            raise ConfigError(f"cannot record to {self.path}: no directory {self.path.parent}")
        self._open()   # a bad path is the user's mistake: say so before the call starts

    def _next_path(self) -> Path:
        if not self.split_frames:
            return self.path
        stem = self.path.stem if self.path.suffix.lower() == ".wav" else self.path.name
        return self.path.with_name(f"{stem}-{len(self.files) + 1:04d}.wav")

    def _open(self) -> None:
        target = self._next_path()
        try:
            wav = wave.open(str(target), "wb")
        except OSError as err:
            raise ConfigError(f"cannot record to {target}: {err.strerror}") from None
        wav.setnchannels(self.channels)
        wav.setsampwidth(2)
        wav.setframerate(self.rate)
        self._wav = wav
        self._in_file = 0
        self.files.append(target)
        log.info("recording to %s", target)

    def write(self, pcm: bytes) -> None:
        frame_bytes = 2 * self.channels
        view = memoryview(pcm)
        while view:
            if self._wav is None:
                self._open()
            assert self._wav is not None
            room = (self.split_frames - self._in_file) if self.split_frames else len(view) // frame_bytes
            take = min(room, len(view) // frame_bytes)
            self._wav.writeframesraw(view[:take * frame_bytes])
            self._in_file += take
            view = view[take * frame_bytes:]
            if self.split_frames and self._in_file >= self.split_frames:
                self._wav.close()
                self._wav = None

    def close(self) -> None:
        if self._wav is not None:
            self._wav.close()   # patches the header's sizes
            self._wav = None
