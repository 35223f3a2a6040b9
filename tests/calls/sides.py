"""Both sides of a call on this machine, over loopback: a config file per side
(as site.yml renders them, with the lab's test pattern, test signal and null
audio device) and `pi2pi` run as a user would, in a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from tests.audio.harness import free_port

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "a-call-token-of-more-than-16-chars"
FLOWS = {"video_natpi_to_gwpi": 0, "video_gwpi_to_natpi": 1, "audio_natpi_to_gwpi": 2, "audio_gwpi_to_natpi": 3}


def free_ports(count: int) -> List[int]:
    """Distinct free ports below the ephemeral range."""
    found: List[int] = []
    while len(found) < count:
        port = free_port()
        if port not in found:
            found.append(port)
    return found


@dataclass
class Side:
    name: str
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "pi2pi.conf"

    @property
    def calls(self) -> Path:
        return self.root / "calls"

    @property
    def token(self) -> Path:
        return self.root / "call.token"

    def pi2pi(self, *args: str, stdin: Optional[str] = None, timeout: float = 60) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONPATH=str(ROOT / "runtime"))
        env.pop("PI2PI_CONFIG", None)
        return subprocess.run([sys.executable, "-m", "pi2pi", *args, "--config", str(self.config)],
                              input=stdin, capture_output=True, text=True, timeout=timeout, env=env)

    def up(self, call: str, *extra: str) -> subprocess.CompletedProcess:
        return self.pi2pi("up", "--call", call, "--token-stdin", *extra, stdin=TOKEN + "\n")

    def status(self) -> dict:
        result = self.pi2pi("status", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def current(self) -> Optional[dict]:
        try:
            return json.loads((self.calls / "current.json").read_text())
        except FileNotFoundError:
            return None

    def stats(self, call: str, program: str) -> dict:
        return json.loads((self.calls / call / f"{program}.json").read_text())


def make_sides(tmp: Path, extra: str = "") -> Dict[str, Side]:
    """natpi dials, gwpi listens, on loopback ports of their own."""
    ports = dict(zip(FLOWS, free_ports(4)))
    sides = {}
    for name in ("natpi", "gwpi"):
        side = Side(name, tmp / name)
        side.root.mkdir(parents=True)
        dialing = name == "natpi"
        other = "gwpi" if dialing else "natpi"

        def end(flow: str, dialing: bool = dialing) -> str:
            return f"connect = 127.0.0.1:{ports[flow]}" if dialing else f"listen = 127.0.0.1:{ports[flow]}"

        side.config.write_text(f"""\
[call]
side = {name}
token_file = {side.token}
calls = {side.calls}
record = yes
stop_timeout_s = 5
[camera]
{end(f"video_{name}_to_{other}")}
source = testpattern
size = 160x120
fps = 15
label = {name}
stats = {side.root}/stats
[viewer]
{end(f"video_{other}_to_{name}")}
fb = {side.root}/fb
fb_geometry = 320x240x32
at = 0,0
stats = {side.root}/stats
[talk]
{end(f"audio_{name}_to_{other}")}
device = testsignal
label = {name}
bitrate = 24000
stats = {side.root}/stats
[listen]
{end(f"audio_{other}_to_{name}")}
device = null
pace = clock
buffer = 60
stats = {side.root}/stats
{extra}""")
        sides[name] = side
    return sides


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, step_s: float = 0.05) -> object:
    """Poll until predicate() is truthy; its value, or AssertionError naming what was awaited."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout_s:.0f} s waiting for {what}")
        time.sleep(step_s)


def call_processes(side: Side) -> List[int]:
    """Processes (any) whose environment names one of this side's calls: what a call left running."""
    found = []
    marker = f"PI2PI_CALL={side.calls}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(v.startswith(marker) for v in environ.split(b"\0")):
            found.append(int(entry))
    return found
