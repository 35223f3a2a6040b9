"""`make demo`: the main job on its embedded default, the namespaced lab.

Builds the lab, provisions it with site.yml run from natpi (the controller),
places a call, hangs up, shows the stats, and tears the lab down whatever
happens. A step that is not built yet is named as such: the demo never
pretends.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

from tests.lab.lab import Lab

REPO = Path(__file__).resolve().parents[1]
FAB = REPO / ".venv" / "bin" / "fab"


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def on_natpi(lab: Lab, command: str, check: bool = True) -> int:
    """Run a command as the controller's user pi on natpi, output streamed."""
    proc = lab.popen("natpi", f"cd {shlex.quote(str(REPO))} && {command}", user="pi")
    proc.wait()
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: `{command}` failed on natpi (exit {proc.returncode})")
    return proc.returncode


def fab_has(task: str) -> bool:
    source = (REPO / "fabfile.py")
    return FAB.exists() and source.exists() and f"def {task}(" in source.read_text()


def main() -> int:
    lab = Lab()
    started = time.monotonic()
    try:
        step("lab: natpi, isp, gw, gwpi, stranger in network and mount namespaces")
        lab.up()
        print(f"lab up in {time.monotonic() - started:.1f} s")

        step("wheelhouse: the runtime and its dependencies, built where the package index is")
        # A real natpi builds it itself; the lab's natpi has no Internet, so the machine does.
        subprocess.run([str(REPO / ".venv/bin/ansible-playbook"), "playbooks/wheelhouse.yml"], cwd=REPO, check=True)

        step("provision: ansible-playbook -i inventory/lab site.yml (on natpi, as pi)")
        on_natpi(lab, ".venv/bin/ansible-playbook -i inventory/lab site.yml"
                      """ -e '{"runtime_wheelhouse_build": false}'""")

        step("both Pis: pi2pi --version")
        for pi in ("natpi", "gwpi"):
            print(f"{pi}: {lab.run(pi, 'pi2pi --version', user='pi').stdout.strip()}")

        missing = [t for t in ("call", "hangup", "stats") if not fab_has(t)]
        if missing:
            step("call")
            print(f"not built yet: fab {', fab '.join(missing)} (the fabric issue); stopping here")
            return 0
        step("call: fab call")
        on_natpi(lab, ".venv/bin/fab -r . call")
        time.sleep(10)
        step("hang up: fab hangup")
        on_natpi(lab, ".venv/bin/fab -r . hangup")
        step("stats: fab stats")
        on_natpi(lab, ".venv/bin/fab -r . stats")
        return 0
    finally:
        step("lab down")
        lab.down()


if __name__ == "__main__":
    sys.exit(main())
