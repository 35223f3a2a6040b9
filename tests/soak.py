"""`make soak`: a call in the lab for a long time, and whether anything grows.

A call placed with `fab call` runs for SOAK_MINUTES (30 by default); on each
Pi a sampler reads, every second, the resident memory (VmRSS), open file
descriptors and threads of each of the call's programs from /proc (outside the
programs: nothing they report about themselves). After a warm-up (the first
fifth of the run, at most 5 minutes: buffers fill, caches reach their size,
the jitter buffer settles), the verdict per program:

    RSS slope     least-squares slope of RSS over time, in MiB per hour,
                  below SLOPE_MIB_PER_H
    fds, threads  the same number all along after the warm-up (the least of
                  every 10 samples: a file open for a moment is not a leak)
    crashes       none: every program runs until the hang-up

then `fab hangup` and `fab stats`: every direction carried media for the whole
call, the receivers got what the senders sent (nothing in flight after the
hang-up's drain), nothing missing. The last line printed is the JSON report.

A 2-minute run is part of `make test` (tests/calls/test_call_lab.py); over two
minutes a slope is noisy, so there the bound is on growth across the second
minute instead (SHORT_GROWTH_MIB), which still catches what grows fast per
frame or per packet (an unbounded buffer, a cache per size); slow creep is the
long run's to find.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from tests.lab.lab import Lab

SLOPE_MIB_PER_H = 1.0
SHORT_GROWTH_MIB = 2.0
WARMUP_FRACTION, WARMUP_MAX_S = 0.2, 300.0
SHORT_WARMUP_FRACTION = 0.5   # listen's windows take over a minute to fill (4096 packets at 50 a second)
CALLS = "/var/lib/pi2pi/calls"
PROGRAMS = ("camera", "viewer", "talk", "listen")

# Run inside a Pi (its own PID namespace): one JSON line per second with each
# program's figures, until the call's programs are gone or the time is up.
SAMPLER = r"""
import json, os, sys, time
calls, seconds = sys.argv[1], float(sys.argv[2])
current = json.load(open(os.path.join(calls, "current.json")))
status = json.load(open(os.path.join(calls, str(current["call"]), "status.json")))
pids = {name: p["pid"] for name, p in status["programs"].items()}
end = time.monotonic() + seconds
while time.monotonic() < end:
    now, row = time.monotonic(), {}
    for name, pid in pids.items():
        try:
            fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
            row[name] = {"rss_kb": int(fields["VmRSS"].split()[0]), "threads": int(fields["Threads"]),
                         "fds": len(os.listdir(f"/proc/{pid}/fd"))}
        except (OSError, KeyError, ValueError):
            row[name] = None
    print(json.dumps({"t": round(now, 3), "programs": row}), flush=True)
    time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
"""


@dataclass
class Series:
    """One program's samples: (seconds since the start, rss_kb, fds, threads)."""

    t: List[float] = field(default_factory=list)
    rss_kb: List[int] = field(default_factory=list)
    fds: List[int] = field(default_factory=list)
    threads: List[int] = field(default_factory=list)
    gone_at: Optional[float] = None   # when its process was first missing

    def add(self, t: float, sample: Optional[Dict[str, int]]) -> None:
        if sample is None:
            if self.gone_at is None:
                self.gone_at = t
            return
        self.t.append(t)
        self.rss_kb.append(sample["rss_kb"])
        self.fds.append(sample["fds"])
        self.threads.append(sample["threads"])


def slope_per_hour(t: List[float], values: List[float]) -> float:
    """Least-squares slope of values against t (seconds), per hour."""
    n = len(t)
    if n < 2:
        return 0.0
    mt, mv = sum(t) / n, sum(values) / n
    var = sum((x - mt) ** 2 for x in t)
    if var == 0:
        return 0.0
    return sum((x - mt) * (v - mv) for x, v in zip(t, values)) / var * 3600.0


def window_minima(values: List[int], width: int = 10) -> List[int]:
    """The least value of each run of `width` samples: a file open for a moment (a
    stats snapshot being written as the sampler looks) is not a leak; one that
    stays open is in every window from then on."""
    return [min(values[i:i + width]) for i in range(0, len(values), width)]


def judge(series: Series, duration_s: float, short: bool) -> Dict[str, Any]:
    """The verdict on one program's samples (see the module's docstring)."""
    warmup = min(WARMUP_MAX_S, duration_s * (SHORT_WARMUP_FRACTION if short else WARMUP_FRACTION))
    keep = [i for i, t in enumerate(series.t) if t >= warmup]
    t = [series.t[i] for i in keep]
    rss_mib = [series.rss_kb[i] / 1024 for i in keep]
    fds = sorted(set(window_minima([series.fds[i] for i in keep])))
    threads = sorted(set(window_minima([series.threads[i] for i in keep])))
    slope = slope_per_hour(t, rss_mib)
    growth = (sum(rss_mib[-10:]) / len(rss_mib[-10:]) - sum(rss_mib[:10]) / len(rss_mib[:10])) if rss_mib else 0.0
    problems = []
    if len(keep) < max(10, 0.5 * (duration_s - warmup)):
        problems.append(f"only {len(keep)} samples after the warm-up")
    if series.gone_at is not None:
        problems.append(f"ended {series.gone_at:.0f} s into the call")
    if short and growth > SHORT_GROWTH_MIB:
        problems.append(f"RSS grew {growth:.2f} MiB in {t[-1] - t[0]:.0f} s (bound {SHORT_GROWTH_MIB})")
    if not short and slope > SLOPE_MIB_PER_H:
        problems.append(f"RSS slope {slope:.2f} MiB/h (bound {SLOPE_MIB_PER_H})")
    if len(fds) > 1:
        problems.append(f"open fds varied: {fds}")
    if len(threads) > 1:
        problems.append(f"threads varied: {threads}")
    return {"samples": len(keep), "rss_mib": [round(min(rss_mib), 2), round(max(rss_mib), 2)] if rss_mib else None,
            "rss_slope_mib_per_h": round(slope, 3), "rss_growth_mib": round(growth, 3),
            "fds": fds, "threads": threads, "problems": problems}


