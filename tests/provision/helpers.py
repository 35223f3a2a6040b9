"""Running the playbooks the way an administrator does: on natpi, as pi."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[2]
PYTHON = REPO / ".venv" / "bin" / "python"
PLAYBOOK = REPO / ".venv" / "bin" / "ansible-playbook"
RECAP = re.compile(r"^(\S+)\s*: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def playbook_command(*args: str) -> str:
    """The command line an administrator types on natpi (colour off for parsing).

    The lab's natpi has no package index: the wheelhouse is built beforehand
    (build_wheelhouse) and used as it is, even if runtime/ changes meanwhile.
    """
    quoted = " ".join(subprocess.list2cmdline([a]) for a in args)
    return (f"cd {REPO} && ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 {PLAYBOOK} -i inventory/lab"
            f""" -e '{{"runtime_wheelhouse_build": false}}' {quoted}""")


def recap(output: str) -> Dict[str, Dict[str, int]]:
    """PLAY RECAP as {host: {ok, changed, unreachable, failed}}."""
    return {m[1]: {"ok": int(m[2]), "changed": int(m[3]), "unreachable": int(m[4]), "failed": int(m[5])}
            for m in RECAP.finditer(output)}


def changed_tasks(output: str) -> List[str]:
    """The tasks that reported a change, for a readable failure."""
    tasks, current = [], ""
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            current = line
        elif line.startswith("changed:"):
            tasks.append(f"{current} {line}")
    return tasks


def build_wheelhouse() -> None:
    """The controller's wheelhouse, built here where the package index is reachable
    (the lab's hosts have none, like a Pi that never needs it)."""
    subprocess.run([str(PLAYBOOK), "playbooks/wheelhouse.yml"], cwd=REPO, check=True,
                   capture_output=True, text=True, timeout=600)
