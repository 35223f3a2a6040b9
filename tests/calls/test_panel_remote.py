"""gwpi's panel key in the lab: what natpi's sshd lets it do through the tunnel.

Everything runs as gwpi's panel runs it: the `[panel] control` command that
site.yml rendered into gwpi's config (an ssh through the reverse tunnel to
natpi's sshd with the panel's own key), split like the panel splits it, as
gwpi's pi, the task's words appended. natpi's sshd answers that key only with
the forced command controller/panel_remote.py: the panel's words reach fab
(a call placed as gwpi, seen so by both Pis; a hang-up that ends it for both);
a shell, any other command and any forwarding are refused, next to a positive
control that works over the same path.
"""
from __future__ import annotations

import configparser
import json
import shlex
import subprocess
import time
from typing import Dict, Iterator, List, Optional, Sequence

import pytest

from tests.calls.lab_call import REPO, STORE, fab, provision, shows
from tests.calls.sides import wait_for
from tests.lab.lab import Lab

CONFIG = "/etc/pi2pi/pi2pi.conf"
HOME = "/home/pi"
PANEL_KEY = f"{HOME}/.ssh/pi2pi_panel"
PANEL_LOG = f"{HOME}/.local/state/pi2pi/panel-remote.log"
TUNNEL_PORT = 2345
FORWARD_PORT = 9999
REFUSED = "pi2pi panel: refused: "


