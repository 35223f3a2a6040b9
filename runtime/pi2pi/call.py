"""`pi2pi up`, `pi2pi down`, `pi2pi status`: one side of a call, as fab (or a
person) drives it over ssh. The supervisor itself is supervisor.py.

    up      checks the settings (each program's own validation), writes the
            call's token from stdin (0600), clears what a dead call left,
            starts the supervisor and returns once its programs listen or dial;
            --by NAME records who placed the call (fab passes a Pi's inventory name)
    down    --senders: the first half of a hang-up; then everything (senders,
            a drain, receivers); harmless with no call up; returns how the
            call ended and which stats are missing
    status  the call (and who placed it), its programs' live counters, the
            tunnel as this side sees it; --wait-flowing S waits for media from
            the far side

`fab hangup` runs `down --senders` on both Pis, then `down`, so no receiver
stops before the far sender did.
"""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from pi2pi import stats
from pi2pi.supervisor import (
    CALL_ID,
    ENV_READY_FD,
    POLL_S,
    RECEIVERS,
    SENDERS,
    CallError,
    Request,
    Settings,
    clear_dead,
    current,
    finish,
    last_error,
    pid_alive,
    read_json,
)

log = logging.getLogger(__name__)


@dataclass
class Lock:
    """One `up` or `down` at a time on this Pi (an flock on <calls>/.lock)."""

    path: Path
    fd: int = -1

    def __enter__(self) -> "Lock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *_exc: Any) -> None:
        os.close(self.fd)


def write_token(path: Path, token: str) -> None:
    """The call's token, readable by this user only (0600), replaced atomically."""
    token = token.strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def prune(settings: Settings) -> None:
    calls = sorted((d for d in settings.calls_dir().iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
    for old in calls[:max(0, len(calls) - settings.keep)]:
        shutil.rmtree(old, ignore_errors=True)


def up(settings: Settings, request: Request, token: Optional[str], check: Any) -> Dict[str, Any]:
    """Start this side of a call and return once its programs listen or dial."""
    settings.validate()
    if not CALL_ID.match(request.call):
        raise CallError(f"call id {request.call!r}: letters, digits, '.', '_' and '-' only (at most 64)")
    if not settings.token_file:
        raise CallError("no call.token_file in the config: the supervisor only runs calls with a token")
    check()   # each program's own validation of its settings for this call
    calls = settings.calls_dir()
    with Lock(calls / ".lock"):
        record = current(settings)
        if record is not None:
            if record["alive"]:
                raise CallError(f"a call is already up here: {record.get('call')} "
                                f"(supervisor pid {record.get('pid')}); hang it up first")
            log.warning("clearing call %s: its supervisor died", record.get("call"))
            clear_dead(settings, record)
        token_path = Path(settings.token_file)
        if token is None and not token_path.is_file():
            raise CallError(f"no token: give it on stdin (--token-stdin); {token_path} does not exist")
        if token is not None and len(token.strip()) < 16:
            raise CallError("the call's token must be at least 16 characters")
        call_dir = calls / request.call
        try:
            call_dir.mkdir(parents=True)
        except FileExistsError:
            raise CallError(f"call {request.call} was here before ({call_dir}): a new call needs a new id") from None
        if token is not None:
            write_token(token_path, token)
        request.started = time.time()
        stats.write_json(call_dir / "call.json", dataclasses.asdict(request))
        prune(settings)
        read_fd, write_fd = os.pipe()
        argv = [sys.executable, "-m", "pi2pi", "supervise", "--call", request.call]
        if request.config:
            argv += ["--config", request.config]
        with open(call_dir / "supervisor.log", "ab") as out:   # its log (stderr) and any last words
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, pass_fds=(write_fd,), cwd="/",
                                    env=dict(os.environ, **{ENV_READY_FD: str(write_fd)}))
        os.close(write_fd)
        answer = _read_answer(read_fd, proc, call_dir / "supervisor.log")
        if not answer.get("ok"):
            why = answer.get("error") or "the supervisor did not start"
            if not (call_dir / "summary.json").exists():   # the supervisor died before it could close
                finish(settings, call_dir, f"failed to start: {why}", {})
            raise CallError(why)
    return {"call": request.call, "side": settings.side, "dir": str(call_dir), "pid": proc.pid,
            "programs": answer.get("programs", {})}


def _read_answer(fd: int, proc: subprocess.Popen, out: Path) -> Dict[str, Any]:
    with os.fdopen(fd, "rb") as pipe:
        data = pipe.read()   # until the supervisor writes and closes it, or dies
    try:
        return json.loads(data.decode())
    except ValueError:
        return {"ok": False, "error": f"the supervisor failed (exit {proc.wait()}): {last_error(out)}"}


def down(settings: Settings, senders_only: bool = False) -> Dict[str, Any]:
    """Stop the call that is up (its senders only, or everything); harmless with none up."""
    calls = settings.calls_dir()
    with Lock(calls / ".lock"):
        record = current(settings)
        if record is None:
            return {"call": None, "side": settings.side, "message": "no call is up"}
        call_id = str(record["call"])
        call_dir = calls / call_id
        result: Dict[str, Any] = {"call": call_id, "side": settings.side, "dir": str(call_dir)}
        if not record["alive"]:
            if senders_only:
                return {**result, "message": "its supervisor is gone; senders stop with the call"}
            summary = clear_dead(settings, record)
            return {**result, "ended_by": summary["ended_by"], "missing": summary["missing"]}
        pid = int(record["pid"])
        if senders_only:
            os.kill(pid, signal.SIGUSR1)
            deadline = time.monotonic() + settings.stop_timeout_s + 2.0
            while time.monotonic() < deadline:
                programs = (read_json(call_dir / "status.json") or {}).get("programs", {})
                if all(programs[n].get("exit") is not None for n in SENDERS if n in programs):
                    return {**result, "message": "senders stopped"}
                time.sleep(0.05)
            return {**result, "message": "senders asked to stop; not all had ended in time"}
        (call_dir / "hangup").touch()
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 2 * settings.stop_timeout_s + settings.drain_s + 3.0
        while pid_alive(pid, b"supervise") and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid, b"supervise"):
            log.warning("the supervisor (pid %d) did not end in time: killed", pid)
            os.kill(pid, signal.SIGKILL)
            summary = clear_dead(settings, record)
        else:
            summary = read_json(call_dir / "summary.json") or clear_dead(settings, record)
        return {**result, "ended_by": summary["ended_by"], "missing": summary["missing"]}


