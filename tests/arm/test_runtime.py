"""The runtime on emulated Raspberry Pi OS-like roots (Debian bookworm armhf and
arm64, bullseye armhf with Python 3.9), installed offline from the wheelhouse as
the runtime role installs it; camera -> viewer and talk -> listen run there and
are checked as on the host: the framebuffer file's pixels read back, the
recording analysed (the host tests' own helpers and checks).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from tests.arm.pi import VENV, EmulatedPi
from tests.audio.test_audio_call import CHIRP_TALK_S, check_chirp_heard, chirp_input, run_call
from tests.video.helpers import Program, expected_host, fb_rgb, free_port, label_at, read_stats

PYTHON = {"bookworm": "3.11", "bullseye": "3.9"}
MACHINE = {"armhf": "armv7l", "arm64": "aarch64"}
START_S = 120   # a program's start under emulation (Python, numpy, the native libraries)


def test_runtime_installs_offline_from_the_wheelhouse(pi: EmulatedPi) -> None:
    for done in pi.installed:
        assert done.returncode == 0, f"{done.args}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    machine, version = pi.python("import platform; print(platform.machine(), platform.python_version())").split()
    assert machine == MACHINE[pi.arch] and version.startswith(PYTHON[pi.suite] + "."), (machine, version)
    assert pi.run([f"{VENV}/bin/pi2pi", "--version"]).stdout.strip()
    where = pi.run([f"{VENV}/bin/python", "-c", "import alsaaudio, numpy; print(alsaaudio.__file__); print(numpy.__file__)"])
    assert where.returncode == 0, where.stderr
    alsa, numpy_file = where.stdout.split()
    # pyalsaaudio came as its sdist and was compiled here for this architecture;
    # numpy is Debian's (the venv sees the system site packages).
    assert alsa.startswith("/opt/pi2pi/venv/") and alsa.endswith(".so"), alsa
    assert any((pi.root / "opt/pi2pi/wheelhouse").glob("pyalsaaudio-*.tar.gz"))
    assert numpy_file.startswith("/usr/lib/python3/dist-packages/"), numpy_file


def test_camera_picture_is_painted_on_the_file_framebuffer(pi: EmulatedPi, tmp_path) -> None:
    port = free_port()
    fb, geometry, at, size = tmp_path / "fb.raw", "640x480x32", (100, 50), (320, 240)
    stats = tmp_path / "stats"
    viewer = Program(["viewer", "--listen", f"127.0.0.1:{port}", "--fb", str(fb), "--fb-geometry", geometry,
                      "--at", f"{at[0]},{at[1]}", "--stats", str(stats), "--once",
                      "--snapshot", str(tmp_path / "shown.png")], tmp_path, pi.pi2pi())
    viewer.wait_for("listening on", START_S)
    camera = Program(["camera", "--source", "testpattern", "--size", f"{size[0]}x{size[1]}", "--fps", "10",
                      "--quality", "60", "--connect", f"127.0.0.1:{port}", "--duration", "3",
                      "--stats", str(stats)], tmp_path, pi.pi2pi())
    assert camera.finish(START_S) == 0, camera.log()
    assert viewer.finish(60) == 0, viewer.log()
    cam, view = read_stats(stats, "camera"), read_stats(stats, "viewer")
    assert cam["reason"] == "duration reached" and view["reason"] == "peer gone"
    assert cam["frames"] >= 5, cam
    assert view["received"] == cam["frames"] and view["corrupt"] == 0 and cam["corrupt"] == 0
    assert view["bytes"] == cam["bytes"]
    # The last painted frame's label names this host (the chroot shares it) and the last frame.
    screen = fb_rgb(fb, geometry)
    host, seq = label_at(screen, at, size, size)
    assert host == expected_host()
    assert seq == view["shown_seq"] == view["last_seq"] and seq >= cam["frames"] - 1, (seq, view, cam)
    # Outside the picture the screen is untouched; the snapshot shows the same screen.
    assert not screen[:at[1]].any() and not screen[:, :at[0]].any() and not screen[at[1] + size[1]:].any()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "shown.png").convert("RGB")), screen)


def test_talk_to_listen_carries_the_chirp_whole(pi: EmulatedPi, tmp_path) -> None:
    signal_in = chirp_input()
    talk, listen, heard = run_call(tmp_path, signal_in, CHIRP_TALK_S, command=pi.pi2pi())
    check_chirp_heard(signal_in, talk, listen, heard)
