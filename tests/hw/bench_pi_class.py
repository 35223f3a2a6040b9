"""Pi-class video figures (`make bench-hw`): camera and viewer in the hardware lab VM.

The VM runs the code under TCG emulation, at roughly a Pi 2's speed for this
kind of work (docs/hardware-lab.md), so its figures are the nearest to a Pi
this machine can give. For each of the seed's 592x444 at 5 fps and 640x480 at
15 and 30 fps: pi2pi's camera (bench-video's camera-like clip, encoded from
I420 as from a YUV camera) → viewer (the vfb framebuffer, 32 bpp, 640x480) over
loopback, ROUNDS times without and with --adapt, alternating (what following
the link costs when the link has room), then GStreamer doing the same job in
the same VM, paced at the same rate (multifilesrc ! rawvideoparse framerate !
jpegenc ! multipartmux ! tcpclientsink sync=true → tcpserversrc !
multipartdemux ! jpegdec ! videoconvert ! BGRx ! fakesink), each DCT as pi2pi's
defaults. Figures: frames per second shown, and each side's CPU in % of one
core over the middle of the run (/proc, start-up and the end left out); pi2pi's
are medians with their range. A benchmark, not a test: it asserts only that
everything ran. Results: bench-pi-class.json in PI2PI_HW_OUT (make bench-hw:
out/hw-bench) and a table in the log.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List

from tests.bench.video import DEFAULT_DCT, GST_IDCT, make_clip, wait_for_listener
from tests.hw import hwlib
from tests.hw.programs import free_port, start

CONFIGS = [(592, 444, 5.0), (640, 480, 15.0), (640, 480, 30.0)]
SECONDS = 16.0
WINDOW = (5.0, 2.0)   # seconds left out at the start (imports under emulation are slow) and at the end
CLIP_FRAMES = 30
ROUNDS = 3            # pi2pi's runs per configuration, with and without --adapt, alternating (GStreamer: one)
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def window_cpu_pct(pids: List[int], seconds: float) -> List[float]:
    """Each process's CPU in % of one core over the run's middle."""
    time.sleep(WINDOW[0])
    t0, before = time.monotonic(), [cpu_s(p) for p in pids]
    time.sleep(seconds - WINDOW[0] - WINDOW[1])
    t1, after = time.monotonic(), [cpu_s(p) for p in pids]
    return [(a - b) / (t1 - t0) * 100 for a, b in zip(after, before)]


def run_pi2pi(clip: Path, width: int, height: int, fps: float, results: Path, adapt: bool,
              round_: int) -> Dict[str, Any]:
    port = free_port()
    tag = f"{width}x{height}-{fps:g}{'-adapt' if adapt else ''}-{round_ + 1}"
    viewer = start("viewer", ["--listen", f"127.0.0.1:{port}", "--fb", hwlib.FB, "--once",
                              "--duration", str(SECONDS + 120)], results, f"viewer-{tag}")
    camera = None
    try:
        assert viewer.listening(port, 120), viewer.log()
        camera = start("camera", ["--source", str(clip), "--size", f"{width}x{height}", "--fps", str(fps),
                                  "--connect", f"127.0.0.1:{port}", "--duration", str(SECONDS),
                                  "--adapt" if adapt else "--no-adapt"],
                       results, f"camera-{tag}")
        camera_pct, viewer_pct = window_cpu_pct([camera.process.pid, viewer.process.pid], SECONDS)
        assert camera.wait(120) == 0, camera.log()
        assert viewer.wait(60) == 0, viewer.log()
    finally:
        viewer.stop()
        if camera:
            camera.stop()
    sent, shown = camera.stats(), viewer.stats()
    return {"fps": shown["fps"], "camera_cpu_pct": round(camera_pct, 1), "viewer_cpu_pct": round(viewer_pct, 1),
            "camera_cpu_ms_per_frame": sent["cpu_ms_per_frame"], "viewer_cpu_ms_per_frame": shown["cpu_ms_per_frame"],
            "camera_dropped": sent["dropped"], "frames": shown["frames"]}


def summary(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The median of each figure over the rounds, and the range of those that move."""
    out: Dict[str, Any] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    for key in ("fps", "camera_cpu_pct", "viewer_cpu_pct"):
        out[f"{key}_range"] = [min(run[key] for run in runs), max(run[key] for run in runs)]
    return out


