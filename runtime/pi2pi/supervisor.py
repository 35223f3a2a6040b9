"""The supervisor: one side of one call, detached, its programs its children.

`pi2pi up` (call.py) starts it as `pi2pi supervise --call ID` in a session of
its own, so it outlives the ssh session that started it:

    up (checks, token from stdin) ──spawns──> supervise (its own session)
                                                ├── viewer  ─┐ receivers, started first
                                                ├── listen  ─┘
                                                ├── camera  ─┐ senders
                                                └── talk    ─┘

It tells `up` (through a pipe) once every program listens or dials, or which
one could not start (and then stops the others). Every program gets the call's
token file: the supervisor never starts one without it. The camera runs under
`[call] camera_wrapper` when it is set (libcamerify: a Pi camera on Raspberry Pi
OS 12, where the camera is libcamera's and the V4L2 layer is its wrapper).

The call directory `<calls>/<ID>/` holds everything about the call on this Pi:

    call.json       what was asked (media, size, fps, quality), when, and by whom
    status.json     the supervisor's view, rewritten on every change
    <program>.log   the program's own log (stderr)
    <program>.live.json  its counters while it runs (lifecycle.ProgramRun)
    <program>.json  its stats, written however it ended (pi2pi.stats/1)
    supervisor.log  the supervisor's log
    summary.json    how the call ended on this side (pi2pi.call/1)
    history.jsonl   once a second while the call runs, one line (`History`)
    listen.wav, viewer.png   what was heard and the last picture shown

`<calls>/current.json` names the call that is up and its supervisor's pid.

Stopping (the seed's "Ctrl-C ... shuts down cleanly after a few seconds"):
SIGUSR1 stops the senders (camera, talk); SIGTERM stops the senders, gives the
receivers `drain_s` to take in what is still in flight, then stops them. A
program that has not ended `stop_timeout_s` after its SIGTERM is killed (and
the summary says so). A program that ends by itself is logged and left ended:
the other streams of the call go on.

History: while the call runs (from the moment every program listens or dials
until the hang-up begins), once a second, one JSON line is appended to
`history.jsonl`:

    {"at": <unix time, s>, "programs": {"<program>": <its pi2pi.live/1 snapshot>, ...}}

with each running program that has a live snapshot at that moment (none: no
line). The controller draws the call from it afterwards (`fab stats --plot`).
A line with the four programs is ~1.1 kB (measured: 1.07-1.08 kB), so the file
grows by ~1.1 kB per second of call, ~4 MB per hour; it stops growing at
HISTORY_MAX_LINES (24 h of lines, ~95 MB), which is logged once. A failure to
write it is logged and never ends the call.

Programs die with their supervisor: each asks the kernel for a SIGTERM when
its parent dies (PR_SET_PDEATHSIG, cli.py), so a SIGKILLed supervisor still
ends them cleanly, stats written. What a dead supervisor left (current.json,
the token, a call directory without a summary) is cleared by `clear_dead`,
which the next `pi2pi down` or `pi2pi up` runs.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from pi2pi import config, stats
from pi2pi.lifecycle import SignalWatch

log = logging.getLogger(__name__)

SECTION = "call"
SIDES = ("natpi", "gwpi")
TRANSPORTS = ("direct", "tunnel")
MEDIA = {"video": ("camera", "viewer"), "audio": ("talk", "listen")}   # (sender, receiver)
SENDERS = ("camera", "talk")
RECEIVERS = ("viewer", "listen")
SUMMARY_SCHEMA = "pi2pi.call/1"
CALL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ENV_SUPERVISOR = "PI2PI_SUPERVISOR"   # a program's parent pid: it dies with it (cli.py)
ENV_CALL = "PI2PI_CALL"               # the call directory a program belongs to (found again by it)
ENV_READY_FD = "PI2PI_READY_FD"       # where the supervisor tells `up` how the start went
READY_TIMEOUT_S = 30.0                # a Pi 2 takes a few seconds to import numpy and TurboJPEG
POLL_S = 0.1
RUN_POLL_S = 0.5                      # how often the running supervisor looks at its programs
HISTORY = "history.jsonl"
HISTORY_PERIOD_S = 1.0                # a line of history this often
HISTORY_MAX_LINES = 24 * 3600         # 24 h of lines (~95 MB); then no more are written


class CallError(Exception):
    """A call cannot be started, stopped or read: the message says why, for the user."""


@dataclass
class Settings:
    """The `[call]` section: this Pi's side of every call."""

    side: str = "natpi"              # natpi dials every connection; gwpi listens
    transport: str = "direct"        # direct: through the gateway's DNAT; tunnel: in natpi's ssh tunnel
    tunnel_port: int = 2345          # gwpi's localhost:PORT leads to natpi's sshd (the reverse tunnel)
    token_file: Optional[str] = None  # the call's token (0600), written by `up`; required for a call
    calls: str = "~/.local/state/pi2pi/calls"  # one directory per call
    record: bool = False             # listen records what it plays into the call directory
    stop_timeout_s: float = 3.0      # a program still running this long after SIGTERM is killed
    drain_s: float = 1.0             # receivers' time to take in what is in flight after the senders stop
    keep: int = 50                   # call directories kept; older ones are removed by `up`
    camera_wrapper: Optional[str] = None  # a command the camera runs under (libcamerify: a Pi camera on Pi OS 12)

    def validate(self) -> None:
        if self.side not in SIDES:
            raise config.ConfigError(f"call.side {self.side!r}: want one of {', '.join(SIDES)}")
        if self.transport not in TRANSPORTS:
            raise config.ConfigError(f"call.transport {self.transport!r}: want one of {', '.join(TRANSPORTS)}")
        if not 0 < self.tunnel_port < 65536:
            raise config.ConfigError(f"call.tunnel_port {self.tunnel_port}: want 1..65535")
        if not 0 < self.stop_timeout_s <= 60 or not 0 <= self.drain_s <= 30:
            raise config.ConfigError("call.stop_timeout_s must be 0..60 s (not 0) and call.drain_s 0..30 s")
        if self.keep < 1:
            raise config.ConfigError(f"call.keep {self.keep}: want at least 1")
        if self.camera_wrapper:
            words = shlex.split(self.camera_wrapper)
            if not words or shutil.which(words[0]) is None:
                raise config.ConfigError(f"call.camera_wrapper {self.camera_wrapper!r}: no such command"
                                         " (libcamerify: apt install libcamera-v4l2)")

    def camera_prefix(self) -> List[str]:
        """The words the camera's command line starts with (none without a wrapper)."""
        return shlex.split(self.camera_wrapper) if self.camera_wrapper else []

    def calls_dir(self) -> Path:
        return Path(os.path.expanduser(self.calls))


