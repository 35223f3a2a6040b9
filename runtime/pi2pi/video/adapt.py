"""Adaptive quality: the camera sends what the link drains, not a slide show.

A link slower than the stream used to keep latency bounded only by dropping
frames (camera.py's in-flight budget), so the far side saw a few frames a
second. The camera instead steps down a ladder of rungs, each a JPEG quality,
a picture size and a share of the frame rate, and climbs back when the link
recovers. `--no-adapt` (`adapt = no`) keeps the first rung for good.

The ladder, best first (`ladder`): the configured quality lowered in steps of
QUALITY_STEP down to QUALITY_FLOOR (75, 65, 55, 45, 35, 30) at the full size;
then, at the floor quality, the size, each rung about halving the area (linear
scales 0.7, 0.5, 0.35: 640x480 -> 448x336 -> 320x240 -> 224x168, sides rounded
to multiples of 8); then, at the smallest size, the frame rate (3/4, 1/2, 1/3,
1/4 of --fps, by sending only some of the frames: `FrameGate`). Quality goes
first because it costs the viewer nothing in picture size, size next because a
smaller picture still moves, the frame rate last because a slide show is what
this is meant to avoid. A device's own MJPEG is passed through untouched, so
its quality and size cannot change without decoding and encoding every frame
again, the CPU that passing it through saves: there only the frame rate adapts
(`ladder(passthrough=True)`). Choose `--format YUYV` (or another raw format) to
have quality and size adapt on such a camera.

The policy (`Adapter.step`, once per frame, without sockets or clocks of its own):

- Inputs (`Measurements`), what the sender measures anyway: the link's rate
  (`LinkRate`: how spread out each frame's acknowledgements come back, a max
  filter over the last 2 s unless a frame that drained slowly for a round trip
  says the link slowed; from the same looks at the socket as the in-flight
  budget's DrainRate, and tcp_info), the frames and bytes sent at the current
  rung since the last step, how long the sender waited on the in-flight budget
  and how many frames were replaced in the slot meanwhile (the link held it
  back).
- A rung's bitrate is its bytes per frame times its frame rate. Bytes per frame
  are learned per rung (a moving average of the frames sent at it). A rung not
  used yet is estimated with a JPEG model, bytes ~ quality^0.35 x side, which
  is how the test pattern shrinks: between two learned rungs the model is
  calibrated by them (log-linear), beyond them scaled from the nearest.
  Camera-like content shrinks faster (quality 30 has 0.39 of quality 75's
  bytes, not 0.72; half the side 0.31 of the bytes, not 0.5), so the first move
  down from the full stream errs low: it lands a rung too low at worst, which
  costs a second of sharpness, not a rung too high, which costs latency.
- The target is TARGET_SHARE (85%) of the drain: room for the content's own
  swings and the headers TCP adds.
- Down: when the current rung's bitrate is above the drain (the link cannot
  carry it), or above DOWN_SHARE (95%) of it while the link held the sender
  back, go at once to the highest lower rung that fits the target (the lowest
  if none does): a link that lost two thirds of its rate is followed in one
  move, not eight, so only the frame or two already under way see the old
  latency.
- Up: when a higher rung has fitted the target continuously for the up hold
  (UP_HOLD_S, 1 s), go to the highest that fits. Between 85% and 95% nothing
  moves (hysteresis in level); the up hold adds it in time.
- A move up followed within PROBE_FAIL_S by a move down was a failed probe:
  the up hold doubles (to at most UP_HOLD_MAX_S), and returns to UP_HOLD_S
  after CALM_S without a move, so a link at a rung's edge does not flap.
- Without a drain measurement nothing moves: the gauge reads nothing until its
  first WARM_SAMPLES frames have been sampled (see LinkRate).

What the gauge cannot see: a token bucket deeper than a frame lets whole
frames through at once, so a link shaped that way looks fast until the camera
climbs and loads it; then the drain reads true, the camera moves back down,
and the failed-probe rule spaces such climbs out (1, 2, 4 .. 16 s). A frame
that leaves less than a segment to measure (320x240's smallest rungs, 112x80:
about one segment a frame) cannot show a slow link: its time is mostly a
held-up acknowledgement's (see LinkRate). Its sample is taken only when it
reads twice the gauge or more, which is how a link that recovers is seen from
there (`make bench-adapt`: without it the camera stayed at 224x168 quality 30
after the link came back, in 3 runs of 3). On a link too slow for them such
frames queue behind each other, and are measured together. It reads the link,
not TCP's congestion window: on a long, lossy path TCP may carry less than the
link (about 1 Mbit/s at 160 ms and 1 % loss), and frames then wait on the
in-flight budget (camera.py), which lets about two frames be unacknowledged
whatever the round trip: on such a path the frame rate is the budget's, with
or without adapting. The benchmark's links are tbf with a one-packet bucket,
and a forwarder that delays and drops packets as netem would
(tests/bench/adapt.py).
"""
from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np

