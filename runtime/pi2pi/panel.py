"""`pi2pi panel`: a call with one touch on the Pi's 800x480 screen, and the call seen live.

The seed's confGUI layout is kept: the other side's picture at 208,36 (592x444),
where the viewer paints it; the panel takes the rest of the screen.

    +--------------------------------------------------------------------+
    | status: what it waits for, who called, why something failed        |  36 px
    +------------+-------------------------------------------------------+
    | Call       |                                                       |
    | Video only |        the other side's picture, 592x444              |
    | Audio only |        console: the viewer paints the framebuffer     |
    | Hang up    |          here; the panel leaves the area alone        |
    | Mute mic   |        desktop: the panel shows the viewer's file     |
    | -  100%  + |          framebuffer here, at the viewer's frame rate |
    | figures    |                                                       |
    +------------+-------------------------------------------------------+

The panel places and ends calls only through its `control` command ([panel]
control, written by provisioning): on natpi the controller's own `fab`, on gwpi
an ssh through the reverse tunnel to natpi with a key that can do nothing but
`call`, `hangup` and `status` (controller/panel_remote.py). It appends the task's
words (`call --video-only`, `hangup`) and shows each line the command prints;
when the command fails its last line is the cause (fab's errors name host and
cause: unreachable, tunnel down, address drifted, port taken).

What the panel shows of a call comes from this Pi's own files (`pi2pi status`
in-process: no subprocess each second): an incoming call shows as soon as the
supervisor is up, with who placed it; figures come from this side's receivers
(what is seen and heard here) and senders.

Mode: `desktop` when a compositor owns the screen (Raspberry Pi OS 12's
Wayland, any X11 desktop): framebuffer writes never show, so the viewer paints
a file framebuffer ([viewer] fb = a file, fb_geometry) and the panel copies its
picture area into the window. `console` when the viewer paints the real
framebuffer over the panel's empty picture area (the seed's way). `auto` picks
desktop when the viewer's fb is a file, console when it is a device.
"""
from __future__ import annotations

import argparse
import logging
import queue
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from pi2pi import config

log = logging.getLogger(__name__)

SECTION = "panel"
MODES = ("auto", "desktop", "console")
SCREEN = (800, 480)
PICTURE_AT = (208, 36)          # the seed's: where the viewer paints the other side
PICTURE_SIZE = (592, 444)
TASKS = {                       # button -> the control command's words
    "call": ["call"], "video": ["call", "--video-only"], "audio": ["call", "--audio-only"], "hangup": ["hangup"],
}
FAR = {"natpi": "gwpi", "gwpi": "natpi"}
SSH_FAILED = 255                # ssh's own exit status when it cannot connect (the command's are passed on)


@dataclass
class Settings:
    """The `[panel]` section."""

    control: str = ""                # the command that runs a call task (provisioning writes it); none: watch only
    mode: str = "auto"               # desktop, console, or auto (desktop when the viewer's fb is a file)
    picture_fps: float = 10.0        # desktop: how often the picture area is copied into the window
    refresh_s: float = 1.0           # how often the call's state and figures are read
    fullscreen: bool = False         # kiosk: the whole screen, no window decoration

    def validate(self) -> None:
        if self.mode not in MODES:
            raise config.ConfigError(f"panel.mode {self.mode!r}: want one of {', '.join(MODES)}")
        if not 0 < self.picture_fps <= 30:
            raise config.ConfigError(f"panel.picture_fps {self.picture_fps}: want 0 < fps <= 30")
        if not 0.2 <= self.refresh_s <= 10:
            raise config.ConfigError(f"panel.refresh_s {self.refresh_s}: want 0.2..10 s")
        try:
            shlex.split(self.control)
        except ValueError as err:
            raise config.ConfigError(f"panel.control {self.control!r}: {err}") from None


# ----- the control command: one task at a time, its lines as news ----------------------


@dataclass
class Task:
    """A run of the control command (a call placed, a hang-up), as the panel shows it."""

    name: str                           # a key of TASKS
    started: float
    line: str = ""                      # the last thing it said
    code: Optional[int] = None          # its exit status once it ended
    ended: Optional[float] = None

    @property
    def running(self) -> bool:
        return self.code is None

    @property
    def failed(self) -> bool:
        return self.code not in (None, 0)


