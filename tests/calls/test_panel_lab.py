"""The touch panel in the lab, touched as a user touches it.

Each Pi gets an X server at the panel's 800x480 (Xvfb, in the Pi's own
namespaces, as its user) and the provisioned `pi2pi panel`. xdotool touches the
buttons where the panel draws them; the evidence is the screen read back
(ImageGrab inside the Pi): the status bar's colour (idle, calling, in call,
failed), the other side's name and rising frame number in the picture area, and
the stats the controller fetched. With PI2PI_SCREENSHOTS=DIR the states are
saved there (docs/ has the committed ones).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, Iterator, Tuple

import numpy as np
import pytest
from PIL import Image

from pi2pi import panel
from tests.calls.lab_call import (AT, FRAME, REPO, STORE, TUNNEL_UNIT, fab, far_picture_moves, provision,
                                  screen_label)
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
        first = wait_for(lambda: (lambda s: s if s[0] == far.upper() else None)(self.picture_label()), timeout_s,
                         f"{self.host}'s panel to show {far}'s picture", step_s=0.2)
        later = wait_for(lambda: (lambda s: s if s[0] == far.upper() and s[1] > first[1] else None)(
            self.picture_label()), timeout_s, f"{far}'s frame numbers to rise in {self.host}'s panel", step_s=0.2)
        return first[1], later[1]

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
def screens(lab: Lab) -> Iterator[Dict[str, Screen]]:
    assert shutil.which("Xvfb") and shutil.which("xdotool"), "Xvfb and xdotool come with make setup"
    provision(lab)   # the lab inventory turns the panel role on
    shown = {host: Screen(lab, host) for host in ("natpi", "gwpi")}
    yield shown
    fab(lab, "hangup")
    for screen in shown.values():
        screen.close()


def call_by(lab: Lab, host: str) -> str:
    out = lab.run(host, f"{PI2PI} status --json", user="pi").stdout
    call = json.loads(out)["call"]
    assert call is not None, out
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
    assert lab.run("natpi", f"{PI2PI} status --json", user="pi").stdout.count('"call": null') == 1
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
    lab.stop_unit("natpi", TUNNEL_UNIT)        # gwpi's panel reaches natpi only through the tunnel
    try:
        gwpi.touch("call")
        gwpi.wait_tone("failed", 30)
        gwpi.save("failed")
        # The panel's log has the status line's words: the tunnel named as the cause.
        text = lab.unit_log("gwpi", "pi2pi-panel").read_text(errors="replace")
        assert "the tunnel to natpi is down" in text, text[-2000:]
        assert screens["natpi"].tone() == "idle"
    finally:
        lab.start_unit("natpi", TUNNEL_UNIT)
    wait_for(lambda: lab.run("gwpi", f"{PI2PI} status --json", user="pi", check=False).stdout.count(
        '"up": true') >= 1, 30, "the tunnel back")


def talk_live(lab: Lab, host: str) -> dict:
    out = lab.run(host, f"{PI2PI} status --json", user="pi").stdout
    return json.loads(out)["call"]["programs"]["talk"]


def last_call_id(lab: Lab) -> str:
    out = lab.run("natpi", f"{PI2PI} status --json", user="pi").stdout
    return json.loads(out)["call"]["call"]
