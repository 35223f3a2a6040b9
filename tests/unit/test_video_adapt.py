"""The camera's adaptive quality (video/adapt.py), without sockets: the ladder, the policy's
moves against a simulated link, the link gauge, the frame-rate gate and the scaler."""
from __future__ import annotations

from typing import Callable, List, Tuple

import numpy as np
import pytest
import turbojpeg

from pi2pi.net import TcpInfo
from pi2pi.video import adapt
from pi2pi.video.adapt import Adapter, LinkRate, Measurements, Rung, SentFrame

FPS = 15.0


def camera_like(rung: Rung) -> float:
    """Bytes per frame of camera-like content (the benchmark clip's shape, not the policy's model)."""
    return 27_700 * (rung.quality / 75) ** 1.0 * rung.scale ** 1.7


def simulate(adapter: Adapter, drain: Callable[[float], float], seconds: float, start: float = 0.0,
             content: Callable[[Rung], float] = camera_like) -> List[Tuple[float, int]]:
    """One step per frame interval: the frame sent at the rung in force, the link holding the sender
    back while the rung's bitrate is above the drain. The moves made, as (time, rung index)."""
    moves = []
    t = start
    while t < start + seconds:
        rung = adapter.rung
        offered = content(rung) * FPS * rung.rate
        link = drain(t)
        decision = adapter.step(Measurements(now=t, drain_bps=link, frames=1, bytes=int(content(rung)),
                                             waited_s=0.02 if offered > link else 0.0))
        if decision.changed:
            moves.append((round(t, 3), decision.index))
        t += 1 / FPS
    return moves


def full_stream_bps() -> float:
    return camera_like(Rung(75)) * FPS


def test_the_ladder_lowers_quality_then_size_then_frame_rate() -> None:
    rungs = adapt.ladder(75, 640, 480)
    assert [(r.quality, r.size(640, 480), r.rate) for r in rungs] == [
        (75, (640, 480), 1), (65, (640, 480), 1), (55, (640, 480), 1), (45, (640, 480), 1),
        (35, (640, 480), 1), (30, (640, 480), 1),
        (30, (448, 336), 1), (30, (320, 240), 1), (30, (224, 168), 1),
        (30, (224, 168), 3 / 4), (30, (224, 168), 1 / 2), (30, (224, 168), 1 / 3), (30, (224, 168), 1 / 4)]
    # A quality at or under the floor has no quality rungs; a passed-through MJPEG only frame rates.
    assert [r.quality for r in adapt.ladder(25, 640, 480)] == [25] * 8
    assert [(r.quality, r.scale, r.rate) for r in adapt.ladder(75, 640, 480, passthrough=True)] == [
        (75, 1.0, 1), (75, 1.0, 3 / 4), (75, 1.0, 1 / 2), (75, 1.0, 1 / 3), (75, 1.0, 1 / 4)]
    assert adapt.scaled_size(1280, 720, 0.35) == (448, 248)


def test_a_link_slowly_getting_worse_is_followed_down_the_ladder_in_order() -> None:
    rungs = adapt.ladder(75, 640, 480)
    adapter = Adapter(rungs, FPS)
    full = full_stream_bps()
    # From twice the stream down to a twentieth of it over a minute.
    moves = simulate(adapter, lambda t: full * 2 * (0.025 ** (t / 60)), 60)
    downs = [rungs[i] for k, (_, i) in enumerate(moves) if k == 0 or i > moves[k - 1][1]]
    kinds = ["rate" if r.rate < 1 else "size" if r.scale < 1 else "quality" for r in downs]
    assert kinds == sorted(kinds, key=["quality", "size", "rate"].index), moves   # quality, then size, then rate
    assert downs[-1].rate < 1 and len(downs) >= 6, moves
    # A move up only corrects a first estimate (from the model) that landed one rung too low.
    for (t, i), (t_next, i_next) in zip(moves, moves[1:]):
        if i_next < i:
            assert i - i_next == 1 and t_next - t <= adapt.UP_HOLD_S + 0.2, moves
    # Every rung it settled on fitted the link once the move was made.
    for (t, i), nxt in zip(moves, moves[1:] + [(60.0, None)]):
        settle = t + 0.5
        if settle < nxt[0]:
            assert camera_like(rungs[i]) * FPS * rungs[i].rate <= full * 2 * (0.025 ** (settle / 60)), (t, i)


