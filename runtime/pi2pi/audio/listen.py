"""listen: receive Opus over TCP, iron out the network's jitter, play through ALSA.

Reads the seed's framing (one length byte, then the packet) after the call's
handshake when --token-file is given. The jitter buffer is in milliseconds and
adapts between --buffer (its minimum) and --buffer-max; Opus conceals what
arrives late; a fast sender clock is absorbed by dropping audio in silence.
"""
from __future__ import annotations

import argparse

from pi2pi.audio.settings import ListenSettings as Settings
from pi2pi.audio.settings import add_device_arguments

__all__ = ["Settings", "add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS
    add_device_arguments(parser, "playback")
    parser.add_argument("--buffer", type=float, metavar="MS", default=S,
                        help="jitter buffer minimum, ms; it grows with the measured jitter")
    parser.add_argument("--buffer-max", dest="buffer_max", type=float, metavar="MS", default=S,
                        help="jitter buffer maximum, ms")
    parser.add_argument("--record", metavar="FILE.wav", default=S, help="record what is heard")
    parser.add_argument("--record-split", dest="record_split", type=float, metavar="S", default=S,
                        help="a new numbered file every S seconds (0: one file)")


def run(settings: Settings) -> int:
    settings.validate()
    from pi2pi.audio import player  # ALSA, Opus, numpy: only when listen really runs
    return player.run(settings)
