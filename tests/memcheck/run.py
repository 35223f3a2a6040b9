"""Both ends of a short call, each under valgrind's memcheck, then what it found.

- video: `pi2pi viewer` (file framebuffer, --listen) and `pi2pi camera`
  (--source testpattern, --connect), a call token, real TCP on 127.0.0.1; once
  the viewer has painted a few frames both get SIGTERM.
- audio: `pi2pi listen` (ALSA's null device, --pace clock, --listen) and
  `pi2pi talk --device testsignal` (--connect), the same way, until listen has
  received a second or two of packets.
- control: tests/memcheck/leaky.py, which leaks a TurboJPEG handle on purpose,
  under the same valgrind command and the same check: the check must fail it.

The check: no definitely lost block whose allocation stack passes through a
library whose handles pi2pi owns (valgrind.OWNED_LIBRARIES), and no memory
error (invalid read or write, uninitialised value) there either, but for the
one known, bounded leak in pyalsaaudio (valgrind.KNOWN, reported as such).
Every definitely and indirectly lost record, in any library, is reported per
program and library for information (CPython and numpy's Cython modules leave
some at exit by design).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from tests.audio.harness import free_port
from tests.memcheck import valgrind

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "memcheck-call-token-0123456789abcdef"
START_S = 240.0     # a Python program's start under valgrind: tens of seconds on a busy 2-core machine
FLOW_S = 300.0      # until the media has flowed as asked
END_S = 300.0       # SIGTERM to exit, valgrind's leak search included


class Program:
    """One program under valgrind: its log in a file, its report in an XML file."""

    def __init__(self, name: str, argv: List[str], work: Path) -> None:
        self.name = name
        self.log_path = work / f"{name}.log"
        self.xml_path = work / f"{name}.xml"
        env = valgrind.environment(dict(os.environ, PI2PI_CONFIG=str(work / "none.conf")))
        self._log = open(self.log_path, "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(valgrind.command(self.xml_path, argv), cwd=work, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.code: Optional[int] = None
        self.took_s = 0.0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, what: str, ready: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} ended (status {self.proc.returncode}) before {what}:\n"
                                   + self.log()[-3000:])
            time.sleep(0.5)
        raise RuntimeError(f"{self.name}: no {what} within {timeout_s:.0f} s:\n" + self.log()[-3000:])

    def stop(self, timeout_s: float = END_S) -> int:
        """SIGTERM, then wait for the program and valgrind's leak search to finish."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.finish(timeout_s)

    def finish(self, timeout_s: float = END_S) -> int:
        try:
            self.code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.code = self.proc.wait()
            raise RuntimeError(f"{self.name} did not end within {timeout_s:.0f} s") from None
        finally:
            self._log.close()
            self.took_s = time.monotonic() - self.started
        return self.code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def pi2pi(*args: str) -> List[str]:
    return [sys.executable, "-m", "pi2pi", *args, "-v"]


def live(work: Path, program: str) -> Dict[str, Any]:
    """The program's live snapshot (--live), or {} before its first."""
    try:
        return json.loads((work / "stats" / f"{program}.live.json").read_text())
    except (OSError, ValueError):
        return {}


def live_count(work: Path, program: str, key: str) -> int:
    return int(live(work, program).get(key) or 0)


def write_token(work: Path) -> Path:
    token = work / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    (work / "none.conf").write_text("")
    return token


def call(work: Path, listener: List[str], dialer: List[str], names: List[str], ready: Callable[[], bool],
         what: str) -> List[Program]:
    """The listener first, the dialer once it listens; both SIGTERMed when `ready`."""
    programs = [Program(names[0], listener, work)]
    try:
        programs[0].wait_for("listening", lambda: str(live(work, names[0]).get("state")).startswith("listening"),
                             START_S)
        programs.append(Program(names[1], dialer, work))
        programs[0].wait_for(what, ready, FLOW_S)
        for program in reversed(programs):   # the sender first, as fab hangup does
            program.stop()
    finally:
        for program in programs:
            program.kill()
    return programs


def video_call(work: Path, frames: int) -> List[Program]:
    token = write_token(work)
    port = free_port()
    viewer = pi2pi("viewer", "--listen", f"127.0.0.1:{port}", "--fb", str(work / "fb.raw"),
                   "--fb-geometry", "320x240x32", "--console", "", "--token-file", str(token),
                   "--stats", str(work / "stats"), "--live")
    camera = pi2pi("camera", "--source", "testpattern", "--size", "160x120", "--fps", "10", "--quality", "60",
                   "--connect", f"127.0.0.1:{port}", "--token-file", str(token), "--stats", str(work / "stats"))
    return call(work, viewer, camera, ["viewer", "camera"],
                lambda: live_count(work, "viewer", "frames") >= frames, f"{frames} painted frames")


