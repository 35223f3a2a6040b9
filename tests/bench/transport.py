"""The tunnel's cost (`make bench-transport`): media through the DNAT, or inside natpi's ssh.

A whole call in the lab (tests/lab: real sshd, autossh, iptables), placed with
`fab call` as its user places it, for each way of carrying the media:

    direct           each stream its own TCP connection, through gw's DNAT
    tunnel chacha20  all four inside natpi's ssh connection (-L forwards),
                     cipher chacha20-poly1305@openssh.com
    tunnel aes-gcm   the same, aes128-gcm@openssh.com

(the cipher is the tunnel role's `tunnel_ciphers`, a single one, so ssh cannot
quietly take another: a cipher the far sshd refused would leave no media.) Each
is measured on a clean link and with natpi's and gwpi's uplinks impaired as the
fault tests do (80 +- 20 ms each way, 1 % loss), CALL_S seconds a call,
--repeats times, the ways interleaved.

Evidence from outside the programs: each Pi's CPU (utime + stime from /proc,
read inside the Pi at the start and end of a window in the call's middle) of
the call's four programs and of every ssh and sshd process (the tunnel's
client on natpi, its server on gwpi: the cipher's cost), per MB the Pi sent and
received (the bytes the receivers counted, from `fab stats`). The latency and
audio figures are the programs' own stats as `fab stats` shows them: video
latency (capture to painted, p50/p99), the audio jitter buffer, underruns and
concealed packets.

Prints a table, then one JSON object as the last line. Needs root (the lab).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from tests.lab.lab import Lab

CALL_S = 40.0                 # a call's length; the window is its middle
WINDOW = (10.0, 35.0)         # seconds into the call: CPU is read at both ends
LOSSY = "delay 80ms 20ms loss 1%"
WAYS: Dict[str, Tuple[str, Sequence[str]]] = {
    "direct": ("direct", ()),
    "tunnel chacha20": ("tunnel", ("chacha20-poly1305@openssh.com",)),
    "tunnel aes-gcm": ("tunnel", ("aes128-gcm@openssh.com",)),
}
CALLS = "/var/lib/pi2pi/calls"

# Inside a Pi: CPU seconds so far of each of the call's programs and each ssh/sshd, by pid.
CPU = r"""
import json, os, sys
calls = sys.argv[1]
current = json.load(open(os.path.join(calls, "current.json")))
status = json.load(open(os.path.join(calls, str(current["call"]), "status.json")))
programs = {p["pid"]: name for name, p in status["programs"].items()}
tick = os.sysconf("SC_CLK_TCK")
out = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        continue
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    seconds = (int(fields[11]) + int(fields[12])) / tick
    name = programs.get(int(pid)) or (comm if comm in ("ssh", "sshd") else None)
    if name:
        out[pid] = [name, seconds]
print(json.dumps(out))
"""


def provision_way(lab: Lab, transport: str, ciphers: Sequence[str]) -> None:
    """site.yml with the way's transport and cipher, then the tunnel unit (re)started."""
    from tests.calls.lab_call import PORTS, TUNNEL_UNIT, shows
    from tests.calls.sides import wait_for
    from tests.provision.helpers import build_wheelhouse, playbook_command

    build_wheelhouse()
    extra = json.dumps({"pi2pi_transport": transport, "tunnel_ciphers": list(ciphers)})
    result = lab.run("natpi", playbook_command("site.yml", "-e", extra), user="pi", check=False, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"provisioning for {transport} {ciphers} failed:\n{shows(result)}")
    lab.start_unit("natpi", TUNNEL_UNIT)
    unit = lab.host_path("natpi", TUNNEL_UNIT).read_text()
    if ciphers and f"Ciphers={','.join(ciphers)}" not in unit:
        raise RuntimeError(f"the tunnel unit does not name {ciphers}")
    if transport == "tunnel":
        wait_for(lambda: all(f"127.0.0.1:{p}" in lab.run("natpi", "ss -Hltn").stdout for p in PORTS.values()),
                 30, "the tunnel's media forwards on natpi")