@dataclass
class Request:
    """What `up` was asked for; saved as call.json for the supervisor and the record."""

    call: str
    media: List[str]
    camera: Dict[str, Any]           # overrides of the camera's settings (size, fps, quality)
    config: Optional[str]            # the config file named on the command line, if any
    started: float = 0.0
    by: Optional[str] = None         # who placed the call (a Pi's inventory name); None in a call.json from before

    def programs(self) -> List[str]:
        """Receivers first: a listener is ready before its far dialer tries."""
        return [MEDIA[m][1] for m in self.media] + [MEDIA[m][0] for m in self.media]


# ----- files of a call ----------------------------------------------------------------


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def pid_alive(pid: int, marker: bytes = b"") -> bool:
    """A live process (not a zombie) whose command line holds marker."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return marker in f.read()
    except (OSError, IndexError):
        return False


def current(settings: Settings) -> Optional[Dict[str, Any]]:
    """The call that is up here (current.json), and whether its supervisor lives."""
    record = read_json(settings.calls_dir() / "current.json")
    if record is None:
        return None
    record["alive"] = pid_alive(int(record.get("pid", 0)), b"supervise")
    return record


def stray_programs(call_dir: Path) -> List[int]:
    """Processes of ours that belong to the call (by their environment), the supervisor's children."""
    marker = f"{ENV_CALL}={call_dir}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return [pid for pid in found if pid_alive(pid)]


