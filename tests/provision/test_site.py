"""site.yml from natpi against the lab's systemd hosts: real hosts, real ssh, real iptables, real units.

The lab in its systemd mode (Lab(systemd=True)): natpi, gw and gwpi boot
systemd as PID 1 (systemd-nspawn in their network namespaces), so the playbook
enables and starts real units, and systemd, not a stand-in, restarts the
tunnel, reloads sshd and loads the firewall at boot. A reboot is the
container's: powered off, the namespace's netfilter rules and ip_forward
forgotten as a kernel forgets them, booted again from the same disk.

One provisioned lab serves the whole module (the runs take about three
minutes): check mode on the fresh hosts, the first run, a second run, check
mode again. The tests that break things come last: the reboots, natpi's
uplink, its public address.
"""

from __future__ import annotations

import re
import subprocess
import time
from typing import Dict, Iterator, List, Tuple

import jinja2
import pytest
import yaml

from tests.lab.fixtures import running_lab
from tests.lab.lab import ADDR, Lab
from tests.provision.helpers import REPO, build_wheelhouse, changed_tasks, playbook_command, recap

SITE = yaml.safe_load((REPO / "inventory/lab/group_vars/all.yml").read_text())
GW = ADDR["gw_public"]
GWPI = ADDR["gwpi"]
MEDIA_PORTS = {
    "video-natpi-to-gwpi": SITE["pi2pi_video_natpi_to_gwpi_port"],
    "video-gwpi-to-natpi": SITE["pi2pi_video_gwpi_to_natpi_port"],
    "audio-natpi-to-gwpi": SITE["pi2pi_audio_natpi_to_gwpi_port"],
    "audio-gwpi-to-natpi": SITE["pi2pi_audio_gwpi_to_natpi_port"],
}
FORWARDS = {"tunnel-ssh": SITE["pi2pi_gwpi_ssh_port"], **MEDIA_PORTS}
TUNNEL_PORT = SITE["pi2pi_tunnel_port"]
UNIT = "/etc/systemd/system/pi2pi-tunnel.service"
TUNNEL = "pi2pi-tunnel.service"
FIREWALL = "pi2pi-firewall.service"
TUNNEL_KEY = "/var/lib/pi2pi-tunnel/.ssh/id_ed25519"
SSH = "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=5"
NEW_NATPI_PUBLIC = "198.51.100.31"

OWNER_COMMENT = "owner-admin-ssh"
# The gateway owner's own nftables ruleset, loaded by nftables.service at boot
# (Debian's /etc/nftables.conf begins with `flush ruleset`).
OWNER_NFTABLES = f"""\
#!/usr/sbin/nft -f
flush ruleset
table inet filter {{
    chain input {{
        type filter hook input priority filter; policy accept;
        tcp dport {ADDR['gw_ssh_port']} accept comment "{OWNER_COMMENT}"
    }}
}}
"""


