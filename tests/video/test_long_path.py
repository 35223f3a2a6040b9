"""A long path with room to spare carries the whole frame rate.

Camera -> viewer across two namespaces joined by the adaptive-quality bench's
forwarder (tests/bench/adapt.py, LossyLink): 80 ms each way, no loss, no rate
limit. The path carries far more than a 320x240 stream at 15 fps, so the only
thing that could hold frames back is the camera's own in-flight budget. Before
the budget left out the bytes merely on the wire (the link's rate times the
path's min_rtt), it held this stream to 0.76-0.79 of its frame rate; the
evidence is the frames the viewer painted (recorded by the bench's probe).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.bench import adapt as bench

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and tun devices")


def test_a_long_path_with_room_to_spare_carries_the_whole_frame_rate(tmp_path: Path) -> None:
    with bench.LossyLink(bench.NS_A, bench.NS_B, delay_ms=80, jitter_ms=0, loss=0.0) as link:
        result = bench.run_lossy(tmp_path, link, "long-path", (320, 240), adapt=False)
    shutil.rmtree(tmp_path, ignore_errors=True)
    print(f"80 ms each way, 320x240 at {bench.FPS:g} fps: {result}")
    assert result["fps_fraction"] >= 0.9, result
    assert result["full_fraction"] == 1.0, result   # never adapted: the whole picture all the time
