"""`make setup` on an emulated armhf natpi (issue 13, item 3): the controller's
set-up completes there (PyPI reachable, Debian's packages from the registry)
and brings the controller's tools without the test bench's.

A bare bookworm armhf root (controller-packages.txt: Debian's apt variant and
make) gets a copy of the repository's files and runs `make setup` in it, as on
natpi. Slow (Debian's packages unpacked and Ansible installed under emulation):
`make test-arm-setup`, not part of `make test`.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

from tests.arm.pi import EmulatedPi, cached_root
from tests.provision.helpers import REPO

CHECKOUT = "/home/pi/pi2pi"
# The test bench's tools: none may come with the controller's set-up.
TEST_DEBIAN = ["qemu-system-x86", "linux-image-amd64", "xvfb", "valgrind", "mmdebstrap", "qemu-user-static",
               "gstreamer1.0-tools", "openssh-server", "sox"]
TEST_PYTHON = ["pytest", "ansible-lint", "virtme-ng", "atheris", "vermin", "pyalsaaudio", "PyTurboJPEG"]


# fab stats --plot's drawing, of a short call's viewer lines on both sides.
DRAW = """
import sys
from pathlib import Path
import matplotlib
from controller import plot
def line(i, at):
    viewer = {"at": at - 0.1, "frames": 10 * i, "received": 10 * i, "bytes": 40000 * i,
              "latency_ms": 30.0 + i, "dropped": 0, "reconnects": 0}
    return {"at": at, "programs": {"viewer": viewer}}
sides = {"natpi": [line(i, 1000.0 + i) for i in range(5)], "gwpi": [line(i, 1000.3 + i) for i in range(5)]}
plot.draw(plot.series(sides), "call x", Path(sys.argv[1]), size_px=(800, 600))
print(matplotlib.__version__, matplotlib.__file__)
"""


def copy_checkout(target: Path) -> None:
    """The repository's files as a clone has them (tracked and new, not ignored)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file() and not source.is_symlink():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


@pytest.fixture(scope="module")
def natpi(tmp_path_factory) -> Iterator[EmulatedPi]:
    lower = cached_root("bookworm", "armhf", "controller")
    work = Path(tempfile.mkdtemp(prefix="pi2pi-arm-natpi-", dir="/var/tmp"))
    try:
        with EmulatedPi("bookworm", "armhf", lower, work, tmp_path_factory.getbasetemp()) as pi:
            copy_checkout(pi.root / CHECKOUT.lstrip("/"))
            yield pi
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_controller_setup_on_armhf_brings_the_controller_alone(natpi: EmulatedPi, tmp_path) -> None:
    done = natpi.run(["make", "setup"], timeout_s=3600, cwd=CHECKOUT, env=natpi.trust_this_machines_registries())
    (tmp_path / "make-setup.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert natpi.python("import platform; print(platform.machine())") == "armv7l"
    venv = f"{CHECKOUT}/.venv/bin"
    # The controller's tools answer: Ansible reads the site, fab lists its tasks,
    # matplotlib (Debian's on armhf) draws with the Agg backend.
    syntax = natpi.run([f"{venv}/ansible-playbook", "-i", "inventory/example", "--syntax-check", "site.yml"],
                       timeout_s=900, cwd=CHECKOUT)
    assert syntax.returncode == 0, syntax.stdout[-2000:] + syntax.stderr[-2000:]
    tasks = natpi.run([f"{venv}/fab", "--list"], timeout_s=300, cwd=CHECKOUT)
    assert tasks.returncode == 0 and "call" in tasks.stdout and "hangup" in tasks.stdout, tasks.stdout + tasks.stderr
    png = tmp_path / "call.png"
    plot = natpi.run([f"{venv}/python", "-c", DRAW, str(png)], timeout_s=600, cwd=CHECKOUT)
    assert plot.returncode == 0 and "/usr/lib/python3/dist-packages/" in plot.stdout, plot.stdout + plot.stderr
    with Image.open(png) as image:
        assert image.size == (800, 600)
    # ... and nothing of the test bench's came with them.
    installed = natpi.run(["dpkg-query", "-W", "-f", "${Package} ${Status}\\n", *TEST_DEBIAN]).stdout
    assert "install ok installed" not in installed, installed
    pip = natpi.run([f"{venv}/python", "-m", "pip", "list", "--format=freeze"], timeout_s=300)
    names = {line.split("==")[0].lower() for line in pip.stdout.split()}
    assert not names & {name.lower() for name in TEST_PYTHON}, sorted(names)