def test_a_link_that_loses_two_thirds_is_followed_in_one_move_and_recovered_from() -> None:
    rungs = adapt.ladder(75, 640, 480)
    adapter = Adapter(rungs, FPS)
    full = full_stream_bps() * 1.3      # the link carries the stream with 30% to spare
    limited = full / 3

    def link(t: float) -> float:
        return limited if 5 <= t < 25 else full

    assert simulate(adapter, link, 5) == []                  # a link that carries the stream: no move
    moves = simulate(adapter, link, 20, start=5)
    assert moves[0][0] == 5.0 and moves[0][1] > 0            # the first frame on the slow link moves
    fits = adapter.bitrate(adapter.state.index)
    assert fits is not None and fits <= limited * adapt.TARGET_SHARE * 1.05
    assert len(moves) <= 3, moves                            # down in one move, then at most a climb or two
    assert all(t < 8 for t, _ in moves), moves               # and then it stays put for the rest of the 20 s
    back = simulate(adapter, link, 6, start=25)
    assert back and back[-1][1] == 0, back                   # back at the full stream once the link is back ...
    assert adapt.UP_HOLD_S <= back[-1][0] - 25 <= 2.5, back  # ... after the up hold, not before


def test_hysteresis_between_the_target_and_the_drain_and_in_time() -> None:
    rungs = adapt.ladder(75, 640, 480)
    adapter = Adapter(rungs, FPS)
    adapter.state.index = 7                                  # 320x240 at quality 30
    here = camera_like(rungs[7]) * FPS
    up = camera_like(rungs[6]) * FPS                         # 448x336 needs this
    # A link swinging +-5% around the point where this rung uses 90% of it: nothing moves.
    wobble = here / 0.9
    assert simulate(adapter, lambda t: wobble * (1.05 if int(t * 7) % 2 else 0.95), 30) == []
    # Enough for the rung above, but only in bursts shorter than the up hold: nothing moves.
    enough = up / adapt.TARGET_SHARE * 1.01
    assert simulate(adapter, lambda t: enough if (t % 1.5) < 0.8 else wobble, 30, start=30) == []
    # Between the target (85%) and the drain the rung stays unless the link holds the sender back.
    adapter.state.index = 7
    drain = here / 0.97
    assert adapter.step(Measurements(now=100, drain_bps=drain, frames=1, bytes=int(camera_like(rungs[7])))).changed \
        is False
    assert adapter.step(Measurements(now=100.1, drain_bps=drain, frames=1, bytes=int(camera_like(rungs[7])),
                                     waited_s=0.02)).changed is True


def test_a_failed_climb_makes_the_next_one_wait_longer() -> None:
    rungs = adapt.ladder(75, 640, 480)
    adapter = Adapter(rungs, FPS)
    here = camera_like(rungs[7]) * FPS
    adapter.state.index = 7
    simulate(adapter, lambda t: here / 0.8, 2)               # learn this rung's bytes
    # The link seems able to take the rung above (for longer than the up hold) but is not.
    adapter.state.learned[6] = camera_like(rungs[6]) * 0.5   # an estimate that is too low
    moves = simulate(adapter, lambda t: here / 0.8, 3, start=10)
    assert [i for _, i in moves][:2] == [6, 7], moves        # up, and straight back down
    assert adapter.state.up_hold_s == 2 * adapt.UP_HOLD_S
    assert adapter.state.ups == 1 and adapter.state.downs == 1 and adapter.state.adaptations == 2
    # After CALM_S without a move, the up hold is back to its first value.
    simulate(adapter, lambda t: here / 0.8, adapt.CALM_S + 1, start=20)
    assert adapter.state.up_hold_s == adapt.UP_HOLD_S