from pi2pi.net import TcpInfo

log = logging.getLogger(__name__)

QUALITY_STEP = 10
QUALITY_FLOOR = 30
SIZE_SCALES = (0.7, 0.5, 0.35)              # linear: each about halves the area of the one before
RATE_SHARES = (3 / 4, 1 / 2, 1 / 3, 1 / 4)  # of --fps, last resort
TARGET_SHARE = 0.85     # of the drain: where a move lands
DOWN_SHARE = 0.95       # of the drain: above it, and held back, the rung is too much
UP_HOLD_S = 1.0         # a higher rung must fit this long before the camera climbs
UP_HOLD_MAX_S = 16.0    # the longest the up hold grows after failed probes
PROBE_FAIL_S = 3.0      # a move down this soon after a move up: the up was too much
CALM_S = 30.0           # this long without a move: the up hold is back to UP_HOLD_S
HELD_BACK_S = 0.001     # waiting on the budget longer than this is the link holding us back
LEARN_WEIGHT = 0.25     # of the newest frame in a rung's bytes-per-frame average
SIZE_ROUNDING = 8       # picture sides are multiples of this (4:2:0 chroma, pad-4 rows)
WARM_SAMPLES = 8        # frames the link gauge samples before its first reading (LinkRate)


@dataclass(frozen=True)
class Rung:
    quality: int
    scale: float = 1.0   # linear, of the source's width and height
    rate: float = 1.0    # share of --fps sent

    def size(self, width: int, height: int) -> Tuple[int, int]:
        return scaled_size(width, height, self.scale)

    def describe(self, width: int, height: int, fps: float, passthrough: bool = False) -> str:
        w, h = self.size(width, height)
        quality = "device quality" if passthrough else f"quality {self.quality}"
        return f"{quality}, {w}x{h}, {fps * self.rate:g} fps"


def scaled_size(width: int, height: int, scale: float) -> Tuple[int, int]:
    if scale >= 1:
        return width, height

    def side(n: int) -> int:
        return max(16, int(round(n * scale / SIZE_ROUNDING)) * SIZE_ROUNDING)

    return side(width), side(height)


def ladder(quality: int, width: int, height: int, passthrough: bool = False) -> List[Rung]:
    """The rungs, best first: quality, then size, then frame rate (frame rate only for passthrough)."""
    if passthrough:
        return [Rung(quality)] + [Rung(quality, 1.0, r) for r in RATE_SHARES]
    floor = min(quality, QUALITY_FLOOR)
    qualities = [quality]
    while qualities[-1] > floor:
        qualities.append(max(floor, qualities[-1] - QUALITY_STEP))
    rungs = [Rung(q) for q in qualities]
    sizes = [(width, height)]
    for scale in SIZE_SCALES:
        size = scaled_size(width, height, scale)
        if size[0] < sizes[-1][0] and size[1] < sizes[-1][1]:   # a tiny source has fewer sizes
            sizes.append(size)
            rungs.append(Rung(floor, scale))
    smallest = rungs[-1].scale
    rungs += [Rung(floor, smallest, r) for r in RATE_SHARES]
    return rungs


def relative_bytes(rung: Rung) -> float:
    """The JPEG model: bytes per frame, up to a factor, at this quality and size (see the module docstring)."""
    return float((max(1, rung.quality) / 100) ** 0.35 * rung.scale)


