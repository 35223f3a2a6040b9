"""Adaptive-quality benchmark (`make bench-adapt`): does a slow link get smaller frames instead of fewer?

The camera (test pattern, 640x480 at 15 fps, quality 75) sends to the viewer
across two network namespaces joined by a veth pair (p2padapt-a/b, made here
and deleted afterwards; never the lab's pi2pi-* ones). Each run: the stream
flows freely for WARM_S and its bitrate is read from the viewer's live
snapshot; then the camera's direction is limited to a third of that (tc tbf,
or netem's rate where the kernel has it) for LIMIT_S; then the limit is
lifted and the run goes on for AFTER_S. The same run with `--no-adapt` is the
peer: today's behaviour, latency bounded by dropping frames.

The evidence comes from outside the camera: the viewer runs as `pi2pi viewer`
inside a probe (`probe` below) that records, for every frame it paints, the
time, the latency the viewer measured (capture -> painted), the frame's size
from its JPEG header and its quality from its quantisation table (matched
against libjpeg's scaled standard table).

Figures, per run: frames painted during the limit per second over --fps (bar
>= 0.8); p99 latency of those frames in frame intervals (bar < 3); seconds from
the link's return until the frames painted are back at 640x480 and quality 75
and stay there (bar <= 5). Adaptive runs are repeated (--repeats, default 3):
medians with their spread.

Then the long, lossy link (the lab's call: each way 80 +- 20 ms and 1 % loss, so
a round trip of about 160 ms, and no rate limit): this kernel has no netem, so
`LossyLink` joins the two namespaces through a forwarder process between two
tun devices that holds and drops packets as netem would (`wan`). The camera at
320x240 (the lab's cameras) and at 640x480, 15 fps, quality 75, for LOSSY_S;
judged from LOSSY_SETTLE_S after the first frame painted: the share of the time
the picture on screen was full size at quality 75 or 65 (bar >= 0.8), frames
painted per second over --fps (bar >= 0.9), p99 latency. Each size is repeated
--repeats times with --adapt, and once with --no-adapt as the peer.

Prints a table, then one JSON object as the last line. Needs root (namespaces,
tc, /dev/net/tun).
"""
from __future__ import annotations

import argparse
import ctypes
import fcntl
import heapq
import json
import os
import random
import selectors
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

WIDTH, HEIGHT, FPS, QUALITY = 640, 480, 15.0, 75
WARM_S, LIMIT_S, AFTER_S = 5.0, 20.0, 8.0
LIMIT_SHARE = 1 / 3
NS_A, NS_B = "p2padapt-a", "p2padapt-b"
ADDR_A, ADDR_B = "198.51.100.1", "198.51.100.2"   # documentation range, only inside our namespaces
PORT = 5010
REPO = Path(__file__).resolve().parents[2]
BARS = {"fps_fraction_limited": 0.8, "latency_p99_limited_intervals": 3.0, "recovery_s": 5.0,
        "lossy_full_fraction": 0.8, "lossy_fps_fraction": 0.9}
LOSSY_S, LOSSY_SETTLE_S = 20.0, 3.0          # the lossy scenario's run, and what is not judged at its start
LOSSY_SIZES = ((320, 240), (640, 480))       # the lab's cameras, and this bench's

# libjpeg's standard luminance quantisation table (Annex K), which jpeg_set_quality scales.
STD_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
            14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
            49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)