def test_off_when_disabled_without_a_frame_rate_or_without_a_measurement() -> None:
    rungs = adapt.ladder(75, 640, 480)
    for adapter in (Adapter(rungs, FPS, enabled=False), Adapter(rungs, 0.0)):
        assert adapter.enabled is False
        assert simulate(adapter, lambda t: 1000.0, 5) == [] and adapter.rung == rungs[0]
    adapter = Adapter(rungs, FPS)
    for k in range(50):   # nothing measured yet: nothing to follow
        assert not adapter.step(Measurements(now=k / FPS, drain_bps=None, frames=1, bytes=30_000)).changed


def test_model_estimates_between_learned_rungs_are_calibrated_by_them() -> None:
    rungs = adapt.ladder(75, 640, 480)
    adapter = Adapter(rungs, FPS)
    assert adapter.frame_bytes(3) is None
    adapter.state.learned = {0: 27_700.0}
    first_guess = adapter.frame_bytes(8)
    assert first_guess is not None and first_guess > camera_like(rungs[8])   # the first move errs low
    adapter.state.learned[8] = camera_like(rungs[8])
    assert adapter.frame_bytes(9) == pytest.approx(camera_like(rungs[8]))      # same picture, fewer frames
    assert camera_like(rungs[8]) < adapter.frame_bytes(6) < 27_700           # between the two it learned


def frame_at(link_bps: float, segments: int, segment: int = 1448, bucket_segments: int = 1,
             rtt: float = 0.0, look_every: float = 0.002) -> LinkRate:
    """A LinkRate fed like the sender feeds it: a frame handed over at 0, acknowledged
    segment by segment at the link's rate after a token bucket let the first ones through."""
    gauge = LinkRate(segment, warm_samples=1)   # one frame's reading
    gauge.sending(0.0, 0, segments * segment)
    acked_at = [rtt + max(0, k + 1 - bucket_segments) * segment / link_bps for k in range(segments)]
    t = 0.0
    while True:
        acked = sum(1 for a in acked_at if a <= t) * segment
        gauge.look(t, acked, segments * segment - acked, TcpInfo(rtt or None, 0))
        if acked == segments * segment:
            return gauge
        t += look_every


class Stream:
    """A sender's view of a link, frame after frame: each frame handed over at once and its
    segments acknowledged at given times; the gauge looks every LOOK_S as the sender does."""

    LOOK_S = 0.002

    def __init__(self, min_rtt: float = 0.0, segment: int = 1448) -> None:
        self.gauge = LinkRate(segment)
        self.segment = segment
        self.min_rtt = min_rtt
        self.sent = 0
        self.acks: List[Tuple[float, int]] = []   # (when, bytes acknowledged by then)
        self.t = 0.0
        self.retransmits = 0

    def frame(self, at: float, segments: int, acked_after: Callable[[int], float]) -> None:
        """A frame handed over at `at`; segment k acknowledged acked_after(k) seconds later."""
        self.run_to(at)
        start, self.sent = self.sent, self.sent + segments * self.segment
        self.gauge.sending(at, start, self.sent)
        self.acks += [(at + acked_after(k), start + (k + 1) * self.segment) for k in range(segments)]

    def run_to(self, until: float) -> None:
        while self.t < until:
            acked = max((b for when, b in self.acks if when <= self.t), default=0)
            self.gauge.look(self.t, acked, self.sent - acked, TcpInfo(self.min_rtt or None, self.retransmits))
            self.t += self.LOOK_S


