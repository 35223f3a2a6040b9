"""The panel's picture path at a Pi's speed: in the VM (TCG runs this code at
roughly a Pi 2's pace), the viewer's frames copied into the panel's window under
Xvfb show exactly the framebuffer's pixels (read back from the X server), and
what that costs per frame is kept in the results (panel_cost.json; figures in
BENCHMARKS.md, never asserted: speed lives in benchmarks)."""
from __future__ import annotations

import json
import shutil
import os

import pytest

from tests.bench import panel as bench


@pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb comes with make setup-test (apt-packages-test.txt)")
def test_the_window_shows_the_viewers_picture_and_its_cost_is_kept(results):
    xvfb = bench.with_display(":94")
    try:
        # A short run (the emulated machine is slow): BENCHMARKS.md has a longer one.
        figures = {f"bpp{bpp}": bench.measure(frames=5, bpp=bpp, repeats=2) for bpp in (32, 16)}
    finally:
        xvfb.terminate()
        xvfb.wait(10)
        os.environ.pop("DISPLAY", None)
    (results / "panel_cost.json").write_text(json.dumps(figures, indent=2, sort_keys=True))
    for name, f in figures.items():
        assert f["screen_matches_fb"], f"{name}: the window does not show the framebuffer's picture"
