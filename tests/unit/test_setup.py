"""scripts/setup.sh on a machine whose Python cannot run the controller (Raspberry Pi OS 11).

ansible-core 2.19 needs Python 3.11 or later on the controller; OS 11 has 3.9.
setup.sh says so before it installs anything, instead of failing deep in pip.
The interpreter is a stand-in that only tells its version (PI2PI_PYTHON).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def setup_with_python(tmp_path: Path, version: str) -> subprocess.CompletedProcess:
    python = tmp_path / f"python{version}"
    python.write_text(f"#!/bin/sh\necho {version}\n")
    python.chmod(0o755)
    # The shell's tools, but no dpkg-query or apt-get: a script past the check stops there.
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("dirname", "sort", "head", "grep", "uname", "id", "cat", "tr"):
        (tools / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(tools), "PI2PI_PYTHON": str(python), "HOME": str(tmp_path)}
    return subprocess.run(["/bin/bash", str(REPO / "scripts/setup.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("version", ["3.9", "3.10"])
def test_an_older_python_is_named_before_anything_is_installed(tmp_path: Path, version: str) -> None:
    result = setup_with_python(tmp_path, version)
    assert result.returncode == 1, result
    assert result.stderr.startswith(f"setup: this machine's Python is {version}; "), result.stderr
    assert "needs 3.11 or later" in result.stderr and "docs/raspberry-pi.md" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("version", ["3.11", "3.12"])
def test_python_3_11_and_later_pass_the_check(tmp_path: Path, version: str) -> None:
    """Control: the same stand-in with a new enough version gets past the check, to the
    Debian packages (which this PATH cannot look up or install)."""
    result = setup_with_python(tmp_path, version)
    assert "this machine's Python is" not in result.stderr, result.stderr
    assert result.returncode != 0 and result.stdout.startswith("setup: installing Debian packages: "), result
    assert "apt-get: command not found" in result.stderr or "setup: run as root" in result.stderr, result.stderr
    assert not (tmp_path / ".venv").exists() and os.path.isdir(REPO / "scripts")