# ----- status -------------------------------------------------------------------------


def listening(port: int, address: str = "127.0.0.1") -> bool:
    """Something listens on address:port (from /proc/net/tcp, without connecting to it)."""
    want = "{:08X}:{:04X}".format(int.from_bytes(socket.inet_aton(address), "little"), port)
    try:
        with open("/proc/net/tcp") as f:
            return any(line.split()[1] == want and line.split()[3] == "0A" for line in list(f)[1:])
    except OSError:
        return False


def tunnel_state(settings: Settings, dial_ports: List[int]) -> Dict[str, Any]:
    """The reverse tunnel as this side sees it."""
    if settings.side == "gwpi":
        try:
            with socket.create_connection(("127.0.0.1", settings.tunnel_port), timeout=2.0) as sock:
                banner = sock.recv(64)
        except OSError as err:
            return {"up": False, "detail": f"nothing answers at localhost:{settings.tunnel_port} ({err.strerror or err})"}
        up_ = banner.startswith(b"SSH-")
        return {"up": up_, "detail": f"localhost:{settings.tunnel_port} answers {banner[:20]!r}"}
    if settings.transport == "tunnel":
        closed = [p for p in dial_ports if not listening(p)]
        return {"up": not closed, "detail": f"forwards not listening on natpi: {closed}" if closed
                else f"forwards listening on 127.0.0.1:{','.join(map(str, dial_ports))}"}
    return {"up": None, "detail": "seen from gwpi (the direct transport does not use it for media)"}


def ended(exit_code: Optional[int]) -> str:
    """A program that is not running, in a user's words (a negative code is the signal)."""
    if exit_code is None:
        return "not running"
    if exit_code < 0:
        try:
            return f"ended: killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"ended: killed by signal {-exit_code}"
    return f"ended (exit {exit_code})"


def call_status(settings: Settings) -> Optional[Dict[str, Any]]:
    record = current(settings)
    if record is None:
        return None
    call_dir = settings.calls_dir() / str(record["call"])
    status = read_json(call_dir / "status.json") or {}
    asked = read_json(call_dir / "call.json") or {}
    programs = {}
    for name, p in status.get("programs", {}).items():
        live = read_json(call_dir / f"{name}.live.json") or {}
        running = p.get("exit") is None and pid_alive(int(p.get("pid", 0)))
        programs[name] = {"running": running, "exit": p.get("exit"),
                          "state": live.get("state") if running else ended(p.get("exit")),
                          **{k: v for k, v in live.items() if k not in ("schema", "program", "state")}}
        if not running and (p.get("exit") or 0) > 0:   # a signal's death leaves no last word
            programs[name]["error"] = last_error(call_dir / f"{name}.log")
    return {"call": record["call"], "by": asked.get("by"), "supervisor": "running" if record["alive"] else "gone",
            "state": status.get("state", "?") if record["alive"] else "supervisor gone",
            "dir": str(call_dir), "programs": programs}


