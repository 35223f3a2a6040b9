"""pi2pi's call tasks, run on natpi (the controller) from the repository:

    .venv/bin/fab call [--video-only | --audio-only] [--size WxH] [--fps N] [--quality Q] [--by NAME]
    .venv/bin/fab hangup
    .venv/bin/fab stats [--call ID] [--json] | --list [--json] | [--call ID] --plot FILE.png
    .venv/bin/fab status [--json]
    .venv/bin/fab watch [--seconds N]

The hosts come from the Ansible inventory (`ansible-inventory --list`; set
PI2PI_INVENTORY to pick another than ansible.cfg's); the order of a call
lives in controller/call.py.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from fabric import task
from invoke.exceptions import Exit

from controller import report, site, watch as live
from controller.call import CallFailed, Controller, Options, media_state
from controller.remote import Unreachable


class Say:
    """Progress lines, each with the seconds since the task started."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, line: str) -> None:
        print(f"[{time.monotonic() - self.started:5.1f} s] {line}", flush=True)


def with_controller(work: Callable[[Controller], None]) -> None:
    """Run work with a Controller; a failure is one clear line and exit 1, never a traceback."""
    say = Say()
    try:
        controller = Controller(site.load(), say)
    except site.SiteError as err:
        raise Exit(f"fab: {err}", code=2) from None
    try:
        work(controller)
    except (CallFailed, Unreachable) as err:
        raise Exit(f"fab: {err}", code=1) from None
    finally:
        controller.close()


@task(help={"video-only": "video both ways, no audio", "audio-only": "audio both ways, no video",
            "size": "the cameras' frame size for this call (WxH)", "fps": "the cameras' frame rate",
            "quality": "the cameras' JPEG quality (1..100)",
            "by": "who places the call, as both Pis' status will say: a Pi's inventory name "
                  "(default: natpi's, this controller's own)"})
def call(c, video_only=False, audio_only=False, size=None, fps=None, quality=None, by=None):
    """Place a call: gwpi's listeners, then natpi's dialers; returns once media flows both ways."""
    if video_only and audio_only:
        raise Exit("fab call: --video-only and --audio-only exclude each other", code=2)
    options = Options(media="video" if video_only else "audio" if audio_only else "both", size=size,
                      fps=float(fps) if fps is not None else None,
                      quality=int(quality) if quality is not None else None, by=by)
    with_controller(lambda controller: controller.place_call(options))


@task
def hangup(c):
    """Hang up: senders, then receivers, on both Pis; fetch both Pis' stats here."""
    with_controller(lambda controller: controller.hang_up())


@task(help={"call": "an earlier call's id (default: the last)", "json": "one JSON object keyed by direction",
            "list": "every call recorded here, a line each, newest last",
            "plot": "draw the call over its time (fps, kbps, latency, audio buffer) into this PNG file"})
def stats(c, call=None, json_=False, list_=False, plot=None):
    """The last call's figures per direction (video and audio, each way); --list, --plot FILE.png."""
    if list_ and (call is not None or plot is not None):
        raise Exit("fab stats: --list shows every call; it goes with neither --call nor --plot", code=2)
    if list_:
        calls = report.call_list()
        print(json.dumps(calls, sort_keys=True) if json_ else "\n".join(report.list_lines(calls)))
        return
    if plot is not None:
        if json_:
            raise Exit("fab stats: --plot writes a picture; --json does not go with it", code=2)
        from controller import plot as drawing   # only when asked to draw
        try:
            drawn = drawing.plot_call(call, Path(plot))
        except (report.NoStats, drawing.CannotPlot) as err:
            raise Exit(f"fab stats: {err}", code=1) from None
        print(f"call {drawn['call']}: {drawn['seconds']:.0f} s drawn ({drawn['points']} points; history lines: "
              f"{', '.join(f'{side} {n}' for side, n in drawn['lines'].items())}) in {drawn['path']}")
        return
    try:
        figures = report.call_stats(call)
    except report.NoStats as err:
        raise Exit(f"fab stats: {err}", code=1) from None
    if json_:
        print(json.dumps(figures["directions"], sort_keys=True))
    else:
        print("\n".join(report.table(figures)))


@task(help={"json": "one JSON object"})
def status(c, json_=False):
    """What runs where, the tunnel, natpi's public address against the gateway's DNAT."""

    def show(controller: Controller) -> None:
        found = controller.site_status()
        if json_:
            print(json.dumps(found, sort_keys=True))
            return
        print(f"inventory: {found['inventory']}")
        for name, pi in found["pis"].items():
            tunnel = pi["tunnel"]
            shown = {True: "up", False: "DOWN", None: "-"}[tunnel["up"]]
            print(f"{name} ({pi['side']}, {pi['transport']} transport): tunnel {shown} ({tunnel['detail']})")
            call_ = pi["call"]
            if call_ is None:
                print("  no call is up")
                continue
            by = f" placed by {call_['by']}" if call_.get("by") else ""
            print(f"  call {call_['call']}{by}: {call_['state']}")
            for program, p in call_["programs"].items():
                print(f"    {program}: {p['state']}")
        for direction, media in found["media"].items():
            again = f", {media['reconnects']} reconnects" if media["reconnects"] else ""
            print(f"{direction}: " + (f"up{again}" if media["up"] else f"DOWN: {'; '.join(media['why'])}{again}"))
        address = found.get("address")
        if address is None:
            print("gateway: none in the inventory")
        elif "error" in address:
            print(f"gateway: {address['error']}")
        else:
            verdict = "in step" if address["in_step"] else "DRIFTED: run ansible-playbook playbooks/natpi_address.yml"
            print(f"natpi's public address {address['natpi_seen_as']}; the DNAT accepts "
                  f"{', '.join(address['dnat_accepts']) or 'nothing'}: {verdict}")

    with_controller(show)


@task(help={"seconds": "stop after this many seconds (default: until the call ends or Ctrl-C)"})
def watch(c, seconds=None):
    """The call's figures per direction, refreshed each second: fps, kbps, latency, drops, audio buffer."""
    limit = float(seconds) if seconds is not None else None
    clear = "\033[H\033[J" if sys.stdout.isatty() else ""

    def show(controller: Controller) -> None:
        started = time.monotonic()
        earlier = live.Earlier()
        while limit is None or time.monotonic() - started < limit:
            asked = time.monotonic()
            sides = controller.ask_pis(tolerate_unreachable=True)
            calls = {k: s.call for k, s in sides.items()}
            if not any(calls.values()):
                print("no call is up")
                return
            now = live.programs(calls)
            ids = sorted({call["call"] for call in calls.values() if call})
            lines = live.table(live.figures(now, earlier.update(now)),
                               media_state(calls, {k: s.name for k, s in sides.items()}))
            print(f"{clear}call {', '.join(ids)}, {time.strftime('%H:%M:%S')}\n" + "\n".join(lines) + "\n", flush=True)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - asked)))

    try:
        with_controller(show)
    except KeyboardInterrupt:
        pass
