"""Run the runtime's programs (`pi2pi camera`, `viewer`, `talk`, `listen`) in the VM."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

# The project's own entry point, beside the interpreter running the tests.
PI2PI = str(Path(sys.executable).parent / "pi2pi")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Program:
    """One running program; its output goes to files in the test's results."""

    name: str
    process: subprocess.Popen
    output: Path
    stats_dir: Path

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"pi2pi {self.name} did not end within {timeout} s:\n{self.log()}") from None

    def log(self) -> str:
        return self.output.read_text(errors="replace")[-4000:]

    def stats(self) -> Dict[str, Any]:
        path = self.stats_dir / f"{self.name}.json"
        assert path.exists(), f"pi2pi {self.name} wrote no stats at {path}:\n{self.log()}"
        return json.loads(path.read_text())

    def listening(self, port: int, timeout: float) -> bool:
        """Whether the program listens on the TCP port (read from /proc: no connection made)."""
        deadline = time.monotonic() + timeout
        wanted = f":{port:04X}"
        while time.monotonic() < deadline and self.process.poll() is None:
            with open("/proc/net/tcp") as table:
                for line in table.readlines()[1:]:
                    fields = line.split()
                    if fields[1].endswith(wanted) and fields[3] == "0A":  # 0A: LISTEN
                        return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start(program: str, args: List[str], results: Path, tag: Optional[str] = None) -> Program:
    """Start `pi2pi PROGRAM ARGS --stats DIR` with its output in the results."""
    tag = tag or program
    stats_dir = results / f"stats-{tag}"
    output = results / f"{tag}.log"
    command = [PI2PI, program, *args, "--stats", str(stats_dir), "-v"]
    with open(output, "w") as out:
        out.write(" ".join(command) + "\n")
        out.flush()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Program(program, process, output, stats_dir)
