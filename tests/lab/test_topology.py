"""The lab is the seed's topology: real namespaces, real sshd, real iptables, real packets.

Each "cannot reach" check has a control that does reach from the same host,
so a probe that could never succeed proves nothing and fails the test instead.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from tests.lab.fixtures import crash_a_lab
from tests.lab.lab import ADDR, HOSTS, Lab, LabError, Unit, leftovers, parse_unit

GW = ADDR["gw_public"]
GW_PORT = ADDR["gw_ssh_port"]
# Host keys are always checked: every host key the lab's clients meet is pinned in known_hosts.
SSH = "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=5"
PROBE_SECONDS = 2


def tcp_opens(lab: Lab, probes: List[Tuple[str, str, int]]) -> Dict[Tuple[str, str, int], bool]:
    """Try every (host, address, port) TCP connection at once; which ones opened."""
    running = {
        probe: lab.popen(probe[0], f"timeout {PROBE_SECONDS} bash -c '</dev/tcp/{probe[1]}/{probe[2]}'",
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for probe in probes
    }
    return {probe: proc.wait(timeout=PROBE_SECONDS + 10) == 0 for probe, proc in running.items()}


def ssh_from_natpi(lab: Lab, command: str, check: bool = True) -> subprocess.CompletedProcess:
    return lab.run("natpi", f"{SSH} -p {GW_PORT} admin@{GW} {command}", user="pi", check=check)


def test_gw_admin_ssh_answers_from_natpi_through_the_isp(lab: Lab) -> None:
    result = ssh_from_natpi(lab, "'hostname; echo $SSH_CONNECTION'")
    hostname, connection = result.stdout.split("\n")[:2]
    assert hostname == "gw"
    # gw sees natpi's public address: the ISP's MASQUERADE, not natpi's own.
    assert connection.split()[0] == ADDR["natpi_public"]
    assert connection.split()[2:] == [GW, str(GW_PORT)]


def test_controller_reaches_gwpi_through_gw_with_pinned_keys(lab: Lab) -> None:
    result = lab.run("natpi", f"{SSH} -J admin@{GW}:{GW_PORT} pi@{ADDR['gwpi']} 'hostname; sudo -n id -u'",
                     user="pi")
    assert result.stdout.split() == ["gwpi", "0"]


def test_gw_starts_like_a_real_gateway(lab: Lab) -> None:
    assert lab.run("gw", "cat /proc/sys/net/ipv4/ip_forward").stdout.strip() == "0"
    assert "-P FORWARD DROP" in lab.run("gw", "iptables -S FORWARD").stdout
    assert "--dport 8080 -j DNAT --to-destination 10.0.0.9:80" in lab.run("gw", "iptables -t nat -S").stdout


def test_gwpi_is_not_reachable_from_natpi(lab: Lab) -> None:
    opened = tcp_opens(lab, [("natpi", ADDR["gwpi"], 22), ("gw", ADDR["gwpi"], 22)])
    assert opened[("gw", ADDR["gwpi"], 22)], "control: gwpi's sshd answers on its own LAN"
    assert not opened[("natpi", ADDR["gwpi"], 22)]


def test_nobody_can_open_a_connection_to_natpi(lab: Lab) -> None:
    # A stranger that tries hard: it routes natpi's private network to the ISP.
    lab.run("stranger", f"ip route add 192.168.1.0/24 via {ADDR['natpi_public']}")
    try:
        targets = [ADDR["natpi"], ADDR["natpi_public"]]
        probes = [(host, addr, 22) for host in ("gwpi", "stranger") for addr in targets]
        controls = [("isp", ADDR["natpi"], 22), ("gwpi", GW, GW_PORT), ("stranger", GW, GW_PORT)]
        opened = tcp_opens(lab, probes + controls)
    finally:
        lab.run("stranger", "ip route del 192.168.1.0/24")
    assert all(opened[control] for control in controls), f"controls must connect: {opened}"
    assert not any(opened[probe] for probe in probes), f"natpi must be unreachable: {opened}"


def test_neighbour_leaves_with_natpis_public_address(lab: Lab) -> None:
    """natpi's neighbour on the home LAN is behind the same NAT: gw cannot tell them apart."""
    peers = {}
    for host in ("natpi", "neighbour"):
        # Hold a connection to gw's admin sshd open while gw lists who is connected to it.
        # (--foreground: timeout stays in the process group that kill() reaches.)
        holder = lab.popen(host, f"timeout --foreground 10 bash -c 'exec 3<>/dev/tcp/{GW}/{GW_PORT}; "
                                 "head -c 4 <&3; echo; sleep 5'", stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "SSH-\n", f"{host} reached gw's sshd"
            ss = lab.run("gw", f"ss -Htn state established '( sport = :{GW_PORT} )'").stdout
        finally:
            holder.kill()
            holder.communicate()
        peers[host] = {line.split()[3].rsplit(":", 1)[0] for line in ss.splitlines()}
    assert peers == {"natpi": {ADDR["natpi_public"]}, "neighbour": {ADDR["natpi_public"]}}


def test_neighbour_and_natpi_share_a_lan_that_nobody_outside_reaches(lab: Lab) -> None:
    # neighbour answers on a port with the address it sees its caller come from.
    listener = lab.popen("neighbour", "exec socat TCP-LISTEN:7000,fork,reuseaddr SYSTEM:'echo $SOCAT_PEERADDR'",
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # A stranger that tries hard: it routes the home LAN to the ISP.
    lab.run("stranger", f"ip route add 192.168.1.0/24 via {ADDR['natpi_public']}")
    try:
        deadline = time.monotonic() + 10
        while not lab.run("neighbour", "ss -Hltn 'sport = :7000'").stdout.strip():
            assert time.monotonic() < deadline, "neighbour never listened on :7000"
            time.sleep(0.05)
        probes = [("stranger", ADDR["neighbour"], 7000), ("stranger", ADDR["natpi_public"], 7000),
                  ("stranger", ADDR["neighbour"], 22)]
        controls = [("natpi", ADDR["neighbour"], 7000), ("isp", ADDR["neighbour"], 7000),
                    ("neighbour", ADDR["natpi"], 22), ("stranger", GW, GW_PORT)]
        opened = tcp_opens(lab, probes + controls)
        # On the LAN each sees the other's own address: no NAT between them.
        seen_by_neighbour = lab.run("natpi", f"timeout 5 socat -u TCP:{ADDR['neighbour']}:7000 -").stdout
    finally:
        lab.run("stranger", "ip route del 192.168.1.0/24")
        listener.kill()
        listener.wait()
    assert all(opened[control] for control in controls), f"controls must connect: {opened}"
    assert not any(opened[probe] for probe in probes), f"neighbour must be unreachable: {opened}"
    assert seen_by_neighbour == f"{ADDR['natpi']}\n"


def test_a_file_under_etc_stays_on_its_host(lab: Lab) -> None:
    path = f"/etc/pi2pi-lab-probe-{uuid.uuid4().hex}"
    try:
        lab.run("natpi", f"echo natpi > {path}")
        lab.run("gw", f"echo gw > {path}")
        assert lab.run("natpi", f"cat {path}").stdout == "natpi\n"
        assert lab.run("gw", f"cat {path}").stdout == "gw\n"
        for host in HOSTS:
            if host not in ("natpi", "gw"):
                assert lab.run(host, f"test -e {path}", check=False).returncode == 1, host
        assert not Path(path).exists(), "the machine's own /etc must never be written"
    finally:
        for host in ("natpi", "gw"):
            lab.run(host, f"rm -f {path}")
        if Path(path).exists():  # only if the test failed: clean the machine
            os.unlink(path)


def test_each_host_has_its_own_users_and_host_key(lab: Lab) -> None:
    keys = {host: lab.run(host, "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1]
            for host in ("natpi", "gw", "gwpi")}
    assert len(set(keys.values())) == 3
    machine_key = Path("/etc/ssh/ssh_host_ed25519_key.pub")
    if machine_key.exists():
        assert machine_key.read_text().split()[1] not in keys.values()
    assert lab.run("gw", "id -un admin").stdout == "admin\n"
    assert lab.run("gw", "id pi", check=False).returncode != 0
    assert lab.run("natpi", "sudo -n true", user="pi").returncode == 0


def test_reverse_tunnel_from_natpi_gives_gw_ssh_back_to_natpi(lab: Lab) -> None:
    """The seed's trick: natpi opens `ssh -R` to the gateway, the gateway ssh's back through it."""
    back = f"{SSH} -p 2345 pi@localhost hostname"
    # gw's admin gets a key that natpi's pi authorizes, and pins natpi's host key.
    lab.run("gw", "test -f ~/.ssh/id_ed25519 || ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519",
            user="admin")
    admin_key = lab.run("gw", "cat ~/.ssh/id_ed25519.pub", user="admin").stdout
    lab.run("natpi", "cat >> ~/.ssh/authorized_keys", user="pi", input=admin_key)
    natpi_key = " ".join(lab.run("natpi", "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[:2])
    lab.run("gw", "cat >> ~/.ssh/known_hosts", user="admin", input=f"[localhost]:2345 {natpi_key}\n")

    assert lab.run("gw", back, user="admin", check=False).returncode != 0, "no tunnel yet"
    tunnel = lab.popen("natpi", f"{SSH} -N -o ExitOnForwardFailure=yes -R 2345:localhost:22 "
                                f"-p {GW_PORT} admin@{GW}",
                       user="pi", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while not lab.run("gw", "ss -Hltn 'sport = :2345'").stdout.strip():
            if tunnel.poll() is not None:
                pytest.fail(f"the tunnel exited {tunnel.returncode}: {tunnel.communicate()[1]}")
            assert time.monotonic() < deadline, "gw never listened on localhost:2345"
            time.sleep(0.1)
        assert lab.run("gw", back, user="admin").stdout == "natpi\n"
    finally:
        tunnel.terminate()
        tunnel.communicate(timeout=10)
    deadline = time.monotonic() + 10
    while lab.run("gw", "ss -Hltn 'sport = :2345'").stdout.strip():
        assert time.monotonic() < deadline, "the tunnel's port outlived the tunnel"
        time.sleep(0.1)


def test_faults_are_real(lab: Lab) -> None:
    lab.set_link("natpi", False)
    try:
        assert ssh_from_natpi(lab, "true", check=False).returncode != 0
    finally:
        lab.set_link("natpi", True)
    assert ssh_from_natpi(lab, "true").returncode == 0

    lab.netem("natpi", "delay 200ms 50ms")
    try:
        slow = connect_ms(lab, "natpi", GW, GW_PORT, 10)
        # Only what leaves natpi's own link: its neighbour shares the ISP's bridge, not the delay.
        neighbour = connect_ms(lab, "neighbour", GW, GW_PORT, 5)
    finally:
        lab.netem("natpi", None)
    fast = connect_ms(lab, "natpi", GW, GW_PORT, 10)
    # Delay only adds, so the floor is firm; a busy machine can only add more.
    assert min(slow) >= 150 - 5 and statistics.median(slow) < 400, slow
    assert max(slow) - min(slow) > 20, f"no jitter: {slow}"
    assert min(fast) < 50, fast
    assert min(neighbour) < 50, neighbour
    lab.netem("natpi", "loss 50%")
    try:
        lossy = connect_ms(lab, "natpi", GW, GW_PORT, 20, timeout=0.5)
    finally:
        lab.netem("natpi", None)
    assert 0 < lossy.count(None) < 20, lossy

    lab.set_natpi_public("198.51.100.31")
    try:
        assert ssh_from_natpi(lab, "'echo $SSH_CONNECTION'").stdout.split()[0] == "198.51.100.31"
    finally:
        lab.set_natpi_public(ADDR["natpi_public"])
    assert ssh_from_natpi(lab, "'echo $SSH_CONNECTION'").stdout.split()[0] == ADDR["natpi_public"]
    with pytest.raises(LabError):
        lab.set_natpi_public("8.8.8.8")  # never a real address


PROBE_UNIT = """\
# A service as the roles write them.
[Unit]
Description=the lab's probe service
After=network-online.target
StartLimitIntervalSec=0

[Service]
User=pi
Environment=GREETING=hello
Environment="SECOND=two words" THIRD=3
ExecStart=/bin/sh /tmp/probe.sh {args}
Restart=always
RestartSec=200ms

[Install]
WantedBy=multi-user.target
"""
PROBE_SCRIPT = 'echo "$GREETING|$SECOND|$THIRD|$(id -un)|$1" | tee -a /tmp/probe.out; exec sleep "$2"\n'


def test_start_unit_stands_in_for_systemds_restart_always(lab: Lab) -> None:
    unit = "/etc/systemd/system/pi2pi-lab-probe.service"

    def runs() -> List[str]:
        return lab.run("natpi", "cat /tmp/probe.out 2>/dev/null || true").stdout.splitlines()

    def probes_running() -> bool:
        return lab.run("natpi", ["pgrep", "-f", "probe[.]sh|sleep"], check=False).returncode == 0

    def wait_for_runs(line: str, count: int) -> None:
        deadline = time.monotonic() + 10
        while runs().count(line) < count:
            assert time.monotonic() < deadline, f"{count} runs of {line!r} expected: {runs()}"
            time.sleep(0.1)

    first, second = "hello|two words|3|pi|first", "hello|two words|3|pi|second"
    lab.run("natpi", f"mkdir -p {Path(unit).parent}; cat > /tmp/probe.sh", input=PROBE_SCRIPT)
    try:
        lab.run("natpi", f"cat > {unit}", input=PROBE_UNIT.format(args="first 0"))
        lab.start_unit("natpi", unit)
        wait_for_runs(first, 3)  # it ended at once, and was started again, and again
        # The unit file changes; started again, as a handler restarts it: the old loop is gone.
        lab.run("natpi", f"cat > {unit}", input=PROBE_UNIT.format(args="second 600"))
        lab.start_unit("natpi", unit)
        wait_for_runs(second, 1)
        before = runs()
        time.sleep(1)   # a negative needs a window: five of the old loop's RestartSec=200ms
        assert runs() == before, "the old loop still runs, or the running service was restarted"
        assert set(before) == {first, second}
        assert probes_running(), "control: the service runs"
        assert second in lab.unit_log("natpi", unit).read_text(), "its output is in its log"
        lab.stop_unit("natpi", unit)
        assert not probes_running(), "the loop or what it started outlived stop_unit"
    finally:
        lab.stop_unit("natpi", unit)
        lab.run("natpi", f"rm -f {unit} /tmp/probe.sh /tmp/probe.out")
    with pytest.raises(LabError, match="cannot read"):
        lab.start_unit("natpi", unit)


def test_unit_parser_refuses_what_the_restart_loop_cannot_honour() -> None:
    service = "[Service]\nExecStart=/bin/true\nRestart=always\n"
    assert parse_unit(service) == Unit(exec_start=("/bin/true",))
    assert parse_unit(service + "Environment=A=1\nEnvironment=\nEnvironment=B=2\nRestartSec=2s\n") == \
        Unit(exec_start=("/bin/true",), environment=(("B", "2"),), restart_sec=2.0)
    refused = {
        "[Service]\nRestart=always\n": "no ExecStart",
        "[Service]\nExecStart=/bin/true\n": "Restart=always",
        "[Service]\nExecStart=/bin/true\nRestart=on-failure\n": "Restart=always",
        service + "Type=forking\n": "Type=forking",
        service + "ExecStart=/bin/false\n": "second ExecStart",
        service.replace("/bin/true", "-/bin/true"): "prefixes",
        service.replace("/bin/true", "/bin/echo $HOME"): "expansion",
        service.replace("/bin/true", "/bin/echo %h"): "specifiers",
        service.replace("/bin/true", "/bin/echo \\\n  more"): "continued",
        service + "Environment=NOVALUE\n": "VAR=value",
        service + "RestartSec=1h\n": "RestartSec",
        "[Unit]\nStartLimitIntervalSec=10\n" + service: "never gives up",
        "[Unit]\nConditionPathExists=/x\n" + service: "ConditionPathExists",
        "[Socket]\nListenStream=22\n": "[Socket]",
    }
    for text, why in refused.items():
        with pytest.raises(LabError, match=re.escape(why)):
            parse_unit(text)


CONNECT_MS = """
import socket, sys, time
address, port, count, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
for _ in range(count):
    started = time.monotonic()
    try:
        socket.create_connection((address, port), timeout=timeout).close()
        print((time.monotonic() - started) * 1000)
    except OSError:
        print("lost")
"""


def connect_ms(lab: Lab, host: str, address: str, port: int, count: int,
               timeout: float = 5) -> List[Optional[float]]:
    """How long each of count TCP handshakes from host takes, in ms (None: none within timeout)."""
    out = lab.run(host, ["python3", "-c", CONNECT_MS, address, str(port), str(count), str(timeout)]).stdout
    return [None if line == "lost" else float(line) for line in out.split()]


def test_down_leaves_nothing_and_up_recovers_from_a_crash(lab: Lab) -> None:
    """Runs last in this module: it takes the module's lab down and builds it again.

    The lab lock stays with this test throughout (down(release=False), handed
    to the run that crashes), so another test session's lab cannot slip in.
    """
    assert leftovers(), "control: a running lab is visible"
    lab.down(release=False)
    assert leftovers() == []
    assert lab.timings["down"] < 15

    # A run that dies without tearing down (kill -9, a crash): everything stays.
    crash_a_lab(lab)
    assert leftovers(), "the crashed run left its lab"

    lab.up()
    assert lab.timings["up"] < 15  # tearing the crashed lab down included
    assert ssh_from_natpi(lab, "hostname").stdout == "gw\n"
    print(f"lab down {lab.timings['down']:.1f} s, up after a crash {lab.timings['up']:.1f} s")
