"""The listener's adaptive jitter buffer and playout, in milliseconds.

The seed's listener counted bytes (start at 2048, rewind to 16384, at most
131072); here everything is time. Packets go in as they arrive (`push`, network
thread); the player takes one frame each time the output device wants audio
(`next_frame`, player thread; the device is the clock).

- measured jitter: each packet's lateness is its arrival time minus the audio
  time the sender had produced when it was sent; the spread (max - min) of
  lateness over the last `window_s` is the jitter the buffer must absorb.
- target: clamp(min_ms, jitter + min_ms, max_ms), the wait we want the
  earliest packet of the window to have had before it plays.
- the measured delay is the longest time a packet waited in the buffer over the
  last `delay_window_s`; the player steers it towards the target:
  * too long (a fast sender clock, or a jitter spike that passed): play a
    silent frame shorter by the excess; if the delay passes target + `force_ms`
    and no pause has come for `force_after_s`, or the fill passes max_ms, drop
    a frame by cross-fading it into the next one. Neither is a discontinuity.
  * too short (the jitter grew): lengthen a silent frame by the shortfall.
  * empty (a late packet): Opus concealment, counted as an underrun; after
    `rebuffer_ms` of concealment, silence until the buffer holds the target.
Never a hard cut: audio is removed only where it is silent or cross-faded.
"""
from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional, Tuple

import numpy as np

log = logging.getLogger(__name__)

# Opus TOC byte (RFC 6716, 3.1): frame duration in 1/10 ms by config number.
_SILK_TENTHS = (100, 200, 400, 600)
_HYBRID_TENTHS = (100, 200)
_CELT_TENTHS = (25, 50, 100, 200)


def opus_packet_ms(packet: bytes) -> Optional[float]:
    """Duration of an Opus packet from its TOC byte; None if it cannot be one."""
    if not packet:
        return None
    toc = packet[0]
    config = toc >> 3
    if config < 12:
        tenths = _SILK_TENTHS[config % 4]
    elif config < 16:
        tenths = _HYBRID_TENTHS[config % 2]
    else:
        tenths = _CELT_TENTHS[config % 4]
    code = toc & 3
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    else:
        if len(packet) < 2:
            return None
        frames = packet[1] & 0x3F
    total = frames * tenths
    if frames == 0 or total > 1200:  # Opus packets hold at most 120 ms
        return None
    return total / 10.0


# The queue never holds more than max_ms + this: a burst after a stall (talk keeps
# at most max_backlog_ms waiting) is trimmed gently by the playout; only a peer
# flooding faster than real time reaches it.
FLOOD_MARGIN_MS = 5000.0


@dataclass
class JitterSettings:
    min_ms: float = 2.0           # the floor of the target (listen --buffer)
    max_ms: float = 680.0         # the most audio ever held (the seed's 131072 bytes at 48 kHz stereo)
    window_s: float = 10.0        # jitter is measured over this long
    delay_window_s: float = 1.0   # the delay is the longest wait over this long
    step_ms: float = 2.0          # delay errors smaller than this are left alone
    force_ms: float = 60.0        # past target + this, drop even in speech (cross-fade) ...
    force_after_s: float = 3.0    # ... once no pause has come for this long
    rebuffer_ms: float = 100.0    # after this much concealment, go quiet and refill
    silence_dbfs: float = -45.0   # frames below this level may be dropped or inserted


@dataclass
class PlayoutCounters:
    frames: int = 0          # frames handed to the device, of any kind
    played: int = 0          # frames decoded from packets
    underruns: int = 0       # times the buffer ran dry while playing
    concealed: int = 0       # concealment frames (underruns, rejected packets, insertions)
    dropped: int = 0         # times audio was removed to bound latency (in silence, or cross-faded)
    dropped_ms: float = 0.0
    crossfaded: int = 0      # of those, whole frames removed inside speech by cross-fading
    inserted: int = 0        # times silence was lengthened to grow the buffer
    inserted_ms: float = 0.0
    rejected: int = 0        # packets the decoder refused (replaced by concealment)
    overflow: int = 0        # times the fill passed max_ms
    skipped: int = 0         # packets skipped before playing started (a connection's first burst)
    underrun_at_s: List[float] = field(default_factory=list)   # since playing first began (first 100)
    buffer_sum_ms: float = 0.0
    wait_sum_ms: float = 0.0     # time packets spent in the buffer, summed
    buffer_max_ms: float = 0.0
    target_ms: float = 0.0
    jitter_ms: float = 0.0

    def mean_wait_ms(self) -> float:
        return round(self.wait_sum_ms / self.played, 1) if self.played else 0.0

    def buffer_summary(self) -> Dict[str, float]:
        mean = self.buffer_sum_ms / self.frames if self.frames else 0.0
        return {"mean": round(mean, 1), "max": round(self.buffer_max_ms, 1)}


