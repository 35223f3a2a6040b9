"""talk: capture the microphone (ALSA), compress it (Opus), send it over TCP.

Every 20 ms Opus packet travels behind one byte that holds its length, the
seed's framing, so a seed listener can play it. With --token-file the listener
and talk first prove they belong to the same call (the runtime's handshake).
`--device testsignal` sends a tone pattern that names this host instead of a
microphone (audio/testsignal.py), as the camera's test pattern does.
"""
from __future__ import annotations

import argparse

from pi2pi.audio.settings import TalkSettings as Settings
from pi2pi.audio.settings import add_device_arguments

__all__ = ["Settings", "add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS
    add_device_arguments(parser, "capture")
    parser.add_argument("--label", metavar="NAME", default=S,
                        help="name the test signal says (none: the host name)")
    parser.add_argument("--bitrate", type=int, metavar="BPS", default=S, help="Opus bitrate, bits/s")
    parser.add_argument("--complexity", type=int, metavar="0..10", default=S,
                        help="Opus encoder complexity (10 = best, 5 = half the CPU)")
    parser.add_argument("--max-backlog-ms", dest="max_backlog_ms", type=float, metavar="MS", default=S,
                        help="audio allowed to queue in TCP before frames are dropped")


def run(settings: Settings) -> int:
    settings.validate()
    from pi2pi.audio import sender  # ALSA, Opus: only when talk really runs
    return sender.run(settings)