@dataclass
class Measurements:
    """What the sender measured since the last step."""

    now: float                  # time.monotonic()
    drain_bps: Optional[float]  # bytes per second the link drains (None: not measured yet)
    frames: int = 0             # sent at the current rung
    bytes: int = 0              # ... and their JPEG bytes
    waited_s: float = 0.0       # on the in-flight budget
    busy_drops: int = 0         # frames replaced in the slot while the sender waited on the link


@dataclass
class Decision:
    rung: Rung
    index: int
    changed: bool = False
    up: bool = False
    reason: str = ""


@dataclass
class AdaptState:
    index: int = 0                                          # the current rung
    learned: Dict[int, float] = field(default_factory=dict)  # rung -> bytes per frame
    fits_since: Optional[float] = None                      # a higher rung fits since
    up_hold_s: float = UP_HOLD_S
    last_up_at: Optional[float] = None
    last_move_at: Optional[float] = None
    ups: int = 0
    downs: int = 0

    @property
    def adaptations(self) -> int:
        return self.ups + self.downs


class Adapter:
    """The policy (see the module's docstring): one `step` per frame, the rung to encode at."""

    def __init__(self, rungs: Sequence[Rung], fps: float, enabled: bool = True) -> None:
        self.rungs = list(rungs)
        self.fps = fps
        self.enabled = enabled and fps > 0 and len(self.rungs) > 1
        self.state = AdaptState()

    @property
    def rung(self) -> Rung:
        return self.rungs[self.state.index]

    def frame_bytes(self, index: int) -> Optional[float]:
        """Learned bytes per frame at a rung; else the model, calibrated by the learned rungs
        either side (log-linear between them), or scaled from the nearest learned one."""
        learned = self.state.learned
        if index in learned:
            return learned[index]
        better = [j for j in learned if j < index]
        worse = [j for j in learned if j > index]
        if not better and not worse:
            return None

        def model(j: int) -> float:
            return math.log(relative_bytes(self.rungs[j]))

        if better and worse:
            a, b = max(better), min(worse)
            span = model(a) - model(b)
            share = (model(index) - model(b)) / span if span > 0 else 0.0
            return math.exp(math.log(learned[b]) + share * (math.log(learned[a]) - math.log(learned[b])))
        ref = max(better) if better else min(worse)
        return learned[ref] * math.exp(model(index) - model(ref))

    def bitrate(self, index: int) -> Optional[float]:
        """Bytes per second the rung sends."""
        per_frame = self.frame_bytes(index)
        return None if per_frame is None else per_frame * self.fps * self.rungs[index].rate

    def step(self, m: Measurements) -> Decision:
        s = self.state
        if m.frames > 0:
            mean = m.bytes / m.frames
            old = s.learned.get(s.index)
            s.learned[s.index] = mean if old is None else old + LEARN_WEIGHT * (mean - old)
        if not self.enabled or m.drain_bps is None or s.index not in s.learned:
            return self._stay()
        if s.up_hold_s > UP_HOLD_S and s.last_move_at is not None and m.now - s.last_move_at >= CALM_S:
            s.up_hold_s = UP_HOLD_S
        drain = m.drain_bps
        offered = self.bitrate(s.index) or 0.0
        target = TARGET_SHARE * drain
        held_back = m.waited_s > HELD_BACK_S or m.busy_drops > 0
        if offered > drain or (offered > DOWN_SHARE * drain and held_back):
            s.fits_since = None
            if s.index == len(self.rungs) - 1:
                return self._stay()
            lower = range(s.index + 1, len(self.rungs))
            to = next((i for i in lower if (self.bitrate(i) or 0.0) <= target), len(self.rungs) - 1)
            return self._move(to, m.now, f"the link drains {kbit(drain)}, this rung needs {kbit(offered)}")
        best = next((i for i in range(s.index) if (self.bitrate(i) or float("inf")) <= target), None)
        if best is None:
            s.fits_since = None
            return self._stay()
        if s.fits_since is None:
            s.fits_since = m.now
        if m.now - s.fits_since < s.up_hold_s:
            return self._stay()
        return self._move(best, m.now, f"the link drains {kbit(drain)}, that rung needs "
                                       f"{kbit(self.bitrate(best) or 0.0)}")

    def _stay(self) -> Decision:
        return Decision(self.rung, self.state.index)

    def _move(self, to: int, now: float, why: str) -> Decision:
        s = self.state
        if to > s.index:
            s.downs += 1
            if s.last_up_at is not None and now - s.last_up_at <= PROBE_FAIL_S:
                s.up_hold_s = min(UP_HOLD_MAX_S, 2 * s.up_hold_s)   # the last climb was too much
        else:
            s.ups += 1
            s.last_up_at = now
        up = to < s.index
        s.index = to
        s.last_move_at = now
        s.fits_since = None
        return Decision(self.rung, to, changed=True, up=up, reason=why)


