"""Run camera and viewer as the user does (subprocesses over loopback) and look at what they left."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from pi2pi.video import framebuffer, testpattern


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Program:
    """A pi2pi program in a subprocess, its stderr collected line by line."""

    started: List["Program"] = []  # conftest kills whatever a failed test left running

    def __init__(self, args: List[str], cwd: Path, command: Sequence[str] = (sys.executable, "-m", "pi2pi")) -> None:
        """`command` runs pi2pi: this interpreter's by default (tests/arm: an emulated Pi's)."""
        env = dict(os.environ, PI2PI_CONFIG=str(cwd / "none.conf"))
        (cwd / "none.conf").write_text("")
        self.proc = subprocess.Popen([*command, *args, "-v"], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: List[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        Program.started.append(self)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout_s: float = 10.0, count: int = 1) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            hits = [line for line in list(self.lines) if text in line]
            if len(hits) >= count:
                return hits[count - 1]
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no {text!r} (x{count}) in the log:\n" + "\n".join(self.lines))

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.finish(timeout_s)

    def finish(self, timeout_s: float = 15.0) -> int:
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("program did not end:\n" + "\n".join(self.lines)) from None
        self._reader.join(2)
        return code

    def log(self) -> str:
        return "\n".join(self.lines)


def read_stats(directory: Path, program: str) -> dict:
    return json.loads((directory / f"{program}.json").read_text())


def fb_rgb(path: Path, geometry: str) -> np.ndarray:
    """The file framebuffer's whole screen as RGB888, read independently of the viewer."""
    g = framebuffer.parse_geometry(geometry)
    raw = np.fromfile(path, dtype=np.uint8, count=g.size)
    if g.bpp == 16:
        return framebuffer.rgb565_to_rgb(raw.view("<u2").reshape(g.height, g.width))
    pixels = raw.reshape(g.height, g.width, g.bpp // 8)
    return pixels[..., [2, 1, 0]]  # file framebuffers are BGRX / BGR


def label_at(rgb: np.ndarray, at: Tuple[int, int], shown: Tuple[int, int], frame: Tuple[int, int]) -> Tuple[str, int]:
    x, y = at
    return testpattern.read_label(rgb[y:y + shown[1], x:x + shown[0]], frame[0], frame[1])


def expected_host(name: Optional[str] = None) -> str:
    return (name or socket.gethostname())[: testpattern.HOST_CHARS].upper()


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory (VmRSS) or its peak (VmHWM), in kB, from /proc."""
    return int(next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if line.startswith(field + ":")).split()[1])