@dataclass
class Program:
    name: str
    proc: subprocess.Popen
    log_path: Path
    exit: Optional[int] = None
    killed: bool = False
    stopped: bool = False            # we asked it to stop

    def describe(self) -> Dict[str, Any]:
        return {"pid": self.proc.pid, "exit": self.exit, "killed": self.killed, "stopped": self.stopped}


def last_error(log_path: Path) -> str:
    """The line of a program's log that says why it failed."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    for line in reversed(lines):
        if "error:" in line or " ERROR " in line:
            return line.split("error:", 1)[-1].strip() if "error:" in line else line.strip()
    return lines[-1].strip() if lines else "ended without a word"


# ----- the call's history ---------------------------------------------------------


class History:
    """history.jsonl: the programs' live snapshots, a line each time `append` is called.

    Bounded (max_lines, then it stops and says so once) and never fatal: a
    write that fails is logged (the first of a run of failures, and when writes
    work again) and the call goes on.
    """

    def __init__(self, path: Path, max_lines: int = HISTORY_MAX_LINES) -> None:
        self.path = path
        self.max_lines = max_lines
        self.lines = 0
        self.failures = 0
        self.full = False

    def append(self, names: List[str], at: Optional[float] = None) -> bool:
        """One line with the snapshots of those of `names` that have one; whether it was written."""
        if self.full:
            return False
        if self.lines >= self.max_lines:
            self.full = True
            log.warning("history: %d lines written (%s); no more for this call", self.lines, self.path.name)
            return False
        try:
            programs = {}
            for name in names:
                live = read_json(self.path.parent / f"{name}.live.json")
                if live is not None:
                    programs[name] = live
            if not programs:
                return False
            line = json.dumps({"at": round(time.time() if at is None else at, 3), "programs": programs},
                              sort_keys=True, separators=(",", ":")) + "\n"
            self._write(line.encode())
        except Exception as err:  # a history is a convenience: the call goes on without it
            if self.failures == 0:
                log.error("history: cannot append to %s: %s (the call goes on)", self.path, err)
            self.failures += 1
            return False
        if self.failures:
            log.info("history: writing again after %d failed attempts", self.failures)
            self.failures = 0
        self.lines += 1
        return True

    def _write(self, data: bytes) -> None:
        """Append data whole or not at all (a half line would be glued to the next one)."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(f"short write to {self.path.name}")
            except OSError:
                os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)


# ----- the supervisor ---------------------------------------------------------------


