"""Opus through opuslib's low-level API.

The high-level opuslib classes are avoided on purpose (DESIGN.md, Known
pitfalls): `Encoder.encode` does not cap the packet size, and
`Decoder.decode(None)` crashes, so loss concealment needs the low-level call.

opuslib's own low-level `decode` is avoided too: per packet it allocates
twice the output it needs (120 ms of samples, counted in bytes, of int16),
ties that buffer into a reference cycle (`ctypes.cast` of a ctypes array keeps
the array in its own `_objects`), and copies the samples out through a Python
list of ints. Only the cyclic garbage collector frees the buffers: 23 KB per
20 ms packet, so listen's memory rose and fell by 3-5 MiB in a sawtooth (the
lab's soak) and its decode cost twice what it does here. Both directions call
libopus through opuslib's ctypes bindings with buffers of their own, made once.
"""
from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from typing import Optional

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
        self._packet = ctypes.create_string_buffer(max_packet)   # the output, reused

    def encode(self, pcm: bytes) -> bytes:
        """One frame of interleaved s16le PCM -> one Opus packet (<= max_packet bytes)."""
        samples = self.settings.frame_samples
        if len(pcm) < 2 * samples * self.settings.channels:
            raise ValueError(f"a frame is {samples} samples per channel: got {len(pcm)} bytes")
        # A bytes object cast to a pointer is only kept alive by the pointer: no cycle.
        n = opuslib.api.encoder.libopus_encode(self.state, ctypes.cast(pcm, opuslib.api.c_int16_pointer),
                                               samples, self._packet, self.max_packet)
        if n < 0:
            raise OpusError(n)
        return ctypes.string_at(self._packet, n)

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
        self._pcm = (ctypes.c_int16 * (self.max_samples * channels))()   # the output, reused

    def samples_in(self, packet: bytes) -> int:
        """Samples per channel the packet decodes to (raises OpusError on garbage)."""
        return opuslib.api.decoder.get_nb_samples(self.state, packet, len(packet))

    def decode(self, packet: bytes) -> bytes:
        """Interleaved s16le PCM; raises OpusError for a packet Opus rejects."""
        return self._decode(packet, self.max_samples)

    def conceal(self, samples: int) -> bytes:
        """Opus packet loss concealment for `samples` per channel (no packet)."""
        return self._decode(None, min(samples, self.max_samples))

    def _decode(self, packet: Optional[bytes], samples: int) -> bytes:
        # The array goes in as the pointer the binding declares (ctypes passes an array so).
        n = opuslib.api.decoder.libopus_decode(self.state, packet, len(packet) if packet else 0, self._pcm,
                                               samples, 0)
        if n < 0:
            raise OpusError(n)
        return ctypes.string_at(self._pcm, 2 * n * self.channels)

    def close(self) -> None:
        if self.state is not None:
            opuslib.api.decoder.destroy(self.state)
            self.state = None
