"""Camera (vivid, /dev/video0) to viewer (vfb, /dev/fb0) on the real drivers."""
from __future__ import annotations

import signal
import time

import numpy as np
import pytest
from PIL import Image

from tests.hw import hwlib
from tests.hw.programs import free_port, start

SIZE = (320, 180)       # one of vivid's webcam sizes
AT = (101, 57)          # odd on purpose: no alignment to lean on
SCREEN = (640, 480)
PADDED = 704            # virtual width: lines longer than the visible width


def save_png(path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb).save(path)


@pytest.mark.parametrize("pixel_format, bpp", [("YUYV", 32), ("YU12", 16)])
def test_camera_picture_is_painted_on_the_framebuffer(vivid, results, pixel_format, bpp):
    var, fix = hwlib.fb_set_mode(*SCREEN, bpp, virtual_width=PADDED)
    assert fix.line_length == PADDED * bpp // 8
    hwlib.fb_fill(0)
    port = free_port()
    viewer = start("viewer", ["--listen", f"127.0.0.1:{port}", "--fb", hwlib.FB,
                              "--at", f"{AT[0]},{AT[1]}", "--duration", "300",
                              "--snapshot", str(results / "snapshot.png")], results)
    camera = None
    try:
        assert viewer.listening(port, 60), f"the viewer never listened:\n{viewer.log()}"
        camera = start("camera", ["--source", vivid, "--format", pixel_format,
                                  "--size", f"{SIZE[0]}x{SIZE[1]}", "--fps", "10",
                                  "--quality", "90", "--connect", f"127.0.0.1:{port}",
                                  "--duration", "5"], results)
        assert camera.wait(90) == 0, camera.log()
        # The viewer keeps the last picture while it waits for the next peer;
        # read the screen now: once it ends, the console takes the screen back.
        time.sleep(1)
        screen = hwlib.fb_read_rgb()
        assert viewer.process.poll() is None, f"the viewer ended with the camera:\n{viewer.log()}"
        viewer.process.send_signal(signal.SIGTERM)
        assert viewer.wait(30) == 0, viewer.log()
    finally:
        viewer.stop()
        if camera:
            camera.stop()

    sent, shown = camera.stats(), viewer.stats()
    assert sent["reason"] == "duration reached"
    assert sent["source_format"] == pixel_format
    assert sent["frames"] >= 1
    assert shown["reason"] == "signal SIGTERM"
    assert shown["fb_geometry"] == f"{SCREEN[0]}x{SCREEN[1]}x{bpp}"
    assert shown["frames"] >= 1 and shown["corrupt"] == 0

    # The device's own frame, read directly, is what the screen must show.
    reference = hwlib.frame_to_rgb(hwlib.capture_frame(pixel_format, *SIZE))
    save_png(results / "reference.png", reference)
    save_png(results / "screen.png", screen)
    x, y = AT
    w, h = SIZE
    painted = screen[y:y + h, x:x + w].astype(np.int16)
    error = np.abs(painted - reference.astype(np.int16))
    # JPEG at quality 90 (and RGB565's 5-6 bits) against an exact conversion.
    assert error.mean() < 8, f"mean error {error.mean():.1f}: see {results}"
    blocks = error.reshape(h // 4, 4, w // 4, 4, 3).mean(axis=(1, 3))
    assert np.percentile(blocks, 99) < 40, f"99th percentile of 4x4 blocks {np.percentile(blocks, 99):.1f}"
    # Nothing painted outside the picture: a ring of 4 pixels around it is black.
    ring = np.concatenate([
        screen[y - 4:y, x - 4:x + w + 4].reshape(-1, 3), screen[y + h:y + h + 4, x - 4:x + w + 4].reshape(-1, 3),
        screen[y:y + h, x - 4:x].reshape(-1, 3), screen[y:y + h, x + w:x + w + 4].reshape(-1, 3)])
    assert ring.max() == 0, "pixels painted outside the picture's place"