def panel_config(lab: Lab, host: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(lab.run(host, f"cat {CONFIG}").stdout)
    return parser["panel"]


def control(lab: Lab) -> List[str]:
    """gwpi's panel command, split as the panel splits it (no shell)."""
    return shlex.split(panel_config(lab, "gwpi")["control"])


def from_gwpi(lab: Lab, *words: str, options: Sequence[str] = (), stdin: Optional[str] = "",
              timeout: float = 150) -> subprocess.CompletedProcess:
    """The panel's command on gwpi as pi with these words; ssh options go before its destination."""
    argv = control(lab)
    argv = [*argv[:-1], *options, argv[-1], *words]
    return lab.run("gwpi", argv, user="pi", check=False, timeout=timeout, input=stdin)


def pi_status(lab: Lab, host: str) -> Dict[str, object]:
    result = lab.run(host, "pi2pi status --json", user="pi", check=False)
    assert result.returncode == 0, shows(result)
    return json.loads(result.stdout)


def tunnel_up(lab: Lab) -> bool:
    """gwpi's localhost:2345 answers with an ssh banner (the reverse tunnel to natpi's sshd)."""
    tunnel = pi_status(lab, "gwpi")["tunnel"]
    return tunnel["up"] is True


def banner(lab: Lab, port: int) -> str:
    """What gwpi reads first from its own localhost:port (an sshd says SSH-2.0-...)."""
    return lab.run("gwpi", f"timeout 5 socat -u TCP:127.0.0.1:{port},connect-timeout=3 - | head -c 20",
                   check=False, timeout=20).stdout.strip()


@pytest.fixture(scope="module")
def site(lab: Lab) -> Iterator[Lab]:
    provision(lab)   # the lab inventory turns the panel role on; the tunnel unit runs
    wait_for(lambda: tunnel_up(lab), 30, "the tunnel (gwpi's localhost:2345 leading to natpi's sshd)", step_s=1)
    yield lab


def test_the_panel_is_provisioned_with_gwpis_own_key_and_natpis_pinned_host_key(site: Lab) -> None:
    lab = site
    # The key is made on gwpi and stays its user's alone.
    assert lab.run("gwpi", f"stat -c '%a %U' {PANEL_KEY}").stdout.strip() == "600 pi"
    public = lab.run("gwpi", f"cut -d' ' -f2 {PANEL_KEY}.pub").stdout.strip()
    # natpi's host key, pinned for the panel where it meets natpi's sshd: at the tunnel's end.
    natpi_key = lab.run("natpi", "cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub").stdout.strip()
    pinned = lab.run("gwpi", f"grep -v '^#' {HOME}/.ssh/pi2pi_panel_known_hosts").stdout.split("\n")
    assert f"[localhost]:{TUNNEL_PORT} {natpi_key}" in pinned, pinned
    # natpi takes that key as restrict + the forced command, and nothing looser.
    lines = [line for line in lab.run("natpi", f"cat {HOME}/.ssh/authorized_keys").stdout.splitlines()
             if public in line]
    assert lines == [f'restrict,command="{REPO}/.venv/bin/python {REPO}/controller/panel_remote.py --by gwpi '
                     f'--inventory {REPO}/inventory/lab" ssh-ed25519 {public} pi2pi-panel@gwpi'], lines
    # Each panel's command, and the launcher where the seed's confGUI sat (no kiosk in the lab).
    assert panel_config(lab, "natpi")["control"] == (f"env PI2PI_INVENTORY={REPO}/inventory/lab "
                                                     f"{REPO}/.venv/bin/fab -r {REPO}")
    assert control(lab) == ["ssh", "-i", PANEL_KEY, "-p", str(TUNNEL_PORT), "-o", "BatchMode=yes",
                            "-o", "IdentitiesOnly=yes",
                            "-o", f"UserKnownHostsFile={HOME}/.ssh/pi2pi_panel_known_hosts",
                            "-o", "StrictHostKeyChecking=yes", "pi@localhost"]
    for host in ("natpi", "gwpi"):
        launcher = lab.run(host, f"cat {HOME}/Desktop/pi2pi-panel.desktop").stdout
        assert "Exec=/usr/local/bin/pi2pi panel" in launcher.splitlines(), (host, launcher)
        assert "fullscreen" not in panel_config(lab, host)
        assert lab.run(host, f"test -e {HOME}/.config/autostart/pi2pi-panel.desktop", check=False).returncode == 1


def test_the_panel_key_reaches_fab_status_and_nothing_else(site: Lab) -> None:
    lab = site
    # Positive control: the same path (tunnel, key, pinned host key, forced command) works.
    status = from_gwpi(lab, "status", "--json")
    assert status.returncode == 0, shows(status)
    assert set(json.loads(status.stdout)["pis"]) == {"natpi", "gwpi"}
    text = from_gwpi(lab, "status")
    assert text.returncode == 0 and "inventory: " in text.stdout, shows(text)

    refused = {
        "no command (a shell)": [],
        "another command": ["id"],
        "a shell's list": ["status; id"],
        "more arguments": ["hangup", "&&", "id"],
        "a caller of its own": ["call", "--by", "natpi"],
        "another fab task": ["stats"],
    }
    for what, words in refused.items():
        result = from_gwpi(lab, *words, timeout=30)
        assert result.returncode == 2, (what, shows(result))
        assert REFUSED in result.stderr and "uid=" not in result.stdout, (what, shows(result))
    # A pty asked for with force: refused (restrict), and the forced command gives no shell either.
    forced = from_gwpi(lab, options=["-tt"], stdin="id\nexit\n", timeout=30)
    assert forced.returncode != 0 and "uid=" not in forced.stdout + forced.stderr, shows(forced)
    # Each refusal is in natpi's log, escaped on one line.
    log = lab.run("natpi", f"cat {PANEL_LOG}").stdout
    assert "not one of the panel's commands: 'status; id'" in log and "a shell (no command)" in log, log
    # And no call came of any of it.
    assert pi_status(lab, "natpi")["call"] is None and pi_status(lab, "gwpi")["call"] is None


def test_the_panel_key_forwards_nothing(site: Lab) -> None:
    lab = site
    # Positive control: natpi's sshd, which the forward would lead to, answers through the tunnel.
    assert banner(lab, TUNNEL_PORT).startswith("SSH-2.0-")
    forward = lab.popen("gwpi", [*control(lab)[:-1], "-N", "-L", f"127.0.0.1:{FORWARD_PORT}:localhost:22",
                                 control(lab)[-1]],
                        user="pi", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: f"127.0.0.1:{FORWARD_PORT}" in lab.run("gwpi", "ss -Hltn").stdout, 15,
                 "the panel ssh's local listener (the client's end of -L)", step_s=0.5)
        assert banner(lab, FORWARD_PORT) == ""   # the client listens; natpi's sshd opens nothing
    finally:
        forward.terminate()
        _, err = forward.communicate(timeout=15)
    assert "administratively prohibited" in err, err
    # Nor may it listen on natpi (-R).
    listen = from_gwpi(lab, options=["-N", "-o", "ExitOnForwardFailure=yes",
                                     "-R", "127.0.0.1:9998:localhost:22"], stdin=None, timeout=30)
    assert listen.returncode != 0 and "forwarding failed" in listen.stderr, shows(listen)
    assert "127.0.0.1:9998" not in lab.run("natpi", "ss -Hltn").stdout


def test_a_call_placed_from_gwpi_says_so_on_both_pis_and_gwpis_hangup_ends_it(site: Lab) -> None:
    lab = site
    placed = from_gwpi(lab, "call", "--audio-only")
    assert placed.returncode == 0, shows(placed)
    assert " is up: audio both ways" in placed.stdout and "placed by gwpi" in placed.stdout, shows(placed)
    call = placed.stdout.split(" is up")[0].rsplit("call ", 1)[1]
    for host in ("natpi", "gwpi"):
        up = pi_status(lab, host)["call"]
        assert up is not None and up["call"] == call and up["by"] == "gwpi", (host, up)
        assert set(up["programs"]) == {"talk", "listen"}, (host, up)
    # natpi's own fab and gwpi's panel both say who placed it.
    status = fab(lab, "status")
    assert status.returncode == 0 and f"call {call} placed by gwpi: " in status.stdout, shows(status)
    seen = json.loads(from_gwpi(lab, "status", "--json").stdout)
    assert {pi["call"]["by"] for pi in seen["pis"].values()} == {"gwpi"}, seen

    time.sleep(2)   # some audio both ways, so the hang-up has stats to fetch
    ended = from_gwpi(lab, "hangup")
    assert ended.returncode == 0 and f"call {call} ended" in ended.stdout, shows(ended)
    for host in ("natpi", "gwpi"):
        assert pi_status(lab, host)["call"] is None, host
        # fab on natpi fetched both sides' call directories, as for its own hang-up.
        assert lab.host_path("natpi", f"{STORE}/{call}/{host}/summary.json").exists(), host
