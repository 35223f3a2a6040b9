"""The jitter buffer and playout on a simulated clock (no sockets, no ALSA)."""
from __future__ import annotations

import numpy as np
import pytest

from pi2pi.audio.jitter import FLOOD_MARGIN_MS, JitterBuffer, JitterSettings, Playout, opus_packet_ms
from tests.audio.analysis import hard_cuts
from tests.audio.simulate import simulate, talk_spurts

RATE = 8000
FRAME = 160   # 20 ms at 8 kHz


def test_hard_cut_detector_finds_a_missing_stretch_and_passes_a_clean_signal():
    clean = talk_spurts(RATE, 0, RATE * 4)
    assert hard_cuts(clean, RATE) == []
    cut = np.concatenate([clean[:3000], clean[3000 + 87:]])   # 87 samples missing mid-tone
    assert [abs(p - 3000) <= 2 for p in hard_cuts(cut, RATE)] == [True]


@pytest.mark.parametrize("toc, extra, ms", [
    (0x08, b"", 20.0),          # SILK NB config 1: 20 ms, one frame
    (0x78, b"", 20.0),          # hybrid FB 20 ms
    (0xF8, b"", 20.0),          # CELT FB 20 ms
    (0xF9, b"", 40.0),          # two frames
    (0xFB, bytes([3]), 60.0),   # code 3, three frames
    (0xE0, b"", 2.5),
])
def test_packet_duration_from_the_toc_byte(toc, extra, ms):
    assert opus_packet_ms(bytes([toc]) + extra + b"\x00" * 10) == ms


def test_packet_duration_refuses_what_cannot_be_opus():
    assert opus_packet_ms(b"") is None
    assert opus_packet_ms(bytes([0xFB])) is None            # code 3 without a count byte
    assert opus_packet_ms(bytes([0xFB, 0])) is None         # zero frames
    assert opus_packet_ms(bytes([0x1B, 0x3F])) is None      # 63 x 60 ms > 120 ms


def test_clean_link_plays_everything_once_with_a_small_delay():
    result = simulate(60.0, drift_ppm=0.0, delay_ms=5.0, jitter_ms=1.0)
    c = result.counters
    assert c.underruns == 0 and c.concealed == 0 and c.crossfaded == 0
    assert result.hard_cuts == []
    assert result.wait_last_minute_max_ms < 35.0   # target (~min + jitter) plus less than a frame
    assert result.device_underruns == 0


def test_sender_clock_200_ppm_fast_for_an_hour_stays_bounded_without_a_cut():
    settings = JitterSettings(min_ms=10.0, max_ms=680.0)
    result = simulate(3600.0, drift_ppm=200.0, delay_ms=5.0, jitter_ms=1.0, settings=settings)
    c = result.counters
    # 200 ppm of an hour is 720 ms the sender produced beyond what the player plays
    assert 650.0 <= c.dropped_ms <= 800.0
    assert c.underruns == 0 and c.crossfaded == 0
    assert result.fill_max_ms <= 60.0                      # never near max_ms
    assert result.wait_last_minute_max_ms < 40.0           # latency at the end as at the start
    assert result.hard_cuts == []


def test_target_follows_the_measured_jitter_and_underruns_stay_rare():
    # netem's "delay 50ms 30ms": uniform 20..80 ms, delivered in order as TCP does
    result = simulate(120.0, delay_ms=50.0, jitter_ms=30.0, uniform=True)
    c = result.counters
    assert c.jitter_ms > 40.0
    assert c.target_ms >= c.jitter_ms                       # the buffer grew with the jitter
    late = [t for t in result.underrun_times if t > 1.0]
    assert len(late) <= 2, late                             # at most one a minute after the first second
    assert result.wait_last_minute_max_ms < c.target_ms + 30.0   # and the delay stays near the target


def _frames(values: np.ndarray):
    for i in range(0, values.size, FRAME):
        yield values[i:i + FRAME].tobytes()


def _playout(settings: JitterSettings):
    buffer = JitterBuffer(settings)
    concealed = []

    def conceal(n: int) -> np.ndarray:
        concealed.append(n)
        return np.zeros(n, dtype=np.int16)

    playout = Playout(buffer, lambda p: np.frombuffer(p, dtype=np.int16), conceal, RATE, 1)
    return buffer, playout, concealed


def test_a_late_packet_is_concealed_and_counted_once():
    buffer, playout, concealed = _playout(JitterSettings(min_ms=10.0))
    frames = list(_frames(talk_spurts(RATE, 0, FRAME * 10)))
    buffer.push(frames[0], 20.0, 0.0)
    out = [playout.next_frame(t) for t in (0.0, 10.0)]       # buffering, then playing
    assert out[0].any() == False and playout.playing
    out.append(playout.next_frame(30.0))                      # nothing arrived: conceal
    out.append(playout.next_frame(50.0))
    assert playout.counters.underruns == 1 and playout.counters.concealed == 2
    buffer.push(frames[1], 20.0, 55.0)
    nxt = playout.next_frame(70.0)
    assert np.array_equal(nxt, np.frombuffer(frames[1], dtype=np.int16))   # late, but played in order
    assert playout.counters.underruns == 1


def test_the_peer_closing_is_not_an_underrun():
    buffer, playout, concealed = _playout(JitterSettings(min_ms=0.0))
    buffer.push(next(_frames(talk_spurts(RATE, 0, FRAME))), 20.0, 0.0)
    playout.next_frame(1.0)
    buffer.mark_ended()
    playout.next_frame(21.0)
    assert playout.counters.underruns == 0 and not concealed


def test_overflowing_the_maximum_drops_by_crossfading_not_cutting():
    buffer, playout, _ = _playout(JitterSettings(min_ms=10.0, max_ms=100.0))
    tone = talk_spurts(RATE, 0, FRAME * 80, spurt_s=10.0)     # speech without a pause
    frames = list(_frames(tone))
    out = []
    for i in range(20):                                        # a steady start
        buffer.push(frames[i], 20.0, 20.0 * i)
        out.append(playout.next_frame(20.0 * i + 15.0))
    for f in frames[20:]:                                      # then a stall and 1.2 s at once
        buffer.push(f, 20.0, 1500.0)
    out += [playout.next_frame(1500.0 + 20.0 * i) for i in range(30)]
    assert playout.counters.crossfaded > 0 and playout.counters.overflow > 0
    assert buffer.fill_ms() <= 100.0 + 20.0
    resumed = out[-25:]                                        # all cross-fades, after the stall
    before = playout.counters.crossfaded
    assert before >= 20
    assert hard_cuts(np.concatenate(resumed), RATE) == []


def test_drift_estimate_sees_a_fast_sender():
    buffer = JitterBuffer(JitterSettings())
    period = 20.0 / (1 + 500e-6)
    for k in range(3000):                                      # one minute
        buffer.push(b"x", 20.0, k * period + 3.0)
    assert buffer.drift_ppm() == pytest.approx(500.0, abs=5.0)


def test_a_flooding_peer_cannot_grow_the_buffer_beyond_its_bound():
    buffer = JitterBuffer(JitterSettings(max_ms=680.0))
    for i in range(20_000):                      # 400 s of audio, all at once, nothing played
        buffer.push(b"\x08\x00", 20.0, 1000.0)
    assert buffer.fill_ms() <= 680.0 + FLOOD_MARGIN_MS
    assert buffer.flooded == 20_000 - int((680.0 + FLOOD_MARGIN_MS) / 20.0)
