"""`make lab-up`, `make lab-shell`, `make lab-down`: the lab's command line, as a person uses it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

from tests.lab.lab import leftovers

REPO = Path(__file__).resolve().parents[2]

# The command line brings the machine's one lab up: these run with the lab's tests, not
# beside them (scripts/test-host).
pytestmark = pytest.mark.lab


def cli_env() -> dict:
    # The lab belongs to this test process: another test session running at the
    # same time waits for it instead of taking it as a person's leftover.
    return {**os.environ, "PYTHONPATH": str(REPO), "PI2PI_LAB_OWNER": str(os.getpid())}


def lab_cli(*args: str, stdin: Optional[str] = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.lab", *args], cwd=REPO, input=stdin, env=cli_env(),
                          capture_output=True, text=True, timeout=1000)


@pytest.fixture
def cli_lab() -> object:
    """Whatever the test does, `down` runs after it."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network and mount namespaces, iptables): run the tests as root")
    yield
    lab_cli("down")


def test_up_shell_run_down(cli_lab: object) -> None:
    up = lab_cli("up")
    assert up.returncode == 0, up.stderr
    assert "lab up in" in up.stdout and "198.51.100.243:2222" in up.stdout

    # The lab outlives the command that built it: a person explores it afterwards.
    status = lab_cli("status")
    assert status.returncode == 0
    assert "gw" in status.stdout and "198.51.100.243:2222" in status.stdout

    shell = lab_cli("shell", "natpi", "--user", "pi", stdin="hostname; whoami\n")
    assert shell.stdout.split()[-2:] == ["natpi", "pi"]
    run = lab_cli("run", "--user", "pi", "natpi", "ssh -o BatchMode=yes -p 2222 admin@198.51.100.243 hostname")
    assert (run.returncode, run.stdout) == (0, "gw\n")
    assert lab_cli("run", "gw", "exit 3").returncode == 3

    # A host's service under the lab's stand-in for systemd, until Ctrl-C (or SIGTERM, the same way out).
    unit = "/etc/systemd/system/pi2pi-lab-probe.service"
    lab_cli("run", "natpi", f"mkdir -p /etc/systemd/system && cat > {unit}",
            stdin="[Service]\nExecStart=/bin/sh -c 'echo ran >> /tmp/probe.out; exec sleep 600'\nRestart=always\n")
    service = subprocess.Popen([sys.executable, "-m", "tests.lab", "unit", "natpi", unit], cwd=REPO, env=cli_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while lab_cli("run", "natpi", "cat /tmp/probe.out").stdout != "ran\n":
            assert service.poll() is None, service.communicate()
            assert time.monotonic() < deadline, "the unit never ran"
            time.sleep(0.1)
    finally:
        service.terminate()
        out, err = service.communicate(timeout=30)
    assert service.returncode == 130, (out, err)
    assert lab_cli("run", "natpi", "pgrep -f 'slee[p] 600'").returncode == 1, "stopped with the command"

    down = lab_cli("down")
    assert down.returncode == 0
    assert leftovers() == []


def test_mistakes_get_a_clear_message(tmp_path: Path) -> None:
    # A state dir of its own: no lab was ever up there, whatever runs elsewhere.
    not_up = lab_cli("--state-dir", str(tmp_path), "run", "natpi", "true")
    assert not_up.returncode == 2
    assert "the lab is not up" in not_up.stderr and "Traceback" not in not_up.stderr
    no_host = lab_cli("shell", "nohost")
    assert no_host.returncode == 2 and "invalid choice" in no_host.stderr