def test_the_link_gauge_reads_the_rate_not_the_token_bucket_or_the_round_trip() -> None:
    slow = 59_000.0
    assert frame_at(slow, 8).bps(0.2) == pytest.approx(slow, rel=0.1)
    assert frame_at(slow, 8, rtt=0.05).bps(0.3) == pytest.approx(slow, rel=0.1)
    # A frame the receiver acknowledged in one go (two segments): its first segment does not count.
    two = LinkRate(1448, warm_samples=1)
    two.sending(0.0, 0, 2896)
    two.look(0.001, 0, 2896)
    two.look(0.0245, 2896, 0)
    assert two.bps(0.03) == pytest.approx(1448 / 0.0245)
    # A fast link: all of it acknowledged before the next look; plenty, whatever the exact figure.
    fast = LinkRate(1448, warm_samples=1)
    fast.sending(0.0, 0, 10_000)
    fast.look(0.0001, 10_000, 0)
    assert fast.bps(0.001) >= 5e6
    # A frame under way on a loaded link is read as it goes, before it ends.
    busy = LinkRate(1448, warm_samples=0)   # a frame under way: no sample taken yet
    busy.sending(0.0, 0, 100_000)
    for k in range(1, 60):
        t = k * 0.005
        acked = int(max(0.0, t - 0.002) * slow)
        busy.look(t, acked, 100_000 - acked)
    assert busy.bps(0.295) == pytest.approx(slow, rel=0.05)


def test_a_long_round_trip_and_idle_time_between_frames_do_not_read_as_a_slow_link() -> None:
    # Four-segment frames every 67 ms on a 160 ms round trip, the link itself fast (a segment a
    # millisecond): bytes over time are only the stream's 700 kbit/s (the sender is what limits
    # them), but the gauge reads the link.
    stream = Stream(min_rtt=0.16)
    for k in range(30):
        stream.frame(k / FPS, 4, lambda seg: 0.16 + 0.001 * seg)
    stream.run_to(30 / FPS + 0.3)
    assert stream.gauge.bps(stream.t) >= 4e6 / 8


def test_a_loss_pause_does_not_halve_the_reading() -> None:
    rate = 100_000.0   # bytes per second, 800 kbit/s
    stream = Stream(min_rtt=0.16)
    for k in range(10):
        stream.frame(k / FPS, 4, lambda seg: 0.16 + seg * 1448 / rate)
    stream.run_to(10 / FPS + 0.3)
    before = stream.gauge.bps(stream.t)
    assert before == pytest.approx(rate, rel=0.1)
    # The next frame loses its third segment: TCP retransmits it after a timeout (300 ms). Six
    # segments over more than a round trip: without the retransmission seen it would outrank.
    at = stream.t
    stream.frame(at, 6, lambda seg: 0.16 + (0.3 if seg >= 2 else 0.0) + seg * 1448 / rate)
    stream.run_to(at + 0.2)
    stream.retransmits += 1
    stream.run_to(at + 0.8)
    assert stream.gauge.bps(stream.t) == pytest.approx(before, rel=0.1)
    # Without tcp_info's count the repair reads as one slow frame: the max filter outvotes it.
    blind = LinkRate(1448, warm_samples=1)
    t = 0.0
    for k in range(6):
        pause = 0.3 if k == 5 else 0.0
        blind.sending(t, k * 5792, (k + 1) * 5792)
        for seg in range(4):
            when = t + 0.16 + (pause if seg >= 2 else 0.0) + seg * 1448 / rate
            blind.look(when, k * 5792 + (seg + 1) * 1448, 0)
        t += 0.6
    assert blind.bps(t) == pytest.approx(rate, rel=0.1)


def test_a_frame_that_waited_on_an_earlier_frames_repair_gives_no_sample() -> None:
    def late_frame(repaired_before_first_ack: bool) -> LinkRate:
        # Fast frames, then one handed over while TCP repairs an earlier loss by a timeout:
        # all of it is acknowledged at once, 0.6 s later.
        stream = Stream(min_rtt=0.13)
        for k in range(10):
            stream.frame(k / FPS, 4, lambda seg: 0.13 + 0.001 * seg)
        stream.run_to(10 / FPS + 0.3)
        at = stream.t
        stream.frame(at, 4, lambda seg: 0.6)
        stream.run_to(at + 0.3)
        if repaired_before_first_ack:
            stream.retransmits += 1
        stream.run_to(at + 0.7)
        return stream.gauge
    repaired, control = late_frame(True).samples, late_frame(False).samples
    assert len(repaired) == len(control) - 1 and min(r for _, r in repaired) > 1e6 / 8
    # The control: without the count moving, the late frame's sample is taken, and reads slow.
    assert min(r for _, r in control) < 100e3 / 8


