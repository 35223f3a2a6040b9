"""Run the real talk and listen programs against ALSA devices a test defines.

The ALSA config the tests write (ALSA_CONFIG_PATH = the system's alsa.conf plus
ours) defines `p2p_in`, a capture PCM that reads a raw S16_LE file through the
`file` plugin, and playback goes to `null` (the recording is what listen heard).
Neither is paced in real time, so both programs run with --pace clock.
"""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PI2PI = [sys.executable, "-m", "pi2pi"]
SYSTEM_ALSA_CONF = "/usr/share/alsa/alsa.conf"


def alsa_env(directory: Path, capture: Optional[np.ndarray] = None, name: str = "p2p_in") -> Dict[str, str]:
    """Environment whose ALSA knows a capture PCM `name` playing `capture` (int16, interleaved)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    if capture is not None:
        raw = directory / f"{name}.raw"
        raw.write_bytes(capture.astype("<i2").tobytes())
        lines.append(f'pcm.{name} {{ type file slave.pcm "null" file "/dev/null" infile "{raw}" format "raw" }}')
    conf = directory / "asound.conf"
    conf.write_text("\n".join(lines) + "\n")
    env = dict(os.environ)
    env["ALSA_CONFIG_PATH"] = f"{SYSTEM_ALSA_CONF}:{conf}"
    env["PYTHONPATH"] = str(ROOT / "runtime") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def free_port() -> int:
    """A free port below the kernel's ephemeral range, so no outgoing connection takes it meanwhile."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000..32000")


def wait_listening(port: int, timeout_s: float = 30.0) -> None:
    """Wait until something listens on the port (without connecting to it: ss)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def start(program: str, args: List[str], env: Dict[str, str], log: Path,
          command: Sequence[str] = tuple(PI2PI)) -> subprocess.Popen:
    """`pi2pi PROGRAM ARGS -v`, run by `command` (this interpreter's by default; tests/arm: an emulated Pi's)."""
    handle = open(log, "w")
    return subprocess.Popen([*command, program, *args, "-v"], env=env, stdout=handle, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, timeout_s: float = 30.0) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def stats(directory: Path, program: str) -> dict:
    return json.loads((directory / f"{program}.json").read_text())


def with_silence(signal: np.ndarray, rate: int, before_s: float, after_s: float) -> np.ndarray:
    return np.concatenate([np.zeros(int(rate * before_s), np.int16), signal,
                           np.zeros(int(rate * after_s), np.int16)])
