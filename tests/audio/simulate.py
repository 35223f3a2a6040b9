"""The listener's jitter buffer and playout on a simulated clock.

A sender produces 20 ms frames of a talk-spurt signal (tones with soft edges,
pauses between) on its own clock, `drift_ppm` fast against the player's; the
network adds a delay and jitter and keeps TCP's order; the output device takes
audio at exactly its rate and asks for more when it holds `device_ms`. The
payload is the PCM itself (no Opus), so the output can be checked sample by
sample for hard cuts. An hour runs in a few seconds.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from pi2pi.audio.jitter import JitterBuffer, JitterSettings, Playout, PlayoutCounters
from tests.audio.analysis import hard_cuts

FRAME_MS = 20.0


@dataclass
class SimResult:
    counters: PlayoutCounters
    seconds: float
    fill_max_ms: float          # most audio the jitter buffer held after the start
    wait_last_minute_max_ms: float  # longest a packet waited in the last minute (the latency the buffer adds)
    wait_max_ms: float
    device_underruns: int
    hard_cuts: List[float] = field(default_factory=list)   # seconds into the output
    underrun_times: List[float] = field(default_factory=list)


def talk_spurts(rate: int, start: int, count: int, spurt_s: float = 1.4, pause_s: float = 0.6) -> np.ndarray:
    """Samples [start, start+count) of tones (a new pitch each spurt) with 10 ms ramps and pauses."""
    n = np.arange(start, start + count, dtype=np.float64)
    period = (spurt_s + pause_s) * rate
    pos = np.mod(n, period)
    spurt = np.floor(n / period)
    freq = 213.0 + 47.0 * np.mod(spurt, 5)   # never a whole number of cycles per frame
    ramp = 0.01 * rate
    env = np.clip(np.minimum(pos, spurt_s * rate - pos) / ramp, 0.0, 1.0)
    return np.rint(10000.0 * env * np.sin(2 * np.pi * freq * pos / rate)).astype(np.int16)


def simulate(
    seconds: float,
    drift_ppm: float = 0.0,
    delay_ms: float = 5.0,
    jitter_ms: float = 1.0,
    settings: Optional[JitterSettings] = None,
    rate: int = 8000,
    device_ms: float = 10.0,
    seed: int = 1,
    check_cuts: bool = True,
    uniform: bool = False,
) -> SimResult:
    """uniform: jitter is delay_ms +- jitter_ms (netem's default); else |gauss(0, jitter_ms)| added."""
    rng = random.Random(seed)
    buffer = JitterBuffer(settings or JitterSettings())
    frame = int(rate * FRAME_MS / 1000)

    def decode(payload: bytes) -> np.ndarray:
        return np.frombuffer(payload, dtype=np.int16)

    def conceal(samples: int) -> np.ndarray:
        return np.zeros(samples, dtype=np.int16)   # the simulation's concealment: silence

    playout = Playout(buffer, decode, conceal, rate, 1, FRAME_MS)
    # the signal repeats every 5 spurts (5 pitches x 2 s): compute that once
    cycle = talk_spurts(rate, 0, int(5 * 2.0 * rate))
    cycle_bytes = cycle.tobytes()
    assert cycle.size % frame == 0
    sender_period = FRAME_MS / (1.0 + drift_ppm * 1e-6)   # ms of player time per sender frame
    next_send = 0.0
    sent = 0
    last_arrival = 0.0
    pending: List[tuple] = []   # (arrival_ms, payload) in order
    device_end = 0.0            # when everything written so far will have played
    now = 0.0
    out_chunks: List[np.ndarray] = []
    out_len = 0
    carry = np.zeros(0, dtype=np.int16)
    cuts: List[float] = []
    underrun_times: List[float] = []
    device_underruns = 0
    fill_max = 0.0
    wait_max = 0.0
    wait_minute_max = 0.0
    last_underruns = 0

    def analyse(final: bool) -> None:
        nonlocal out_chunks, carry
        if not out_chunks:
            return
        block = np.concatenate([carry] + out_chunks)
        offset = out_len - (block.size - carry.size) - carry.size
        if check_cuts:
            for i in hard_cuts(block, rate):
                position = (offset + i) / rate
                if not cuts or position - cuts[-1] > 0.001:
                    cuts.append(position)
        carry = block[-rate // 50:]
        out_chunks = []

    while now < seconds * 1000.0:
        # the network delivers everything sent up to now
        while next_send <= now:
            first = (sent * frame) % cycle.size
            payload = cycle_bytes[first * 2:(first + frame) * 2]
            extra = rng.uniform(-jitter_ms, jitter_ms) if uniform else abs(rng.gauss(0.0, jitter_ms))
            arrival = max(last_arrival, next_send + delay_ms + extra)
            last_arrival = arrival
            pending.append((arrival, payload))
            sent += 1
            next_send = sent * sender_period
        while pending and pending[0][0] <= now:
            arrival, payload = pending.pop(0)
            buffer.push(payload, FRAME_MS, arrival)
        if playout.playing:
            fill_max = max(fill_max, buffer.fill_ms())
        pcm = playout.next_frame(now)
        if playout.counters.underruns != last_underruns:
            last_underruns = playout.counters.underruns
            underrun_times.append(now / 1000.0)
        wait = playout.delay_ms(now) if playout.playing else None
        if wait is not None:
            wait_max = max(wait_max, wait)
            if now > (seconds - 60.0) * 1000.0:
                wait_minute_max = max(wait_minute_max, wait)
        if device_end < now:
            if device_end > 0:
                device_underruns += 1
            device_end = now
        device_end += pcm.size / rate * 1000.0
        if playout.playing or out_len:
            out_chunks.append(pcm)
            out_len += pcm.size
            if out_len % (rate * 60) < pcm.size:
                analyse(False)
        # the device asks again when it holds device_ms
        now = max(now + 0.05, device_end - device_ms)
    analyse(True)
    return SimResult(playout.counters, seconds, fill_max, wait_minute_max, wait_max,
                     device_underruns, cuts, underrun_times)