def _luma_table(quality: int) -> Tuple[int, ...]:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return tuple(sorted(min(255, max(1, (v * scale + 50) // 100)) for v in STD_LUMA))


QUALITY_OF_TABLE = {}
for _q in range(100, 0, -1):   # where two qualities give one table, the lower wins
    QUALITY_OF_TABLE[_luma_table(_q)] = _q


def jpeg_quality(data: bytes) -> Optional[int]:
    """The libjpeg quality whose luminance table this JPEG carries (None: not a libjpeg-scaled table)."""
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker, length = data[at + 1], int.from_bytes(data[at + 2:at + 4], "big")
        if marker == 0xDA:   # start of scan: no table came
            return None
        if marker == 0xDB:
            seg, end = at + 4, at + 2 + length
            while seg < end:
                precision, table_id = data[seg] >> 4, data[seg] & 15
                size = 128 if precision else 64
                raw = data[seg + 1:seg + 1 + size]
                values = raw if not precision else [int.from_bytes(raw[i:i + 2], "big") for i in range(0, 128, 2)]
                if table_id == 0:
                    return QUALITY_OF_TABLE.get(tuple(sorted(values)))
                seg += 1 + size
        at += 2 + length
    return None


# ----- the viewer, watched -------------------------------------------------------------------

def probe(records_path: str, viewer_args: List[str]) -> int:
    """Run `pi2pi viewer` as usual, recording every painted frame: [wall time, seq, latency ms, w, h, quality, bytes]."""
    from pi2pi import cli
    from pi2pi.video import viewer

    records: List[List[Any]] = []
    paint = viewer.Painter.paint

    def watched(self: Any, item: Any) -> bool:
        painted = paint(self, item)
        if painted:
            width, height = self.frame_size_px
            records.append([round(time.time(), 4), item.header.seq, round(self.counters.last_latency_ms, 2),
                            width, height, jpeg_quality(item.payload), len(item.payload)])
        return painted

    viewer.Painter.paint = watched  # type: ignore[assignment]
    try:
        return cli.main(["viewer", *viewer_args])
    finally:
        Path(records_path).write_text(json.dumps(records))


# ----- the link ------------------------------------------------------------------------------

def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


class Link:
    """Two namespaces joined by a veth pair; the a -> b direction can be limited and freed."""

    def __init__(self, ns_a: str = NS_A, ns_b: str = NS_B) -> None:
        assert ns_a.startswith("p2padapt-") and ns_b.startswith("p2padapt-"), "never the lab's pi2pi-* names"
        self.ns_a, self.ns_b = ns_a, ns_b
        self.dev = "p2padapt-va"

    def up(self) -> "Link":
        self.down()
        sh("ip", "netns", "add", self.ns_a)
        sh("ip", "netns", "add", self.ns_b)
        sh("ip", "link", "add", self.dev, "netns", self.ns_a, "type", "veth", "peer", "name", "p2padapt-vb",
           "netns", self.ns_b)
        for ns, dev, addr in ((self.ns_a, self.dev, ADDR_A), (self.ns_b, "p2padapt-vb", ADDR_B)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        return self

    def down(self) -> None:
        for ns in (self.ns_a, self.ns_b):
            sh("ip", "netns", "del", ns, check=False)

    def limit(self, kbit: int) -> str:
        """Limit a -> b to kbit/s: netem's rate where the kernel has it, else tbf with a deep queue."""
        netem = sh("ip", "netns", "exec", self.ns_a, "tc", "qdisc", "replace", "dev", self.dev, "root", "netem",
                   "rate", f"{kbit}kbit", "limit", "10000", check=False)
        if netem.returncode == 0:
            return f"netem rate {kbit}kbit"
        sh("ip", "netns", "exec", self.ns_a, "tc", "qdisc", "replace", "dev", self.dev, "root", "tbf",
           "rate", f"{kbit}kbit", "burst", "1600", "latency", "2s")
        return f"tbf rate {kbit}kbit"

    def free(self) -> None:
        sh("ip", "netns", "exec", self.ns_a, "tc", "qdisc", "del", "dev", self.dev, "root", check=False)

    def __enter__(self) -> "Link":
        return self.up()

    def __exit__(self, *_exc: object) -> None:
        self.down()


class LossyLink:
    """Two namespaces joined by a long, lossy path: this kernel has no netem, so a forwarder
    process (`wan` below) carries IP packets between a tun device in each namespace, holding
    each DELAY_MS +- JITTER_MS (uniform, so packets reorder as netem's do) and dropping LOSS
    of them, in both directions. No rate limit: the path carries whatever TCP sends it.
    Same interface as Link (ns_a, ns_b, up, down, free; `limit` shapes a -> b with tbf on a's
    tun device)."""

    def __init__(self, ns_a: str, ns_b: str, delay_ms: float = 80, jitter_ms: float = 20, loss: float = 0.01) -> None:
        assert ns_a.startswith("p2padapt-") and ns_b.startswith("p2padapt-"), "never the lab's pi2pi-* names"
        self.ns_a, self.ns_b = ns_a, ns_b
        self.dev = "p2padapt-ta"
        self.delay_ms, self.jitter_ms, self.loss = delay_ms, jitter_ms, loss
        self.forwarder: Optional[subprocess.Popen] = None
        self.describe = f"tun forwarder, each way delay {delay_ms:g}ms {jitter_ms:g}ms loss {loss:.0%}"

    def up(self) -> "LossyLink":
        self.down()
        for ns in (self.ns_a, self.ns_b):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.forwarder = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.adapt", "wan", self.ns_a, self.ns_b, str(self.delay_ms),
             str(self.jitter_ms), str(self.loss)], env=env, stdout=subprocess.PIPE, text=True)
        assert self.forwarder.stdout is not None
        if self.forwarder.stdout.readline().strip() != "ready":
            raise RuntimeError("the lossy link's forwarder did not start")
        return self

    def down(self) -> None:
        if self.forwarder is not None and self.forwarder.poll() is None:
            self.forwarder.terminate()
            self.forwarder.wait(5)
        self.forwarder = None
        for ns in (self.ns_a, self.ns_b):
            sh("ip", "netns", "del", ns, check=False)

    def limit(self, kbit: int) -> str:
        sh("ip", "netns", "exec", self.ns_a, "tc", "qdisc", "replace", "dev", self.dev, "root", "tbf",
           "rate", f"{kbit}kbit", "burst", "1600", "latency", "2s")
        return f"{self.describe}; tbf rate {kbit}kbit"

    def free(self) -> None:
        sh("ip", "netns", "exec", self.ns_a, "tc", "qdisc", "del", "dev", self.dev, "root", check=False)

    def __enter__(self) -> "LossyLink":
        return self.up()

    def __exit__(self, *_exc: object) -> None:
        self.down()


CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000


def open_tun(ns: str, name: str, addr: str, peer: str) -> int:
    """A tun device in namespace ns (this process moves there to make it), addressed point to point."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
    finally:
        os.close(fd)
    tun = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    sh("ip", "addr", "add", addr, "peer", peer, "dev", name)   # ip runs in this (new) namespace
    sh("ip", "link", "set", name, "up")
    os.set_blocking(tun, False)
    return tun


def wan(ns_a: str, ns_b: str, delay_ms: float, jitter_ms: float, loss: float) -> int:
    """The lossy link's forwarder: packets from one tun to the other, late and some never."""
    tun_a = open_tun(ns_a, "p2padapt-ta", ADDR_A, ADDR_B)
    tun_b = open_tun(ns_b, "p2padapt-tb", ADDR_B, ADDR_A)
    other = {tun_a: tun_b, tun_b: tun_a}
    sel = selectors.DefaultSelector()
    for fd in other:
        sel.register(fd, selectors.EVENT_READ)
    held: List[Tuple[float, int, int, bytes]] = []   # (due, order, out fd, packet)
    order = 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    while True:
        timeout = max(0.0, held[0][0] - time.monotonic()) if held else 1.0
        for key, _ in sel.select(timeout):
            while True:
                try:
                    packet = os.read(key.fd, 65536)
                except BlockingIOError:
                    break
                if random.random() < loss:
                    continue
                due = time.monotonic() + (delay_ms + random.uniform(-jitter_ms, jitter_ms)) / 1000
                order += 1
                heapq.heappush(held, (due, order, other[key.fd], packet))
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, _, out, packet = heapq.heappop(held)
            try:
                os.write(out, packet)
            except OSError:
                pass   # a full device queue drops, as a full router would


# ----- one run -------------------------------------------------------------------------------

class Proc:
    def __init__(self, args: List[str], cwd: Path, netns: str) -> None:
        (cwd / "empty.conf").write_text("")
        env = dict(os.environ, PI2PI_CONFIG=str(cwd / "empty.conf"),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, *args], cwd=cwd, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def end(self, timeout_s: float, sig: Optional[int] = None) -> Tuple[int, str]:
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


def read_live(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def wait_until(what: str, check: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def start_pair(work: Path, link: Any, name: str, camera_args: Sequence[str], duration_s: float,
               size: Tuple[int, int] = (WIDTH, HEIGHT), fps: float = FPS) -> Tuple[Proc, Proc, Path]:
    """The watched viewer (listening in b) and the camera (dialing from a); returns them and the viewer's stats dir."""
    stats = work / f"stats-{name}"
    records = work / f"records-{name}.json"
    viewer = Proc(["-m", "tests.bench.adapt", "probe", str(records), "--", "--listen", f"{ADDR_B}:{PORT}",
                   "--fb", str(work / f"fb-{name}"), "--fb-geometry", f"{WIDTH}x{HEIGHT}x32", "--stats", str(stats),
                   "--once", "--live", "--stall-s", "10"], work, link.ns_b)
    wait_until("the viewer's live snapshot", lambda: (stats / "viewer.live.json").exists(), 15)
    camera = Proc(["-m", "pi2pi", "camera", "--source", "testpattern", "--label", name[:16], "--size",
                   f"{size[0]}x{size[1]}", "--fps", str(fps), "--quality", str(QUALITY), "--connect",
                   f"{ADDR_B}:{PORT}", "--duration", str(duration_s), "--stats", str(stats), "--stall-s", "10",
                   "-v", *camera_args], work, link.ns_a)
    return viewer, camera, stats


def finish_pair(viewer: Proc, camera: Proc, stats: Path, name: str, work: Path, stop: bool = True,
                timeout_s: float = 30) -> Tuple[List[List[Any]], Dict[str, Any], Dict[str, Any], str]:
    """Stop the camera (or let it end at its duration), wait for both to end (the viewer has
    --once); the viewer's records, both stats and the camera's log."""
    camera_code, camera_log = camera.end(timeout_s, signal.SIGTERM if stop else None)
    viewer_code, viewer_log = viewer.end(30)
    if camera_code or viewer_code:
        raise RuntimeError(f"{name}: camera exit {camera_code}, viewer exit {viewer_code}\n{camera_log}\n{viewer_log}")
    records = json.loads((work / f"records-{name}.json").read_text())
    return (records, json.loads((stats / "camera.json").read_text()), json.loads((stats / "viewer.json").read_text()),
            camera_log)


def run_once(work: Path, link: Link, name: str, adapt: bool) -> Dict[str, Any]:
    link.free()
    viewer, camera, stats = start_pair(work, link, name, ["--adapt"] if adapt else ["--no-adapt"],
                                       WARM_S + LIMIT_S + AFTER_S + 60)   # stopped below; the duration is a backstop
    try:
        live = stats / "viewer.live.json"
        first = wait_until("frames at the viewer", lambda: (lambda r: r if r and r.get("frames", 0) > 3 else None)(
            read_live(live)), 15)
        time.sleep(WARM_S)
        last = read_live(live) or first
        stream_kbit = (last["bytes"] - first["bytes"]) * 8 / 1000 / max(0.1, last["at"] - first["at"])
        limit_kbit = max(8, int(stream_kbit * LIMIT_SHARE))
        how = link.limit(limit_kbit)
        limited_at = time.time()
        time.sleep(LIMIT_S)
        link.free()
        freed_at = time.time()
        time.sleep(AFTER_S)
    except BaseException:
        camera.end(5, signal.SIGTERM)
        viewer.end(5, signal.SIGTERM)
        raise
    records, cam, view, camera_log = finish_pair(viewer, camera, stats, name, work)
    result = analyse(records, limited_at, freed_at)
    result.update(name=name, adapt=adapt, stream_kbit=round(stream_kbit), limit_kbit=limit_kbit, link=how,
                  camera=cam, viewer=view,
                  moves=[line.split("INFO ", 1)[-1] for line in camera_log.splitlines() if "adapting" in line])
    return result


def run_lossy(work: Path, link: Any, name: str, size: Tuple[int, int], adapt: bool,
              extra: Sequence[str] = (), duration_s: float = LOSSY_S) -> Dict[str, Any]:
    """The camera at `size` across the long, lossy link (no rate limit unless the caller set one) for duration_s."""
    viewer, camera, stats = start_pair(work, link, name, ["--adapt" if adapt else "--no-adapt", *extra], duration_s,
                                       size=size)
    try:
        wait_until("frames at the viewer", lambda: (lambda r: r if r and r.get("frames", 0) > 0 else None)(
            read_live(stats / "viewer.live.json")), 15)
    except BaseException:
        camera.end(5, signal.SIGTERM)
        viewer.end(5, signal.SIGTERM)
        raise
    records, cam, view, camera_log = finish_pair(viewer, camera, stats, name, work, stop=False,
                                                 timeout_s=duration_s + 30)
    result = analyse_lossy(records, size)
    result.update(name=name, adapt=adapt, size=f"{size[0]}x{size[1]}", link=link.describe,
                  camera={k: cam.get(k) for k in ("frames", "dropped", "skipped", "kbps", "adapt", "adaptations",
                                                  "adapt_downs", "adapt_ups", "adapt_size", "adapt_quality",
                                                  "adapt_fps")},
                  moves=[line.split("INFO ", 1)[-1] for line in camera_log.splitlines() if "adapting" in line])
    return result


def analyse_lossy(records: List[List[Any]], size: Tuple[int, int]) -> Dict[str, Any]:
    """From LOSSY_SETTLE_S after the first painted frame: the share of the time the picture on
    screen was full size at full quality (or one quality step under), frames painted per second
    over --fps, and latency."""
    if len(records) < 2:
        return {"full_fraction": 0.0, "fps_fraction": 0.0, "latency_p99_ms": None,
                "latency_p99_intervals": None, "frames": len(records)}
    start = records[0][0] + LOSSY_SETTLE_S
    end = records[-1][0]
    window = [r for r in records if r[0] >= start]
    on_screen = [r for r in records if r[0] < start][-1:] + window   # what showed at `start`, then each frame

    def full(r: List[Any]) -> bool:
        return (r[3], r[4]) == size and r[5] is not None and r[5] >= QUALITY - 10

    full_s = sum(min(nxt[0], end) - max(r[0], start) for r, nxt in zip(on_screen, on_screen[1:]) if full(r))
    latencies = [r[2] for r in window]
    p99 = percentile(latencies, 99)
    shown: Dict[str, int] = {}
    for r in window:
        key = f"{r[3]}x{r[4]} q{r[5]}"
        shown[key] = shown.get(key, 0) + 1
    return {
        "frames": len(window),
        "full_fraction": round(full_s / max(1e-3, end - start), 3),
        "fps_fraction": round(len(window) / max(1e-3, end - start) / FPS, 3),
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p99_ms": p99,
        "latency_p99_intervals": None if p99 is None else round(p99 / (1000 / FPS), 2),
        "shown": shown,
    }


def percentile(values: Sequence[float], p: float) -> Optional[float]:
    """Nearest rank, as pi2pi.stats does."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, -(-int(p * len(ordered)) // 100)) - 1]


def analyse(records: List[List[Any]], limited_at: float, freed_at: float) -> Dict[str, Any]:
    interval_ms = 1000 / FPS
    during = [r for r in records if limited_at <= r[0] < freed_at]
    before = [r for r in records if r[0] < limited_at]
    after = [r for r in records if r[0] >= freed_at]
    latencies = [r[2] for r in during]
    p99 = percentile(latencies, 99)
    full = (WIDTH, HEIGHT, QUALITY)
    degraded_after = [i for i, r in enumerate(after) if (r[3], r[4], r[5]) != full]
    if not after:
        recovery: Optional[float] = None
    elif not degraded_after:
        recovery = after[0][0] - freed_at
    elif degraded_after[-1] == len(after) - 1:
        recovery = None   # never back in this run
    else:
        recovery = after[degraded_after[-1] + 1][0] - freed_at
    late = during[len(during) // 2:]
    settled: Dict[str, int] = {}
    for r in late:
        key = f"{r[3]}x{r[4]} q{r[5]}"
        settled[key] = settled.get(key, 0) + 1
    return {
        "frames_limited": len(during),
        "fps_fraction_limited": round(len(during) / (freed_at - limited_at) / FPS, 3),
        "latency_p50_limited_ms": percentile(latencies, 50),
        "latency_p99_limited_ms": p99,
        "latency_p99_limited_intervals": None if p99 is None else round(p99 / interval_ms, 2),
        "latency_max_limited_ms": max(latencies) if latencies else None,
        "recovery_s": None if recovery is None else round(recovery, 2),
        "fps_before": round(len(before) / max(0.1, before[-1][0] - before[0][0]), 1) if len(before) > 1 else None,
        "latency_p99_before_ms": percentile([r[2] for r in before], 99),
        "fps_after_recovery": round(len(after) / max(0.1, after[-1][0] - freed_at), 1) if after else None,
        "settled": settled,
        "kb_per_frame_limited": round(statistics.mean(r[6] for r in late) / 1000, 2) if late else None,
    }


def spread(values: Sequence[Optional[float]]) -> Dict[str, Any]:
    got = [v for v in values if v is not None]
    if not got:
        return {"median": None, "min": None, "max": None, "missing": len(values)}
    return {"median": round(statistics.median(got), 3), "min": min(got), "max": max(got),
            "missing": len(values) - len(got)}


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["probe"]:
        return probe(argv[1], argv[3:] if argv[2:3] == ["--"] else argv[2:])
    if argv[:1] == ["wan"]:
        return wan(argv[1], argv[2], float(argv[3]), float(argv[4]), float(argv[5]))
    parser = argparse.ArgumentParser(prog="bench-adapt")
    parser.add_argument("--repeats", type=int, default=3, help="adaptive runs (the --no-adapt peer runs once)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or shutil.which("tc") is None:
        print("bench-adapt: needs root and tc (network namespaces, a rate-limited link)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="p2padapt-bench-"))
    load_before = os.getloadavg()[0]
    try:
        with Link() as link:
            runs = [run_once(work, link, f"adapt-{i + 1}", adapt=True) for i in range(args.repeats)]
            peer = run_once(work, link, "no-adapt", adapt=False)
        with LossyLink(NS_A, NS_B) as lossy_link:
            lossy = [run_lossy(work, lossy_link, f"lossy-{w}x{h}-{i + 1}", (w, h), adapt=True)
                     for (w, h) in LOSSY_SIZES for i in range(args.repeats)]
            lossy_peers = [run_lossy(work, lossy_link, f"lossy-{w}x{h}-no-adapt", (w, h), adapt=False)
                           for (w, h) in LOSSY_SIZES]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(runs, peer, load_before, lossy, lossy_peers)
    return 0


def report_lossy(lossy: List[Dict[str, Any]], peers: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The lossy scenario's table rows (printed) and its figures for the JSON line."""
    print(f"  lossy link, no rate limit: {lossy[0]['link'] if lossy else '-'}; {LOSSY_S:g} s a run, "
          f"judged from {LOSSY_SETTLE_S:g} s after the first frame painted; bars: full size at quality >= "
          f"{QUALITY - 10} >= {BARS['lossy_full_fraction']} of the time, fps >= {BARS['lossy_fps_fraction']}")
    head = ("run", "full size+quality", "fps", "p50 / p99 ms", "p99 intervals", "moves (down/up)", "shown most")
    rows = [head]
    for r in lossy + peers:
        most = max(r["shown"], key=r["shown"].get) if r.get("shown") else "-"
        rows.append((r["name"], f"{r['full_fraction']:.3f}", f"{r['fps_fraction']:.3f} of {FPS:g}",
                     f"{r.get('latency_p50_ms')} / {r['latency_p99_ms']}", f"{r['latency_p99_intervals']}",
                     f"{r['camera'].get('adapt_downs')}/{r['camera'].get('adapt_ups')}", most))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    for row in rows:
        print("  " + "  ".join(str(v).ljust(w) for v, w in zip(row, widths)))
    for r in lossy:   # "down (1): quality 30, 224x168, 15 fps: the link drains ...": the move and its reading
        moves = [m.split("adapting ", 1)[-1].split(", this rung")[0].split(", that rung")[0] for m in r["moves"]]
        if moves:
            print(f"  {r['name']} moves: " + "; ".join(moves))
    figures: Dict[str, Any] = {}
    for w, h in LOSSY_SIZES:
        key = f"lossy_{w}x{h}"
        mine = [r for r in lossy if r["size"] == f"{w}x{h}"]
        for name in ("full_fraction", "fps_fraction", "latency_p99_intervals"):
            got = spread([r[name] for r in mine])
            figures[f"{key}_{name}"] = got["median"]
            figures[f"{key}_{name}_range"] = [got["min"], got["max"]]
        peer = next((r for r in peers if r["size"] == f"{w}x{h}"), None)
        if peer is not None:
            figures[f"{key}_no_adapt_fps_fraction"] = peer["fps_fraction"]
            figures[f"{key}_no_adapt_latency_p99_intervals"] = peer["latency_p99_intervals"]
    return figures


def report(runs: List[Dict[str, Any]], peer: Dict[str, Any], load_before: float,
           lossy: Sequence[Dict[str, Any]] = (), lossy_peers: Sequence[Dict[str, Any]] = ()) -> None:
    interval_ms = 1000 / FPS
    print("pi2pi adaptive-quality benchmark")
    print(f"  machine: {os.cpu_count()} cores, load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"  camera: test pattern {WIDTH}x{HEIGHT} at {FPS:g} fps, quality {QUALITY}; link limited to "
          f"{LIMIT_SHARE:.2f} of the stream for {LIMIT_S:g} s after {WARM_S:g} s free, then free for {AFTER_S:g} s")
    head = ("run", "stream", "limit", "fps during", "p50 / p99 ms", "p99 intervals", "back after", "settled at")
    rows = [head]
    for r in runs + [peer]:
        settled = max(r["settled"], key=r["settled"].get) if r["settled"] else "-"
        rows.append((r["name"], f"{r['stream_kbit']} kbit/s", f"{r['limit_kbit']} kbit/s",
                     f"{r['fps_fraction_limited']:.3f} of {FPS:g}",
                     f"{r['latency_p50_limited_ms']} / {r['latency_p99_limited_ms']}",
                     f"{r['latency_p99_limited_intervals']}",
                     "-" if not r["adapt"] else ("never" if r["recovery_s"] is None else f"{r['recovery_s']} s"),
                     settled))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    for row in rows:
        print("  " + "  ".join(str(v).ljust(w) for v, w in zip(row, widths)))
    for r in runs:   # "down (1): quality 30, 224x168, 15 fps: the link drains ...": the move and its rung
        moves = [":".join(m.split("adapting ", 1)[-1].split(":")[:2]) for m in r["moves"]]
        print(f"  {r['name']} moves: " + ("; ".join(moves) or "none"))
    print(f"  link: {runs[0]['link'] if runs else peer['link']}; frame interval {interval_ms:.1f} ms; "
          f"bars: fps >= {BARS['fps_fraction_limited']}, p99 < {BARS['latency_p99_limited_intervals']:g} "
          f"intervals, back <= {BARS['recovery_s']:g} s")
    fps = spread([r["fps_fraction_limited"] for r in runs])
    p99 = spread([r["latency_p99_limited_intervals"] for r in runs])
    back = spread([r["recovery_s"] for r in runs])
    figures = {
        "fps_fraction_limited": fps["median"], "fps_fraction_limited_range": [fps["min"], fps["max"]],
        "latency_p99_limited_intervals": p99["median"],
        "latency_p99_limited_intervals_range": [p99["min"], p99["max"]],
        "recovery_s": back["median"], "recovery_s_range": [back["min"], back["max"]],
        "recovery_missing": back["missing"],
        "no_adapt_fps_fraction_limited": peer["fps_fraction_limited"],
        "no_adapt_latency_p99_limited_intervals": peer["latency_p99_limited_intervals"],
        "stream_kbit": statistics.median(r["stream_kbit"] for r in runs + [peer]),
        "limit_kbit": statistics.median(r["limit_kbit"] for r in runs + [peer]),
        "runs": len(runs),
    }
    if lossy:
        figures.update(report_lossy(list(lossy), list(lossy_peers)))
    print(json.dumps(figures))


if __name__ == "__main__":
    sys.exit(main())