class Supervisor:
    def __init__(self, settings: Settings, request: Request, call_dir: Path) -> None:
        self.settings = settings
        self.request = request
        self.dir = call_dir
        self.programs: Dict[str, Program] = {}
        self.state = "starting"
        self.wake = threading.Event()
        self.signals: List[int] = []
        self.history = History(call_dir / HISTORY)

    def _on_signal(self, signum: int) -> None:
        self.signals.append(signum)
        self.wake.set()

    def spawn(self, name: str) -> Program:
        argv = [sys.executable, "-m", "pi2pi", name, "--stats", str(self.dir), "--live", "-v",
                "--token-file", str(self.settings.token_file)]
        if self.request.config:
            argv += ["--config", self.request.config]
        if name == "camera":
            for key, value in self.request.camera.items():
                argv += [f"--{key}", str(value)]
        if name == "listen" and self.settings.record:
            argv += ["--record", str(self.dir / "listen.wav")]
        if name == "viewer":
            argv += ["--snapshot", str(self.dir / "viewer.png")]
        prefix = self.settings.camera_prefix() if name == "camera" else []
        env = dict(os.environ, **{ENV_SUPERVISOR: str(os.getpid()), ENV_CALL: str(self.dir)})
        env.pop(ENV_READY_FD, None)
        log_path = self.dir / f"{name}.log"
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(prefix + argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=env, cwd=str(self.dir))
        log.info("%s started (pid %d): %s", name, proc.pid, " ".join(prefix + argv[2:]))
        return Program(name, proc, log_path)

    def write_status(self) -> None:
        stats.write_json(self.dir / "status.json", {
            "call": self.request.call, "state": self.state, "pid": os.getpid(),
            "programs": {name: p.describe() for name, p in self.programs.items()}}, durable=False)

    def reap(self) -> None:
        for p in self.programs.values():
            if p.exit is None and p.proc.poll() is not None:
                p.exit = p.proc.returncode
                how = "as asked" if p.stopped else "by itself"
                log.log(logging.INFO if p.stopped else logging.WARNING, "%s ended %s (exit %s): %s",
                        p.name, how, p.exit, last_error(p.log_path) if p.exit else "ok")
                self.write_status()

    def start(self) -> Optional[str]:
        """Start the programs; None once all listen or dial, else why not (all stopped again)."""
        for name in self.request.programs():
            self.programs[name] = self.spawn(name)
        self.write_status()
        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = set(self.programs)
        while waiting:
            self.reap()
            for name in sorted(waiting):
                p = self.programs[name]
                if p.exit is not None:
                    return f"{name} could not start: {last_error(p.log_path)}"
                live = read_json(self.dir / f"{name}.live.json")
                if live is not None and live.get("state", "starting") != "starting":
                    waiting.discard(name)
            if self.signals:
                return "stopped while starting"
            if time.monotonic() > deadline:
                return f"{', '.join(sorted(waiting))} did not start within {READY_TIMEOUT_S:.0f} s"
            self.wake.wait(POLL_S)
        self.state = "up"
        self.write_status()
        return None

    def stop(self, names: Tuple[str, ...]) -> None:
        """SIGTERM, then SIGKILL for whoever is still there after stop_timeout_s."""
        chosen = [self.programs[n] for n in names if n in self.programs]
        for p in chosen:
            if p.exit is None and not p.stopped:
                p.stopped = True
                p.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.stop_timeout_s
        while any(p.exit is None for p in chosen) and time.monotonic() < deadline:
            time.sleep(0.02)
            self.reap()
        for p in chosen:
            if p.exit is None:
                log.warning("%s did not end %.1f s after SIGTERM: killed", p.name, self.settings.stop_timeout_s)
                p.killed = True
                p.proc.kill()
                p.proc.wait()
        self.reap()

    def drain(self) -> None:
        """Give the receivers up to drain_s to take in what the far senders sent last."""
        deadline = time.monotonic() + self.settings.drain_s
        while time.monotonic() < deadline:
            busy = [n for n in RECEIVERS if n in self.programs and self.programs[n].exit is None
                    and (read_json(self.dir / f"{n}.live.json") or {}).get("peer")]
            if not busy:
                return
            time.sleep(0.05)

    def hang_up(self) -> None:
        self.state = "hanging up"
        self.write_status()
        self.stop(SENDERS)
        self.drain()
        self.stop(RECEIVERS)

    def run(self) -> str:
        """Supervise until asked to end; how the call ended. A line of history each second."""
        next_line = time.monotonic()
        while True:
            while self.signals:
                signum = self.signals.pop(0)
                if signum == signal.SIGUSR1:
                    log.info("stopping the senders (SIGUSR1)")
                    self.state = "senders stopped"
                    self.stop(SENDERS)
                    self.write_status()
                    continue
                hangup = (self.dir / "hangup").exists()
                log.info("ending the call (%s)", "hangup" if hangup else signal.Signals(signum).name)
                self.hang_up()
                return "hangup" if hangup else f"signal {signal.Signals(signum).name}"
            self.reap()
            now = time.monotonic()
            if now >= next_line:
                self.history.append([n for n, p in self.programs.items() if p.exit is None])
                # On a grid of whole periods from the start (a late wake does not shift
                # the next line); after a stall longer than a period, a period from now.
                next_line += HISTORY_PERIOD_S
                if next_line <= now:
                    next_line = now + HISTORY_PERIOD_S
            self.wake.wait(max(0.0, min(RUN_POLL_S, next_line - time.monotonic())))
            self.wake.clear()


