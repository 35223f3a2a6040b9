"""The emulated Pis' fixtures; these tests run with PI2PI_ARM=1 only (`make test-arm`).

They build (or take from the cache) a Debian root per suite and architecture,
which needs root, mmdebstrap and qemu-user-static (apt-packages-test.txt), and
minutes when the cache is cold; a plain `pytest` leaves them out and says so
in its header.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

ENABLED = os.environ.get("PI2PI_ARM") == "1"

# Raspberry Pi OS 12 (32-bit and 64-bit) and 11 (32-bit, Python 3.9: the last
# release with the legacy camera stack). PI2PI_ARM_ROOTS="bookworm:armhf ..." narrows them.
ROOTS: List[Tuple[str, str]] = [("bookworm", "armhf"), ("bookworm", "arm64"), ("bullseye", "armhf")]

if not ENABLED:
    collect_ignore_glob = ["test_*.py"]


def pytest_report_header(config):
    if not ENABLED:
        return "tests/arm: not collected without PI2PI_ARM=1 (make test-arm)"
    return f"tests/arm: emulated roots {' '.join(f'{s}:{a}' for s, a in chosen_roots())}"


def chosen_roots() -> List[Tuple[str, str]]:
    wanted = os.environ.get("PI2PI_ARM_ROOTS", "").split()
    return [tuple(item.split(":", 1)) for item in wanted] or ROOTS


if ENABLED:
    from tests.arm.pi import EmulatedPi, cached_root
    from tests.video.conftest import no_leftover_programs  # noqa: F401  (autouse: a failed test's programs)
    from tests.provision.helpers import REPO, build_wheelhouse

    logging.getLogger("arm").setLevel(logging.INFO)

    @pytest.fixture(scope="session")
    def wheelhouse() -> Path:
        """The controller's wheelhouse, built by the runtime role's own playbook."""
        build_wheelhouse()
        return REPO / "build" / "wheelhouse"

    @pytest.fixture(scope="session", params=chosen_roots(), ids=lambda root: f"{root[0]}-{root[1]}")
    def pi(request, tmp_path_factory, wheelhouse) -> Iterator[EmulatedPi]:
        """An emulated Pi with the runtime installed as the role installs it (results in pi.installed)."""
        suite, arch = request.param
        lower = cached_root(suite, arch)
        work = Path(tempfile.mkdtemp(prefix=f"pi2pi-arm-{suite}-{arch}-", dir="/var/tmp"))
        try:
            with EmulatedPi(suite, arch, lower, work, tmp_path_factory.getbasetemp()) as emulated:
                emulated.installed = emulated.install_runtime(wheelhouse)   # checked by the first test
                yield emulated
        finally:
            shutil.rmtree(work, ignore_errors=True)
