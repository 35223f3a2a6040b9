"""A long path with room to spare is not mistaken for a slow link.

Camera -> viewer across two namespaces joined by the adaptive-quality bench's
forwarder (tests/bench/adapt.py, LossyLink): 80 ms each way, no loss, no rate
limit. The path carries far more than a 320x240 stream at 15 fps, so with
adaptive quality on, what is asserted: the camera never adapts down (its stats
count no move down) and the viewer is shown the full size at full quality all
the time (full_fraction 1.0), and the viewer paints at least 0.9 of the frame
rate. Neither the in-flight budget nor the adapter's gauge may read the long
round trip as a slow link. Before the budget left out the bytes merely on the
wire (the link's rate times the path's min_rtt), it held this stream to
0.76-0.79 of its frame rate. The evidence is the frames the viewer painted
(recorded by the bench's probe) and the camera's stats.

The positive control: the same path, limited to a third of the stream the run
measured, must make the camera adapt down, and the same figures must show it
(a move down in the camera's stats, full_fraction under 1.0): the gauge reads
this path, so "never adapted down" is not a gauge that never reads anything.
And it must read the limited link for what it is, not a thirteenth of it: the
camera ends at the full frame rate (not on a frame-rate rung) and the viewer
paints at least the bench's bar for a limited link (BARS fps_fraction_limited,
0.8) of it. Before the gauge left out frames too small to measure (and
counted a frame's bytes up to the acknowledgement that covered its end), it
read 13-19 kbit/s from the 112x80 frames on this ~248 kbit/s link, and the
camera ended at 3.75 fps (fps_fraction 0.45-0.52, 5 runs of 5).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.bench import adapt as bench

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("tc") is None,
                                reason="needs root and tc: network namespaces, tun devices, a rate-limited link")

SIZE = (320, 240)      # the lab's cameras
CONTROL_S = 10.0       # the limited run: LOSSY_SETTLE_S, then long enough to see the frames shrink


def test_a_long_path_with_room_to_spare_is_not_taken_for_a_slow_link(tmp_path: Path) -> None:
    with bench.LossyLink(bench.NS_A, bench.NS_B, delay_ms=80, jitter_ms=0, loss=0.0) as link:
        result = bench.run_lossy(tmp_path, link, "long-path", SIZE, adapt=True)
        print(f"80 ms each way, {SIZE[0]}x{SIZE[1]} at {bench.FPS:g} fps, adapting: {result}")
        limit_kbit = int(result["camera"]["kbps"] / 3)
        link.limit(limit_kbit)
        control = bench.run_lossy(tmp_path, link, "long-path-limited", SIZE, adapt=True, duration_s=CONTROL_S)
        print(f"the same path limited to {limit_kbit} kbit/s: {control}")
    shutil.rmtree(tmp_path, ignore_errors=True)
    assert result["camera"]["adapt"] is True, result
    assert result["camera"]["adapt_downs"] == 0, result   # the long round trip was not read as a slow link
    assert result["full_fraction"] == 1.0, result        # the whole picture at full quality all the time
    assert result["fps_fraction"] >= 0.9, result
    # Positive control: on this path a link that is slow is seen, and these figures show the move.
    assert control["camera"]["adapt_downs"] >= 1, control
    assert control["full_fraction"] < 1.0, control
    # ... and read for what it is: smaller frames, not fewer.
    assert control["camera"]["adapt_fps"] == bench.FPS, control
    assert control["fps_fraction"] >= bench.BARS["fps_fraction_limited"], control