def test_jitter_and_late_acknowledgements_do_not_outrank_the_max_filter() -> None:
    stream = Stream(min_rtt=0.124)
    rng = np.random.default_rng(1)
    for k in range(45):
        if k % 5 == 4:   # a lost acknowledgement: the frame's last two segments confirmed 130 ms late
            stream.frame(k / FPS, 4, lambda seg: 0.14 + (0.13 if seg >= 2 else 0.0))
        else:            # each segment 80 +- 20 ms each way
            delays = sorted(0.16 + rng.uniform(-0.04, 0.04, 4))
            stream.frame(k / FPS, 4, lambda seg, d=delays: d[seg])
    stream.run_to(45 / FPS + 0.3)
    assert stream.gauge.bps(stream.t) >= 1e6 / 8   # far above the stream (about 700 kbit/s)


def test_no_reading_until_enough_frames_have_been_sampled() -> None:
    # The lab's lossy call: the first frame's acknowledgements came spread by jitter and read
    # 459 kbit/s on a link that carries several Mbit/s; the camera, reading it alone, went down
    # to 224x168 a quarter of a second into the call.
    stream = Stream(min_rtt=0.132)
    stream.frame(0.0, 4, lambda seg: 0.132 + 0.025 * seg)                  # spread out: reads low
    for k in range(1, LinkRate.KEEP + 2):
        stream.frame(k / FPS, 4, lambda seg: 0.132 + 0.001 * seg)         # the link's own pace
        stream.run_to(k / FPS + 0.2)
        if stream.gauge.taken < adapt.WARM_SAMPLES:
            assert stream.gauge.bps(stream.t) is None, stream.gauge.taken
    assert stream.gauge.taken >= adapt.WARM_SAMPLES
    assert stream.gauge.bps(stream.t) >= 4e6 / 8
    # The positive control: read after the first frame alone, the gauge says the link is slow.
    first = Stream(min_rtt=0.132)
    first.gauge.warm_samples = 1
    first.frame(0.0, 4, lambda seg: 0.132 + 0.025 * seg)
    first.run_to(0.3)
    assert first.gauge.bps(first.t) < 700e3 / 8


def test_a_link_that_slows_down_outranks_the_faster_samples_at_once() -> None:
    slow = 50_000.0   # 400 kbit/s
    stream = Stream(min_rtt=0.001)
    for k in range(15):
        stream.frame(k / FPS, 7, lambda seg: 0.001 + 0.0002 * seg)
    stream.run_to(1.0)
    assert stream.gauge.bps(stream.t) > 1e6
    # Then a bottleneck: the next frame's seven segments drain at 50 kB/s. Well before the frame
    # is all acknowledged (200 ms), the reading is the slow link's.
    stream.frame(1.0, 7, lambda seg: 0.001 + (seg + 1) * 1448 / slow)
    stream.run_to(1.15)
    assert stream.gauge.bps(stream.t) == pytest.approx(slow, rel=0.15)
    # Faster samples from before the slow-down are gone: the frames after it keep the reading low.
    stream.frame(1.25, 7, lambda seg: 0.001 + (seg + 1) * 1448 / slow)
    stream.run_to(1.6)
    assert stream.gauge.bps(stream.t) == pytest.approx(slow, rel=0.15)


