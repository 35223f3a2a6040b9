"""A call in the lab driven as its user drives it: `fab` on natpi as pi, and
the evidence a user would look at: the picture on each screen (read back from
the file framebuffer), the sound each side recorded, the stats fetched."""
from __future__ import annotations

import json
import subprocess
import wave
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from pi2pi.audio import testsignal
from tests.calls.sides import wait_for
from tests.lab.lab import ADDR, Lab
from tests.provision.helpers import REPO, build_wheelhouse, playbook_command
from tests.video.helpers import fb_rgb, label_at

GW = ADDR["gw_public"]
TUNNEL_UNIT = "/etc/systemd/system/pi2pi-tunnel.service"
FB, FB_GEOMETRY, AT, FRAME = "/var/lib/pi2pi/fb", "800x480x32", (208, 36), (320, 240)
STORE = "/home/pi/.local/state/pi2pi/controller"
CALLS = "/var/lib/pi2pi/calls"
PORTS = {"video_natpi_to_gwpi": 5010, "video_gwpi_to_natpi": 5000, "audio_natpi_to_gwpi": 1350,
         "audio_gwpi_to_natpi": 1360}


def fab(lab: Lab, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`.venv/bin/fab ARGS` on natpi as pi, from the repository (the controller)."""
    command = f"cd {REPO} && .venv/bin/fab {' '.join(args)}"
    return lab.run("natpi", command, user="pi", check=False, timeout=timeout)


def shows(result: subprocess.CompletedProcess) -> str:
    return f"rc={result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-2000:]}"


def provision(lab: Lab, transport: Optional[str] = None) -> None:
    """site.yml from natpi as the administrator runs it, then the tunnel unit started
    (systemd's part, in a lab without systemd; a changed unit is restarted)."""
    build_wheelhouse()
    extra = ("-e", f"pi2pi_transport={transport}") if transport else ()
    result = lab.run("natpi", playbook_command("site.yml", *extra), user="pi", check=False, timeout=600)
    assert result.returncode == 0, shows(result)
    lab.start_unit("natpi", TUNNEL_UNIT)
    if transport == "tunnel":
        wait_for(lambda: all(f"127.0.0.1:{p}" in lab.run("natpi", "ss -Hltn").stdout for p in PORTS.values()),
                 30, "the tunnel's media forwards on natpi")


def screen_label(lab: Lab, host: str) -> Tuple[str, int]:
    """The name and frame number in the picture on the host's screen."""
    rgb = fb_rgb(lab.host_path(host, FB), FB_GEOMETRY)
    return label_at(rgb, AT, FRAME, FRAME)


def label_or_none(read: Callable[[], Tuple[str, int]]) -> Optional[Tuple[str, int]]:
    """read()'s name and frame number, or None while the picture has none to read: not
    painted yet (black), or a smaller one while the camera follows a slow link."""
    try:
        return read()
    except ValueError:
        return None


def picture_moves(read: Callable[[], Tuple[str, int]], far: str, where: str, timeout_s: float,
                  step_s: float = 0.05, after: int = -1, rise: int = 1) -> Tuple[int, int]:
    """`where` shows far's name with a frame number above `after`, then one at least `rise`
    above that; the two numbers seen. A picture with no label to read yet is waited for,
    like one of another host."""
    def showing(least: int) -> Optional[Tuple[str, int]]:
        label = label_or_none(read)
        return label if label is not None and label[0] == far.upper() and label[1] >= least else None

    first = wait_for(lambda: showing(after + 1), timeout_s, f"{where} to show {far}'s picture", step_s)
    later = wait_for(lambda: showing(first[1] + rise), timeout_s, f"{far}'s frame numbers to rise in {where}", step_s)
    return first[1], later[1]


def far_picture_moves(lab: Lab, host: str, far: str, timeout_s: float = 15) -> Tuple[int, int]:
    """The host's screen shows far's name with a frame number that rises; the two numbers seen."""
    return picture_moves(lambda: screen_label(lab, host), far, f"{host}'s screen", timeout_s)


def placed_call(lab: Lab, *args: str) -> str:
    """`fab call ARGS`, which must succeed; the call's id."""
    placed = fab(lab, "call", *args)
    assert placed.returncode == 0, shows(placed)
    return placed.stdout.split(" is up")[0].rsplit("call ", 1)[1]


def recording(lab: Lab, call: str, host: str) -> Tuple[np.ndarray, int]:
    """The host's listen recording, as fetched to the controller: (samples, rate)."""
    with wave.open(str(lab.host_path("natpi", f"{STORE}/{call}/{host}/listen.wav")), "rb") as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2"), wav.getframerate()


def heard(lab: Lab, call: str, host: str, last_s: Optional[float] = None) -> str:
    """Whose test signal the host's listen recorded (in its last `last_s` seconds if given)."""
    pcm, rate = recording(lab, call, host)
    if last_s is not None:
        pcm = pcm[-int(last_s * rate):]
    return testsignal.read_label(pcm, rate) or "nothing readable"


def last_call(lab: Lab) -> str:
    return sorted(p.name for p in lab.host_path("natpi", STORE).iterdir())[-1]


def directions(lab: Lab, call: Optional[str] = None) -> Dict[str, dict]:
    result = fab(lab, "stats", "--json", *(("--call", call) if call else ()))
    assert result.returncode == 0, shows(result)
    return json.loads(result.stdout)


def site_status(lab: Lab) -> Dict[str, object]:
    result = fab(lab, "status", "--json")
    assert result.returncode == 0, shows(result)
    return json.loads(result.stdout)


def live(lab: Lab, host: str, call: str, program: str) -> Dict[str, object]:
    """A running program's live snapshot on its Pi ({} while there is none)."""
    try:
        return json.loads(lab.host_path(host, f"{CALLS}/{call}/{program}.live.json").read_text())
    except (OSError, ValueError):
        return {}
