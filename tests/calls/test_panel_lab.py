"""The touch panel in the lab, touched as a user touches it.

Each Pi gets an X server at the panel's 800x480 (Xvfb, in the Pi's own
namespaces, as its user) and the provisioned `pi2pi panel`. xdotool touches the
buttons where the panel draws them; the evidence is the screen read back
(ImageGrab inside the Pi): the status bar's colour (idle, calling, in call,
failed), the other side's name and rising frame number in the picture area, and
the stats the controller fetched. With PI2PI_SCREENSHOTS=DIR the states are
saved there (docs/ has the committed ones).

One lab, provisioned once, for both parts: first gwpi's panel key as its
control command uses it (below), then the panels on their screens.
"""
from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pytest
from PIL import Image

from pi2pi import panel
from tests.calls.handover import SharedSite
from tests.calls.lab_call import (AT, FRAME, REPO, STORE, TUNNEL_UNIT, fab, far_picture_moves, live, picture_moves,
                                  screen_label, shows)
from tests.calls.sides import wait_for
from tests.lab.lab import Lab, LabProcess
from tests.video.helpers import label_at

DISPLAY = ":5"
PI2PI = "/usr/local/bin/pi2pi"
TONES = {tone: tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5)) for tone, (colour, _) in panel.TONES.items()}
BUTTONS = ("call", "video", "audio", "hangup", "mute")


def button_centre(name: str) -> Tuple[int, int]:
    index = BUTTONS.index(name)
    y = panel.PICTURE_AT[1] + 4 + index * (panel.BUTTON_H + 4) + panel.BUTTON_H // 2
    return panel.LEFT_W // 2, y


