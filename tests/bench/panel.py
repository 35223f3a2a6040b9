"""Panel benchmark (`make bench-panel`): what showing the picture inside the panel's window costs.

In a desktop session the viewer paints a file framebuffer and the panel copies
its picture area (592x444, the seed's) into a Tk PhotoImage (panel.Picture):
read + RGB conversion, Tk's PPM put, and the redraw. Measured per frame under
Xvfb, next to the peer in the same run: the viewer's own decode of a 592x444
camera frame (TurboJPEG into the framebuffer's BGRX, the same clip as
bench-video's). Reported as medians with the spread (p10..p90) over REPEATS
rounds of FRAMES frames, the copy's share of the decode, and the share of one
core at the seed's 5 fps and at 15 fps. The last line is one JSON object.

    python -m tests.bench.panel [--frames N] [--display :N]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

from pi2pi import panel
from pi2pi.video import framebuffer

REPEATS = 5


def spread(values: List[float]) -> Dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]   # noqa: E731
    return {"median": round(statistics.median(ordered), 3), "p10": round(pick(0.1), 3), "p90": round(pick(0.9), 3)}


def camera_frames(count: int) -> List[bytes]:
    """592x444 JPEGs of bench-video's camera-like clip (quality 75, 4:2:0)."""
    import turbojpeg

    from tests.bench.video import make_clip

    codec = turbojpeg.TurboJPEG()
    clip = make_clip(frames=min(count, 30), w=592, h=444)
    return [codec.encode_from_yuv(frame, 444, 592, quality=75, jpeg_subsample=turbojpeg.TJSAMP_420)
            for frame in clip]


def measure(frames: int, bpp: int = 32, repeats: int = REPEATS) -> Dict[str, object]:
    """Per-frame costs in ms (needs DISPLAY): the viewer's decode and paint (32 or 16 bpp, from
    BGRX as the viewer decodes for either), the panel's copy, put, redraw."""
    import tkinter as tk

    import turbojpeg

    jpegs = camera_frames(frames)
    codec = turbojpeg.TurboJPEG()
    with tempfile.TemporaryDirectory() as tmp:
        fb_path = str(Path(tmp) / "fb")
        geometry = f"800x480x{bpp}"
        screen = framebuffer.Framebuffer.open(fb_path, geometry)
        picture = panel.Picture(fb_path, geometry, panel.PICTURE_AT)
        root = tk.Tk()
        root.geometry(f"{panel.SCREEN[0]}x{panel.SCREEN[1]}+0+0")
        image = tk.PhotoImage(width=panel.PICTURE_SIZE[0], height=panel.PICTURE_SIZE[1])
        label = tk.Label(root, image=image, borderwidth=0)
        label.place(x=panel.PICTURE_AT[0], y=panel.PICTURE_AT[1])
        root.update()
        costs: Dict[str, List[float]] = {"decode": [], "copy": [], "put": [], "redraw": []}
        try:
            for _ in range(repeats):
                rounds: Dict[str, List[float]] = {k: [] for k in costs}
                for i in range(frames):
                    jpeg = jpegs[i % len(jpegs)]
                    t0 = time.perf_counter()
                    screen.paint(codec.decode(jpeg, pixel_format=turbojpeg.TJPF_BGRX), *panel.PICTURE_AT)
                    t1 = time.perf_counter()
                    data = picture.ppm()
                    t2 = time.perf_counter()
                    image.configure(data=data, format="PPM")
                    t3 = time.perf_counter()
                    root.update_idletasks()
                    root.update()
                    t4 = time.perf_counter()
                    for key, value in (("decode", t1 - t0), ("copy", t2 - t1), ("put", t3 - t2), ("redraw", t4 - t3)):
                        rounds[key].append(value * 1000)
                for key, values in rounds.items():
                    costs[key].append(statistics.median(values))
            # What the X server shows where the window has the picture, read back from
            # the server, against the framebuffer's own picture area.
            from PIL import ImageGrab

            x, y = panel.PICTURE_AT
            w, h = panel.PICTURE_SIZE
            on_screen = np.asarray(ImageGrab.grab(bbox=(x, y, x + w, y + h), xdisplay=os.environ["DISPLAY"]))
            same = bool(np.array_equal(on_screen, screen.rgb()[y:y + h, x:x + w]))
        finally:
            root.destroy()
            picture.close()
            screen.close()
    result: Dict[str, object] = {f"{k}_ms": spread(v) for k, v in costs.items()}
    panel_ms = sum(statistics.median(costs[k]) for k in ("copy", "put", "redraw"))
    result.update({
        "bpp": bpp, "frames": frames, "repeats": repeats, "screen_matches_fb": same,
        "panel_ms": round(panel_ms, 3),
        "panel_over_decode": round(panel_ms / statistics.median(costs["decode"]), 3),
        "core_share_5fps": round(panel_ms * 5 / 1000, 4), "core_share_15fps": round(panel_ms * 15 / 1000, 4),
    })
    return result


def with_display(display: str) -> subprocess.Popen:
    """An Xvfb at the panel's 800x480 (none is started when DISPLAY is already set)."""
    xvfb = subprocess.Popen([shutil.which("Xvfb") or "Xvfb", display, "-screen", "0", "800x480x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    socket_path = Path(f"/tmp/.X11-unix/X{display.lstrip(':')}")
    deadline = time.monotonic() + 15
    while not socket_path.exists():
        if xvfb.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"bench-panel: Xvfb {display} did not start")
        time.sleep(0.05)
    os.environ["DISPLAY"] = display
    return xvfb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--display", default=":93", help="the Xvfb to start when DISPLAY is not set")
    args = parser.parse_args()
    xvfb = None if os.environ.get("DISPLAY") else with_display(args.display)
    try:
        results = {f"bpp{bpp}": measure(args.frames, bpp) for bpp in (32, 16)}
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(10)
    print(f"{'screen':<8}{'decode ms':>11}{'copy':>8}{'put':>8}{'redraw':>8}{'panel/decode':>14}"
          f"{'core @5fps':>12}{'@15fps':>8}")
    for name, r in results.items():
        print(f"{name:<8}{r['decode_ms']['median']:>11.2f}{r['copy_ms']['median']:>8.2f}{r['put_ms']['median']:>8.2f}"
              f"{r['redraw_ms']['median']:>8.2f}{r['panel_over_decode']:>14.2f}{r['core_share_5fps']:>12.1%}"
              f"{r['core_share_15fps']:>8.1%}")
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
