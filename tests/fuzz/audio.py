"""Fuzz target `audio`: a peer's bytes -> packets -> jitter buffer -> Opus -> the speaker's PCM.

One input = one connection: an option byte (channels, rate, buffer, keep the
connection open), a byte seeding the arrival gaps, then the bytes talk would
send. They go into one end of a socketpair; the other end goes through what
listen does with them (player.Receiver._serve, then the player thread):
`wire.read_audio_frame`, `jitter.opus_packet_ms` (the TOC byte), then
`JitterBuffer.push` at a simulated arrival time, and the device-clocked
`Playout.next_frame` with listen's own decode and conceal (`player.make_playout`
over `codec.Decoder`), which hands PCM to the device. The decoder also checks
every packet it decodes against the TOC parse.

Allowed: from read_audio_frame PeerClosed (the end of the input), Stalled and
socket.timeout (with the keep-open bits, common.keep_open, the peer keeps the
connection open: a packet that stops, no next packet); from Decoder.decode
OpusError, its documented refusal (listen's decode turns it into
concealment). opus_packet_ms returns None for what cannot
be Opus; the playout may raise nothing and must hand over interleaved int16 PCM
of at most 160 ms. Where Opus accepts a packet, it must decode to exactly the
duration the TOC parse gave the jitter buffer.

Seeds: packets from the project's encoder (codec.Encoder: VOIP, capped at 255
bytes) at several rates, channel counts and frame lengths, eight to a connection.
"""
from __future__ import annotations

import random
import socket
from pathlib import Path
from typing import Callable, Dict

import atheris
import numpy as np

from tests.fuzz import common

with atheris.instrument_imports(include=common.INSTRUMENTED):
    from pi2pi import wire
    from pi2pi.audio import codec, jitter, player
    from pi2pi.audio.settings import ListenSettings

MAX_LEN = 2048
STALL_S = 0.002
FIRST_WAIT_S = 0.002
RATES = (48000, 24000, 16000, 8000)
BUFFERS_MS = (2.0, 20.0, 60.0, 200.0)     # listen --buffer
STEREO = 0x01
GAP_FACTORS = (0.0, 0.5, 1.0, 1.0, 1.0, 1.5, 4.0)   # arrival gap / packet duration: bursts, jitter, a spike
MOST_PCM_MS = 160.0                       # 120 ms packet (or its cross-fade) + 20 ms lengthened silence
DRAIN_FRAMES = 10                         # after the input: concealment, then rebuffering silence


def options(data: bytes) -> ListenSettings:
    flags = data[0]
    return ListenSettings(listen="0", rate=RATES[(flags >> 1) & 3], channels=2 if flags & STEREO else 1,
                          buffer=BUFFERS_MS[(flags >> 3) & 3])


class CheckedDecoder(codec.Decoder):
    """listen's decoder, which also checks each packet it decodes against the TOC parse."""

    def decode(self, packet: bytes) -> bytes:
        pcm = super().decode(packet)   # OpusError passes through to listen's decode
        duration = jitter.opus_packet_ms(packet)
        samples = len(pcm) // 2 // self.channels
        if duration is None or samples != round(duration * self.rate / 1000):
            raise common.Wrong(f"TOC {packet[0]:#04x} says {duration} ms; Opus decoded {samples} samples "
                               f"at {self.rate} Hz")
        return pcm


class Harness:
    def one(self, data: bytes) -> None:
        if len(data) < 2:
            return
        settings = options(data)
        near, far = socket.socketpair()
        decoder = CheckedDecoder(settings.rate, settings.channels)
        try:
            near.sendall(data[2:])
            if not common.keep_open(data[0]):
                near.shutdown(socket.SHUT_WR)
            self.listen(far, settings, decoder, random.Random(data[1]))
        finally:
            decoder.close()
            near.close()
            far.close()

    def listen(self, sock: socket.socket, settings: ListenSettings, decoder: codec.Decoder,
               gaps: random.Random) -> None:
        buffer = jitter.JitterBuffer(jitter.JitterSettings(min_ms=settings.buffer, max_ms=settings.buffer_max))
        playout = player.make_playout(buffer, decoder, settings)
        device = Device(playout, settings)
        now = 0.0
        while True:
            try:
                with common.deadline(FIRST_WAIT_S + STALL_S, "read_audio_frame"):
                    packet = wire.read_audio_frame(sock, STALL_S, first_wait_s=FIRST_WAIT_S)
            except wire.PeerClosed as err:
                if not err.partial:
                    buffer.mark_ended()
                break
            except (wire.Stalled, socket.timeout):
                break
            if len(packet) > wire.AUDIO_MAX_PACKET:
                raise common.Wrong(f"read_audio_frame returned {len(packet)} bytes")
            if not packet:
                continue
            duration = jitter.opus_packet_ms(packet)
            if duration is None:
                continue
            if not 0 < duration <= codec.MAX_PACKET_MS:
                raise common.Wrong(f"opus_packet_ms gave {duration} ms for TOC {packet[0]:#04x}")
            now += duration * gaps.choice(GAP_FACTORS)
            buffer.push(packet, duration, now)
            device.play_until(now)
        device.drain()