@dataclass
class _Packet:
    payload: bytes
    duration_ms: float
    arrival_ms: float


class WindowExtremes:
    """Max and min of the values seen over a sliding time window, O(1) amortised.

    At most `most` entries each (50 packets a second for 10 s need 500): a peer
    that floods packets shortens the window instead of growing it."""

    def __init__(self, window_ms: float, most: int = 4096) -> None:
        self.window_ms = window_ms
        self._max: Deque[Tuple[float, float]] = collections.deque(maxlen=most)
        self._min: Deque[Tuple[float, float]] = collections.deque(maxlen=most)

    def add(self, now_ms: float, value: float) -> None:
        while self._max and self._max[-1][1] <= value:
            self._max.pop()
        self._max.append((now_ms, value))
        while self._min and self._min[-1][1] >= value:
            self._min.pop()
        self._min.append((now_ms, value))
        self.expire(now_ms)

    def expire(self, now_ms: float) -> None:
        horizon = now_ms - self.window_ms
        while self._max and self._max[0][0] < horizon:
            self._max.popleft()
        while self._min and self._min[0][0] < horizon:
            self._min.popleft()

    def clear(self) -> None:
        self._max.clear()
        self._min.clear()

    def empty(self) -> bool:
        return not self._max

    def maximum(self) -> float:
        return self._max[0][1]

    def minimum(self) -> float:
        return self._min[0][1]

    def earliest_minimum(self) -> Tuple[float, float]:
        """(time, value) of the window's minimum."""
        return self._min[0]