def audio_call(work: Path, seconds: float) -> List[Program]:
    token = write_token(work)
    port = free_port()
    packets = int(seconds * 50)   # 20 ms packets
    listen = pi2pi("listen", "--listen", f"127.0.0.1:{port}", "--device", "null", "--pace", "clock",
                   "--token-file", str(token), "--stats", str(work / "stats"), "--live")
    talk = pi2pi("talk", "--device", "testsignal", "--connect", f"127.0.0.1:{port}", "--token-file", str(token),
                 "--stats", str(work / "stats"))
    return call(work, listen, talk, ["listen", "talk"],
                lambda: live_count(work, "listen", "packets") >= packets, f"{packets} packets")


def control(work: Path) -> Program:
    program = Program("control", [sys.executable, str(ROOT / "tests" / "memcheck" / "leaky.py")], work)
    program.finish()
    return program


@dataclass
class Outcome:
    program: str
    code: Optional[int]
    took_s: float
    records: List[valgrind.Record] = field(default_factory=list)

    def violations(self) -> List[valgrind.Record]:
        """Definitely lost blocks and memory errors in the owned libraries, but for the known leak."""
        return [r for r in self.records
                if (r.kind == "Leak_DefinitelyLost" or not r.is_leak()) and r.owned() and r.known() is None]

    def known(self) -> List[valgrind.Record]:
        return [r for r in self.records if r.owned() and r.known() is not None]

    def errors(self) -> List[valgrind.Record]:
        """Memory errors (invalid reads and writes, uninitialised values), not leaks."""
        return [r for r in self.records if not r.is_leak()]


def outcome(program: Program) -> Outcome:
    return Outcome(program.name, program.code, program.took_s, valgrind.read_report(program.xml_path))


def describe(result: Outcome) -> List[str]:
    lines = [f"memcheck {result.program}: exit status {result.code}, {result.took_s:.0f} s under valgrind"]
    summary = valgrind.by_library(result.records)
    if not summary:
        lines.append("  no leaks (definitely or indirectly lost) and no memory errors")
    for (library, kind), (count, size, blocks) in sorted(summary.items()):
        lines.append(f"  {kind}: {library}: {count} records, {size} bytes in {blocks} blocks")
    for record in result.known():
        known = record.known()
        assert known is not None
        lines.append(f"  known, accepted: {record.what} in {known.function}: {known.why}")
    for record in result.violations():
        lines.append(f"  OWNED {'LEAK' if record.is_leak() else 'MEMORY ERROR'}: {record.what}")
        lines.extend(f"      {frame}" for frame in record.stack[:16])
    return lines


def run_all(work: Path, frames: int, seconds: float, report: Callable[[str], None]) -> bool:
    """Control, video, audio; True when the control was caught and the calls leak nothing owned."""
    ok = True
    for name, make in (("control", lambda d: [control(d)]),
                       ("video", lambda d: video_call(d, frames)),
                       ("audio", lambda d: audio_call(d, seconds))):
        directory = work / name
        directory.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        results = [outcome(program) for program in make(directory)]
        for result in results:
            for line in describe(result):
                report(line)
        if name == "control":
            caught = any(r.library().startswith("libturbojpeg") for r in results[0].violations())
            report(f"memcheck control: the planted TurboJPEG leak was {'caught' if caught else 'NOT caught'}")
            ok = ok and caught
            continue
        owned = sum(len(result.violations()) for result in results)
        statuses = [result.code for result in results]
        report(f"memcheck {name}: {time.monotonic() - started:.0f} s; exit statuses {statuses}; "
               f"{owned} definitely lost records or memory errors in the owned libraries")
        ok = ok and owned == 0 and statuses == [0, 0]
    stats = {p.stem: json.loads(p.read_text()) for p in work.glob("*/stats/*.json") if ".live" not in p.name}
    if "viewer" in stats and "listen" in stats:
        report(f"memcheck: the viewer painted {stats['viewer'].get('frames')} frames, "
               f"listen received {stats['listen'].get('packets')} packets")
    return ok


def main(argv: Optional[List[str]] = None) -> int:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m tests.memcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=5, help="video frames the viewer paints before the stop")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds of audio listen receives")
    parser.add_argument("--keep", type=Path, default=None, help="keep the logs and XML reports here")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # unwind: the programs under valgrind are killed
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pi2pi-memcheck-") as tmp:
        work = args.keep or Path(tmp)
        ok = run_all(work, args.frames, args.seconds, lambda line: print(line, flush=True))
    print(f"memcheck: {'ok' if ok else 'FAILED'} in {time.monotonic() - started:.0f} s", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