def cpu(lab: Lab, host: str) -> Dict[str, List[Any]]:
    return json.loads(lab.run(host, ["python3", "-c", CPU, CALLS]).stdout)


def spent_by_name(before: Dict[str, List[Any]], after: Dict[str, List[Any]]) -> Dict[str, float]:
    """CPU seconds spent between two looks, by name, over the processes seen in both (an ssh
    that came or went meanwhile, such as a control connection, is not the tunnel)."""
    spent: Dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        if pid in before and before[pid][0] == name:
            spent[name] = spent.get(name, 0.0) + seconds - before[pid][1]
    return spent


def one_call(lab: Lab, lossy: bool) -> Dict[str, Any]:
    """A call of CALL_S; each Pi's CPU over WINDOW and the call's stats."""
    from tests.calls.lab_call import directions, fab, placed_call, shows

    for host in ("natpi", "gwpi"):
        lab.netem(host, LOSSY if lossy else None)
    try:
        call = placed_call(lab)
        started = time.monotonic()
        time.sleep(WINDOW[0])   # the call's first seconds (connections, slow start) are not judged
        before = {host: cpu(lab, host) for host in ("natpi", "gwpi")}
        t0 = time.monotonic()
        time.sleep(WINDOW[1] - WINDOW[0])
        after = {host: cpu(lab, host) for host in ("natpi", "gwpi")}
        window_s = time.monotonic() - t0
        time.sleep(max(0.0, CALL_S - (time.monotonic() - started)))
        hung = fab(lab, "hangup")
        if hung.returncode != 0:
            raise RuntimeError(f"fab hangup failed: {shows(hung)}")
    finally:
        for host in ("natpi", "gwpi"):
            lab.netem(host, None)
    stats = directions(lab, call)
    # Every direction passes through both Pis: each sends two and receives two. The
    # bytes are what each receiver read off its socket, at the call's mean rate.
    rate = sum((d["bytes"] or 0) / d["duration_s"] for d in stats.values() if d.get("duration_s"))
    mb_window = rate * window_s / 1e6
    if mb_window <= 0:
        raise RuntimeError(f"no media in call {call}: {stats}")
    spent = {host: spent_by_name(before[host], after[host]) for host in after}
    result: Dict[str, Any] = {"call": call, "window_s": round(window_s, 1), "mb_per_pi": round(mb_window, 2)}
    for host, parts in spent.items():
        programs = sum(v for k, v in parts.items() if k not in ("ssh", "sshd"))
        ssh = parts.get("ssh", 0.0) + parts.get("sshd", 0.0)
        result[host] = {"programs_cpu_s_per_mb": round(programs / mb_window, 4),
                        "ssh_cpu_s_per_mb": round(ssh / mb_window, 4),
                        "cpu_s_per_mb": round((programs + ssh) / mb_window, 4),
                        "core_share": round((programs + ssh) / window_s, 3)}
    for name, d in stats.items():
        keep = ("fps", "latency_ms") if name.startswith("video") else ("buffer_ms", "underruns", "concealed")
        result[name] = {k: d.get(k) for k in keep}
    return result


