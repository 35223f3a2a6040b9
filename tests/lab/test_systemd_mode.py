"""The lab's opt-in systemd mode: natpi, gw and gwpi boot systemd with systemd-nspawn.

What tests/provision/test_site.py relies on: systemd is PID 1 and
running, sshd is its unit, each container is in a cgroup of its own, a reboot
forgets what a kernel forgets and keeps the disk, and nothing stays behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.lab.fixtures import crash_a_lab, running_lab
from tests.lab.lab import ADDR, CGROUP_ROOT, HOSTS, SYSTEMD_HOSTS, Lab, leftovers

REPO = Path(__file__).resolve().parents[2]
SSH = "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=5"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from running_lab(systemd=True)


def test_systemd_hosts_boot_systemd_and_the_others_do_not(lab: Lab) -> None:
    machine_ids = set()
    for host in HOSTS:
        init = lab.run(host, "cat /proc/1/comm").stdout.strip()
        if host not in SYSTEMD_HOSTS:
            assert init == "python3", host  # the holder, as in the default lab
            continue
        assert init == "systemd", host
        assert lab.run(host, "systemctl is-system-running").stdout.strip() == "running", host
        assert lab.run(host, "systemctl is-active ssh.service").stdout.strip() == "active", host
        assert lab.run(host, "systemctl is-enabled systemd-networkd.service getty@tty1.service",
                       check=False).stdout.split() == ["masked", "masked"], host
        machine_ids.add(lab.run(host, "cat /etc/machine-id").stdout.strip())
        # Its own cgroup: three systemds never manage each other's services.
        cgroup = lab.host_path(host, "/proc/1/cgroup").read_text()
        assert f"/{CGROUP_ROOT}/{host}/" in cgroup, (host, cgroup)
    assert len(machine_ids) == len(SYSTEMD_HOSTS)
    print("boot: " + ", ".join(f"{k} {v:.2f} s" for k, v in lab.timings.items() if k.startswith("boot_")))


def test_the_controller_reaches_every_host_with_pinned_keys(lab: Lab) -> None:
    assert lab.run("natpi", f"{SSH} -p {ADDR['gw_ssh_port']} admin@{ADDR['gw_public']} hostname",
                   user="pi").stdout == "gw\n"
    assert lab.run("natpi", f"{SSH} -J admin@{ADDR['gw_public']}:{ADDR['gw_ssh_port']} pi@{ADDR['gwpi']} hostname",
                   user="pi").stdout == "gwpi\n"


def test_reboot_forgets_the_kernels_state_and_keeps_the_disk(lab: Lab) -> None:
    lab.run("gw", "iptables -A INPUT -p tcp --dport 9 -j DROP && sysctl -qw net.ipv4.ip_forward=1"
                  " && echo kept > /etc/pi2pi-lab-disk")
    key = lab.run("gw", "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout
    lab.reboot("gw")
    assert "--dport 9" not in lab.run("gw", "iptables -S").stdout
    assert lab.run("gw", "sysctl -n net.ipv4.ip_forward").stdout.strip() == "0"
    assert lab.run("gw", "cat /etc/pi2pi-lab-disk").stdout == "kept\n"
    assert lab.run("gw", "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout == key
    assert lab.run("natpi", f"{SSH} -p {ADDR['gw_ssh_port']} admin@{ADDR['gw_public']} hostname",
                   user="pi").stdout == "gw\n"
    print(f"gw rebooted: systemd running {lab.timings['boot_gw']:.2f} s after nspawn started")


def test_the_machines_tmp_is_neither_seen_nor_emptied_by_the_containers(lab: Lab) -> None:
    """A container's systemd empties its /tmp at boot; when the lab bound the repository's
    top directory and a clone lived under /tmp, that was the machine's /tmp (a rehearsal
    of CI lost its own files that way). Now only the repository is bound, and /tmp is not
    emptied at boot in any case."""
    handle, name = tempfile.mkstemp(prefix="pi2pi-lab-sentinel-", dir="/tmp")
    os.close(handle)
    sentinel = Path(name)
    try:
        for host in SYSTEMD_HOSTS:
            inside = lab.host_path(host, "/tmp")
            assert not os.path.samefile(inside, "/tmp"), host
            assert not (inside / sentinel.name).exists(), host
            assert lab.run(host, "readlink /etc/tmpfiles.d/tmp.conf").stdout.strip() == "/dev/null", host
            assert lab.run(host, f"test -d {REPO}/.venv && echo seen").stdout.strip() == "seen", host
        lab.run("gwpi", "touch /tmp/inside-gwpi")
        lab.reboot("gwpi")
        assert sentinel.exists(), "a container's boot emptied the machine's /tmp"
        # Control: the container's own /tmp is its tmpfs, gone with the reboot's fresh root.
        assert not lab.host_path("gwpi", "/tmp/inside-gwpi").exists()
    finally:
        sentinel.unlink(missing_ok=True)


def test_down_leaves_nothing_and_up_recovers_from_a_crash(lab: Lab) -> None:
    """Last: as test_topology's, with containers (their cgroups, nspawn's mounts)."""
    assert any(item.startswith("cgroup ") for item in leftovers()), "control: the containers' cgroups are seen"
    lab.down(release=False)
    assert leftovers() == []
    crash_a_lab(lab, systemd=True)
    assert leftovers(), "the crashed run left its lab"
    lab.up()
    assert lab.run("gw", "cat /proc/1/comm").stdout.strip() == "systemd"
    print(f"lab down {lab.timings['down']:.1f} s, up after a crash {lab.timings['up']:.1f} s")