class Control:
    """Runs `command + task words` in a thread, one task at a time."""

    def __init__(self, command: str, news: Callable[[Task], None]) -> None:
        self.argv = shlex.split(command)
        self.news = news
        self.task: Optional[Task] = None

    def busy(self) -> bool:
        return self.task is not None and self.task.running

    def start(self, name: str) -> Optional[Task]:
        """Start the task unless one runs; the task, or None."""
        if self.busy():
            return None
        task = Task(name, time.monotonic())
        self.task = task
        threading.Thread(target=self._run, args=(task,), name=f"control-{name}", daemon=True).start()
        return task

    def _run(self, task: Task) -> None:
        if not self.argv:
            self._end(task, 2, "no control command: provisioning writes [panel] control")
            return
        argv = self.argv + TASKS[task.name]
        log.info("running %s", shlex.join(argv))
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, bufsize=1)
        except OSError as err:
            self._end(task, 127, f"cannot run {self.argv[0]}: {err.strerror or err}")
            return
        assert proc.stdout is not None
        last = ""
        for raw in proc.stdout:
            line = raw.strip()
            if line:
                last = line
                task.line = line
                self.news(task)
        self._end(task, proc.wait(), last)

    def _end(self, task: Task, code: int, line: str) -> None:
        task.line, task.code, task.ended = line, code, time.monotonic()
        log.log(logging.WARNING if code else logging.INFO, "%s ended (exit %d): %s", task.name, code, line)
        self.news(task)


# ----- what the panel shows (no Tk: each piece testable alone) ---------------------------


@dataclass
class Look:
    """One reading of this Pi's call, with what an earlier reading is needed for (rates)."""

    at: float
    call: Optional[Dict[str, Any]]            # call.call_status(): programs with their live counters
    request: Dict[str, Any] = field(default_factory=dict)   # call.json: media, by, started
    controls: Optional[Any] = None            # controls.Controls of the call (muted, volume)


@dataclass
class View:
    status: str
    tone: str                                 # idle, busy, call, failed
    figures: List[str]
    in_call: bool
    audio: bool                               # the call carries audio (mute and volume apply)


def per_second(now: Dict[str, Any], before: Optional[Dict[str, Any]], key: str) -> Optional[float]:
    """A counter's rate between two live snapshots, by the snapshots' own clock ('at')."""
    if not before or now.get(key) is None or before.get(key) is None:
        return None
    elapsed = float(now.get("at", 0)) - float(before.get("at", 0))
    if elapsed <= 0 or now[key] < before[key]:
        return None
    return (now[key] - before[key]) / elapsed


def figures(programs: Dict[str, Dict[str, Any]], before: Dict[str, Dict[str, Any]]) -> List[str]:
    """A line per stream of this side: what arrives (seen, heard) and what leaves; each fits
    the left column (25 characters). The microphone and volume show on their buttons."""
    lines = []
    viewer, listen = programs.get("viewer"), programs.get("listen")
    camera, talk = programs.get("camera"), programs.get("talk")
    if viewer is not None:
        fps = per_second(viewer, before.get("viewer"), "frames")
        latency = viewer.get("latency_ms")
        lines.append(f"video in  {_num(fps, 1)} fps {_num(latency)} ms")
    if listen is not None:
        lines.append(f"audio in  {_num(listen.get('fill_ms'))} ms, {listen.get('underruns', 0)} gaps")
    if camera is not None:
        lines.append(f"video out {_num(per_second(camera, before.get('camera'), 'frames'), 1)} fps")
    if talk is not None:
        kbps = per_second(talk, before.get("talk"), "bytes")
        lines.append(f"audio out {_num(None if kbps is None else kbps * 8 / 1000)} kbps")
    return lines