def playbook(lab: Lab, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return lab.run("natpi", playbook_command(*args), user="pi", check=False, timeout=timeout)


def describe(result: subprocess.CompletedProcess) -> str:
    return f"rc={result.returncode}\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"


def expected_rules(natpi_public: str) -> List[str]:
    """files/iptables.rules rendered for the lab's addresses: its rule lines."""
    template = jinja2.Template((REPO / "files/iptables.rules").read_text(), trim_blocks=True)
    text = template.render(
        gateway_nat_natpi_public_address=natpi_public,
        gateway_nat_public_address=GW,
        gateway_nat_gwpi_address=GWPI,
        gateway_nat_forwards=[{"name": n, "port": p} for n, p in FORWARDS.items()],
        gateway_nat_gwpi_outbound=yaml.safe_load((REPO / "roles/gateway_nat/defaults/main.yml").read_text())[
            "gateway_nat_gwpi_outbound"],
    )
    return [line for line in text.splitlines() if line.startswith("-A ")]


def counters(lab: Lab) -> Dict[str, int]:
    """Packets counted by each of pi2pi's rules on gw, by rule text."""
    out = lab.run("gw", "iptables-save -c").stdout
    found = {}
    for line in out.splitlines():
        match = re.match(r"^\[(\d+):\d+\] (-A PI2PI-.*)$", line)
        if match:
            found[match[2]] = int(match[1])
    return found


def reach(lab: Lab, host: str, ports: List[int], seconds: int = 3) -> Dict[int, str]:
    """Connect from host to gw's public address on each port at once; what answered."""
    procs = {port: lab.popen(host, f"timeout {seconds} socat -u TCP:{GW}:{port},connect-timeout={seconds} - "
                                   f"| head -c 200", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for port in ports}
    return {port: proc.communicate(timeout=seconds + 10)[0].strip() for port, proc in procs.items()}


def tunnel_works(lab: Lab) -> bool:
    """gwpi's pi reaches natpi's sshd at its own localhost:2345, with natpi's pinned host key."""
    result = lab.run("gwpi", f"{SSH} -p {TUNNEL_PORT} pi@localhost hostname", user="pi", check=False, timeout=30)
    return result.returncode == 0 and result.stdout.strip() == "natpi"


def wait_for(predicate, seconds: float, step_s: float = 1.0) -> Tuple[bool, float]:
    """(True, the time it took) once predicate() holds, (False, seconds) if it never did."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if predicate():
            return True, time.monotonic() - started
        time.sleep(step_s)
    return False, seconds


def until(predicate, seconds: float, what: str) -> None:
    """Poll a few times a second; AssertionError naming what was awaited if it never held."""
    assert wait_for(predicate, seconds, 0.1)[0], f"gave up after {seconds:.0f} s waiting for {what}"


def unit_state(lab: Lab, host: str, unit: str) -> str:
    out = lab.run(host, f"systemctl is-enabled {unit}; systemctl is-active {unit}", check=False).stdout
    return " ".join(out.split())


def tunnel_pid(lab: Lab) -> int:
    return int(lab.run("natpi", f"systemctl show -p MainPID --value {TUNNEL}").stdout.strip() or 0)


def nat_rules(lab: Lab) -> list:
    return sorted(line for line in lab.run("gw", "iptables -t nat -S").stdout.splitlines()
                  if line.startswith("-A PI2PI-"))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from running_lab(systemd=True)


@pytest.fixture(scope="module")
def runs(lab: Lab) -> Dict[str, subprocess.CompletedProcess]:
    """Check mode on the fresh hosts, the first run, a second run, check mode again.
    natpi's sshd starts off and disabled, as on a fresh Raspberry Pi OS image: the
    tunnel role enables it."""
    build_wheelhouse()
    lab.run("natpi", "systemctl disable --now ssh.service")
    results = {}
    for name, args in (("check_fresh", ("--check", "--diff")), ("first", ()), ("second", ()),
                       ("check_provisioned", ("--check", "--diff"))):
        started = time.monotonic()
        results[name] = playbook(lab, "site.yml", *args)
        print(f"site.yml {name}: {time.monotonic() - started:.0f} s")
        if results[name].returncode != 0:
            break
    return results


@pytest.fixture(scope="module")
def provisioned(runs: Dict[str, subprocess.CompletedProcess]) -> None:
    assert "first" in runs and runs["first"].returncode == 0, describe(runs.get("first", runs["check_fresh"]))


@pytest.fixture(scope="module")
def media_listeners(lab: Lab, provisioned: None) -> Iterator[None]:
    """On gwpi, each media port answers with the host's name."""
    procs = [lab.popen("gwpi", f"exec socat TCP-LISTEN:{port},fork,reuseaddr SYSTEM:'hostname'",
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for port in MEDIA_PORTS.values()]
    for port in MEDIA_PORTS.values():
        until(lambda port=port: f":{port} " in lab.run("gwpi", "ss -Hltn").stdout, 10, f"gwpi to listen on {port}")
    yield
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def tunnel(lab: Lab, provisioned: None) -> None:
    """The tunnel as provisioning left it (its unit enabled and started), and gwpi's pi
    allowed to log in to natpi's pi: the test's own way through it."""
    lab.run("gwpi", "test -f ~/.ssh/id_ed25519 || ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519", user="pi")
    key = lab.run("gwpi", "cat ~/.ssh/id_ed25519.pub", user="pi").stdout
    lab.run("natpi", "cat >> ~/.ssh/authorized_keys", user="pi", input=key)
    up, seconds = wait_for(lambda: tunnel_works(lab), 30)
    assert up, lab.run("natpi", f"journalctl -u {TUNNEL} -n 30 --no-pager", check=False).stdout
    print(f"tunnel works {seconds:.0f} s after provisioning")


# ----- the runs -------------------------------------------------------------------------

def test_hosts_run_systemd(lab: Lab) -> None:
    for host in ("natpi", "gw", "gwpi"):
        assert lab.run(host, "cat /proc/1/comm").stdout.strip() == "systemd", host
    assert unit_state(lab, "gwpi", "ssh.service") == "enabled active"
    print("boot: " + ", ".join(f"{k} {v:.2f} s" for k, v in lab.timings.items() if k.startswith("boot_")))


def test_check_mode_on_fresh_hosts_does_not_fail(runs: Dict[str, subprocess.CompletedProcess]) -> None:
    result = runs["check_fresh"]
    assert result.returncode == 0, describe(result)
    assert recap(result.stdout)["gw"]["changed"] > 0, "check mode on fresh hosts should predict changes"


def test_site_succeeds_on_fresh_hosts(runs: Dict[str, subprocess.CompletedProcess], provisioned: None) -> None:
    totals = recap(runs["first"].stdout)
    assert set(totals) == {"gw", "natpi", "gwpi"}, totals
    assert all(t["failed"] == 0 and t["unreachable"] == 0 for t in totals.values()), totals


def test_second_run_changes_nothing(runs: Dict[str, subprocess.CompletedProcess], provisioned: None) -> None:
    """The units enabled and started by the first run stay as they are."""
    result = runs["second"]
    assert result.returncode == 0, describe(result)
    assert all(t["changed"] == 0 for t in recap(result.stdout).values()), changed_tasks(result.stdout)


def test_check_mode_on_a_provisioned_lab_reports_no_change(
        runs: Dict[str, subprocess.CompletedProcess], provisioned: None) -> None:
    result = runs["check_provisioned"]
    assert result.returncode == 0, describe(result)
    assert all(t["changed"] == 0 for t in recap(result.stdout).values()), changed_tasks(result.stdout)


# ----- the units ------------------------------------------------------------------------

def test_tunnel_and_firewall_units_are_enabled_and_active(lab: Lab, tunnel: None) -> None:
    assert unit_state(lab, "natpi", TUNNEL) == "enabled active"
    assert unit_state(lab, "gw", FIREWALL) == "enabled active"
    assert lab.run("natpi", f"systemctl cat {TUNNEL}").stdout.count(UNIT) == 1

def test_natpis_sshd_off_on_a_fresh_image_is_enabled_and_started(lab: Lab, provisioned: None) -> None:
    assert unit_state(lab, "natpi", "ssh.service") == "enabled active"


def test_gwpis_sshd_was_reloaded_by_systemd_for_its_drop_in(lab: Lab, provisioned: None) -> None:
    """The first run installs gwpi's sshd drop-in and reloads ssh.service (ssh_keys' handler):
    systemd's journal says so, and the daemon kept its pid (a reload, not a restart)."""
    journal = lab.run("gwpi", "journalctl -u ssh.service --no-pager -o cat").stdout
    assert "Reloaded" in journal or "Reloading" in journal, journal
    started = lab.run("gwpi", "systemctl show -p ExecMainStartTimestampMonotonic --value ssh.service").stdout
    reloaded = lab.run("gwpi", "journalctl -u ssh.service --no-pager -o short-monotonic -g Reload").stdout
    first_reload = float(reloaded.split("]")[0].strip("[ ")) * 1e6
    assert 0 < int(started) < first_reload, (started, reloaded)


def test_units_pass_systemd_analyze_verify(lab: Lab, provisioned: None) -> None:
    if lab.run("natpi", "command -v systemd-analyze", check=False).returncode != 0:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    for host, unit in (("natpi", UNIT), ("gw", "/etc/systemd/system/pi2pi-firewall.service")):
        result = lab.run(host, f"SYSTEMD_LOG_LEVEL=warning systemd-analyze verify {unit}", check=False)
        assert result.returncode == 0, f"{host} {unit}: {result.stdout}{result.stderr}"


# ----- the gateway ----------------------------------------------------------------------

def test_gateway_holds_exactly_the_rules_and_the_owners(lab: Lab, provisioned: None) -> None:
    live = lab.run("gw", "iptables-save").stdout.splitlines()
    ours = sorted(line for line in live if line.startswith("-A PI2PI-"))
    assert ours == sorted(expected_rules(ADDR["natpi_public"]))
    for hook in ("-A PREROUTING -j PI2PI-PREROUTING", "-A POSTROUTING -j PI2PI-POSTROUTING",
                 "-A FORWARD -j PI2PI-FORWARD"):
        assert live.count(hook) == 1, hook
    # The owner's rules from before provisioning are still there.
    assert any(line.startswith("-A PREROUTING") and "--dport 8080" in line and "DNAT" in line for line in live)
    assert any(line.startswith("-A INPUT") and "--dport 2222" in line for line in live)
    assert any(line.startswith(":FORWARD DROP") for line in live)
    assert lab.run("gw", "sysctl -n net.ipv4.ip_forward").stdout.strip() == "1"


def test_natpi_reaches_gwpi_through_the_gateway(lab: Lab, media_listeners: None) -> None:
    before = counters(lab)
    answers = reach(lab, "natpi", list(FORWARDS.values()))
    for name, port in MEDIA_PORTS.items():
        assert answers[port] == "gwpi", f"{name} port {port}: {answers[port]!r}"
    assert answers[FORWARDS["tunnel-ssh"]].startswith("SSH-2.0-"), answers
    # The ssh that answers on gw's port 22 is gwpi's: its host key.
    gwpi_key = lab.run("gwpi", "cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub").stdout.strip()
    scanned = lab.run("natpi", f"ssh-keyscan -t ed25519 -p {FORWARDS['tunnel-ssh']} {GW}", user="pi").stdout
    assert gwpi_key in scanned
    after = counters(lab)
    for rule in expected_rules(ADDR["natpi_public"]):
        if "DNAT" in rule:
            assert after[rule] > before.get(rule, 0), f"no packets counted by {rule}"


def test_stranger_does_not_reach_gwpi(lab: Lab, media_listeners: None) -> None:
    answers = reach(lab, "stranger", list(FORWARDS.values()))
    assert all(answer == "" for answer in answers.values()), answers
    # Control: the same probe from stranger does reach the gateway's admin sshd.
    control = reach(lab, "stranger", [ADDR["gw_ssh_port"]])
    assert control[ADDR["gw_ssh_port"]].startswith("SSH-2.0-")


def test_gwpi_starts_connections_only_where_the_role_lets_it(lab: Lab, provisioned: None) -> None:
    stranger = ADDR["stranger"]
    listeners = [lab.popen("stranger", f"exec socat TCP-LISTEN:{port},reuseaddr,fork SYSTEM:'echo stranger-{port}'",
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for port in (443, 2323)]
    try:
        for port in (443, 2323):
            until(lambda port=port: f":{port} " in lab.run("stranger", "ss -Hltn").stdout, 10,
                  f"stranger to listen on {port}")

        def dial(port: int) -> str:
            return lab.run("gwpi", f"timeout 4 socat -u TCP:{stranger}:{port},connect-timeout=3 - | head -c 40",
                           check=False).stdout.strip()
        # Control: an allowed port (apt's HTTPS) answers, so the path and the listener work;
        # another port is left to the owner's FORWARD policy, which drops it.
        assert dial(443) == "stranger-443"
        assert dial(2323) == ""
    finally:
        for proc in listeners:
            proc.kill()
            proc.wait()


def test_unconfirmed_apply_rolls_back_by_itself(lab: Lab, provisioned: None) -> None:
    lab.run("gw", "iptables -t nat -F PI2PI-PREROUTING")
    lab.run("gw", "/usr/local/sbin/pi2pi-firewall apply --confirm-within 2")
    assert len([line for line in lab.run("gw", "iptables-save -t nat").stdout.splitlines()
                if line.startswith("-A PI2PI-PREROUTING")]) == len(FORWARDS)
    # nobody confirms: the gateway puts the earlier rules back by itself
    until(lambda: not [line for line in lab.run("gw", "iptables-save -t nat").stdout.splitlines()
                       if line.startswith("-A PI2PI-PREROUTING")], 30, "the unconfirmed rules to be rolled back")
    # What the boot unit runs brings the rules back.
    lab.run("gw", "/usr/local/sbin/pi2pi-firewall boot")
    live = lab.run("gw", "iptables-save").stdout.splitlines()
    assert sorted(line for line in live if line.startswith("-A PI2PI-")) == sorted(expected_rules(ADDR["natpi_public"]))


def test_owners_nftables_ruleset_and_pi2pis_rules_coexist(lab: Lab, media_listeners: None) -> None:
    """A Debian 12 gateway's boot in the unit's order: nftables.service loads
    /etc/nftables.conf (`flush ruleset`, then the owner's `inet filter`), then
    pi2pi-firewall.service (After=nftables.service) runs `pi2pi-firewall boot`."""
    if lab.run("gw", "command -v nft && test -f /etc/nftables.conf", check=False).returncode != 0:
        pytest.skip("nft or /etc/nftables.conf missing (Debian package nftables)")
    saved = lab.run("gw", "iptables-save -c").stdout
    try:
        lab.run("gw", "nft -f /etc/nftables.conf")
        assert "PI2PI" not in lab.run("gw", "iptables-save").stdout, "flush ruleset left pi2pi's chains"
        lab.run("gw", "/usr/local/sbin/pi2pi-firewall boot")
        live = lab.run("gw", "iptables-save").stdout.splitlines()
        assert sorted(line for line in live if line.startswith("-A PI2PI-")) == sorted(expected_rules(ADDR["natpi_public"]))
        ruleset = lab.run("gw", "nft list ruleset").stdout
        assert "table inet filter" in ruleset and "table ip nat" in ruleset, ruleset
        assert set(reach(lab, "natpi", list(MEDIA_PORTS.values())).values()) == {"gwpi"}
        # The owner's own forward chain decides too: its drop is final, whatever pi2pi accepts...
        lab.run("gw", "nft 'chain inet filter forward { policy drop; }'")
        assert set(reach(lab, "natpi", list(MEDIA_PORTS.values())).values()) == {""}
        # ...until it accepts the DNATed flows (roles/gateway_nat/README.md).
        lab.run("gw", "nft add rule inet filter forward ct state established,related accept")
        lab.run("gw", "nft add rule inet filter forward ct status dnat accept")
        assert set(reach(lab, "natpi", list(MEDIA_PORTS.values())).values()) == {"gwpi"}
    finally:
        lab.run("gw", "nft delete table inet filter", check=False)
        lab.run("gw", "iptables-restore -c", input=saved)
    live = lab.run("gw", "iptables-save").stdout.splitlines()
    assert any(line.startswith(":FORWARD DROP") for line in live)


def test_the_firewall_backup_is_roots_alone(lab: Lab, provisioned: None) -> None:
    # The first run applied the rules, so the backup of the gateway's whole firewall exists.
    modes = lab.run("gw", "stat -c '%a %U' /var/lib/pi2pi-firewall /var/lib/pi2pi-firewall/iptables.before").stdout
    assert modes.split("\n")[:2] == ["700 root", "600 root"], modes


def test_only_what_is_addressed_to_the_public_address_is_dnated(lab: Lab, media_listeners: None) -> None:
    # natpi's address, but the gateway's LAN address as the destination (routed to gw
    # by the ISP): not DNATed to gwpi, while the same port at the public address is.
    lab.run("isp", f"ip route replace 10.0.0.0/24 via {GW}")
    try:
        lan_side = lab.run("natpi", "timeout 4 socat -u TCP:10.0.0.1:22,connect-timeout=3 - | head -c 20",
                           check=False).stdout
    finally:
        lab.run("isp", "ip route del 10.0.0.0/24")
    public = reach(lab, "natpi", [FORWARDS["tunnel-ssh"]])[FORWARDS["tunnel-ssh"]]
    assert public.startswith("SSH-2.0-"), public
    assert lan_side == "", lan_side


def test_gwpi_sshd_probes_and_locks_down_only_the_tunnel_user(lab: Lab, provisioned: None) -> None:
    def effective(user: str) -> Dict[str, str]:
        out = lab.run("gwpi", f"sshd -T -C user={user},host=natpi,addr={ADDR['natpi_public']}").stdout
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    tunnel, pi = effective("pi2pi-tunnel"), effective("pi")
    assert (tunnel["clientaliveinterval"], tunnel["clientalivecountmax"]) == ("5", "3"), tunnel
    assert tunnel["passwordauthentication"] == "no" and tunnel["kbdinteractiveauthentication"] == "no"
    # Everyone else keeps the site's own settings (sshd's defaults here).
    assert pi["clientaliveinterval"] == "0", pi


# ----- the Pis --------------------------------------------------------------------------

def test_pi2pi_runs_on_both_pis(lab: Lab, provisioned: None) -> None:
    for host in ("natpi", "gwpi"):
        result = lab.run(host, "pi2pi --version", user="pi", check=False)
        assert result.returncode == 0 and result.stdout.startswith("pi2pi "), f"{host}: {result}"


def test_config_files_follow_the_inventory(lab: Lab, provisioned: None) -> None:
    import configparser

    def read(host: str) -> configparser.ConfigParser:
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(lab.run(host, "cat /etc/pi2pi/pi2pi.conf").stdout)
        return parser

    natpi, gwpi = read("natpi"), read("gwpi")
    flows = (("camera", "viewer", "video-natpi-to-gwpi"), ("viewer", "camera", "video-gwpi-to-natpi"),
             ("talk", "listen", "audio-natpi-to-gwpi"), ("listen", "talk", "audio-gwpi-to-natpi"))
    for natpi_program, gwpi_program, flow in flows:
        port = MEDIA_PORTS[flow]
        assert natpi[natpi_program]["connect"] == f"{GW}:{port}", flow
        assert gwpi[gwpi_program]["listen"] == f"0.0.0.0:{port}", flow
    assert natpi["camera"]["size"] == SITE["pi2pi_video_size"]


def test_runtime_user_opens_camera_and_sound_and_no_wrapper_without_a_camera(lab: Lab, provisioned: None) -> None:
    import json
    for host in ("natpi", "gwpi"):
        assert {"video", "audio"} <= set(lab.run(host, "id -nG pi").stdout.split()), host
        # The camera role's steps are off here: it says so, and the camera runs as it is.
        fact = json.loads(lab.run(host, "cat /etc/ansible/facts.d/pi2pi_camera.fact").stdout)
        assert fact["wrapper"] == "", fact
        assert "camera_wrapper" not in lab.run(host, "cat /etc/pi2pi/pi2pi.conf").stdout


# ----- the tunnel -----------------------------------------------------------------------

def test_tunnel_gives_gwpi_an_ssh_to_natpi(lab: Lab, tunnel: None) -> None:
    assert tunnel_works(lab)
    # The host key gwpi checks is natpi's own, pinned at [localhost]:2345.
    natpi_key = lab.run("natpi", "cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub").stdout.strip()
    pinned = lab.run("gwpi", f"ssh-keygen -F '[localhost]:{TUNNEL_PORT}' -f /etc/ssh/ssh_known_hosts").stdout
    assert natpi_key in pinned


def test_tunnel_key_can_do_nothing_else(lab: Lab, tunnel: None, media_listeners: None) -> None:
    as_tunnel = f"{SSH} -i {TUNNEL_KEY} -o IdentitiesOnly=yes pi2pi-tunnel@{GW}"
    command = lab.run("natpi", f"{as_tunnel} 'echo ran-$((6*7))'", user="pi2pi-tunnel", check=False)
    assert command.returncode != 0 and "ran-42" not in command.stdout, command
    shell = lab.run("natpi", f"{as_tunnel} -tt", user="pi2pi-tunnel", check=False,
                    input="echo ran-$((6*7))\nexit\n", timeout=20)
    assert "ran-42" not in shell.stdout, shell
    other_listen = lab.run("natpi", f"{as_tunnel} -N -o ExitOnForwardFailure=yes -R localhost:2399:localhost:22",
                           user="pi2pi-tunnel", check=False, timeout=20)
    assert other_listen.returncode != 0 and "forwarding failed" in other_listen.stderr, other_listen

    def through_forward(remote_port: int, local_port: int) -> str:
        proc = lab.popen("natpi", f"exec {as_tunnel} -N -L 127.0.0.1:{local_port}:localhost:{remote_port}",
                         user="pi2pi-tunnel", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:   # the local end listens once ssh is in (then each connection asks sshd for the channel)
            until(lambda: proc.poll() is not None or f"127.0.0.1:{local_port} " in lab.run("natpi", "ss -Hltn").stdout,
                  20, f"the tunnel's ssh to listen on {local_port}")
            assert proc.poll() is None, "the tunnel's ssh -L ended before it listened"
            return lab.run("natpi", f"timeout 3 socat -u TCP:127.0.0.1:{local_port} - | head -c 100",
                           check=False).stdout.strip()
        finally:
            proc.kill()
            proc.wait()

    # Control: a media forward of the tunnel transport opens; gwpi's sshd does not.
    assert through_forward(MEDIA_PORTS["video-natpi-to-gwpi"], 15010) == "gwpi"
    assert through_forward(22, 15022) == ""

def test_systemd_restarts_the_killed_tunnel(lab: Lab, tunnel: None) -> None:
    before = tunnel_pid(lab)
    assert before > 0
    lab.run("natpi", f"kill -KILL {before}")
    back, seconds = wait_for(lambda: tunnel_pid(lab) not in (0, before) and tunnel_works(lab), 30)
    assert back, lab.run("natpi", f"journalctl -u {TUNNEL} -n 30 --no-pager", check=False).stdout
    print(f"tunnel back {seconds:.0f} s after its process was killed")


# ----- what breaks: reboots, natpi's uplink, its public address ------------------------

def test_gateway_reboot_loads_pi2pis_rules_after_the_owners_nftables(lab: Lab, provisioned: None) -> None:
    lab.run("gw", "cat > /etc/nftables.conf && systemctl enable nftables.service", input=OWNER_NFTABLES)
    started = time.monotonic()
    lab.reboot("gw")
    print(f"gw rebooted in {time.monotonic() - started:.1f} s")
    assert unit_state(lab, "gw", FIREWALL) == "enabled active"
    assert unit_state(lab, "gw", "nftables.service") == "enabled active"
    # The firewall unit started after the owner's ruleset (with its `flush ruleset`) was loaded.
    times = {unit: int(lab.run("gw", f"systemctl show -p {prop} --value {unit}").stdout.strip())
             for unit, prop in (("nftables.service", "ActiveEnterTimestampMonotonic"),
                                (FIREWALL, "InactiveExitTimestampMonotonic"))}
    assert 0 < times["nftables.service"] <= times[FIREWALL], times
    expected = expected_rules(ADDR["natpi_public"])
    nat = sorted(rule for rule in expected if rule.startswith(("-A PI2PI-PREROUTING", "-A PI2PI-POSTROUTING")))
    assert any("-j DNAT" in rule for rule in nat) and any("-j MASQUERADE" in rule for rule in nat), nat
    assert nat_rules(lab) == nat
    live = lab.run("gw", "iptables-save").stdout.splitlines()
    assert sorted(line for line in live if line.startswith("-A PI2PI-")) == sorted(expected)
    assert OWNER_COMMENT in lab.run("gw", "nft list ruleset").stdout
    assert lab.run("gw", "sysctl -n net.ipv4.ip_forward").stdout.strip() == "1"


def test_natpi_reboot_brings_the_tunnel_back(lab: Lab, tunnel: None) -> None:
    started = time.monotonic()
    lab.reboot("natpi")
    assert unit_state(lab, "natpi", TUNNEL) == "enabled active"
    back, seconds = wait_for(lambda: tunnel_works(lab), 60)
    assert back, lab.run("natpi", f"journalctl -u {TUNNEL} -n 30 --no-pager", check=False).stdout
    print(f"tunnel back {time.monotonic() - started:.0f} s after natpi's reboot began")


def test_tunnel_returns_after_natpi_uplink_outage(lab: Lab, tunnel: None) -> None:
    assert tunnel_works(lab)
    lab.set_link("natpi", False)
    try:
        time.sleep(20)
    finally:
        lab.set_link("natpi", True)
    back, seconds = wait_for(lambda: tunnel_works(lab), 30)
    assert back, "the tunnel was not back within 30 s after the uplink returned"
    print(f"tunnel back {seconds:.0f} s after the uplink returned")


def test_address_step_follows_natpi_new_public_address(lab: Lab, tunnel: None, media_listeners: None) -> None:
    check = playbook(lab, "playbooks/natpi_address.yml", "--tags", "check")
    assert check.returncode == 0, describe(check)
    lab.set_natpi_public(NEW_NATPI_PUBLIC)
    drifted = playbook(lab, "playbooks/natpi_address.yml", "--tags", "check")
    assert drifted.returncode != 0 and NEW_NATPI_PUBLIC in drifted.stdout, describe(drifted)
    assert set(reach(lab, "natpi", list(MEDIA_PORTS.values())).values()) == {""}
    update = playbook(lab, "playbooks/natpi_address.yml")
    assert update.returncode == 0, describe(update)
    live = lab.run("gw", "iptables-save").stdout.splitlines()
    assert sorted(line for line in live if line.startswith("-A PI2PI-")) == sorted(expected_rules(NEW_NATPI_PUBLIC))
    answers = reach(lab, "natpi", list(MEDIA_PORTS.values()))
    assert set(answers.values()) == {"gwpi"}, answers
    assert tunnel_works(lab)
    again = playbook(lab, "playbooks/natpi_address.yml", "--tags", "check")
    assert again.returncode == 0, describe(again)