def summarise(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Medians (and min..max) of the figures a reader compares, over the repeats."""
    def spread(values: List[Optional[float]]) -> Dict[str, Any]:
        got = [v for v in values if v is not None]
        return {"median": round(statistics.median(got), 4) if got else None,
                "min": min(got) if got else None, "max": max(got) if got else None}

    out: Dict[str, Any] = {}
    for host in ("natpi", "gwpi"):
        for key in ("cpu_s_per_mb", "ssh_cpu_s_per_mb", "programs_cpu_s_per_mb", "core_share"):
            out[f"{host}_{key}"] = spread([r[host][key] for r in runs])
    for name in ("video_natpi_to_gwpi", "video_gwpi_to_natpi"):
        for p in ("p50", "p99"):
            out[f"{name}_latency_{p}_ms"] = spread([(r[name]["latency_ms"] or {}).get(p) for r in runs])
        out[f"{name}_fps"] = spread([r[name]["fps"] for r in runs])
    for name in ("audio_natpi_to_gwpi", "audio_gwpi_to_natpi"):
        out[f"{name}_buffer_mean_ms"] = spread([(r[name]["buffer_ms"] or {}).get("mean") for r in runs])
        out[f"{name}_buffer_max_ms"] = spread([(r[name]["buffer_ms"] or {}).get("max") for r in runs])
        out[f"{name}_underruns"] = spread([r[name]["underruns"] for r in runs])
        out[f"{name}_concealed"] = spread([r[name]["concealed"] for r in runs])
    return out


def report(results: Dict[str, Dict[str, List[Dict[str, Any]]]], load_before: float) -> Dict[str, Any]:
    figures: Dict[str, Any] = {"load_before": round(load_before, 2), "call_s": CALL_S, "lossy": LOSSY}
    print(f"bench-transport: {CALL_S:g} s calls in the lab, CPU over {WINDOW[1] - WINDOW[0]:g} s of each; "
          f"load before {load_before:.2f}; medians (each figure's min and max in the JSON line)")
    for link in ("clean", "lossy"):
        print(f"\n{link} link" + (f" ({LOSSY} on both Pis' uplinks)" if link == "lossy" else ""))
        print(f"  {'way':<16} {'natpi ms/MB':>11} {'(ssh)':>6} {'gwpi ms/MB':>10} {'(ssh)':>6}  "
              f"{'video p50 / p99 ms, n->g | g->n':<31} {'audio buffer mean ms':<21} {'underruns':<9}")
        for way, by_link in results.items():
            s = summarise(by_link[link])
            figures[f"{link} {way}"] = s

            def v(key: str, scale: float = 1.0, fmt: str = "{:.0f}") -> str:
                m = s[key]["median"]
                return "-" if m is None else fmt.format(m * scale)

            video = " | ".join(f"{v(f'video_{d}_latency_p50_ms')} / {v(f'video_{d}_latency_p99_ms')}"
                               for d in ("natpi_to_gwpi", "gwpi_to_natpi"))
            audio = " | ".join(v(f"audio_{d}_buffer_mean_ms") for d in ("natpi_to_gwpi", "gwpi_to_natpi"))
            under = " | ".join(v(f"audio_{d}_underruns") for d in ("natpi_to_gwpi", "gwpi_to_natpi"))
            print(f"  {way:<16} {v('natpi_cpu_s_per_mb', 1000):>11} {v('natpi_ssh_cpu_s_per_mb', 1000):>6} "
                  f"{v('gwpi_cpu_s_per_mb', 1000):>10} {v('gwpi_ssh_cpu_s_per_mb', 1000):>6}  "
                  f"{video:<31} {audio:<21} {under:<9}")
    return figures


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-transport", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="calls per way and link (default 2)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench-transport: needs root (the lab's namespaces)", file=sys.stderr)
        return 2
    load_before = os.getloadavg()[0]
    results: Dict[str, Dict[str, List[Dict[str, Any]]]] = {way: {"clean": [], "lossy": []} for way in WAYS}
    lab = Lab()
    try:
        lab.up()
        for repeat in range(args.repeats):
            for way, (transport, ciphers) in WAYS.items():
                print(f"bench-transport: {way}, run {repeat + 1} of {args.repeats}", flush=True)
                provision_way(lab, transport, ciphers)
                for link in ("clean", "lossy"):
                    results[way][link].append(one_call(lab, lossy=link == "lossy"))
    finally:
        lab.down()
    figures = report(results, load_before)
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