def _num(value: Optional[float], digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


VERBS = {"call": "Calling", "video": "Calling (video only)", "audio": "Calling (audio only)",
         "hangup": "Hanging up"}


def view(look: Look, before: Optional[Look], task: Optional[Task], side: str, now_wall: float) -> View:
    """The status line and figures for a reading of the call and the last control task."""
    far = FAR.get(side, "the other Pi")
    call = look.call
    up = call is not None and call.get("supervisor") == "running"
    programs = (call or {}).get("programs", {}) if up else {}
    audio = "audio" in look.request.get("media", []) if up else False
    lines = figures(programs, ((before.call or {}).get("programs", {}) if before and before.call else {}))
    if task is not None and task.running:
        return View(f"{VERBS[task.name]}: {task.line or 'starting'}", "busy", lines, up, audio)
    if up:
        by = look.request.get("by") or "?"
        started = look.request.get("started") or now_wall
        words = [f"In call with {far}", f"called by {by}", _clock(now_wall - started)]
        dead = [n for n, p in programs.items() if not p.get("running")]
        waiting = [n for n, p in programs.items() if p.get("running") and n in ("viewer", "listen")
                   and not p.get("flowing")]
        if dead:
            words.append("failing: " + "; ".join(f"{n} {programs[n].get('state')}" for n in dead))
        elif waiting:
            words.append("waiting for " + " and ".join("video" if n == "viewer" else "audio" for n in waiting))
        return View(" · ".join(words), "failed" if dead else "call", lines, True, audio)
    if task is not None and task.failed:
        what = "Hang-up failed" if task.name == "hangup" else "Call failed"
        cause = task.line
        if task.code == SSH_FAILED and side == "gwpi":   # ssh itself failed: gwpi's only way to natpi is the tunnel
            cause = f"the tunnel to natpi is down ({task.line})"
        return View(f"{what}: {cause}", "failed", [], False, False)
    if call is not None:   # a call directory whose supervisor is gone
        return View("The call ended on its own (supervisor gone): touch Hang up to tidy", "failed", [], False, False)
    if task is not None and task.name == "hangup":
        return View(f"Call ended. Touch Call to call {far}.", "idle", [], False, False)
    return View(f"Ready. Touch Call to call {far}.", "idle", [], False, False)


# ----- the picture (desktop mode) ---------------------------------------------------------


class Picture:
    """The viewer's file framebuffer, its picture area read as PPM for Tk.

    Tk's PPM put and redraw cost several times the viewer's decode of the same
    frame (`make bench-panel`), so a picture is only handed to Tk when it changed
    since the last look: the panel may look more often than frames arrive."""

    def __init__(self, fb_path: str, fb_geometry: str, at: Tuple[int, int]) -> None:
        import numpy as np

        from pi2pi.video.framebuffer import Framebuffer

        self.fb = Framebuffer.open(fb_path, fb_geometry)
        self.at = at
        width, height = PICTURE_SIZE
        self.rgb = np.zeros((height, width, 3), dtype=np.uint8)
        self.last = np.zeros_like(self.rgb)
        self.header = f"P6 {width} {height} 255\n".encode()
        self.unchanged = 0           # looks that found the same picture (not handed to Tk)

    def ppm(self) -> bytes:
        self.fb.read_rgb(self.at[0], self.at[1], self.rgb)
        return self.header + self.rgb.tobytes()

    def changed_ppm(self) -> Optional[bytes]:
        """The picture as PPM if it differs from the last one returned, else None."""
        import numpy as np

        self.fb.read_rgb(self.at[0], self.at[1], self.rgb)
        if np.array_equal(self.rgb, self.last):
            self.unchanged += 1
            return None
        self.rgb, self.last = self.last, self.rgb
        return self.header + self.last.tobytes()

    def close(self) -> None:
        self.fb.close()


def picture_mode(settings: Settings, viewer: Any) -> str:
    """desktop or console (see the module's doc)."""
    if settings.mode != "auto":
        return settings.mode
    return "desktop" if getattr(viewer, "fb_geometry", None) else "console"


# ----- the window ---------------------------------------------------------------------------

FONT = ("DejaVu Sans", 16, "bold")
SMALL = ("DejaVu Sans Mono", 10)
TONES = {"idle": ("#20262e", "#e8e8e8"), "busy": ("#2d4f7c", "#ffffff"), "call": ("#1f6b3a", "#ffffff"),
         "failed": ("#8c1d1d", "#ffffff")}
VOLUME_STEP = 10               # percent per touch of - or +
BUTTON_H = 56                  # touch targets: at least 48 px (about 9 mm on the 7" display)
LEFT_W = PICTURE_AT[0]


class Window:
    """The Tk widgets; every state comes from `view()`, every action goes to Control or controls."""

    def __init__(self, settings: Settings, call_settings: Any, viewer: Any, side: str) -> None:
        import tkinter as tk

        self.tk = tk
        self.settings = settings
        self.call_settings = call_settings
        self.side = side
        self.news: "queue.Queue[object]" = queue.Queue()
        self.control = Control(settings.control, self.news.put)
        self.look: Optional[Look] = None
        self.before: Optional[Look] = None
        self.mode = picture_mode(settings, viewer)
        self.picture: Optional[Picture] = None
        self.picture_ms: List[float] = []
        self.stopping = threading.Event()
        self.shown = ""

        root = self.root = tk.Tk(className="pi2pi-panel")
        root.title("pi2pi")
        root.configure(background="black")
        root.geometry(f"{SCREEN[0]}x{SCREEN[1]}+0+0")
        if settings.fullscreen:
            root.attributes("-fullscreen", True)
        root.protocol("WM_DELETE_WINDOW", self.close)
        self.status = tk.Label(root, anchor="w", justify="left", padx=10, wraplength=SCREEN[0] - 20)
        self.status.place(x=0, y=0, width=SCREEN[0], height=PICTURE_AT[1])
        side_panel = tk.Frame(root, background="#101418")
        side_panel.place(x=0, y=PICTURE_AT[1], width=LEFT_W, height=SCREEN[1] - PICTURE_AT[1])
        self.buttons: Dict[str, Any] = {}
        y = PICTURE_AT[1] + 4
        for name, text, colour in (("call", "Call", "#2e7d32"), ("video", "Video only", "#37474f"),
                                   ("audio", "Audio only", "#37474f"), ("hangup", "Hang up", "#c62828"),
                                   ("mute", "Mute mic", "#455a64")):
            button = tk.Button(root, text=text, font=FONT, background=colour, foreground="white",
                               activebackground=colour, activeforeground="white", relief="flat",
                               command=lambda n=name: self.press(n))
            button.place(x=4, y=y, width=LEFT_W - 8, height=BUTTON_H)
            self.buttons[name] = button
            y += BUTTON_H + 4
        for name, text, x in (("quieter", "\u2212", 4), ("louder", "+", LEFT_W - 64)):
            button = tk.Button(root, text=text, font=FONT, background="#455a64", foreground="white",
                               relief="flat", command=lambda n=name: self.press(n))
            button.place(x=x, y=y, width=60, height=BUTTON_H)
            self.buttons[name] = button
        self.volume = tk.Label(root, text="", font=FONT, background="#101418", foreground="white")
        self.volume.place(x=68, y=y, width=LEFT_W - 136, height=BUTTON_H)
        y += BUTTON_H + 4
        self.figures = tk.Label(root, text="", font=SMALL, justify="left", anchor="nw",
                                background="#101418", foreground="#c8d0d8")
        self.figures.place(x=4, y=y, width=LEFT_W - 8, height=SCREEN[1] - y)
        self.area = tk.Label(root, background="black", borderwidth=0, highlightthickness=0)
        self.area.place(x=PICTURE_AT[0], y=PICTURE_AT[1], width=PICTURE_SIZE[0], height=PICTURE_SIZE[1])
        self.image = tk.PhotoImage(width=PICTURE_SIZE[0], height=PICTURE_SIZE[1])
        if self.mode == "desktop":
            self.area.configure(image=self.image)
        self.viewer = viewer
        threading.Thread(target=self._reader, name="reader", daemon=True).start()
        self.root.after(100, self._drain)
        if self.mode == "desktop":
            self.root.after(100, self._paint)
        self.show(view(Look(time.time(), None), None, None, side, time.time()))

    # The call's state is read in a thread (files; the tunnel's state is not asked
    # here) and handed over through the queue: Tk is only touched in its own thread.
    def _reader(self) -> None:
        from pi2pi import call as calls

        while not self.stopping.is_set():
            try:
                record = calls.call_status(self.call_settings)
                request: Dict[str, Any] = {}
                controls = None
                if record is not None:
                    from pi2pi import controls as call_controls
                    from pi2pi.supervisor import read_json

                    request = read_json(Path(record["dir"]) / "call.json") or {}
                    controls = call_controls.current(self.call_settings)
                self.news.put(Look(time.time(), record, request, controls))
            except Exception:   # the panel must outlive a half-written file
                log.exception("reading the call's state failed")
            self.stopping.wait(self.settings.refresh_s)

    def _drain(self) -> None:
        changed = False
        while True:
            try:
                item = self.news.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Look):
                if self.look is None or self.look.call is None or item.call is None \
                        or item.call.get("call") != self.look.call.get("call"):
                    self.before = None
                else:
                    self.before = self.look
                self.look = item
            changed = True
        if changed and self.look is not None:
            self.show(view(self.look, self.before, self.control.task, self.side, time.time()))
        self.root.after(100, self._drain)

    def show(self, v: View) -> None:
        if v.status.split(" · ")[:2] != self.shown.split(" · ")[:2]:   # not each tick of the call's clock
            log.info("status: %s", v.status)
        self.shown = v.status
        background, foreground = TONES[v.tone]
        self.status.configure(font=("DejaVu Sans", 14 if len(v.status) <= 64 else 11, "bold"))
        self.status.configure(text=v.status, background=background, foreground=foreground)
        self.figures.configure(text="\n".join(v.figures))
        busy = self.control.busy()
        for name in ("call", "video", "audio"):
            self.buttons[name].configure(state="disabled" if busy or v.in_call else "normal")
        self.buttons["hangup"].configure(state="disabled" if busy else "normal")
        for name in ("mute", "quieter", "louder"):
            self.buttons[name].configure(state="normal" if v.audio else "disabled")
        controls = self.look.controls if self.look is not None and v.audio else None
        self.buttons["mute"].configure(text="Unmute mic" if controls is not None and controls.muted else "Mute mic")
        self.volume.configure(text=f"{controls.volume}%" if controls is not None else "")

    def press(self, name: str) -> None:
        if name in TASKS:
            if self.control.start(name) is not None and self.look is not None:
                self.show(view(self.look, self.before, self.control.task, self.side, time.time()))
            return
        from pi2pi import controls as call_controls

        try:
            if name == "mute":
                call_controls.toggle_muted(self.call_settings)
            else:
                step = VOLUME_STEP if name == "louder" else -VOLUME_STEP
                volume = call_controls.current(self.call_settings).volume + step
                call_controls.set_volume(self.call_settings, max(0, min(call_controls.VOLUME_MAX, volume)))
        except Exception as err:   # no call up any more, a bad file: say so, stay up
            self.status.configure(text=f"{name}: {err}", **dict(zip(("background", "foreground"),
                                                                    TONES["failed"])))

    # desktop mode: the viewer's picture area, copied into the window at the panel's rate
    def _paint(self) -> None:
        if self.stopping.is_set():
            return
        started = time.perf_counter()
        look = self.look
        # Only once this call's viewer showed a frame: the file still holds the last call's.
        viewer = ((look.call or {}).get("programs") or {}).get("viewer") if look is not None else None
        video = bool(viewer and viewer.get("flowing"))
        if not video and self.picture is not None:   # the call ended or carries no video: no stale picture
            self.image.blank()
            self.picture.close()
            self.picture = None
        if video:
            try:
                if self.picture is None:
                    from pi2pi.video.viewer import parse_at

                    self.picture = Picture(self.viewer.fb, self.viewer.fb_geometry, parse_at(self.viewer.at))
                data = self.picture.changed_ppm()
                if data is not None:
                    self.image.configure(data=data, format="PPM")
                    self.picture_ms.append((time.perf_counter() - started) * 1000)
                    del self.picture_ms[:-1000]
            except Exception as err:
                log.warning("cannot show the picture: %s", err)
        self.root.after(max(1, int(1000 / self.settings.picture_fps)), self._paint)

    def close(self) -> None:
        self.stopping.set()
        if self.picture_ms:
            ordered = sorted(self.picture_ms)
            log.info("pictures shown: median %.2f ms, p95 %.2f ms over the last %d; %d looks found no change",
                     ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.95)], len(ordered),
                     self.picture.unchanged if self.picture is not None else 0)
        if self.picture is not None:
            self.picture.close()
        self.root.destroy()

    def run(self) -> None:
        self.root.mainloop()


