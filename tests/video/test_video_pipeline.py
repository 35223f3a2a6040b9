"""camera -> viewer over TCP on loopback, as a user runs them: the far framebuffer shows
who sent which frame, and both write their stats however they end."""
from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pi2pi import net
from tests.video.helpers import Program, expected_host, fb_rgb, free_port, label_at, read_stats

TOKEN = "0123456789abcdef-video-test-token"


def test_camera_dials_viewer_with_token_and_the_label_arrives(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o600)
    fb, geometry = tmp_path / "fb.raw", "640x480x32"
    viewer = Program(["viewer", "--listen", f"127.0.0.1:{port}", "--fb", str(fb), "--fb-geometry", geometry,
                      "--at", "100,50", "--stats", "stats", "--token-file", "token", "--once",
                      "--snapshot", "shown.png"], tmp_path)
    viewer.wait_for("listening on")
    camera = Program(["camera", "--source", "testpattern", "--size", "320x240", "--fps", "30", "--quality", "60",
                      "--connect", f"127.0.0.1:{port}", "--duration", "1.5", "--stats", "stats",
                      "--token-file", "token"], tmp_path)
    assert camera.finish() == 0, camera.log()
    assert viewer.finish() == 0, viewer.log()
    cam, view = read_stats(tmp_path / "stats", "camera"), read_stats(tmp_path / "stats", "viewer")
    assert cam["reason"] == "duration reached"
    assert view["reason"] == "peer gone"
    # 1.5 s at 30 fps is 45 frames; the camera's clock starts before it dials and proves the token
    assert cam["frames"] >= 20 and view["frames"] >= 20, (cam, view)
    assert view["received"] == cam["frames"] and view["corrupt"] == 0 and cam["corrupt"] == 0
    assert view["bytes"] == cam["bytes"]
    # Loopback: tens of ms at most; a bound for a stall of a loaded machine, not a benchmark
    # (latency is measured in make bench-video).
    assert 0 < view["latency_ms"]["p50"] < 200 and 0 < view["latency_ms"]["p99"] < 1000, view["latency_ms"]
    assert 10 <= view["fps"] <= 40 and view["kbps"] > 0  # paced at 30 fps
    # The last painted frame's label names this host and the last frame's sequence number.
    host, seq = label_at(fb_rgb(fb, geometry), (100, 50), (320, 240), (320, 240))
    assert host == expected_host()
    assert seq == view["shown_seq"] == view["last_seq"] and seq >= cam["frames"] - 1, (seq, view, cam)
    # Outside the picture the screen is untouched; the snapshot shows the same screen.
    screen = fb_rgb(fb, geometry)
    assert not screen[:50].any() and not screen[:, :100].any() and not screen[290:].any()
    snap = np.asarray(Image.open(tmp_path / "shown.png").convert("RGB"))
    assert np.array_equal(snap, screen)


def test_viewer_dials_a_listening_camera_into_a_small_16bpp_screen(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o600)
    fb, geometry = tmp_path / "fb.raw", "440x340x16"
    # The dialer starts first and retries until the listener answers: the camera starts only
    # once the viewer has logged a failed attempt (net.dial's line), so it connects on a retry.
    viewer = Program(["viewer", "--connect", f"127.0.0.1:{port}", "--fb", str(fb), "--fb-geometry", geometry,
                      "--at", "20,10", "--stats", "stats", "--token-file", "token"], tmp_path)
    viewer.wait_for(f"dial 127.0.0.1:{port}: ")
    camera = Program(["camera", "--listen", f"127.0.0.1:{port}", "--size", "640x480", "--fps", "25",
                      "--label", "gwpi-side", "--stats", "stats", "--token-file", "token", "--once"], tmp_path)
    viewer.wait_for("shown at scale 5/8")   # 640x480 fits 420x330 at 5/8: 400x300
    time.sleep(0.3)
    first = label_at(fb_rgb(fb, geometry), (20, 10), (400, 300), (640, 480))
    # A stranger dialing the listening camera meanwhile is challenged like anyone, answers
    # without the token, and is closed; the viewer keeps getting frames.
    stranger = socket.create_connection(("127.0.0.1", port), timeout=5)
    stranger.settimeout(5)
    challenge = stranger.recv(net.CHALLENGE_SIZE)
    assert challenge[:4] == net.CHALLENGE_MAGIC, challenge
    stranger.sendall(net.ANSWER_MAGIC + bytes(net.NONCE_SIZE + net.DIGEST_SIZE))
    assert stranger.recv(100) == b""  # no proof back, no media: closed
    camera.wait_for("not this call's token")
    stranger.close()
    time.sleep(0.5)
    assert viewer.stop(signal.SIGTERM) == 0, viewer.log()
    assert camera.finish() == 0, camera.log()  # --once: the viewer went, so the camera ends
    view, cam = read_stats(tmp_path / "stats", "viewer"), read_stats(tmp_path / "stats", "camera")
    assert view["reason"] == "signal SIGTERM" and cam["reason"] == "peer gone"
    assert cam["unproven"] == 1 and cam["refused"] == 0 and cam["reconnects"] == 0 and cam["corrupt"] == 0
    assert view["scale"] == "5/8" and view["fb_geometry"] == "440x340x16"
    host, seq = label_at(fb_rgb(fb, geometry), (20, 10), (400, 300), (640, 480))
    assert host == "GWPI-SIDE" and first[0] == "GWPI-SIDE"
    assert seq > first[1] and seq == view["shown_seq"]
    assert view["frames"] >= 10 and cam["frames"] >= view["frames"]


