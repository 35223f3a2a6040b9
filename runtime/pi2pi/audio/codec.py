"""Opus through opuslib's low-level API.

The high-level opuslib classes are avoided on purpose (DESIGN.md, Known
pitfalls): `Encoder.encode` does not cap the packet size, and
`Decoder.decode(None)` crashes, so loss concealment needs the low-level call.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import opuslib
import opuslib.api.ctl
import opuslib.api.decoder
import opuslib.api.encoder

from pi2pi.wire import AUDIO_MAX_PACKET

log = logging.getLogger(__name__)

OpusError = opuslib.OpusError
# Opus decodes at most 120 ms per packet; size the output for that.
MAX_PACKET_MS = 120


@dataclass(frozen=True)
class CodecSettings:
    rate: int = 48000
    channels: int = 1
    bitrate: int = 32000   # bits per second, explicit (the encoder's default would be higher)
    frame_ms: int = 20
    complexity: int = 10   # Opus's own default; talk's is 5 (audio/settings.py)

    @property
    def frame_samples(self) -> int:
        return self.rate * self.frame_ms // 1000


class Encoder:
    """VOIP mode, explicit bitrate, DTX off, every packet at most 255 bytes."""

    def __init__(self, settings: CodecSettings, max_packet: int = AUDIO_MAX_PACKET) -> None:
        self.settings = settings
        self.max_packet = max_packet
        self.state = opuslib.api.encoder.create_state(settings.rate, settings.channels, opuslib.APPLICATION_VOIP)
        ctl = opuslib.api.encoder.encoder_ctl
        ctl(self.state, opuslib.api.ctl.set_bitrate, settings.bitrate)
        ctl(self.state, opuslib.api.ctl.set_signal, opuslib.SIGNAL_VOICE)
        ctl(self.state, opuslib.api.ctl.set_complexity, settings.complexity)
        # DTX would send nothing in silence, which the seed's listener reads as loss.
        ctl(self.state, opuslib.api.ctl.set_dtx, 0)

    def encode(self, pcm: bytes) -> bytes:
        """One frame of interleaved s16le PCM -> one Opus packet (<= max_packet bytes)."""
        return opuslib.api.encoder.encode(self.state, pcm, self.settings.frame_samples, self.max_packet)

    def close(self) -> None:
        if self.state is not None:
            opuslib.api.encoder.destroy(self.state)
            self.state = None


class Decoder:
    def __init__(self, rate: int, channels: int) -> None:
        self.rate = rate
        self.channels = channels
        self.max_samples = rate * MAX_PACKET_MS // 1000
        self.state = opuslib.api.decoder.create_state(rate, channels)

    def samples_in(self, packet: bytes) -> int:
        """Samples per channel the packet decodes to (raises OpusError on garbage)."""
        return opuslib.api.decoder.get_nb_samples(self.state, packet, len(packet))

    def decode(self, packet: bytes) -> bytes:
        """Interleaved s16le PCM; raises OpusError for a packet Opus rejects."""
        return opuslib.api.decoder.decode(self.state, packet, len(packet), self.max_samples, False, self.channels)

    def conceal(self, samples: int) -> bytes:
        """Opus packet loss concealment for `samples` per channel (no packet)."""
        return opuslib.api.decoder.decode(self.state, None, 0, samples, False, self.channels)

    def close(self) -> None:
        if self.state is not None:
            opuslib.api.decoder.destroy(self.state)
            self.state = None