def add_command(commands: Any) -> None:
    p = commands.add_parser("panel", help="the touch panel: call, hang up, mute, volume; the call seen live")
    p.add_argument("--config", metavar="PATH")
    p.add_argument("--mode", choices=MODES, help="desktop: the picture inside the window; console: the viewer "
                   "paints the framebuffer (default: [panel] mode)")
    p.add_argument("--fullscreen", action="store_true", default=None, help="the whole screen (kiosk)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more on stderr")


def command(built: Dict[str, Any], args: argparse.Namespace) -> int:
    settings: Settings = built[SECTION]
    if args.mode:
        settings.mode = args.mode
    if args.fullscreen:
        settings.fullscreen = True
    settings.validate()
    call_settings = built["call"]
    viewer = built.get("viewer")
    if picture_mode(settings, viewer) == "desktop" and not getattr(viewer, "fb_geometry", None):
        raise config.ConfigError("panel mode desktop shows the viewer's file framebuffer: "
                                 "set [viewer] fb to a file and fb_geometry to its WxHxBPP")
    try:
        window = Window(settings, call_settings, viewer, call_settings.side)
    except Exception as err:   # no display: tkinter.TclError
        if type(err).__name__ == "TclError":
            raise config.ConfigError(f"cannot open the panel's window: {err} (is DISPLAY set?)") from None
        raise
    try:
        window.run()
    except KeyboardInterrupt:
        window.close()
    return 0