def test_viewer_takes_the_camera_back_after_it_restarts(tmp_path: Path) -> None:
    port = free_port()
    fb, geometry = tmp_path / "fb.raw", "320x240x32"
    viewer = Program(["viewer", "--listen", str(port), "--fb", str(fb), "--fb-geometry", geometry,
                      "--stats", "stats"], tmp_path)
    viewer.wait_for("listening on")
    for name in ("first-camera", "second-camera"):
        camera = Program(["camera", "--connect", f"127.0.0.1:{port}", "--size", "320x240", "--fps", "20",
                          "--label", name, "--duration", "0.7", "--stats", f"stats-{name}"], tmp_path)
        assert camera.finish() == 0, camera.log()
        viewer.wait_for("the peer closed the connection", count=1 if name == "first-camera" else 2)
        host, _ = label_at(fb_rgb(fb, geometry), (0, 0), (320, 240), (320, 240))
        assert host == name.upper()
    assert viewer.stop() == 0
    view = read_stats(tmp_path / "stats", "viewer")
    assert view["reconnects"] == 1 and view["corrupt"] == 0
    sent = sum(read_stats(tmp_path / f"stats-{n}", "camera")["frames"] for n in ("first-camera", "second-camera"))
    assert view["received"] == sent


def test_a_users_mistakes_get_a_message_not_a_traceback(tmp_path: Path) -> None:
    cases = [
        (["viewer", "--listen", "5999", "--fb", str(tmp_path / "plain-file")], "give --fb-geometry"),
        (["viewer", "--listen", "5999", "--fb", "x", "--fb-geometry", "640x480x8"], "bpp 16, 24 or 32"),
        (["viewer", "--listen", "5999", "--fb", "x", "--fb-geometry", "64x48x32", "--at", "70,0"], "outside"),
        (["viewer", "--listen", "5999", "--fb", "x", "--fb-geometry", "64x48x32", "--at", "ten"], "want X,Y"),
        (["camera", "--connect", "127.0.0.1:5999", "--quality", "0"], "quality 0"),
        (["camera", "--connect", "127.0.0.1:5999", "--size", "big"], "WIDTHxHEIGHT"),
        (["camera"], "--connect HOST:PORT or --listen"),
    ]
    for args, message in cases:
        program = Program(args + ["--stats", "stats"], tmp_path)
        assert program.finish() == 2, program.log()
        assert message in program.log() and "Traceback" not in program.log(), program.log()


def test_missing_camera_device_ends_with_a_clear_reason(tmp_path: Path) -> None:
    camera = Program(["camera", "--source", "/dev/video-none", "--connect", "127.0.0.1:5999",
                      "--stats", "stats"], tmp_path)
    assert camera.finish() == 1
    assert "/dev/video-none" in camera.log() and "Traceback" not in camera.log()
    assert "No such file" in read_stats(tmp_path / "stats", "camera")["reason"]


def test_a_viewer_nobody_calls_still_ends_at_its_duration(tmp_path: Path) -> None:
    viewer = Program(["viewer", "--listen", f"127.0.0.1:{free_port()}", "--fb", "fb.raw", "--fb-geometry",
                      "64x48x32", "--duration", "0.5", "--stats", "stats", "--snapshot", "shown.png"], tmp_path)
    started = time.monotonic()
    assert viewer.finish(10) == 0, viewer.log()
    assert time.monotonic() - started < 5
    view = read_stats(tmp_path / "stats", "viewer")
    assert view["reason"] == "duration reached" and view["frames"] == 0
    assert np.asarray(Image.open(tmp_path / "shown.png")).shape == (48, 64, 3)
