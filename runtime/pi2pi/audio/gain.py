"""A level applied to int16 PCM that moves by ramps, never by steps.

talk mutes the microphone with it (level 0) and listen sets the speaker volume
(level 0..2). A step in the level of a sounding signal is a click, a hard cut in
the waveform; so a new level is reached across one frame (a linear ramp over the
20 ms talk and listen handle at a time: too short to hear as a fade, long
enough not to click). A steady level of 1 leaves the PCM untouched (the same
object back: no cost while nobody changes anything), a steady 0 gives exact
zeros, and anything louder than full scale is clipped.
"""
from __future__ import annotations

import numpy as np

INT16_MIN, INT16_MAX = -32768, 32767


class Gain:
    def __init__(self, channels: int, level: float = 1.0) -> None:
        self.channels = channels
        self.level = level   # the level the last frame ended at

    def apply(self, pcm: np.ndarray, target: float) -> np.ndarray:
        """pcm (interleaved int16) at `target`, ramped from the level the last frame ended at."""
        start = self.level
        if pcm.size == 0:
            return pcm   # nothing to ramp across: the level moves with the next frame that has samples
        self.level = target
        if start == target == 1.0:
            return pcm
        if start == target == 0.0:
            return np.zeros_like(pcm)
        if start == target:
            scale = np.float32(target)
        else:
            frames = pcm.size // self.channels
            scale = np.repeat(np.linspace(start, target, frames, dtype=np.float32), self.channels)
        scaled = np.rint(pcm.astype(np.float32) * scale)
        return np.clip(scaled, INT16_MIN, INT16_MAX).astype(np.int16)

    def apply_bytes(self, pcm: bytes, target: float) -> bytes:
        """The same for S16_LE bytes, as capture gives them."""
        if self.level == target == 1.0:
            return pcm
        if self.level == target == 0.0:
            return bytes(len(pcm))
        return self.apply(np.frombuffer(pcm, dtype="<i2"), target).astype("<i2").tobytes()