def summarize(settings: Settings, call_dir: Path, ended_by: str, programs: Dict[str, Dict[str, Any]],
              started: Optional[float] = None) -> Dict[str, Any]:
    """summary.json: how the call ended on this side, and which stats exist."""
    request = read_json(call_dir / "call.json") or {}
    expected = [n for m in request.get("media", []) for n in MEDIA.get(m, ())]
    by_program = {}
    for name in expected:
        record = read_json(call_dir / f"{name}.json")
        by_program[name] = {**programs.get(name, {}), "stats": record is not None,
                            "reason": record.get("reason") if record else None}
    began = started or request.get("started") or time.time()
    ended = time.time()
    summary = {
        "schema": SUMMARY_SCHEMA, "call": call_dir.name, "side": settings.side, "host": socket.gethostname(),
        "started": stats.iso_utc(began), "ended": stats.iso_utc(ended), "duration_s": round(ended - began, 3),
        "ended_by": ended_by, "programs": by_program,
        "missing": [f"{n}.json" for n, p in by_program.items() if not p["stats"]],
    }
    stats.write_json(call_dir / "summary.json", summary)
    return summary


def supervise(settings: Settings, call_id: str) -> int:
    """The detached supervisor (`pi2pi supervise`, started by `up`)."""
    call_dir = settings.calls_dir() / call_id
    ready_fd = int(os.environ.pop(ENV_READY_FD, "-1"))
    request = Request(**{k: v for k, v in (read_json(call_dir / "call.json") or {}).items()
                         if k in {f.name for f in dataclasses.fields(Request)}})
    sup = Supervisor(settings, request, call_dir)
    with SignalWatch((signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1), sup._on_signal):
        stats.write_json(settings.calls_dir() / "current.json",
                         {"call": call_id, "pid": os.getpid(), "side": settings.side, "started": request.started})
        failure = sup.start()
        if failure is not None:
            log.error("the call did not start: %s", failure)
            sup.hang_up()
            ended_by = f"failed to start: {failure}"
        else:
            log.info("call %s up: %s", call_id, ", ".join(sup.programs))
        _tell(ready_fd, {"ok": failure is None, "error": failure,
                         "programs": {n: (read_json(call_dir / f"{n}.live.json") or {}).get("state")
                                      for n in sup.programs}})
        if failure is None:
            ended_by = sup.run()
        finish(settings, call_dir, ended_by, {n: p.describe() for n, p in sup.programs.items()})
    log.info("call %s ended: %s", call_id, ended_by)
    return 0 if failure is None else 1


def finish(settings: Settings, call_dir: Path, ended_by: str, programs: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Close the call on this side: the summary, no token, no current call."""
    summary = summarize(settings, call_dir, ended_by, programs)
    if settings.token_file:
        Path(settings.token_file).unlink(missing_ok=True)
    record = read_json(settings.calls_dir() / "current.json")
    if record is not None and record.get("call") == call_dir.name:
        (settings.calls_dir() / "current.json").unlink(missing_ok=True)
    return summary


def _tell(fd: int, message: Dict[str, Any]) -> None:
    if fd < 0:
        return
    try:
        os.write(fd, (json.dumps(message) + "\n").encode())
        os.close(fd)
    except OSError:
        pass   # `up` is gone: nobody to tell


def clear_dead(settings: Settings, record: Dict[str, Any]) -> Dict[str, Any]:
    """What a dead supervisor left: its programs (if any still run), token, current call; a summary."""
    call_dir = settings.calls_dir() / str(record.get("call"))
    for pid in stray_programs(call_dir):
        log.warning("ending pid %d, left by call %s", pid, call_dir.name)
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + settings.stop_timeout_s
    while stray_programs(call_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in stray_programs(call_dir):
        os.kill(pid, signal.SIGKILL)
    status = read_json(call_dir / "status.json") or {}
    return finish(settings, call_dir, "the supervisor died", status.get("programs", {}))
