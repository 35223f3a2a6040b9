"""talk's and listen's settings: one home for what the programs (talk.py,
listen.py: the command line) and their work (sender.py, player.py) share.

Light on purpose (stdlib and pi2pi.config only): `pi2pi --help` and
`pi2pi config` read these without loading ALSA or Opus.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

from pi2pi import config

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
PACES = ("device", "clock")
TEST_SIGNAL = "testsignal"   # talk's device: a tone pattern naming this host, paced by the clock


@dataclass
class AudioSettings(config.Common):
    """What talk and listen share: an ALSA device, its mixer, and the peer's stall limit."""

    device: str = "default"
    rate: int = 48000
    channels: int = 1
    period_ms: float = 20.0
    periods: int = 4
    pace: str = "device"           # "clock" for ALSA file/null devices, which are not real time
    mixer: Optional[str] = None    # mixer control to set, e.g. "Mic" or "PCM"; none: leave it
    mixer_device: str = "default"  # its ALSA ctl device, e.g. hw:1
    volume: Optional[int] = None   # percent
    mute: bool = False
    stall_s: float = 5.0           # a peer that stalls this long is dropped

    def validate(self) -> None:
        super().validate()
        if self.rate not in OPUS_RATES:
            raise config.ConfigError(f"rate {self.rate}: Opus takes {', '.join(map(str, OPUS_RATES))}")
        if self.channels not in (1, 2):
            raise config.ConfigError(f"channels {self.channels}: want 1 or 2")
        if not 1.0 <= self.period_ms <= 100.0 or not 2 <= self.periods <= 64:
            raise config.ConfigError("period_ms must be 1..100 and periods 2..64")
        if self.pace not in PACES:
            raise config.ConfigError(f"pace {self.pace!r}: want one of {', '.join(PACES)}")
        if self.volume is not None and not 0 <= self.volume <= 100:
            raise config.ConfigError(f"volume {self.volume}: want a percentage 0..100")
        if self.stall_s <= 0:
            raise config.ConfigError(f"stall_s {self.stall_s}: want a positive number of seconds")


@dataclass
class TalkSettings(AudioSettings):
    device: str = "default"        # ALSA capture PCM, e.g. plughw:1,0 for a USB microphone; or testsignal
    period_ms: float = 20.0        # ALSA capture period = one 20 ms frame: no added delay, fewest wake-ups
    periods: int = 4
    label: Optional[str] = None    # the name the test signal says (none: this host's name)
    bitrate: int = 32000           # bits/s; a 20 ms packet of ~80 bytes, as the seed saw (50-100)
    complexity: int = 5            # Opus encoder complexity 0..10: 5 costs a Pi-class core 2.5x less than 10 (docs/audio.md)
    max_backlog_ms: float = 200.0  # audio allowed to wait in the TCP send queue; more is dropped

    def validate(self) -> None:
        super().validate()
        if not 6000 <= self.bitrate <= 510000:
            raise config.ConfigError(f"bitrate {self.bitrate}: Opus takes 6000..510000 bits/s")
        if not 0 <= self.complexity <= 10:
            raise config.ConfigError(f"complexity {self.complexity}: want 0..10")
        if self.max_backlog_ms < 20:
            raise config.ConfigError(f"max_backlog_ms {self.max_backlog_ms}: want at least 20")


@dataclass
class ListenSettings(AudioSettings):
    device: str = "default"        # ALSA playback PCM, e.g. plughw:CARD=vc4hdmi0 (HDMI)
    period_ms: float = 5.0         # ALSA playback period
    periods: int = 2               # 2 x 5 ms: the device holds ~10 ms (trx used 16 ms; 3 is safer on a busy Pi)
    buffer: float = 2.0            # jitter buffer minimum, ms; the target adds the measured jitter
    buffer_max: float = 680.0      # jitter buffer maximum, ms (the seed: 131072 bytes ~ 683 ms)
    record: Optional[str] = None   # FILE.wav: what is heard
    record_split: float = 0.0      # seconds per file (FILE-0001.wav, ...); 0 = one file

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.buffer <= self.buffer_max:
            raise config.ConfigError(f"buffer {self.buffer} ms: want 0..buffer_max ({self.buffer_max} ms)")
        if self.buffer_max > 10000:
            raise config.ConfigError(f"buffer_max {self.buffer_max} ms: at most 10000")
        if self.record_split < 0:
            raise config.ConfigError(f"record_split {self.record_split}: want seconds >= 0")


def add_device_arguments(parser: argparse.ArgumentParser, direction: str) -> None:
    S = argparse.SUPPRESS
    parser.add_argument("--device", metavar="PCM", default=S, help=f"ALSA {direction} device")
    parser.add_argument("--rate", type=int, default=S, help="sample rate, Hz")
    parser.add_argument("--channels", type=int, choices=(1, 2), default=S)
    parser.add_argument("--period-ms", dest="period_ms", type=float, metavar="MS", default=S,
                        help="ALSA period length")
    parser.add_argument("--periods", type=int, default=S, help="ALSA periods per buffer")
    parser.add_argument("--pace", choices=PACES, default=S,
                        help="'clock' paces an ALSA null/file device by the wall clock")
    parser.add_argument("--mixer", metavar="CONTROL", default=S, help=f"ALSA mixer control for {direction} volume")
    parser.add_argument("--mixer-device", dest="mixer_device", metavar="CTL", default=S)
    parser.add_argument("--volume", type=int, metavar="PCT", default=S, help=f"{direction} volume, percent")
    parser.add_argument("--mute", action=argparse.BooleanOptionalAction, default=S)
    parser.add_argument("--stall-s", dest="stall_s", type=float, metavar="S", default=S,
                        help="drop a peer that stalls this long")