def kbit(bytes_per_s: float) -> str:
    return f"{bytes_per_s * 8 / 1000:.0f} kbit/s"


@dataclass
class SentFrame:
    start: int                                   # the frame's first byte in the stream
    end: int                                     # one past its last
    sent_at: float                               # when it was handed over
    first: Optional[Tuple[float, int]] = None    # (time, bytes acknowledged) of the first look with an ack inside it
    last_advance: float = 0.0                    # the last look at which its acknowledgements moved on ...
    seen: int = 0                                # ... to this many bytes
    retransmits: Optional[int] = None            # the connection's count at the hand-over (then as measured)
    repairing: bool = False                      # a loss is being repaired: measure from the next ack


class LinkRate:
    """How fast the link carries the stream, in bytes per second: what the adapter holds bitrates against.

    Fed with the sender's looks at its socket (bytes acknowledged so far, and
    tcp_info's min_rtt and retransmission count) and told where each frame lies
    in the stream when it is handed over.

    Measured per frame, from how its acknowledgements are spread out (its
    dispersion), not from how many bytes a stretch of time carried: a frame's
    segments leave back to back, so the acknowledgements come back spaced by the
    narrowest link on the way, whatever the round trip. Bytes per second over a
    stretch of time (the gauge before this one) read the sender itself on a long
    path: the in-flight budget lets only about two frames be unacknowledged, so
    a 160 ms round trip carries two frames per 160 ms however fast the link, and
    each move down made the next reading lower (smaller frames, a smaller
    budget): the lab's lossy call fell to the bottom of the ladder in 2 s that way.

    - A frame's sample: the bytes acknowledged from the first look that saw
      an acknowledgement inside it to the look that saw it all acknowledged,
      over the time between the two (what came before that first
      acknowledgement took a round trip, and whatever a token bucket let
      through at once, and says nothing about the rate). The bytes count to
      that last acknowledgement, with the next frame's it covers too, as its
      time includes them: on a loaded link the receiver acknowledges every
      second segment, so a frame's end mostly comes acknowledged with the next
      frame's start (the long path limited to 248 kbit/s, 239 of it payload:
      its 320x240 frames read 182-243 kbit/s, median 210, counted to their own
      end; 234-243 counted to the acknowledgement). At most ACK_SEGMENTS of
      the next frame's: more came with a late acknowledgement (a hole filled
      after reordering), and may have arrived before the first one. A frame
      acknowledged whole between two looks: its bytes but one segment over its
      time since the hand-over less the path's round trip (tcp_info's
      min_rtt), at least FLOOR_S.
    - Less than SAMPLE_SEGMENTS segments of its own to measure gives no
      sample unless it reads ROOM (2) times the gauge's reading (room shows,
      so the camera climbs back from the smallest rungs when the link returns;
      a slow link does not, as the next lines say why): a frame of under two
      segments acknowledged whole, or the tail of one whose first
      acknowledgement came late in it. Its time is that of its last segment, a
      few bytes on the wire, plus whatever held up an acknowledgement: on the
      long path (tests/video/test_long_path.py) limited to 248 kbit/s, 112x80
      frames of 1450-1495 bytes were acknowledged whole 15-30 ms after min_rtt
      (frames of one segment: 2.3 ms, median), so their 2-47 bytes read 1-24
      kbit/s, under a tenth of the link; once they filled the filter the
      camera went down to 3.75 fps for good. Frames leaving two to five
      segments to measure read 178-248 kbit/s there (counted to their end).
      But a frame too small that the next one was queued behind (handed over
      at least min_rtt before the acknowledgement that completed this one:
      over an idle link its first byte would have arrived before this one's
      last did) passes its start on: the next is measured from there, the two
      together, and so on. On a link slower than such a rung the frames queue,
      and the camera sees it is too much. An acknowledgement held back a frame
      interval or more would pass for a queue (the long path's were held 15-30
      ms, a 15 fps interval is 67 ms: no small frame of its 104 at 112x80 was
      measured with the next).
    - A frame during which TCP retransmitted gives no sample: its last bytes
      waited for a loss to be repaired (a round trip or a timeout), which says
      nothing about the link's rate. "During" starts at the hand-over: a frame
      handed over while an earlier one's loss was being repaired waits for that
      repair too (the lab's lossy call: samples of 10-280 kbit/s for 2 s on a link
      that carries several Mbit/s, and the camera went to the bottom rung). Such
      a frame is measured from its next acknowledgement after the first, if any.
    - The reading is the highest sample of the last WINDOW_S (at least the last
      KEEP samples): a max filter, as BBR's. On a path with jitter, or whose
      acknowledgements get lost, some frames' acknowledgements spread out and
      read low (the lab's link: a tenth of the frames under 160 kbit/s, half
      over 1.3 Mbit/s); only a link that is slow makes them all read low.
    - Sustained evidence outranks the filter: a frame whose acknowledgements
      kept coming for at least max(LONG_S, the path's round trip) and carried
      at least LOADED_SEGMENTS segments (a late or lost acknowledgement holds
      back one or two segments' worth, not a train) is a loaded link read
      directly. Its reading, as soon as it is one (the frame need not have
      finished: the first to show a link that slowed down), removes the faster
      samples before it. Time counts up to the last acknowledgement only, so a
      pause in them adds none.
    - None until `warm_samples` frames (WARM_SAMPLES) have given a sample: on a jittery path one
      small frame can read a tenth of the link (the lab's lossy call: its first
      sample, 0.24 s into the call, read 459 kbit/s on a link that carries
      several Mbit/s, and the camera went from 320x240 to 224x168). A slow link
      still shows within those frames (at a third of the stream's rate, about
      1.6 s at 15 fps), and the in-flight budget bounds the latency meanwhile.

    camera.DrainRate, which sizes the in-flight budget, smooths 5 ms samples
    instead: quick, but on a slow link whose packets leave tens of ms apart it
    swings between 0 and several times the rate.
    """

    FLOOR_S = 0.001
    LONG_S = 0.06
    WINDOW_S = 2.0
    KEEP = 8            # samples kept however old: a stream of few frames keeps its evidence
    LOADED_SEGMENTS = 4
    SAMPLE_SEGMENTS = 1  # a frame's sample measures at least this many segments' bytes
    ACK_SEGMENTS = 2     # a frame's sample counts at most this many beyond its end (what a delayed ACK covers)
    ROOM = 2.0           # a frame too small to measure counts only when it reads this many times the gauge

    def __init__(self, segment: int = 1448, warm_samples: int = WARM_SAMPLES) -> None:
        self.segment = segment                               # the connection's TCP segment (MSS)
        self.warm_samples = warm_samples                     # samples taken before the first reading
        self.frames: Deque[SentFrame] = deque()              # sent, not yet all acknowledged, oldest first
        self.samples: Deque[Tuple[float, float]] = deque()   # (when, bytes per second) of finished frames
        self.draining: Optional[float] = None                # the oldest frame's reading so far, once loaded
        self.min_rtt_s = 0.0
        self.retransmits: Optional[int] = None
        self.taken = 0                                       # samples taken so far

    def sending(self, now: float, start: int, end: int) -> None:
        """A frame occupying stream bytes [start, end) is about to be handed over."""
        if end > start:
            self.frames.append(SentFrame(start, end, now, retransmits=self.retransmits))

    def look(self, now: float, acked: int, unacked: int, info: Optional[TcpInfo] = None) -> None:
        """A look at the socket: bytes acknowledged so far (and unacknowledged), tcp_info if read."""
        if info is not None:
            self.min_rtt_s = info.min_rtt_s or self.min_rtt_s
            self.retransmits = info.retransmits
        while self.frames:
            frame = self.frames[0]
            if frame.first is None:
                if acked <= frame.start:
                    return
                frame.first, frame.last_advance, frame.seen = (now, acked), now, acked
                if frame.retransmits is not None and frame.retransmits != self.retransmits:
                    # TCP repaired a loss between the hand-over and this first acknowledgement
                    # (an earlier frame's, often by a timeout): this frame waited on the repair.
                    frame.retransmits, frame.repairing = self.retransmits, True
                if acked < frame.end:
                    return
                # Acknowledged whole at once: its bytes but the first segment (a token bucket's) took
                # at most its time since the hand-over less the path's round trip.
                own = frame.end - frame.start - self.segment
                if not self._finished(now, own, own, now - frame.sent_at - self.min_rtt_s, frame, loaded=False):
                    self._carry(now, frame)
                continue
            if acked < frame.end:
                self._drain(now, acked, frame)
                return
            # Its bytes up to the acknowledgement that covered its end: on a loaded link that one
            # often covers the next frame's first bytes too (delayed ACKs), which took its time.
            # At most ACK_SEGMENTS beyond its end: more came with a late acknowledgement (a hole
            # filled after reordering), and may have arrived before the first one: they would read fast.
            since, acked_then = frame.first
            seconds = now - since
            counted = min(acked, frame.end + self.ACK_SEGMENTS * self.segment) - acked_then
            if not self._finished(now, counted, frame.end - acked_then, seconds, frame,
                                  loaded=self.loaded(seconds, counted)):
                self._carry(now, frame)

    def loaded(self, seconds: float, nbytes: float) -> bool:
        """Whether one frame's acknowledgements came steadily enough for its reading to outrank the
        rest: for a round trip or more, and LOADED_SEGMENTS or more (a lost or late acknowledgement
        delays one or two segments' worth, not a train of them)."""
        return seconds >= max(self.LONG_S, self.min_rtt_s) and nbytes >= self.LOADED_SEGMENTS * self.segment

    def _drain(self, now: float, acked: int, frame: SentFrame) -> None:
        """The oldest frame is part acknowledged: its reading so far, once loaded. Time counts up to
        its last advance only, so a pause (a loss being repaired) adds none."""
        assert frame.first is not None
        if frame.retransmits != self.retransmits:
            # TCP is repairing a loss: measure afresh from the first acknowledgement after this
            # (the repair takes a round trip or a timeout more, which is not the link's pace).
            frame.retransmits, frame.repairing = self.retransmits, True
            self.draining = None
            return
        if acked > frame.seen:
            frame.seen, frame.last_advance = acked, now
            if frame.repairing:
                frame.first, frame.repairing = (now, acked), False
        since, acked_then = frame.first
        span = frame.last_advance - since
        if self.loaded(span, acked - acked_then):
            self.draining = (acked - acked_then) / span
            self._outrank(self.draining)

    def _finished(self, now: float, nbytes: float, own: float, seconds: float, frame: SentFrame,
                  loaded: bool) -> bool:
        """A frame is all acknowledged: nbytes in `seconds` is its sample, `own` of them its own.
        False if it was too small to measure (and not waiting on a repair)."""
        self.frames.popleft()
        self.draining = None
        if frame.repairing or (frame.retransmits is not None and frame.retransmits != self.retransmits):
            return True   # TCP repaired a loss meanwhile: the wait was the repair, not the link
        rate = nbytes / max(seconds, self.FLOOR_S)
        if own < self.SAMPLE_SEGMENTS * self.segment:
            # Too little to measure a slow link by (its time is a held-up acknowledgement's), but
            # one that reads ROOM times the gauge shows room: the way back up from the smallest
            # rungs (a link that came back reads many times the old reading; a queued one, a few
            # per cent over it by chance).
            reading = self.bps(now)
            if reading is None or rate < self.ROOM * reading:
                return False
        if loaded:
            self._outrank(rate)
        self.samples.append((now, rate))
        self.taken += 1
        return True

    def _carry(self, now: float, frame: SentFrame) -> None:
        """A frame too small to measure: if the next one was queued behind it (handed over at least
        a round trip before this acknowledgement, so over an idle link its first byte would have
        arrived before this frame's last did), the next is measured from where this one was."""
        if not self.frames or self.min_rtt_s <= 0 or frame.first is None:
            return
        nxt = self.frames[0]
        if nxt.first is None and nxt.sent_at <= now - self.min_rtt_s:
            nxt.first, nxt.last_advance, nxt.seen = frame.first, now, frame.seen

    def _outrank(self, rate: float) -> None:
        """A loaded reading: the faster samples before it are from a link that has since slowed."""
        if any(r > rate for _, r in self.samples):
            self.samples = deque((t, r) for t, r in self.samples if r <= rate)

    def bps(self, now: float) -> Optional[float]:
        if self.taken < self.warm_samples:
            return None
        while len(self.samples) > self.KEEP and now - self.samples[0][0] > self.WINDOW_S:
            self.samples.popleft()
        rates = [r for _, r in self.samples] + ([self.draining] if self.draining is not None else [])
        return max(rates) if rates else None


