"""The real drivers answer through the libraries the runtime uses.

If these fail, the runtime tests beside them cannot mean anything: the VM, a
module or a library binding is broken, not the runtime.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import v4l2

from tests.hw import hwlib


def test_vivid_is_a_streaming_capture_device(vivid):
    fd = os.open(vivid, os.O_RDWR)
    try:
        cap = hwlib.query_capability(fd)
        formats = hwlib.capture_formats(fd)
    finally:
        os.close(fd)
    assert cap.driver.decode() == "vivid"
    assert cap.capabilities & v4l2.V4L2_CAP_VIDEO_CAPTURE
    assert cap.capabilities & v4l2.V4L2_CAP_STREAMING
    # The formats the camera tests rely on; vivid offers no MJPEG, so the
    # camera must encode YUV itself.
    assert {"YUYV", "YU12"} <= set(formats), formats
    assert "MJPG" not in formats


@pytest.mark.parametrize("pixel_format", ["YUYV", "YU12"])
def test_vivid_frame_is_the_static_pattern(vivid, pixel_format):
    first = hwlib.capture_frame(pixel_format, 320, 180)
    second = hwlib.capture_frame(pixel_format, 320, 180)
    expected = {"YUYV": 320 * 180 * 2, "YU12": 320 * 180 * 3 // 2}[pixel_format]
    assert len(first.data) == expected
    # Static pattern (the comparisons with the framebuffer depend on it) ...
    assert first.data == second.data
    # ... and a picture, not a blank: colour squares give several colours.
    rgb = hwlib.frame_to_rgb(first)
    colours = {tuple(c // 64 for c in pixel) for pixel in rgb.reshape(-1, 3)[::97]}
    assert len(colours) >= 4, colours


@pytest.mark.parametrize("bpp", [16, 32])
def test_vfb_geometry_and_depth(bpp):
    var, fix = hwlib.fb_set_mode(640, 480, bpp, virtual_width=704)
    assert (var.xres, var.yres, var.bits_per_pixel) == (640, 480, bpp)
    assert fix.line_length == 704 * bpp // 8
    assert fix.smem_len >= fix.line_length * var.yres
    assert fix.visual == 2  # FB_VISUAL_TRUECOLOR
    if bpp == 16:
        assert (var.red.length, var.green.length, var.blue.length) == (5, 6, 5)
    else:
        assert (var.red.length, var.green.length, var.blue.length) == (8, 8, 8)
    # What is written to the device is what the decoder reads back.
    hwlib.fb_fill(0)
    with open(hwlib.FB, "r+b") as fb:
        fb.seek(fix.line_length * 10 + 20 * bpp // 8)
        white = b"\xff" * (bpp // 8)
        fb.write(white)
    picture = hwlib.fb_read_rgb()
    assert picture.shape == (480, 640, 3)
    assert picture[10, 20].tolist() == [255, 255, 255]
    assert int(picture.sum()) == 3 * 255


def test_loopback_carries_a_chirp_in_real_time(results):
    """The direct loop, and the clocks the latency measurements rely on.

    What is played on hw:Loopback,0,0 is captured on hw:Loopback,1,0 at once,
    so the measured latency of this loop is the error of the method itself.
    """
    sweep = hwlib.chirp()
    recorder = hwlib.Recorder("hw:Loopback,1,0").start()
    started = time.monotonic()
    played_at = hwlib.play("hw:Loopback,0,0", sweep)
    elapsed = time.monotonic() - started
    time.sleep(0.1)
    recording = recorder.stop()
    lag, score = hwlib.find(sweep, recording)
    latency_ms = (recorder.time_of(lag) - played_at) * 1000
    (results / "loopback.json").write_text(json.dumps(
        {"direct_loop_latency_ms": round(latency_ms, 2), "correlation": round(score, 4),
         "recorded_s": len(recording) / hwlib.RATE}, indent=1))
    assert score > 0.95, f"the chirp did not come out (correlation {score:.2f})"
    peak = np.abs(recording[lag:lag + len(sweep)]).max()
    assert abs(int(peak) - int(np.abs(sweep).max())) < 200, "the loop changed the level"
    # Paced by the device: 1 s of audio took about 1 s to play.
    assert 0.9 < elapsed < 2.5, elapsed
    assert abs(latency_ms) < 15, f"direct loop measured at {latency_ms:.1f} ms: the clocks are off"
