"""site.yml against hosts that run systemd: the roles' `service_mgr == 'systemd'` branches.

The lab in its systemd mode (Lab(systemd=True)): natpi, gw and gwpi boot
systemd as PID 1 (systemd-nspawn in their network namespaces), so the playbook
enables and starts real units, and systemd, not the lab's stand-in, restarts
the tunnel and loads the firewall at boot. A reboot is the container's:
powered off, the namespace's netfilter rules and ip_forward forgotten as a
kernel forgets them, booted again from the same disk.

test_site.py drives the same playbook on the default lab; its helpers are
reused here. One provisioned lab serves the module; the reboots come last.
"""

from __future__ import annotations

import subprocess
import time
from typing import Dict, Iterator

import pytest

from tests.lab.fixtures import running_lab
from tests.lab.lab import ADDR, Lab
from tests.provision.helpers import build_wheelhouse, changed_tasks, recap
from tests.provision.test_site import UNIT, describe, expected_rules, playbook, tunnel_works, wait_for

TUNNEL = "pi2pi-tunnel.service"
FIREWALL = "pi2pi-firewall.service"
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


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from running_lab(systemd=True)


@pytest.fixture(scope="module")
def runs(lab: Lab) -> Dict[str, subprocess.CompletedProcess]:
    """check mode on the fresh hosts, the real run, a second run. natpi's sshd starts off
    and disabled, as on a fresh Raspberry Pi OS image: the tunnel role enables it."""
    build_wheelhouse()
    lab.run("natpi", "systemctl disable --now ssh.service")
    results = {}
    for name, args in (("check_fresh", ("--check", "--diff")), ("first", ()), ("second", ())):
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
def tunnel_login(lab: Lab, provisioned: None) -> None:
    """gwpi's pi may log in to natpi's pi: the test's own way through the tunnel."""
    lab.run("gwpi", "test -f ~/.ssh/id_ed25519 || ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519", user="pi")
    key = lab.run("gwpi", "cat ~/.ssh/id_ed25519.pub", user="pi").stdout
    lab.run("natpi", "cat >> ~/.ssh/authorized_keys", user="pi", input=key)


def unit_state(lab: Lab, host: str, unit: str) -> str:
    out = lab.run(host, f"systemctl is-enabled {unit}; systemctl is-active {unit}", check=False).stdout
    return " ".join(out.split())


def tunnel_pid(lab: Lab) -> int:
    return int(lab.run("natpi", f"systemctl show -p MainPID --value {TUNNEL}").stdout.strip() or 0)


def nat_rules(lab: Lab) -> list:
    return sorted(line for line in lab.run("gw", "iptables -t nat -S").stdout.splitlines()
                  if line.startswith("-A PI2PI-"))


def test_hosts_run_systemd(lab: Lab) -> None:
    for host in ("natpi", "gw", "gwpi"):
        assert lab.run(host, "cat /proc/1/comm").stdout.strip() == "systemd", host
        assert unit_state(lab, host, "ssh.service") == "enabled active", host
    print("boot: " + ", ".join(f"{k} {v:.2f} s" for k, v in lab.timings.items() if k.startswith("boot_")))


def test_check_mode_on_fresh_systemd_hosts_does_not_fail(runs: Dict[str, subprocess.CompletedProcess]) -> None:
    result = runs["check_fresh"]
    assert result.returncode == 0, describe(result)
    assert recap(result.stdout)["gw"]["changed"] > 0, "check mode on fresh hosts should predict changes"


def test_site_succeeds_on_systemd_hosts(runs: Dict[str, subprocess.CompletedProcess], provisioned: None) -> None:
    totals = recap(runs["first"].stdout)
    assert set(totals) == {"gw", "natpi", "gwpi"}, totals
    assert all(t["failed"] == 0 and t["unreachable"] == 0 for t in totals.values()), totals


def test_second_run_changes_nothing_on_systemd_hosts(runs: Dict[str, subprocess.CompletedProcess],
                                                      provisioned: None) -> None:
    """The units enabled and started by the first run stay as they are (what the default lab skips)."""
    result = runs["second"]
    assert result.returncode == 0, describe(result)
    assert all(t["changed"] == 0 for t in recap(result.stdout).values()), changed_tasks(result.stdout)


def test_tunnel_and_firewall_units_are_enabled_and_active(lab: Lab, provisioned: None, tunnel_login: None) -> None:
    assert unit_state(lab, "natpi", TUNNEL) == "enabled active"
    assert unit_state(lab, "gw", FIREWALL) == "enabled active"
    assert lab.run("natpi", f"systemctl cat {TUNNEL}").stdout.count(UNIT) == 1
    up, seconds = wait_for(lambda: tunnel_works(lab), 30)
    assert up, lab.run("natpi", f"journalctl -u {TUNNEL} -n 30 --no-pager", check=False).stdout
    print(f"tunnel works {seconds:.0f} s after provisioning")


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


def test_systemd_restarts_the_killed_tunnel(lab: Lab, provisioned: None, tunnel_login: None) -> None:
    before = tunnel_pid(lab)
    assert before > 0
    lab.run("natpi", f"kill -KILL {before}")
    back, seconds = wait_for(lambda: tunnel_pid(lab) not in (0, before) and tunnel_works(lab), 30)
    assert back, lab.run("natpi", f"journalctl -u {TUNNEL} -n 30 --no-pager", check=False).stdout
    print(f"tunnel back {seconds:.0f} s after its process was killed")


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


def test_natpi_reboot_brings_the_tunnel_back(lab: Lab, provisioned: None, tunnel_login: None) -> None:
    started = time.monotonic()
    lab.reboot("natpi")
    assert unit_state(lab, "natpi", TUNNEL) == "enabled active"
    back, seconds = wait_for(lambda: tunnel_works(lab), 60)
    assert back, lab.run("natpi", f"journalctl -u {TUNNEL} -n 30 --no-pager", check=False).stdout
    print(f"tunnel back {time.monotonic() - started:.0f} s after natpi's reboot began")
