"""The camera role's module step, run by Ansible inside the VM with vivid."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.hw import hwlib

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(__file__).with_name("camera_role.yml")
ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")
PERSISTED = Path("/etc/modules-load.d/vivid.conf")


def play(results: Path, tag: str) -> dict:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks")
    done = subprocess.run([ANSIBLE_PLAYBOOK, "-i", "localhost,", str(PLAYBOOK)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    (results / f"ansible-{tag}.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    recap = re.search(r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", done.stdout)
    assert recap, done.stdout[-2000:]
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, recap.groups())))


def test_camera_role_loads_the_module_now_and_at_boot(results):
    subprocess.run(["modprobe", "-r", "vivid"], check=True)
    PERSISTED.unlink(missing_ok=True)  # /etc is the VM's writable overlay
    assert not Path("/sys/module/vivid").exists()

    first = play(results, "first")
    assert first["changed"] >= 1 and first["failed"] == 0, first
    assert Path("/sys/module/vivid").exists(), "vivid is not loaded"
    assert os.path.exists(hwlib.VIDEO)
    assert "vivid" in PERSISTED.read_text().split(), PERSISTED.read_text()

    second = play(results, "second")
    assert second["changed"] == 0 and second["failed"] == 0, f"not idempotent: {second}"
