"""The panel's logic without a display: what the status line says in each state, the
figures, the control command's runs, the picture read from a file framebuffer."""
from __future__ import annotations

import stat
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pi2pi import config, panel


def call_record(running: bool = True, flowing: bool = True, at: float = 100.0, frames: int = 30) -> dict:
    return {"call": "c1", "supervisor": "running" if running else "gone", "programs": {
        "viewer": {"running": True, "flowing": flowing, "at": at, "frames": frames, "latency_ms": 120.4,
                   "state": "connected"},
        "listen": {"running": True, "flowing": flowing, "at": at, "fill_ms": 60.0, "underruns": 2,
                   "state": "connected"},
        "camera": {"running": True, "at": at, "frames": frames, "state": "connected"},
        "talk": {"running": True, "at": at, "bytes": frames * 100, "state": "connected"},
    }}


REQUEST = {"media": ["video", "audio"], "by": "gwpi", "started": 1000.0}


def test_idle_then_calling_then_in_call_then_ended() -> None:
    idle = panel.view(panel.Look(0, None), None, None, "natpi", 0)
    assert idle.status == "Ready. Touch Call to call gwpi." and idle.tone == "idle" and not idle.in_call

    task = panel.Task("call", 0, line="waiting for gwpi's listeners (1.2 s)")
    busy = panel.view(panel.Look(0, None), None, task, "natpi", 0)
    assert busy.status == "Calling: waiting for gwpi's listeners (1.2 s)" and busy.tone == "busy"

    task.code = 0
    before = panel.Look(1000, call_record(at=100.0, frames=30), REQUEST)
    look = panel.Look(1001, call_record(at=102.0, frames=60), REQUEST)
    up = panel.view(look, before, task, "natpi", 1042.0)
    assert up.status == "In call with gwpi · called by gwpi · 00:42" and up.tone == "call" and up.in_call
    assert up.figures[0] == "video in  15.0 fps 120 ms"
    assert up.figures[1] == "audio in  60 ms, 2 gaps" and up.audio
    assert up.figures[2:] == ["video out 15.0 fps", "audio out 12 kbps"]
    assert all(len(line) <= 25 for line in up.figures)   # the left column's width

    hung = panel.view(panel.Look(2000, None), None, panel.Task("hangup", 0, code=0), "gwpi", 2000)
    assert hung.status == "Call ended. Touch Call to call natpi."


def test_a_failure_names_its_cause_and_a_dying_call_says_which_program() -> None:
    failed = panel.Task("call", 0, line="gwpi: tunnel down: nothing answers at localhost:2345", code=1)
    v = panel.view(panel.Look(0, None), None, failed, "natpi", 0)
    assert v.status == "Call failed: gwpi: tunnel down: nothing answers at localhost:2345" and v.tone == "failed"

    record = call_record()
    record["programs"]["viewer"].update(running=False, state="ended: killed by SIGKILL")
    v = panel.view(panel.Look(0, record, REQUEST), None, None, "natpi", 1001)
    assert "failing: viewer ended: killed by SIGKILL" in v.status and v.tone == "failed"

    waiting = panel.view(panel.Look(0, call_record(flowing=False), REQUEST), None, None, "natpi", 1001)
    assert waiting.status.endswith("waiting for video and audio")


def test_rates_need_two_different_snapshots() -> None:
    same = call_record(at=100.0)["programs"]
    assert panel.figures(same, same)[0] == "video in  - fps 120 ms"
    assert panel.per_second({"at": 3, "frames": 10}, {"at": 1, "frames": 20}, "frames") is None  # restarted


def test_the_control_command_runs_once_at_a_time_and_its_last_line_is_the_cause(tmp_path: Path) -> None:
    script = tmp_path / "control"
    gate = tmp_path / "gate"
    script.write_text(f"#!/bin/sh\necho \"asked: $*\"\nwhile [ ! -e {gate} ]; do sleep 0.01; done\n"
                      "echo 'gwpi: camera could not start: port taken'\nexit 1\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    seen = []
    control = panel.Control(f"{script} --by-test", seen.append)
    task = control.start("video")
    assert task is not None
    deadline = time.monotonic() + 10
    while task.line == "" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert task.line == "asked: --by-test call --video-only"   # the task's words, after the command's own
    assert control.busy() and control.start("call") is None     # one task at a time
    gate.touch()
    while task.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert task.code == 1 and task.line == "gwpi: camera could not start: port taken"
    missing = panel.Control(str(tmp_path / "absent"), seen.append)
    t = missing.start("hangup")
    while t.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert t.code == 127 and "cannot run" in t.line


def test_settings_are_checked() -> None:
    panel.Settings().validate()
    for bad in (panel.Settings(mode="tv"), panel.Settings(picture_fps=0), panel.Settings(control="ssh 'x")):
        with pytest.raises(config.ConfigError):
            bad.validate()
    viewer_file = SimpleNamespace(fb="/tmp/fb", fb_geometry="800x480x32")
    assert panel.picture_mode(panel.Settings(), viewer_file) == "desktop"
    assert panel.picture_mode(panel.Settings(), SimpleNamespace(fb="/dev/fb0", fb_geometry=None)) == "console"


@pytest.mark.parametrize("bpp", [16, 24, 32])
def test_the_picture_area_is_read_from_the_viewers_file_framebuffer(tmp_path: Path, bpp: int) -> None:
    from pi2pi.video.framebuffer import Framebuffer

    fb = Framebuffer.open(str(tmp_path / "fb"), f"800x480x{bpp}")
    picture = np.zeros((444, 592, 3 if bpp == 24 else 4), dtype=np.uint8)
    picture[:, :, 2] = 255            # red, in the BGR(X) order the decoder writes
    picture[100:200, 50:150, :3] = (255, 0, 0)   # a blue square
    fb.paint(picture, *panel.PICTURE_AT)
    fb.close()
    shown = panel.Picture(str(tmp_path / "fb"), f"800x480x{bpp}", panel.PICTURE_AT)
    ppm = shown.ppm()
    shown.close()
    header = b"P6 592 444 255\n"
    assert ppm.startswith(header)
    rgb = np.frombuffer(ppm[len(header):], dtype=np.uint8).reshape(444, 592, 3)
    assert tuple(rgb[10, 10]) == (255, 0, 0) and tuple(rgb[150, 100]) == (0, 0, 255)


def test_on_gwpi_an_ssh_that_cannot_connect_is_named_as_the_tunnel() -> None:
    down = panel.Task("call", 0, line="ssh: connect to host localhost port 2345: Connection refused", code=255)
    assert panel.view(panel.Look(0, None), None, down, "gwpi", 0).status == (
        "Call failed: the tunnel to natpi is down (ssh: connect to host localhost port 2345: Connection refused)")


def test_an_unchanged_picture_is_not_handed_to_tk_again(tmp_path: Path) -> None:
    from pi2pi.video.framebuffer import Framebuffer

    fb = Framebuffer.open(str(tmp_path / "fb"), "800x480x32")
    shown = panel.Picture(str(tmp_path / "fb"), "800x480x32", panel.PICTURE_AT)
    first = shown.changed_ppm()
    assert first is None and shown.unchanged == 1          # a black screen, as the last (none) was
    fb.paint(np.full((10, 10, 4), 200, dtype=np.uint8), *panel.PICTURE_AT)
    assert shown.changed_ppm() is not None                  # a new frame is
    assert shown.changed_ppm() is None and shown.unchanged == 2
    fb.close()
    shown.close()