class Screen:
    """One Pi's X server and panel."""

    def __init__(self, lab: Lab, host: str) -> None:
        self.lab, self.host = lab, host
        self.log = open(lab.unit_log(host, "pi2pi-panel"), "ab")
        self.xvfb = lab.popen(host, ["Xvfb", DISPLAY, "-screen", "0", "800x480x24", "-nolisten", "tcp"],
                              user="pi", stdout=self.log, stderr=self.log)
        wait_for(lambda: lab.host_path(host, f"/tmp/.X11-unix/X{DISPLAY[1:]}").exists(), 15,
                 f"{host}'s X server")
        self.panel: LabProcess = self.start_panel()

    def start_panel(self, *args: str) -> LabProcess:
        self.panel = self.lab.popen(self.host, [PI2PI, "panel", "-v", *args], user="pi",
                                    env={"DISPLAY": DISPLAY}, stdout=self.log, stderr=self.log)
        wait_for(lambda: self.tone() == "idle", 30, f"{self.host}'s panel, idle")
        return self.panel

    def grab(self) -> np.ndarray:
        """The whole screen as RGB, read inside the Pi from its X server."""
        shot = "/tmp/panel-screen.png"
        self.lab.run(self.host, [f"{REPO}/.venv/bin/python", "-c",
                                 f"from PIL import ImageGrab; ImageGrab.grab(xdisplay={DISPLAY!r}).save({shot!r})"],
                     user="pi", timeout=30)
        with Image.open(self.lab.host_path(self.host, shot)) as image:
            return np.asarray(image.convert("RGB"))

    def tone(self) -> str:
        """The status bar's state, from its colour."""
        pixel = tuple(int(v) for v in self.grab()[panel.PICTURE_AT[1] // 2, 790])
        return next((tone for tone, colour in TONES.items() if colour == pixel), f"unknown {pixel}")

    def wait_tone(self, tone: str, timeout_s: float = 45) -> None:
        wait_for(lambda: self.tone() == tone, timeout_s, f"{self.host}'s status bar to show {tone!r}", step_s=0.3)

    def touch(self, button: str) -> None:
        x, y = button_centre(button)
        self.lab.run(self.host, ["xdotool", "mousemove", str(x), str(y), "click", "1"], user="pi",
                     env={"DISPLAY": DISPLAY})

    def picture_area(self) -> np.ndarray:
        x, y = panel.PICTURE_AT
        return self.grab()[y:y + panel.PICTURE_SIZE[1], x:x + panel.PICTURE_SIZE[0]]

    def picture_label(self) -> Tuple[str, int]:
        """The name and frame number the panel's window shows in its picture area."""
        return label_at(self.grab(), AT, FRAME, FRAME)

    def window_moves(self, far: str, timeout_s: float = 20) -> Tuple[int, int]:
        return picture_moves(self.picture_label, far, f"{self.host}'s panel", timeout_s, step_s=0.2)

    def save(self, name: str) -> None:
        target = os.environ.get("PI2PI_SCREENSHOTS")
        if target:
            Image.fromarray(self.grab()).save(Path(target) / f"panel-{name}.png")

    def stop_panel(self) -> None:
        self.panel.terminate()
        self.panel.wait(10)

    def close(self) -> None:
        for proc in (self.panel, self.xvfb):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def screens(site: Lab) -> Iterator[Dict[str, Screen]]:
    assert shutil.which("Xvfb") and shutil.which("xdotool"), "Xvfb and xdotool come with make setup-test"
    lab = site
    shown = {host: Screen(lab, host) for host in ("natpi", "gwpi")}
    yield shown
    fab(lab, "hangup")
    for screen in shown.values():
        screen.close()


# ----- gwpi's panel key, through the tunnel ----------------------------------------

# gwpi's panel key in the lab: what natpi's sshd lets it do through the tunnel.
#
# Everything runs as gwpi's panel runs it: the `[panel] control` command that
# site.yml rendered into gwpi's config (an ssh through the reverse tunnel to
# natpi's sshd with the panel's own key), split like the panel splits it, as
# gwpi's pi, the task's words appended. natpi's sshd answers that key only with
# the forced command controller/panel_remote.py: the panel's words reach fab
# (a call placed as gwpi, seen so by both Pis; a hang-up that ends it for both);
# a shell, any other command and any forwarding are refused, next to a positive
# control that works over the same path.

CONFIG = "/etc/pi2pi/pi2pi.conf"
HOME = "/home/pi"
PANEL_KEY = f"{HOME}/.ssh/pi2pi_panel"
PANEL_LOG = f"{HOME}/.local/state/pi2pi/panel-remote.log"
TUNNEL_PORT = 2345
FORWARD_PORT = 9999
REFUSED = "pi2pi panel: refused: "


def panel_config(lab: Lab, host: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(lab.run(host, f"cat {CONFIG}").stdout)
    return parser["panel"]


def control(lab: Lab) -> List[str]:
    """gwpi's panel command, split as the panel splits it (no shell)."""
    return shlex.split(panel_config(lab, "gwpi")["control"])


def from_gwpi(lab: Lab, *words: str, options: Sequence[str] = (), stdin: Optional[str] = "",
              timeout: float = 150) -> subprocess.CompletedProcess:
    """The panel's command on gwpi as pi with these words; ssh options go before its destination."""
    argv = control(lab)
    argv = [*argv[:-1], *options, argv[-1], *words]
    return lab.run("gwpi", argv, user="pi", check=False, timeout=timeout, input=stdin)


def pi_status(lab: Lab, host: str) -> Dict[str, object]:
    result = lab.run(host, "pi2pi status --json", user="pi", check=False)
    assert result.returncode == 0, shows(result)
    return json.loads(result.stdout)


def tunnel_up(lab: Lab) -> bool:
    """gwpi's localhost:2345 answers with an ssh banner (the reverse tunnel to natpi's sshd)."""
    tunnel = pi_status(lab, "gwpi")["tunnel"]
    return tunnel["up"] is True


def banner(lab: Lab, port: int) -> str:
    """What gwpi reads first from its own localhost:port (an sshd says SSH-2.0-...)."""
    return lab.run("gwpi", f"timeout 5 socat -u TCP:127.0.0.1:{port},connect-timeout=3 - | head -c 20",
                   check=False, timeout=20).stdout.strip()


@pytest.fixture(scope="module")
def site(shared_site: SharedSite) -> Iterator[Lab]:
    # The package's lab provisioned for direct (tests/calls/conftest.py): the lab inventory
    # turns the panel role on; the tunnel unit runs.
    lab = shared_site.ready("direct")
    wait_for(lambda: tunnel_up(lab), 30, "the tunnel (gwpi's localhost:2345 leading to natpi's sshd)", step_s=1)
    yield lab


def test_the_panel_is_provisioned_with_gwpis_own_key_and_natpis_pinned_host_key(site: Lab) -> None:
    lab = site
    # The key is made on gwpi and stays its user's alone.
    assert lab.run("gwpi", f"stat -c '%a %U' {PANEL_KEY}").stdout.strip() == "600 pi"
    public = lab.run("gwpi", f"cut -d' ' -f2 {PANEL_KEY}.pub").stdout.strip()
    # natpi's host key, pinned for the panel where it meets natpi's sshd: at the tunnel's end.
    natpi_key = lab.run("natpi", "cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub").stdout.strip()
    pinned = lab.run("gwpi", f"grep -v '^#' {HOME}/.ssh/pi2pi_panel_known_hosts").stdout.split("\n")
    assert f"[localhost]:{TUNNEL_PORT} {natpi_key}" in pinned, pinned
    # natpi takes that key as restrict + the forced command, and nothing looser.
    lines = [line for line in lab.run("natpi", f"cat {HOME}/.ssh/authorized_keys").stdout.splitlines()
             if public in line]
    assert lines == [f'restrict,command="{REPO}/.venv/bin/python {REPO}/controller/panel_remote.py --by gwpi '
                     f'--inventory {REPO}/inventory/lab" ssh-ed25519 {public} pi2pi-panel@gwpi'], lines
    # Each panel's command, and the launcher where the seed's confGUI sat (no kiosk in the lab).
    assert panel_config(lab, "natpi")["control"] == (f"env PI2PI_INVENTORY={REPO}/inventory/lab "
                                                     f"{REPO}/.venv/bin/fab -r {REPO}")
    assert control(lab) == ["ssh", "-i", PANEL_KEY, "-p", str(TUNNEL_PORT), "-o", "BatchMode=yes",
                            "-o", "IdentitiesOnly=yes",
                            "-o", f"UserKnownHostsFile={HOME}/.ssh/pi2pi_panel_known_hosts",
                            "-o", "StrictHostKeyChecking=yes", "pi@localhost"]
    for host in ("natpi", "gwpi"):
        launcher = lab.run(host, f"cat {HOME}/Desktop/pi2pi-panel.desktop").stdout
        assert "Exec=/usr/local/bin/pi2pi panel" in launcher.splitlines(), (host, launcher)
        assert "fullscreen" not in panel_config(lab, host)
        assert lab.run(host, f"test -e {HOME}/.config/autostart/pi2pi-panel.desktop", check=False).returncode == 1


def test_the_panel_key_reaches_fab_status_and_nothing_else(site: Lab) -> None:
    lab = site
    # Positive control: the same path (tunnel, key, pinned host key, forced command) works.
    status = from_gwpi(lab, "status", "--json")
    assert status.returncode == 0, shows(status)
    assert set(json.loads(status.stdout)["pis"]) == {"natpi", "gwpi"}
    text = from_gwpi(lab, "status")
    assert text.returncode == 0 and "inventory: " in text.stdout, shows(text)

    refused = {
        "no command (a shell)": [],
        "another command": ["id"],
        "a shell's list": ["status; id"],
        "more arguments": ["hangup", "&&", "id"],
        "a caller of its own": ["call", "--by", "natpi"],
        "another fab task": ["stats"],
    }
    for what, words in refused.items():
        result = from_gwpi(lab, *words, timeout=30)
        assert result.returncode == 2, (what, shows(result))
        assert REFUSED in result.stderr and "uid=" not in result.stdout, (what, shows(result))
    # A pty asked for with force: refused (restrict), and the forced command gives no shell either.
    forced = from_gwpi(lab, options=["-tt"], stdin="id\nexit\n", timeout=30)
    assert forced.returncode != 0 and "uid=" not in forced.stdout + forced.stderr, shows(forced)
    # Each refusal is in natpi's log, escaped on one line.
    log = lab.run("natpi", f"cat {PANEL_LOG}").stdout
    assert "not one of the panel's commands: 'status; id'" in log and "a shell (no command)" in log, log
    # And no call came of any of it.
    assert pi_status(lab, "natpi")["call"] is None and pi_status(lab, "gwpi")["call"] is None


def test_the_panel_key_forwards_nothing(site: Lab) -> None:
    lab = site
    # Positive control: natpi's sshd, which the forward would lead to, answers through the tunnel.
    assert banner(lab, TUNNEL_PORT).startswith("SSH-2.0-")
    forward = lab.popen("gwpi", [*control(lab)[:-1], "-N", "-L", f"127.0.0.1:{FORWARD_PORT}:localhost:22",
                                 control(lab)[-1]],
                        user="pi", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: f"127.0.0.1:{FORWARD_PORT}" in lab.run("gwpi", "ss -Hltn").stdout, 15,
                 "the panel ssh's local listener (the client's end of -L)", step_s=0.5)
        assert banner(lab, FORWARD_PORT) == ""   # the client listens; natpi's sshd opens nothing
    finally:
        forward.terminate()
        _, err = forward.communicate(timeout=15)
    assert "administratively prohibited" in err, err
    # Nor may it listen on natpi (-R).
    listen = from_gwpi(lab, options=["-N", "-o", "ExitOnForwardFailure=yes",
                                     "-R", "127.0.0.1:9998:localhost:22"], stdin=None, timeout=30)
    assert listen.returncode != 0 and "forwarding failed" in listen.stderr, shows(listen)
    assert "127.0.0.1:9998" not in lab.run("natpi", "ss -Hltn").stdout


def test_a_call_placed_from_gwpi_says_so_on_both_pis_and_gwpis_hangup_ends_it(site: Lab) -> None:
    lab = site
    placed = from_gwpi(lab, "call", "--audio-only")
    assert placed.returncode == 0, shows(placed)
    assert " is up: audio both ways" in placed.stdout and "placed by gwpi" in placed.stdout, shows(placed)
    call = placed.stdout.split(" is up")[0].rsplit("call ", 1)[1]
    for host in ("natpi", "gwpi"):
        up = pi_status(lab, host)["call"]
        assert up is not None and up["call"] == call and up["by"] == "gwpi", (host, up)
        assert set(up["programs"]) == {"talk", "listen"}, (host, up)
    # natpi's own fab and gwpi's panel both say who placed it.
    status = fab(lab, "status")
    assert status.returncode == 0 and f"call {call} placed by gwpi: " in status.stdout, shows(status)
    seen = json.loads(from_gwpi(lab, "status", "--json").stdout)
    assert {pi["call"]["by"] for pi in seen["pis"].values()} == {"gwpi"}, seen

    # Some audio both ways (each listen has received packets), so the hang-up has stats to fetch.
    for host in ("natpi", "gwpi"):
        wait_for(lambda: int(live(lab, host, call, "listen").get("packets", 0)) > 0, 15,
                 f"{host}'s listen to receive audio")
    ended = from_gwpi(lab, "hangup")
    assert ended.returncode == 0 and f"call {call} ended" in ended.stdout, shows(ended)
    for host in ("natpi", "gwpi"):
        assert pi_status(lab, host)["call"] is None, host
        # fab on natpi fetched both sides' call directories, as for its own hang-up.
        assert lab.host_path("natpi", f"{STORE}/{call}/{host}/summary.json").exists(), host


# ----- the panels on their screens ----------------------------------------------


def call_by(lab: Lab, host: str) -> str:
    call = pi_status(lab, host)["call"]
    assert call is not None, f"no call up on {host}"
    return json.loads(lab.host_path(host, f"{call['dir']}/call.json").read_text()).get("by")


def test_a_call_touched_on_natpi_shows_each_picture_in_the_other_window_and_gwpi_hangs_up(
        lab: Lab, screens: Dict[str, Screen]) -> None:
    natpi, gwpi = screens["natpi"], screens["gwpi"]
    natpi.save("idle")
    natpi.touch("call")
    natpi.wait_tone("busy", 10)
    natpi.save("calling")
    natpi.wait_tone("call")
    gwpi.wait_tone("call", 10)     # the called side sees the incoming call
    assert call_by(lab, "gwpi") == "natpi" and call_by(lab, "natpi") == "natpi"
    natpi.window_moves("gwpi")     # desktop mode: gwpi's picture inside natpi's window
    gwpi.window_moves("natpi")
    natpi.wait_tone("call")        # figures with rates: a second reading after the picture moved
    natpi.save("in-call")
    call = last_call_id(lab)
    gwpi.touch("hangup")           # the called side's hang-up ends it for both
    gwpi.wait_tone("idle")
    natpi.wait_tone("idle", 15)
    # The picture goes with the call (it was there above: window_moves).
    wait_for(lambda: natpi.picture_area().max() == 0, 10, "natpi's picture area cleared after the call")
    assert pi_status(lab, "natpi")["call"] is None
    fetched = lab.host_path("natpi", f"{STORE}/{call}")
    for host in ("natpi", "gwpi"):
        for program in ("camera", "viewer", "talk", "listen"):
            assert (fetched / host / f"{program}.json").exists(), f"{host}'s {program} stats were not fetched"


def test_a_call_touched_on_gwpi_goes_through_natpi_and_natpi_hangs_up(
        lab: Lab, screens: Dict[str, Screen]) -> None:
    natpi, gwpi = screens["natpi"], screens["gwpi"]
    gwpi.touch("audio")
    gwpi.wait_tone("call")
    natpi.wait_tone("call", 10)
    assert call_by(lab, "natpi") == "gwpi" and call_by(lab, "gwpi") == "gwpi"
    # Audio only: nothing is painted, the picture areas stay black.
    assert int(gwpi.picture_area().max()) == 0
    # Mute on gwpi's panel: gwpi's talk goes on sending, silence (docs/audio.md; the
    # sound itself is analysed in tests/audio/test_controls.py).
    assert talk_live(lab, "gwpi").get("muted") is False     # the control: not muted before the touch
    gwpi.touch("mute")
    wait_for(lambda: talk_live(lab, "gwpi").get("muted") is True, 10, "gwpi's talk muted by the panel")
    natpi.touch("hangup")
    natpi.wait_tone("idle")
    gwpi.wait_tone("idle", 15)


def test_console_mode_leaves_the_picture_to_the_framebuffer(lab: Lab, screens: Dict[str, Screen]) -> None:
    natpi = screens["natpi"]
    natpi.stop_panel()
    natpi.start_panel("--mode", "console")
    try:
        natpi.touch("video")
        natpi.wait_tone("call")
        far_picture_moves(lab, "natpi", "gwpi")          # the viewer painted the (file) framebuffer
        assert int(natpi.picture_area().max()) == 0, "in console mode the panel must leave the picture area to the viewer"
        assert screen_label(lab, "natpi")[0] == "GWPI"   # positive control: the picture is there, in the fb
        natpi.touch("hangup")
        natpi.wait_tone("idle")
    finally:
        natpi.stop_panel()
        natpi.start_panel()


def test_a_failed_call_names_its_cause_on_the_panel(lab: Lab, screens: Dict[str, Screen]) -> None:
    gwpi = screens["gwpi"]
    gwpi.wait_tone("idle", 15)                 # gwpi's panel has seen the last test's call end
    lab.stop_unit("natpi", TUNNEL_UNIT)        # gwpi's panel reaches natpi only through the tunnel
    try:
        gwpi.touch("call")
        gwpi.wait_tone("failed", 30)
        gwpi.save("failed")
        # The panel's log has the status line's words: the tunnel named as the cause.
        log = lab.unit_log("gwpi", "pi2pi-panel")
        try:
            wait_for(lambda: "the tunnel to natpi is down" in log.read_text(errors="replace"), 10,
                     "the panel's log to name the tunnel", step_s=0.2)
        except AssertionError:
            raise AssertionError(log.read_text(errors="replace")[-2000:]) from None
        assert screens["natpi"].tone() == "idle"
    finally:
        lab.start_unit("natpi", TUNNEL_UNIT)
    wait_for(lambda: tunnel_up(lab), 30, "the tunnel back", step_s=1)


def talk_live(lab: Lab, host: str) -> dict:
    return pi_status(lab, host)["call"]["programs"]["talk"]


def last_call_id(lab: Lab) -> str:
    return pi_status(lab, "natpi")["call"]["call"]