class FrameGate:
    """Which frames a rung with a share of the frame rate sends: evenly spread, by capture time.

    A frame goes when it was captured no earlier than half a source interval
    before the next one is due; each frame sent moves the due time on by one
    period of the reduced rate (so 3/4 sends three frames of four on average).
    """

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.due: Optional[float] = None

    def admit(self, stamp_s: float, rate: float) -> bool:
        if rate >= 1 or self.fps <= 0:
            self.due = None
            return True
        period = 1.0 / (self.fps * rate)
        slack = 0.5 / self.fps
        if self.due is not None and stamp_s < self.due - slack:
            return False
        behind = self.due is None or stamp_s - self.due > period   # first frame, or a long gap: start afresh
        self.due = stamp_s + period if behind else self.due + period
        return True


class Downscaler:
    """A smaller copy of a pad-4 planar YUV frame (I420 or 4:2:2), by nearest neighbour.

    TurboJPEG scales only when it decodes, so the camera scales before encoding:
    each output pixel takes the source pixel under its centre (numpy `take` with
    row and column indices worked out once per size). 640x480 to 448x336 costs
    about 0.3 ms here, less than the encode it saves; a 2x2 average looked
    better at 320x240 but cost 3 ms. The output buffer is reused: the sender
    encodes it before it scales the next frame.
    """

    def __init__(self, width: int, height: int, subsample_420: bool, out_w: int, out_h: int) -> None:
        self.size = (out_w, out_h)
        ch_in = (height + 1) // 2 if subsample_420 else height
        ch_out = out_h // 2 if subsample_420 else out_h
        self.planes_in = [(height, pad4(width), width), (ch_in, pad4((width + 1) // 2), (width + 1) // 2)]
        self.planes_out = [(out_h, out_w), (ch_out, out_w // 2)]
        self.index = [(centres(rows_in, rows_out), centres(cols_in, cols_out))
                      for (rows_in, _, cols_in), (rows_out, cols_out) in zip(self.planes_in, self.planes_out)]
        self.out = np.empty(out_w * out_h + 2 * ch_out * (out_w // 2), dtype=np.uint8)

    def scale(self, yuv: np.ndarray) -> np.ndarray:
        src_at = dst_at = 0
        for plane in (0, 1, 1):   # Y, U, V
            rows, stride, _ = self.planes_in[plane]
            out_rows, out_cols = self.planes_out[plane]
            src = yuv[src_at:src_at + rows * stride].reshape(rows, stride)
            dst = self.out[dst_at:dst_at + out_rows * out_cols].reshape(out_rows, out_cols)
            row_index, col_index = self.index[plane]
            np.take(src.take(row_index, axis=0), col_index, axis=1, out=dst)
            src_at += rows * stride
            dst_at += out_rows * out_cols
        return self.out


def pad4(n: int) -> int:
    return (n + 3) & ~3


def centres(n_in: int, n_out: int) -> np.ndarray:
    """For each of n_out output pixels, the input pixel under its centre."""
    return ((2 * np.arange(n_out) + 1) * n_in // (2 * n_out)).astype(np.intp)
