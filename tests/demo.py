"""`make demo`: the main job on its embedded default, the namespaced lab.

Builds the lab, provisions it with site.yml run from natpi (the controller),
places a call with `fab call`, lets it run, hangs up with `fab hangup`, shows
`fab stats`, and tears the lab down whatever happens. Its last line is
`fab stats --json` of that call with call_setup_s and hangup_s (the two
commands' wall time, as a user waits for them) added; it exits non-zero if a
step failed or a direction carried nothing.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from tests.lab.lab import Lab

REPO = Path(__file__).resolve().parents[1]
FAB = ".venv/bin/fab"
CALL_S = 8.0


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def on_natpi(lab: Lab, command: str, check: bool = True) -> int:
    """Run a command as the controller's user pi on natpi, output streamed."""
    proc = lab.popen("natpi", f"cd {shlex.quote(str(REPO))} && {command}", user="pi")
    proc.wait()
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: `{command}` failed on natpi (exit {proc.returncode})")
    return proc.returncode


def timed_on_natpi(lab: Lab, command: str) -> float:
    started = time.monotonic()
    on_natpi(lab, command)
    return round(time.monotonic() - started, 2)


def call(lab: Lab) -> dict:
    """Provision, call, hang up; `fab stats --json` of the call with the two timings added."""
    step("wheelhouse: the runtime and its dependencies, built where the package index is")
    # A real natpi builds it itself; the lab's natpi has no Internet, so the machine does.
    subprocess.run([str(REPO / ".venv/bin/ansible-playbook"), "playbooks/wheelhouse.yml"], cwd=REPO, check=True)

    step("provision: ansible-playbook -i inventory/lab site.yml (on natpi, as pi)")
    on_natpi(lab, ".venv/bin/ansible-playbook -i inventory/lab site.yml"
                  """ -e '{"runtime_wheelhouse_build": false}'""")

    step("both Pis: pi2pi --version")
    for pi in ("natpi", "gwpi"):
        print(f"{pi}: {lab.run(pi, 'pi2pi --version', user='pi').stdout.strip()}")

    step("the tunnel: pi2pi-tunnel.service's ExecStart, restarted as systemd would (the lab has no systemd)")
    lab.start_unit("natpi", "/etc/systemd/system/pi2pi-tunnel.service")

    step("call: fab call (returns once media flows both ways)")
    call_setup_s = timed_on_natpi(lab, f"{FAB} call")
    step(f"the call runs for {CALL_S:.0f} s: each viewer shows the other Pi's test pattern, each listen plays "
         f"the other's test signal; fab watch shows its figures each second")
    on_natpi(lab, f"{FAB} watch --seconds {CALL_S:.0f}")
    on_natpi(lab, f"{FAB} status")

    step("hang up: fab hangup (senders, then receivers, then both Pis' stats to natpi)")
    hangup_s = timed_on_natpi(lab, f"{FAB} hangup")

    step("stats: fab stats")
    on_natpi(lab, f"{FAB} stats")
    figures = json.loads(lab.run("natpi", f"cd {shlex.quote(str(REPO))} && {FAB} stats --json",
                                 user="pi").stdout)
    figures["call_setup_s"] = call_setup_s
    figures["hangup_s"] = hangup_s
    return figures


def main() -> int:
    lab = Lab()
    started = time.monotonic()
    try:
        step("lab: natpi, neighbour, isp, gw, gwpi, stranger in network and mount namespaces")
        lab.up()
        print(f"lab up in {time.monotonic() - started:.1f} s")
        figures = call(lab)
    finally:
        step("lab down")
        lab.down()
    empty = [name for name, d in figures.items() if isinstance(d, dict) and not (d.get("sent") and d.get("received"))]
    step("fab stats --json, with call_setup_s (fab call to media both ways) and hangup_s (fab hangup to stats "
         "on natpi), seconds as the user waits")
    print(json.dumps(figures, sort_keys=True), flush=True)
    if empty:
        print(f"demo: no media in {', '.join(empty)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