def test_old_samples_go_once_newer_ones_fill_the_filter() -> None:
    gauge = LinkRate(1448, warm_samples=1)
    gauge.sending(0.0, 0, 10_000)
    gauge.look(0.0001, 10_000, 0)                          # fast
    assert gauge.bps(5.0) is not None and gauge.bps(5.0) > 1e6   # kept: nothing newer came
    at = 10_000
    for k in range(LinkRate.KEEP):                         # then slower frames, long after
        t = 5.0 + k * 0.1
        gauge.sending(t, at, at + 2896)
        gauge.look(t + 0.0245, at + 2896, 0)
        at += 2896
    assert gauge.bps(6.0) == pytest.approx(1448 / 0.0245)


def test_frames_too_small_to_measure_give_no_sample() -> None:
    # The long path limited to 248 kbit/s (tests/video/test_long_path.py): 112x80 frames of
    # 1450-1495 bytes, each acknowledged whole 15-30 ms after min_rtt, read 1-24 kbit/s, and
    # once they filled the filter the camera went down to 3.75 fps for good.
    link = 31_000.0   # bytes per second: 248 kbit/s

    def run(sample_segments: int) -> LinkRate:
        stream = Stream(min_rtt=0.16)
        stream.gauge.SAMPLE_SEGMENTS = sample_segments
        for k in range(12):   # 320x240 frames of four segments, at the link's pace
            stream.frame(k * 0.2, 4, lambda seg: 0.16 + (seg + 1) * 1448 / link)
        for k in range(40):   # then 112x80 ones: a segment and 21 bytes, acknowledged 20 ms late
            at = 2.4 + k / FPS
            stream.run_to(at)
            start, stream.sent = stream.sent, stream.sent + 1448 + 21
            stream.gauge.sending(at, start, stream.sent)
            stream.acks.append((at + 0.16 + 0.02, stream.sent))
        stream.run_to(2.4 + 40 / FPS + 0.3)
        return stream.gauge

    gauge = run(LinkRate.SAMPLE_SEGMENTS)
    assert gauge.taken == 12                                  # the small frames gave none
    assert gauge.bps(gauge.samples[-1][0] + 3.0) == pytest.approx(link, rel=0.1)
    # A frame that leaves a whole segment to measure still gives one (two segments, acknowledged whole).
    two = LinkRate(1448, warm_samples=1)
    two.sending(0.0, 0, 2896)
    two.look(0.001, 0, 2896, TcpInfo(0.16, 0))
    two.look(0.16 + 0.047, 2896, 0, TcpInfo(0.16, 0))
    assert two.taken == 1 and two.bps(0.3) == pytest.approx(link, rel=0.1)
    # The positive control: taking the small frames' samples, the reading falls to a tenth of the link.
    control = run(0)
    assert control.taken == 12 + 40
    assert control.bps(control.samples[-1][0]) < link / 10


