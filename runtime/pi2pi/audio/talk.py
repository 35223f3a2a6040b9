"""talk: capture the microphone (ALSA), compress it (Opus), send it over TCP.

Every 20 ms Opus packet travels behind one byte that holds its length, the
seed's framing, so a seed listener can play it. With --token-file the listener
and talk first prove they belong to the same call (the runtime's handshake).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

from pi2pi import config

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
PACES = ("device", "clock")


@dataclass
class Settings(config.Common):
    device: str = "default"        # ALSA capture PCM, e.g. plughw:1,0 for a USB microphone
    rate: int = 48000
    channels: int = 1
    bitrate: int = 32000           # bits/s; a 20 ms packet of ~80 bytes, as the seed saw (50-100)
    complexity: int = 10           # Opus encoder complexity 0..10 (CPU against quality)
    period_ms: float = 20.0        # ALSA capture period = one 20 ms frame: no added delay, fewest wake-ups
    periods: int = 4
    pace: str = "device"           # "clock" for ALSA file/null devices, which are not real time
    mixer: Optional[str] = None    # capture mixer control to set, e.g. "Mic"; none: leave it
    mixer_device: str = "default"  # its ALSA ctl device, e.g. hw:1
    volume: Optional[int] = None   # capture volume, percent
    mute: bool = False
    max_backlog_ms: float = 200.0  # audio allowed to wait in the TCP send queue; more is dropped
    stall_s: float = 5.0           # a peer that takes nothing for this long is dropped

    def validate(self) -> None:
        if bool(self.connect) == bool(self.listen):
            raise config.ConfigError("give exactly one of --connect HOST:PORT or --listen [ADDR:]PORT")
        check_audio(self.rate, self.channels, self.period_ms, self.periods, self.pace, self.volume)
        if not 6000 <= self.bitrate <= 510000:
            raise config.ConfigError(f"bitrate {self.bitrate}: Opus takes 6000..510000 bits/s")
        if not 0 <= self.complexity <= 10:
            raise config.ConfigError(f"complexity {self.complexity}: want 0..10")
        if self.max_backlog_ms < 20 or self.stall_s <= 0:
            raise config.ConfigError("max_backlog_ms must be at least 20 and stall_s positive")


def check_audio(rate: int, channels: int, period_ms: float, periods: int, pace: str,
                volume: Optional[int]) -> None:
    if rate not in OPUS_RATES:
        raise config.ConfigError(f"rate {rate}: Opus takes {', '.join(map(str, OPUS_RATES))}")
    if channels not in (1, 2):
        raise config.ConfigError(f"channels {channels}: want 1 or 2")
    if not 1.0 <= period_ms <= 100.0 or not 2 <= periods <= 64:
        raise config.ConfigError("period_ms must be 1..100 and periods 2..64")
    if pace not in PACES:
        raise config.ConfigError(f"pace {pace!r}: want one of {', '.join(PACES)}")
    if volume is not None and not 0 <= volume <= 100:
        raise config.ConfigError(f"volume {volume}: want a percentage 0..100")


def add_device_arguments(parser: argparse.ArgumentParser, direction: str) -> None:
    S = argparse.SUPPRESS
    parser.add_argument("--device", metavar="PCM", default=S, help=f"ALSA {direction} device")
    parser.add_argument("--rate", type=int, default=S, help="sample rate, Hz (48000)")
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS
    add_device_arguments(parser, "capture")
    parser.add_argument("--bitrate", type=int, metavar="BPS", default=S, help="Opus bitrate, bits/s")
    parser.add_argument("--complexity", type=int, metavar="0..10", default=S,
                        help="Opus encoder complexity (10 = best, 5 = half the CPU)")
    parser.add_argument("--max-backlog-ms", dest="max_backlog_ms", type=float, metavar="MS", default=S,
                        help="audio allowed to queue in TCP before frames are dropped")


def run(settings: Settings) -> int:
    settings.validate()
    from pi2pi.audio import sender  # ALSA, Opus: only when talk really runs
    return sender.run(settings)
