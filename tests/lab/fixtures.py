"""pytest fixtures of the lab, registered by tests/conftest.py.

`lab`: a fresh running lab for each test module that asks for it, always torn
down: after the module, after a failure, on Ctrl-C or SIGTERM (the Lab also
downs itself at interpreter exit). Tests that use it are marked `lab`, so
`pytest -m "not lab"` leaves them out. A package may widen its scope with
`running_lab` (tests/calls shares one provisioned lab among its modules).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest

from tests.lab.lab import Lab

REPO = Path(__file__).resolve().parents[2]


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM (a CI timeout, `kill`) takes the same way out as Ctrl-C.
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from running_lab()


def running_lab(**options: object) -> Iterator[Lab]:
    """A lab up for as long as the generator is suspended, then down, however it ends:
    the `lab` fixture's body, for a module or package whose own `lab` fixture wants
    another kind of lab (`yield from running_lab(systemd=True)`) or scope."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network and mount namespaces, iptables): run the tests as root")
    the_lab = Lab(**options)  # type: ignore[arg-type]
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        the_lab.up()
        yield the_lab
    finally:
        the_lab.down()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def pytest_collection_modifyitems(items: list) -> None:
    for item in items:
        if "lab" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.lab)


def crash_a_lab(lab: Lab, systemd: bool = False) -> None:
    """A run that builds a lab and dies without tearing it down (kill -9, a crash), holding
    the lock `lab` handed over (after `lab.down(release=False)`): everything stays behind."""
    crash = subprocess.run(
        [sys.executable, "-c", "import os, socket; from tests.lab.lab import Lab; "
                               f"Lab(systemd={systemd}, lock=socket.socket(fileno={lab.lock_fileno})).up(); os._exit(1)"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=60, pass_fds=(lab.lock_fileno,))
    assert crash.returncode == 1, crash.stderr