def status(settings: Settings, dial_ports: List[int]) -> Dict[str, Any]:
    return {"host": socket.gethostname(), "side": settings.side, "transport": settings.transport,
            "tunnel": tunnel_state(settings, dial_ports), "call": call_status(settings)}


def wait_flowing(settings: Settings, timeout_s: float, say: Any) -> bool:
    """Wait until every receiver of the call has media; say what happens. False on timeout or failure."""
    deadline = time.monotonic() + timeout_s
    told: Dict[str, str] = {}
    while True:
        call = call_status(settings)
        if call is None:
            say("no call is up")
            return False
        receivers = {n: p for n, p in call["programs"].items() if n in RECEIVERS}
        for name, p in receivers.items():
            kind = "video" if name == "viewer" else "audio"
            line = (f"{kind} arrives ({'first frame shown' if kind == 'video' else 'first packets in'})"
                    if p.get("flowing") else f"waiting for {kind}: {name} {p.get('state')}")
            if told.get(name) != line:
                say(line)
                told[name] = line
        if receivers and all(p.get("flowing") for p in receivers.values()):
            return True
        dead = [n for n, p in call["programs"].items() if not p["running"]]
        if call["supervisor"] != "running" or dead:
            why = "; ".join(f"{n}: {call['programs'][n].get('error', 'ended')}" for n in dead)
            say(f"the call is failing: {why}" if dead else "the supervisor is gone")
            return False
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)


# ----- the command line -----------------------------------------------------------------


def caller(text: str) -> str:
    """`up --by`: a name as safe as a call id (it is shown, logged and kept in call.json)."""
    if not CALL_ID.match(text):
        raise argparse.ArgumentTypeError(f"{text!r}: letters, digits, '.', '_' and '-' only (at most 64)")
    return text


def add_commands(commands: Any) -> None:
    p = commands.add_parser("up", help="start this Pi's side of a call (detached; returns once ready)")
    p.add_argument("--call", required=True, metavar="ID", help="the call's id (a new one per call)")
    p.add_argument("--media", choices=("both", "video", "audio"), default="both")
    p.add_argument("--size", metavar="WxH", help="the camera's frame size for this call")
    p.add_argument("--fps", type=float, help="the camera's frame rate for this call")
    p.add_argument("--quality", type=int, metavar="Q", help="the camera's JPEG quality for this call")
    p.add_argument("--token-stdin", action="store_true", help="read the call's token from stdin")
    p.add_argument("--by", metavar="NAME", type=caller,
                   help="who placed the call (fab passes a Pi's inventory name); status shows it")
    p = commands.add_parser("down", help="stop the call that is up here (senders, then receivers)")
    p.add_argument("--senders", action="store_true", help="stop only the senders (the first half of a hang-up)")
    p = commands.add_parser("status", help="the call that is up here, its programs, the tunnel")
    p.add_argument("--wait-flowing", dest="wait_flowing", type=float, metavar="S",
                   help="wait up to S seconds for media from the far side; exit 1 if it does not come")
    p = commands.add_parser("supervise", help=argparse.SUPPRESS)
    p.add_argument("--call", required=True)
    for name in ("up", "down", "status", "supervise"):
        commands.choices[name].add_argument("--config", metavar="PATH")
        commands.choices[name].add_argument("--json", action="store_true", help="answer as one JSON object")


def iter_lines(result: Dict[str, Any]) -> Iterator[str]:
    """A command's answer for a person (--json gives it whole)."""
    if "tunnel" in result:   # status
        tunnel = result["tunnel"]
        shown = {True: "up", False: "DOWN", None: "-"}[tunnel["up"]]
        yield f"{result['host']} ({result['side']}, transport {result['transport']}): tunnel {shown}: {tunnel['detail']}"
        call = result["call"]
        if call is None:
            yield "no call is up"
            return
        by = f" placed by {call['by']}" if call.get("by") else ""
        yield f"call {call['call']}{by}: {call['state']} ({call['dir']})"
        for name, p in call["programs"].items():
            counts = ", ".join(f"{k} {p[k]}" for k in ("frames", "packets", "dropped", "underruns") if k in p)
            yield f"  {name}: {p['state']}{'; ' + counts if counts else ''}{'; ' + p['error'] if 'error' in p else ''}"
    elif "programs" in result:   # up
        states = ", ".join(f"{name} {state}" for name, state in result["programs"].items())
        yield f"call {result['call']} up on {result['side']}: {states}"
    elif result.get("call") is None:   # down, nothing up
        yield result["message"]
    else:   # down
        yield f"call {result['call']} on {result['side']}: {result.get('message') or result.get('ended_by')}"
        if result.get("missing"):
            yield f"missing: {', '.join(result['missing'])}"
        yield f"its directory: {result['dir']}"