def test_a_frame_counts_the_bytes_up_to_the_acknowledgement_that_covered_its_end() -> None:
    # A loaded link, frames of 6700 bytes (the long path's 320x240 frames) queued back to back:
    # TCP cuts the stream into segments across frame boundaries and the receiver acknowledges
    # every second segment, so a frame's end comes acknowledged with up to two segments of the
    # next frame, in the same time. Counted to its own end, such a frame read low: the long
    # path at 248 kbit/s (239 of payload) read 182-243 kbit/s, median 210.
    link, size, seg = 31_000.0, 6700, 1448

    class Recording(LinkRate):
        def __init__(self) -> None:
            super().__init__(seg)
            self.frames_done: List[Tuple[SentFrame, float]] = []

        def _finished(self, now: float, nbytes: float, own: float, seconds: float, frame: SentFrame,
                      loaded: bool) -> bool:
            self.frames_done.append((frame, seconds))
            return super()._finished(now, nbytes, own, seconds, frame, loaded)

    gauge = Recording()
    frames = 20
    acks = [(0.16 + (2 * i) * seg / link, 2 * i * seg) for i in range(1, frames * size // (2 * seg) + 1)]
    t, sent = 0.0, 0
    while t < frames * size / link + 0.3:
        if sent < frames * size and t >= sent / link:   # handed over as the link drains the last
            gauge.sending(t, sent, sent + size)
            sent += size
        acked = min(sent, max((b for when, b in acks if when <= t), default=0))
        gauge.look(t, acked, sent - acked, TcpInfo(0.16, 0))
        t += 0.002
    assert gauge.taken >= frames - 3
    assert all(r == pytest.approx(link, rel=0.05) for _, r in gauge.samples)
    assert gauge.bps(t) == pytest.approx(link, rel=0.05)
    # The positive control: the same frames' own bytes over the same times read low.
    own = sorted((f.end - f.first[1]) / s for f, s in gauge.frames_done if f.first is not None and s > 0)
    assert own[len(own) // 2] < 0.9 * link


def small_frames(link: float, carry: bool = True, size: int = 2100, frames: int = 45) -> LinkRate:
    """Frames of `size` bytes (a segment and a part) handed over at 15 fps across a link of
    `link` bytes per second and a 160 ms round trip, each segment acknowledged as it arrives."""
    gauge = LinkRate(1448)
    if not carry:
        gauge._carry = lambda now, frame: None   # type: ignore[assignment]
    acks: List[Tuple[float, int]] = []
    free_at, at = 0.0, 0
    for k in range(frames):
        for length in (1448, size - 1448):
            free_at = max(free_at, k / FPS) + length / link
            at += length
            acks.append((free_at + 0.16, at))
    t, sent = 0.0, 0
    while t < frames / FPS + 1.0:
        if sent < frames * size and t >= sent // size / FPS:
            gauge.sending(t, sent, sent + size)
            sent += size
        acked = max((b for when, b in acks if when <= t), default=0)
        gauge.look(t, acked, sent - acked, TcpInfo(0.16, 0))
        t += 0.002
    return gauge


def test_small_frames_queued_behind_each_other_are_measured_together() -> None:
    # A rung whose frames leave under a segment to measure (160x120 from 320x240: about 2100
    # bytes) on a link slower than it: frames queue behind each other, and measured together
    # they read the link, so the camera can see that the rung is too much.
    link = 30_000.0   # the frames need 31.5 kB/s
    gauge = small_frames(link)
    assert gauge.taken >= adapt.WARM_SAMPLES
    assert gauge.bps(gauge.samples[-1][0]) == pytest.approx(link, rel=0.05)
    # Not queued (a link twice the stream), the same frames are not measured together: the idle
    # time between them is not the link's.
    assert small_frames(2 * 31_500.0).taken == 0
    # The positive control: not measured together, the slow link's small frames give no reading.
    control = small_frames(link, carry=False)
    assert control.taken == 0 and control.bps(control.samples[-1][0] if control.samples else 5.0) is None


def test_a_late_acknowledgement_counts_at_most_two_segments_of_the_next_frame() -> None:
    # Reordering: a frame of four segments is acknowledged to its first, then a hole fills and one
    # acknowledgement covers the rest of it and ten segments of the next frame, which had arrived
    # meanwhile (some maybe before the first acknowledgement): only two of those count.
    link, seg = 31_000.0, 1448

    def first_sample(ack_segments: int) -> float:
        gauge = LinkRate(seg, warm_samples=1)
        gauge.ACK_SEGMENTS = ack_segments
        gauge.sending(0.0, 0, 4 * seg)
        gauge.sending(0.01, 4 * seg, 14 * seg)
        gauge.look(0.16, seg, 13 * seg, TcpInfo(0.16, 0))
        gauge.look(0.16 + 3 * seg / link, 14 * seg, 0, TcpInfo(0.16, 0))
        return gauge.samples[0][1]

    assert first_sample(LinkRate.ACK_SEGMENTS) == pytest.approx(5 / 3 * link)
    # The positive control: counted to the acknowledgement, the frame reads over four times the link.
    assert first_sample(10**6) == pytest.approx(13 / 3 * link)


def test_the_frame_gate_spreads_a_share_of_the_frames_evenly() -> None:
    def sent(rate: float, frames: int = 120) -> List[int]:
        gate = adapt.FrameGate(FPS)
        return [k for k in range(frames) if gate.admit(k / FPS, rate)]

    assert sent(1.0) == list(range(120))
    assert sent(0.5) == list(range(0, 120, 2))
    assert len(sent(0.75)) == pytest.approx(90, abs=1)
    assert len(sent(1 / 3)) == pytest.approx(40, abs=1)
    gaps = np.diff(sent(0.75))
    assert set(gaps.tolist()) <= {1, 2}


def test_the_scaler_takes_the_pixel_under_each_centre_and_the_jpeg_has_the_new_size() -> None:
    w, h, ow, oh = 640, 480, 448, 336
    y = np.add.outer(np.arange(h) // 2, np.arange(w) // 3).astype(np.uint8)
    u = np.full((h // 2, w // 2), 90, np.uint8)
    v = (np.arange(w // 2)[None, :] % 200 + np.zeros((h // 2, 1), np.uint8)).astype(np.uint8)
    frame = np.concatenate([y.ravel(), u.ravel(), v.ravel()])
    out = adapt.Downscaler(w, h, True, ow, oh).scale(frame)
    assert out.size == ow * oh * 3 // 2
    rows, cols = adapt.centres(h, oh), adapt.centres(w, ow)
    assert np.array_equal(out[:ow * oh].reshape(oh, ow), y[np.ix_(rows, cols)])
    out_v = out[ow * oh + (ow // 2) * (oh // 2):].reshape(oh // 2, ow // 2)
    assert np.array_equal(out_v, v[np.ix_(adapt.centres(h // 2, oh // 2), adapt.centres(w // 2, ow // 2))])
    tj = turbojpeg.TurboJPEG()
    data = tj.encode_from_yuv(out, oh, ow, quality=30, jpeg_subsample=turbojpeg.TJSAMP_420)
    assert tj.decode_header(data)[:2] == (ow, oh)
    # 4:2:2 (a YUYV camera): chroma keeps every row.
    frame422 = np.zeros(w * h * 2, np.uint8)
    assert adapt.Downscaler(w, h, False, 320, 240).scale(frame422).size == 320 * 240 * 2


def test_small_frames_show_a_link_with_room_and_never_a_slow_one() -> None:
    """The way back up from the smallest rungs: a frame too small to measure a slow link by is
    taken when it reads twice the gauge or more (the link came back), never when it reads below."""
    seg, slow = 1448, 60_000.0

    def gauge_after(small_ack_delay_s: float) -> LinkRate:
        gauge = LinkRate(seg, warm_samples=1)
        # A reading of the slow link: a frame of five segments, acknowledged at its pace.
        gauge.sending(0.0, 0, 5 * seg)
        gauge.look(0.001, 0, 5 * seg, TcpInfo(0.05, 0))
        for i in range(1, 6):
            gauge.look(0.05 + i * seg / slow, i * seg, (5 - i) * seg, TcpInfo(0.05, 0))
        sent, at = 5 * seg, 0.5
        for _ in range(10):   # then frames of a segment and 400 bytes, acknowledged whole
            gauge.sending(at, sent, sent + seg + 400)
            gauge.look(at + 0.001, sent, seg + 400, TcpInfo(0.05, 0))
            sent += seg + 400
            gauge.look(at + 0.05 + small_ack_delay_s, sent, 0, TcpInfo(0.05, 0))
            at += 1 / FPS
        return gauge

    room = gauge_after(0.001)      # over a link with room: 400 bytes in 1 ms
    assert room.bps(2.0) > 5 * slow, room.samples
    held = gauge_after(0.025)      # a held-up acknowledgement: 400 bytes in 25 ms reads 16 kB/s
    assert held.bps(2.0) == pytest.approx(slow, rel=0.1), held.samples
