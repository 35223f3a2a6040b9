"""listen: receive Opus over TCP, iron out the network's jitter, play through ALSA.

Reads the seed's framing (one length byte, then the packet) after the call's
handshake when --token-file is given. The jitter buffer is in milliseconds and
adapts between --buffer (its minimum) and --buffer-max; Opus conceals what
arrives late; a fast sender clock is absorbed by dropping audio in silence.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

from pi2pi import config
from pi2pi.audio.talk import add_device_arguments, check_audio


@dataclass
class Settings(config.Common):
    device: str = "default"        # ALSA playback PCM, e.g. plughw:CARD=vc4hdmi0 (HDMI)
    rate: int = 48000
    channels: int = 1
    period_ms: float = 5.0         # ALSA playback period
    periods: int = 2               # 2 x 5 ms: the device holds ~10 ms (trx used 16 ms; 3 is safer on a busy Pi)
    pace: str = "device"
    mixer: Optional[str] = None    # playback mixer control, e.g. "PCM", "Headphone"
    mixer_device: str = "default"
    volume: Optional[int] = None
    mute: bool = False
    buffer: float = 2.0            # jitter buffer minimum, ms; the target adds the measured jitter
    buffer_max: float = 680.0      # jitter buffer maximum, ms (the seed: 131072 bytes ~ 683 ms)
    record: Optional[str] = None   # FILE.wav: what is heard
    record_split: float = 0.0      # seconds per file (FILE-0001.wav, ...); 0 = one file
    stall_s: float = 5.0           # a peer silent mid-frame this long is dropped

    def validate(self) -> None:
        if bool(self.connect) == bool(self.listen):
            raise config.ConfigError("give exactly one of --connect HOST:PORT or --listen [ADDR:]PORT")
        check_audio(self.rate, self.channels, self.period_ms, self.periods, self.pace, self.volume)
        if not 0 <= self.buffer <= self.buffer_max:
            raise config.ConfigError(f"buffer {self.buffer} ms: want 0..buffer_max ({self.buffer_max} ms)")
        if self.buffer_max > 10000:
            raise config.ConfigError(f"buffer_max {self.buffer_max} ms: at most 10000")
        if self.record_split < 0 or self.stall_s <= 0:
            raise config.ConfigError("record_split must be >= 0 and stall_s positive")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS
    add_device_arguments(parser, "playback")
    parser.add_argument("--buffer", type=float, metavar="MS", default=S,
                        help="jitter buffer minimum, ms; it grows with the measured jitter")
    parser.add_argument("--buffer-max", dest="buffer_max", type=float, metavar="MS", default=S,
                        help="jitter buffer maximum, ms")
    parser.add_argument("--record", metavar="FILE.wav", default=S, help="record what is heard")
    parser.add_argument("--record-split", dest="record_split", type=float, metavar="S", default=S,
                        help="a new numbered file every S seconds")


def run(settings: Settings) -> int:
    settings.validate()
    from pi2pi.audio import player  # ALSA, Opus, numpy: only when listen really runs
    return player.run(settings)