def soak(lab: Lab, minutes: float) -> Dict[str, Any]:
    """A call of `minutes` on a provisioned lab; the report (its "ok" says whether every bound held)."""
    from controller.call import in_parallel
    from tests.calls.lab_call import directions, fab, placed_call, shows
    duration_s = minutes * 60.0
    short = minutes < 10
    call = placed_call(lab)
    samplers = {host: lab.popen(host, ["python3", "-c", SAMPLER, CALLS, str(duration_s)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for host in ("natpi", "gwpi")}
    series: Dict[str, Series] = {}
    # Both samplers' output read at once: a sampler whose pipe nobody reads
    # blocks on its next line (a pipe holds about 160 of them) and stops sampling.
    outputs = in_parallel({host: (lambda proc=proc: proc.communicate(timeout=duration_s + 60))
                           for host, proc in samplers.items()})
    try:
        for host, proc in samplers.items():
            if isinstance(outputs[host], Exception):
                raise RuntimeError(f"{host}'s sampler: {outputs[host]}")
            out, err = outputs[host]
            if proc.returncode != 0:
                raise RuntimeError(f"{host}'s sampler failed: {err.strip()[-500:]}")
            start: Optional[float] = None
            for line in out.splitlines():
                row = json.loads(line)
                start = row["t"] if start is None else start
                for name, sample in row["programs"].items():
                    series.setdefault(f"{host} {name}", Series()).add(row["t"] - start, sample)
    finally:
        for proc in samplers.values():
            if proc.poll() is None:
                proc.kill()
    hung = fab(lab, "hangup")
    if hung.returncode != 0:
        raise RuntimeError(f"fab hangup failed: {shows(hung)}")
    programs = {name: judge(s, duration_s, short) for name, s in sorted(series.items())}
    problems = [f"{name}: {p}" for name, v in programs.items() for p in v["problems"]]
    if len(programs) != 2 * len(PROGRAMS):
        problems.append(f"sampled {sorted(programs)}, not the four programs on each Pi")
    stats = directions(lab, call)
    for name, d in stats.items():
        if d["missing"] or not d["sent"] or d["sent"] != d["received"]:
            problems.append(f"{name}: sent {d['sent']}, received {d['received']}, missing {d['missing']}")
        if d["duration_s"] is None or d["duration_s"] < duration_s:
            problems.append(f"{name}: ran {d['duration_s']} s of the {duration_s:.0f} s call")
    return {"call": call, "minutes": minutes,
            "series": {name: {"t": s.t, "rss_kb": s.rss_kb, "fds": s.fds, "threads": s.threads}
                       for name, s in sorted(series.items())}, "bound": f"RSS growth <= {SHORT_GROWTH_MIB} MiB" if short else
            f"RSS slope <= {SLOPE_MIB_PER_H} MiB/h", "programs": programs,
            "directions": {n: {k: d[k] for k in ("sent", "received", "fps", "kbps", "duration_s")} for n, d in
                           stats.items()}, "problems": problems, "ok": not problems}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "30")),
                        help="how long the call runs (default: $SOAK_MINUTES or 30)")
    parser.add_argument("--series", metavar="FILE", help="also write every sample here (JSON)")
    args = parser.parse_args(argv)
    if args.minutes < 1:
        parser.error("--minutes: at least 1 (the warm-up needs a part of the call)")
    from tests.calls.lab_call import provision
    lab = Lab()
    try:
        lab.up()
        print(f"soak: provisioning the lab, then a {args.minutes:g}-minute call", flush=True)
        provision(lab)
        report = soak(lab, args.minutes)
    finally:
        lab.down()
    for name, verdict in report["programs"].items():
        print(f"{name:<14} RSS {verdict['rss_mib']} MiB, slope {verdict['rss_slope_mib_per_h']:+.3f} MiB/h, "
              f"growth {verdict['rss_growth_mib']:+.3f} MiB, fds {verdict['fds']}, threads {verdict['threads']}")
    for problem in report["problems"]:
        print(f"PROBLEM: {problem}")
    if args.series:
        with open(args.series, "w") as f:
            json.dump(report["series"], f)
        print(f"the samples: {args.series}")
    del report["series"]
    print(json.dumps(report, sort_keys=True))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
