"""The handover between the lab call modules that share one provisioned lab
(tests/calls/conftest.py): what each may count on, and how it is checked."""
from __future__ import annotations

import json
import re
import time
from typing import List, Optional, Set, Tuple

from tests.calls.lab_call import PORTS, TUNNEL_UNIT, provision
from tests.lab.lab import ADDR, NETEM_FAR_END, Lab


def pi_transport_and_call(lab: Lab, host: str) -> Tuple[Optional[str], Optional[object]]:
    """What `pi2pi status` on the Pi says: its transport (None if not provisioned) and its call."""
    result = lab.run(host, "pi2pi status --json", user="pi", check=False)
    if result.returncode != 0:
        return None, None
    status = json.loads(result.stdout)
    return status.get("transport"), status.get("call")


def dnat_sources(lab: Lab) -> Tuple[Set[str], Set[str]]:
    """The gateway's PI2PI-PREROUTING rules: their comments (which forwards) and the sources they accept."""
    comments, sources = set(), set()
    for line in lab.run("gw", "iptables-save -t nat").stdout.splitlines():
        if line.startswith("-A PI2PI-PREROUTING"):
            comment, source = re.search(r"--comment (\S+)", line), re.search(r" -s ([0-9.]+)", line)
            comments.add(comment[1] if comment else line)
            sources.add(source[1] if source else "any")
    return comments, sources


FORWARDS = {"tunnel": {"pi2pi-tunnel-ssh"},
            "direct": {"pi2pi-tunnel-ssh", *(f"pi2pi-{flow.replace('_', '-')}" for flow in PORTS)}}


def provisioned_transport(lab: Lab) -> Optional[str]:
    """The transport site.yml last provisioned, as both Pis and the gateway's DNAT say;
    None if they disagree or nothing is provisioned yet."""
    transports = {pi_transport_and_call(lab, host)[0] for host in ("natpi", "gwpi")}
    comments, _ = dnat_sources(lab)
    gateway = next((name for name, forwards in FORWARDS.items() if comments == forwards), None)
    return gateway if transports == {gateway} else None


def handover_problems(lab: Lab) -> List[str]:
    """What differs from a freshly provisioned lab, other than what site.yml puts right
    (the transport, the DNAT's source): what only a new lab puts right."""
    problems = []
    for host in ("natpi", "gwpi"):
        _, call = pi_transport_and_call(lab, host)
        if call is not None:
            problems.append(f"a call is up on {host}: {call}")
    if lab.natpi_public != ADDR["natpi_public"]:
        problems.append(f"natpi's public address is {lab.natpi_public}, not {ADDR['natpi_public']}")
    for host in ("natpi", "gwpi"):
        link = lab.run(host, "ip -br link show eth0").stdout.split()
        if len(link) < 2 or link[1] != "UP":
            problems.append(f"{host}'s eth0 is down: {' '.join(link)}")
        if not lab.run(host, "ip route show default").stdout.strip():
            problems.append(f"{host} has no default route")
        qdisc = lab.run(host, "tc qdisc show dev eth0").stdout
        if "netem" in qdisc or "tbf" in qdisc:
            problems.append(f"{host}'s eth0 is impaired: {qdisc.strip()}")
        if f"pi2pi-lab-netem-{host}" in lab.run(NETEM_FAR_END[host][0], "iptables -t mangle -S PREROUTING").stdout:
            problems.append(f"{host}'s eth0 is impaired (the netem emulator's queue is in place)")
    if not lab.unit_running("natpi", TUNNEL_UNIT):
        problems.append("natpi's tunnel unit is not running")
    return problems


class SharedSite:
    """The provisioned lab the package's modules hand to one another."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.provisioned = False   # by this package: a lab just brought up has nothing

    def ready(self, transport: str = "direct") -> Lab:
        """The lab as a module expects it: provisioned by site.yml with `transport`,
        no call up, natpi at its own address, links up and clean, the tunnel unit running."""
        lab = self.lab
        if self.provisioned:
            problems = handover_problems(lab)
            if problems:
                print("the lab was not handed over as provisioned; rebuilding it:\n  " + "\n  ".join(problems))
                lab.down(release=False)   # keep the machine's lab lock: nobody slips in between
                lab.up()
                self.provisioned = False
        # site.yml puts right the transport and the DNAT's source (after natpi_address.yml's
        # record of a moved natpi was taken away: test_call_faults).
        if not self.provisioned or provisioned_transport(lab) != transport \
                or dnat_sources(lab)[1] != {lab.natpi_public}:
            started = time.monotonic()
            self.provisioned = True   # from here on, even half-way: the next module checks the handover
            provision(lab, None if transport == "direct" else transport)
            print(f"site.yml ({transport}) for this module took {time.monotonic() - started:.1f} s")
        sources = dnat_sources(lab)[1]
        assert sources == {ADDR["natpi_public"]}, f"the gateway's DNAT accepts {sorted(sources)}, not natpi's"
        assert provisioned_transport(lab) == transport, f"the lab is not provisioned for {transport}"
        return lab