class JitterBuffer:
    """Thread-safe queue of packets with arrival times and a jitter estimate."""

    def __init__(self, settings: JitterSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._queue: Deque[_Packet] = collections.deque()
        self._fill_ms = 0.0
        self._sent_ms = 0.0          # the sender's audio time of the next packet, this stream
        self._lateness = WindowExtremes(settings.window_s * 1000.0)
        self._pushed = 0
        self._first: Optional[Tuple[float, float]] = None   # (arrival, lateness) of this stream's start
        self._drift: List[Tuple[float, float]] = []          # (span_ms, ppm) per finished stream
        self._last_lateness: Optional[Tuple[float, float]] = None
        self._stream_start = 0.0
        self.ended = False
        self.flooded = 0             # packets dropped on arrival: the queue held max_ms + FLOOD_MARGIN_MS

    def mark_ended(self) -> None:
        """The peer closed cleanly: running dry after this is the end, not an underrun."""
        with self._lock:
            self.ended = True

    def new_stream(self) -> None:
        """A new connection: its sender time starts again from zero."""
        with self._lock:
            self.ended = False
            self._close_drift()
            self._sent_ms = 0.0
            self._lateness.clear()
            self._pushed = 0

    def push(self, payload: bytes, duration_ms: float, now_ms: float) -> None:
        with self._lock:
            lateness = now_ms - self._sent_ms
            self._sent_ms += duration_ms
            self._lateness.add(now_ms, lateness)
            self._pushed += 1
            # drift: the least-delayed packet near the stream's start against the
            # least-delayed one of the latest window (the queueing noise cancels out)
            if self._first is None:
                self._stream_start = now_ms
                self._first = (now_ms, lateness)
            elif now_ms - self._stream_start < self.settings.window_s * 1000.0 and lateness < self._first[1]:
                self._first = (now_ms, lateness)
            self._last_lateness = self._lateness.earliest_minimum()
            self.ended = False
            self._queue.append(_Packet(payload, duration_ms, now_ms))
            self._fill_ms += duration_ms
            # The playout trims to max_ms one device frame at a time; a peer sending
            # faster than that must not grow the queue without bound: past
            # max_ms + FLOOD_MARGIN_MS the oldest packets go at once (counted).
            while self._fill_ms > self.settings.max_ms + FLOOD_MARGIN_MS and len(self._queue) > 1:
                self._fill_ms -= self._queue.popleft().duration_ms
                self.flooded += 1

    def pop(self) -> Optional[_Packet]:
        with self._lock:
            if not self._queue:
                return None
            packet = self._queue.popleft()
            self._fill_ms -= packet.duration_ms
            return packet

    def peek_arrival(self, index: int = 0) -> Optional[float]:
        with self._lock:
            return self._queue[index].arrival_ms if len(self._queue) > index else None

    def fill_ms(self) -> float:
        with self._lock:
            return max(0.0, self._fill_ms)

    def jitter_ms(self) -> float:
        """Spread of lateness over the window: how far arrivals scatter."""
        with self._lock:
            if self._pushed < 2 or self._lateness.empty():
                return 0.0
            return self._lateness.maximum() - self._lateness.minimum()

    def _close_drift(self) -> None:
        if self._first is not None and self._last_lateness is not None:
            span = self._last_lateness[0] - self._first[0]
            if span > 5000.0:
                # lateness falling over time = the sender produces audio faster than our clock
                ppm = -(self._last_lateness[1] - self._first[1]) / span * 1e6
                self._drift.append((span, ppm))
        self._first = None
        self._last_lateness = None

    def drift_ppm(self) -> Optional[float]:
        """Sender audio clock against ours, weighted over streams; None if too short to tell."""
        with self._lock:
            streams = list(self._drift)
            if self._first is not None and self._last_lateness is not None:
                span = self._last_lateness[0] - self._first[0]
                if span > 5000.0:
                    streams.append((span, -(self._last_lateness[1] - self._first[1]) / span * 1e6))
        total = sum(span for span, _ in streams)
        if total <= 0:
            return None
        return round(sum(span * ppm for span, ppm in streams) / total, 1)


Decode = Callable[[bytes], Optional[np.ndarray]]   # None: the packet was rejected
Conceal = Callable[[int], np.ndarray]               # samples per channel -> PCM


class Playout:
    """Decides, frame by frame, what the device plays next."""

    def __init__(
        self,
        buffer: JitterBuffer,
        decode: Decode,
        conceal: Conceal,
        rate: int,
        channels: int,
        frame_ms: float = 20.0,
    ) -> None:
        self.buffer = buffer
        self.settings = buffer.settings
        self.decode = decode
        self.conceal = conceal
        self.rate = rate
        self.channels = channels
        self.frame_ms = frame_ms
        self.frame_samples = int(rate * frame_ms / 1000)
        self.counters = PlayoutCounters()
        self.playing = False          # False: buffering (silence until the target is held)
        self._dry_ms = 0.0            # concealment played since the buffer ran dry
        self._waits = WindowExtremes(self.settings.delay_window_s * 1000.0)  # wait per popped packet
        self._silence_rms = 32768.0 * 10 ** (self.settings.silence_dbfs / 20.0)
        self._step_ms: Optional[float] = None   # when the delay was last changed on purpose
        self._first_play_ms: Optional[float] = None
        self._last_pause_ms = 0.0     # when a silent frame was last played

    # -- levels -----------------------------------------------------------
    def target_ms(self) -> float:
        s = self.settings
        return min(s.max_ms, max(s.min_ms, self.buffer.jitter_ms() + s.min_ms))

    def delay_ms(self, now_ms: float) -> Optional[float]:
        self._waits.expire(now_ms)
        if self._waits.empty():
            return None
        return self._waits.maximum()

    def silence(self, samples: Optional[int] = None) -> np.ndarray:
        return np.zeros((samples or self.frame_samples) * self.channels, dtype=np.int16)

    def is_silent(self, pcm: np.ndarray) -> bool:
        if pcm.size == 0:
            return True
        rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))
        return rms < self._silence_rms

    # -- one frame --------------------------------------------------------
    def _decoded(self, packet: _Packet, now_ms: float) -> np.ndarray:
        self._waits.add(now_ms, now_ms - packet.arrival_ms)
        self.counters.wait_sum_ms += now_ms - packet.arrival_ms
        pcm = self.decode(packet.payload)
        if pcm is None:
            self.counters.rejected += 1
            self.counters.concealed += 1
            return self.conceal(int(self.rate * packet.duration_ms / 1000))
        self.counters.played += 1
        return pcm

    def next_frame(self, now_ms: float) -> np.ndarray:
        """The PCM to hand the device now (interleaved int16)."""
        c = self.counters
        fill = self.buffer.fill_ms()
        jitter = self.buffer.jitter_ms()
        target = min(self.settings.max_ms, max(self.settings.min_ms, jitter + self.settings.min_ms))
        c.target_ms = target
        c.jitter_ms = jitter
        c.frames += 1
        c.buffer_sum_ms += fill
        c.buffer_max_ms = max(c.buffer_max_ms, fill)

        start_trim_ms = 0.0
        if not self.playing:
            head = self.buffer.peek_arrival()
            if head is None or now_ms - head < target:
                return self.silence()
            # Nothing is heard yet, so surplus from the connection's first burst can go
            # without a cut: start with the newest packet that has waited the target,
            # and skip into it by as much as it waited too long.
            while True:
                second = self.buffer.peek_arrival(1)
                if second is None or now_ms - second < target:
                    break
                skipped = self.buffer.pop()
                if skipped is not None:
                    self.decode(skipped.payload)   # keeps the decoder's state continuous
                    c.skipped += 1
            head = self.buffer.peek_arrival()
            start_trim_ms = now_ms - head - target if head is not None else 0.0
            self.playing = True
            self._step_ms = now_ms
            if self._first_play_ms is None:
                self._first_play_ms = now_ms
            log.info("playing: buffer %.0f ms, target %.0f ms", self.buffer.fill_ms(), target)

        packet = self.buffer.pop()
        if packet is None and self.buffer.ended:
            self.playing = False   # the peer said goodbye; the end is not an underrun
            return self.silence()
        if packet is None:
            if self._dry_ms == 0.0:
                c.underruns += 1
                if self._first_play_ms is not None and len(c.underrun_at_s) < 100:
                    c.underrun_at_s.append(round((now_ms - self._first_play_ms) / 1000.0, 3))
                log.debug("underrun: buffer ran dry (target %.0f ms)", target)
            self._dry_ms += self.frame_ms
            if self._dry_ms > self.settings.rebuffer_ms:
                self.playing = False   # Opus has faded out by now; refill quietly
                return self.silence()
            c.concealed += 1
            return self.conceal(self.frame_samples)
        self._dry_ms = 0.0
        pcm = self._decoded(packet, now_ms)
        if start_trim_ms > 0:
            pcm = pcm[self._samples(min(start_trim_ms, packet.duration_ms - 1.0)):]

        delay = self.delay_ms(now_ms)
        if self._step_ms is None:
            self._step_ms = now_ms
        if now_ms - self._step_ms < self.settings.delay_window_s * 1000.0:
            delay = None   # judge the delay over a whole window since the last step
        silent = self.is_silent(pcm)
        over_max = fill - packet.duration_ms > self.settings.max_ms
        if over_max:
            c.overflow += 1
        excess = (delay - target) if delay is not None else 0.0
        if silent:
            self._last_pause_ms = now_ms
        no_pause = now_ms - self._last_pause_ms > self.settings.force_after_s * 1000.0
        if over_max or (excess > self.settings.force_ms and no_pause):
            # Speech without a pause for too long, or the hard bound: cross-fade this
            # frame into the next one, removing a frame without a discontinuity.
            follower = self.buffer.pop()
            if follower is not None:
                nxt = self._decoded(follower, now_ms)
                c.dropped += 1
                c.dropped_ms += follower.duration_ms
                c.crossfaded += 1
                self._step_ms = now_ms
                pcm = _crossfade(pcm, nxt)
        elif silent and excess > self.settings.step_ms:
            # too much delay: play this silent frame shorter (at most all of it)
            cut = self._samples(min(excess, packet.duration_ms))
            c.dropped += 1
            c.dropped_ms += cut / self.channels / self.rate * 1000.0
            self._step_ms = now_ms
            pcm = pcm[:pcm.size - cut]
        elif silent and delay is not None and -excess > self.settings.step_ms:
            # too little delay for the jitter measured: lengthen this silent frame
            add = self._samples(min(-excess, self.frame_ms))
            c.inserted += 1
            c.inserted_ms += add / self.channels / self.rate * 1000.0
            self._step_ms = now_ms
            pcm = np.concatenate([pcm, _fade_to_zero(pcm, add, self.channels)])
        return pcm

    def _samples(self, ms: float) -> int:
        """Interleaved samples in `ms` of audio (whole sample frames)."""
        return max(0, int(self.rate * ms / 1000.0)) * self.channels


def _fade_to_zero(pcm: np.ndarray, size: int, channels: int) -> np.ndarray:
    """`size` interleaved samples continuing from pcm's last values down to zero (no step)."""
    frames = size // channels
    last = pcm.reshape(-1, channels)[-1].astype(np.float64) if pcm.size else np.zeros(channels)
    ramp = np.linspace(1.0, 0.0, frames)[:, None] * last[None, :]
    return np.rint(ramp).astype(np.int16).reshape(-1)


def _crossfade(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """One frame that starts as `first` and ends as `second` (their overlap-add)."""
    n = min(first.size, second.size)
    if n == 0:
        return second
    ramp = np.linspace(0.0, 1.0, n, dtype=np.float64)
    mixed = first[:n].astype(np.float64) * (1.0 - ramp) + second[:n].astype(np.float64) * ramp
    out = np.clip(np.rint(mixed), -32768, 32767).astype(np.int16)
    if second.size > n:
        out = np.concatenate([out, second[n:]])
    return out