class Device:
    """The output device's clock: wants the next frame when the last one has played."""

    def __init__(self, playout: jitter.Playout, settings: ListenSettings) -> None:
        self.playout = playout
        self.rate, self.channels = settings.rate, settings.channels
        self.clock_ms = 0.0
        self.most = int(MOST_PCM_MS * self.rate / 1000) * self.channels

    def frame(self) -> None:
        pcm = self.playout.next_frame(self.clock_ms)
        if not isinstance(pcm, np.ndarray) or pcm.dtype != np.int16 or pcm.ndim != 1:
            raise common.Wrong(f"next_frame handed over {type(pcm).__name__} {getattr(pcm, 'dtype', '')}")
        if pcm.size % self.channels or pcm.size > self.most:
            raise common.Wrong(f"next_frame handed over {pcm.size} samples for {self.channels} channels")
        # listen's play() asks again at once after an empty frame; the clock moves with what played
        self.clock_ms += pcm.size / self.channels / self.rate * 1000

    def play_until(self, now_ms: float) -> None:
        calls = 0
        while self.clock_ms <= now_ms:
            self.frame()
            calls += 1
            if calls > 10_000:
                raise common.Hang(f"the playout made no progress towards {now_ms} ms (at {self.clock_ms} ms)")

    def drain(self) -> None:
        for _ in range(int(self.playout.buffer.fill_ms() / 2.5) + DRAIN_FRAMES):
            self.frame()


def encoded(rate: int, channels: int, frame_ms: int, bitrate: int, count: int, seed: int) -> bytes:
    """`count` packets from the project's encoder (a tone with noise, then a pause), framed for the wire."""
    settings = codec.CodecSettings(rate=rate, channels=channels, bitrate=bitrate, frame_ms=frame_ms, complexity=5)
    encoder = codec.Encoder(settings)
    rng = np.random.default_rng(seed)
    n = settings.frame_samples
    out = b""
    try:
        for i in range(count):
            t = (np.arange(n) + i * n) / rate
            level = 8000.0 if i < count * 2 // 3 else 0.0
            mono = level * np.sin(2 * np.pi * (300 + 100 * seed) * t) + rng.normal(0, 300, n)
            pcm = np.repeat(mono, channels).clip(-32768, 32767).astype("<i2").tobytes()
            out += wire.pack_audio_frame(encoder.encode(pcm))
    finally:
        encoder.close()
    return out


def seeds() -> Dict[str, bytes]:
    cases = {  # name: (option byte, rate, channels, frame_ms, bitrate)
        "48k-mono-20ms": (0x00, 48000, 1, 20, 32000),
        "48k-stereo-20ms": (STEREO, 48000, 2, 20, 64000),
        "16k-mono-10ms": (2 << 1, 16000, 1, 10, 16000),
        "8k-mono-60ms": (3 << 1, 8000, 1, 60, 12000),
        "24k-stereo-40ms-buffer60": (STEREO | 1 << 1 | 2 << 3, 24000, 2, 40, 32000),
        "48k-mono-20ms-buffer200": (3 << 3, 48000, 1, 20, 32000),
        "48k-mono-stall": (common.KEEP_OPEN, 48000, 1, 20, 32000),
    }
    found = {}
    for i, (name, (flags, rate, channels, frame_ms, bitrate)) in enumerate(cases.items()):
        stream = encoded(rate, channels, frame_ms, bitrate, 8, i)
        if common.keep_open(flags):
            stream = stream[:-3]
        found[name] = bytes((flags, i * 37)) + stream
    found["zero-lengths-then-packets"] = bytes((0, 5)) + b"\x00\x00\x00" + encoded(48000, 1, 20, 32000, 3, 9)
    return found


def make(workdir: Path) -> Callable[[bytes], None]:
    return Harness().one


if __name__ == "__main__":
    common.child_main(make)