def run_gstreamer(clip: Path, width: int, height: int, fps: float, results: Path) -> Dict[str, Any]:
    port = free_port()
    passes = max(1, round(SECONDS * fps / CLIP_FRAMES))
    frames = passes * CLIP_FRAMES
    with open(results / f"gst-{width}x{height}-{fps:g}.log", "w") as log:
        receiver = subprocess.Popen(
            ["gst-launch-1.0", "-q", "tcpserversrc", "host=127.0.0.1", f"port={port}", "!", "multipartdemux", "!",
             "jpegdec", f"idct-method={GST_IDCT[DEFAULT_DCT[1]]}", "!", "videoconvert", "!",
             "video/x-raw,format=BGRx", "!", "fakesink", "sync=false"], stdout=log, stderr=log)
        sender = None
        try:
            assert wait_for_listener("127.0.0.1", port, None, 120), "GStreamer's receiver never listened"
            started = time.monotonic()
            sender = subprocess.Popen(
                ["gst-launch-1.0", "-q", "multifilesrc", f"location={clip}", "loop=true", f"num-buffers={passes}",
                 "!", "rawvideoparse", f"width={width}", f"height={height}", "format=i420",
                 f"framerate={int(fps)}/1", "!", "jpegenc", "quality=75",
                 f"idct-method={GST_IDCT[DEFAULT_DCT[0]]}", "!", "multipartmux", "!", "tcpclientsink",
                 "host=127.0.0.1", f"port={port}", "sync=true"], stdout=log, stderr=log)
            run_s = frames / fps
            sender_pct, receiver_pct = window_cpu_pct([sender.pid, receiver.pid], run_s)
            assert sender.wait(run_s * 4 + 120) == 0
            elapsed = time.monotonic() - started
            assert receiver.wait(60) == 0
        finally:
            for proc in (sender, receiver):
                if proc is not None and proc.poll() is None:
                    proc.kill()
    return {"fps": round(frames / elapsed, 2), "sender_cpu_pct": round(sender_pct, 1),
            "receiver_cpu_pct": round(receiver_pct, 1), "frames": frames}


def test_pi_class_figures(results) -> None:
    hwlib.fb_set_mode(640, 480, 32)
    figures: Dict[str, Any] = {}
    lines = [f"{'config':<14} {'who':<10} {'fps':>20} {'send % core':>20} {'receive % core':>20}"]
    for width, height, fps in CONFIGS:
        clip = results / f"clip-{width}x{height}.yuv"
        if not clip.exists():
            make_clip(frames=CLIP_FRAMES, w=width, h=height).tofile(clip)
        rounds: Dict[bool, List[Dict[str, Any]]] = {False: [], True: []}
        for i in range(ROUNDS):   # alternating, so a slow spell of the machine falls on both
            for adapt in ((False, True) if i % 2 == 0 else (True, False)):
                rounds[adapt].append(run_pi2pi(clip, width, height, fps, results, adapt, i))
        ours, adapting = summary(rounds[False]), summary(rounds[True])
        gst = run_gstreamer(clip, width, height, fps, results)
        key = f"{width}x{height}@{fps:g}"
        figures[key] = {"pi2pi": ours, "pi2pi_adapt": adapting, "gstreamer": gst}
        for who, run in (("pi2pi", ours), ("+ --adapt", adapting)):
            spans = [f"{run[k]:g} ({run[k + '_range'][0]:g}-{run[k + '_range'][1]:g})"
                     for k in ("fps", "camera_cpu_pct", "viewer_cpu_pct")]
            lines.append(f"{key if who == 'pi2pi' else '':<14} {who:<10} {spans[0]:>20} {spans[1]:>20} {spans[2]:>20}")
        lines.append(f"{'':<14} {'GStreamer':<10} {gst['fps']:>20} {gst['sender_cpu_pct']:>20} "
                     f"{gst['receiver_cpu_pct']:>20}")
    print("\n".join(["pi2pi Pi-class video figures (hardware lab VM, TCG)"] + lines))
    out = Path(os.environ["PI2PI_HW_OUT"]) / "bench-pi-class.json"
    out.write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures))
    for entry in figures.values():
        assert entry["pi2pi"]["frames"] > 0 and entry["pi2pi_adapt"]["frames"] > 0 and entry["gstreamer"]["frames"] > 0
