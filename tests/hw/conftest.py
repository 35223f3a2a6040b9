"""Fixtures of the hardware lab; these tests run inside its VM only.

tests/hw/run boots the VM and runs pytest there with PI2PI_HW_VM=1. On the host
there are no vivid, vfb or snd-aloop devices (and loading modules into the
host's kernel is not ours to do), so a plain `pytest tests` collects nothing
here and says why in its header.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

IN_VM = os.environ.get("PI2PI_HW_VM") == "1"

if not IN_VM:
    collect_ignore_glob = ["test_*.py", "bench_*.py"]


def pytest_report_header(config):
    if not IN_VM:
        return "tests/hw: not collected outside the hardware-lab VM (run tests/hw/run)"
    return f"tests/hw: inside the hardware-lab VM, results in {os.environ.get('PI2PI_HW_OUT')}"


if IN_VM:
    from tests.hw import hwlib

    @pytest.fixture(scope="session", autouse=True)
    def drivers():
        """The real drivers, loaded once for the session."""
        for name, node in (("vivid", hwlib.VIDEO), ("vfb", hwlib.FB),
                           ("snd-aloop", "/proc/asound/Loopback")):
            hwlib.reload_module(name, node)

    @pytest.fixture
    def results(request) -> Path:
        """A directory for this test's artefacts, kept on the host."""
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        path = Path(os.environ["PI2PI_HW_OUT"]) / "tests" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @pytest.fixture
    def vivid():
        """A fresh vivid (a test may have disconnected it), its picture static."""
        hwlib.reload_module("vivid", hwlib.VIDEO)
        hwlib.make_pattern_static()
        return hwlib.VIDEO
