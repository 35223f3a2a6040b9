"""Audio benchmark: `make bench-audio` (= python -m tests.bench.audio).

What it measures, side by side in one run (docs/audio.md explains the choices):

1. clean link: talk -> TCP (loopback) -> listen with the default buffer; a click
   every 0.5 s goes in and is found in what listen heard: mouth-to-ear latency.
   CPU of each program per second of audio, against Opus alone on the same
   signal, paced every 20 ms in a fresh process (talk against the encoder,
   listen against the decoder). Three rounds, each followed by Opus alone:
   medians with ranges. Then the encoder's cost at each complexity, for the
   default's choice.
2. jitter: the same through a relay that holds every chunk 50 ms +- 30 ms
   (uniform) and keeps TCP's order (netem's delay/jitter as the receiver sees
   it; this kernel has no sch_netem): underruns per minute after the first
   second, the largest latency.
3. drift: an hour with the sender's clock 200 ppm fast, on a simulated clock:
   the jitter buffer's largest fill and the hard cuts found in the output.

Real time: ALSA's null/file devices are not paced, so both programs run with
--pace clock (the wall clock stands in for the sound card; listen emulates a
device holding its ALSA buffer). The hardware lab's snd-aloop figure, when its
JSON is under out/hw/, is printed beside ours.
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from tests.audio import analysis, harness
from tests.audio.simulate import simulate

RATE = 48000
ROUNDS = 3   # clean runs, each beside Opus alone: figures are their medians with ranges
ROOT = Path(__file__).resolve().parents[2]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class JitterRelay:
    """TCP relay: each chunk leaves `delay_ms` +- `jitter_ms` after it came, never before an earlier one."""

    def __init__(self, target_port: int, delay_ms: float, jitter_ms: float, seed: int = 7) -> None:
        self.target_port = target_port
        self.delay_s = delay_ms / 1000.0
        self.jitter_s = jitter_ms / 1000.0
        self.rng = random.Random(seed)
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.port = self.server.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        out = socket.create_connection(("127.0.0.1", self.target_port))
        for s in (conn, out):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        queue: List[Tuple[float, bytes]] = []
        lock = threading.Condition()

        def forward() -> None:
            while not self.stop.is_set():
                with lock:
                    while not queue and not self.stop.is_set():
                        lock.wait(0.1)
                    if not queue:
                        continue
                    due, data = queue[0]
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                with lock:
                    queue.pop(0)
                try:
                    out.sendall(data)
                except OSError:
                    return

        threading.Thread(target=forward, daemon=True).start()
        last_due = 0.0
        while not self.stop.is_set():
            data = conn.recv(65536)
            if not data:
                break
            due = time.monotonic() + self.delay_s + self.rng.uniform(-self.jitter_s, self.jitter_s)
            last_due = max(last_due, due)   # in order, like TCP: a late segment holds back the rest
            with lock:
                queue.append((last_due, data))
                lock.notify()
        time.sleep(self.delay_s + self.jitter_s + 0.1)
        self.stop.set()
        out.close()
        conn.close()

    def close(self) -> None:
        self.stop.set()
        self.server.close()


def run_call(work: Path, seconds: float, listen_args: List[str], via_relay: Optional[Tuple[float, float]] = None,
             cpu_window: Tuple[float, float] = (3.0, 2.0)) -> Dict:
    """talk (clicks) -> [relay] -> listen; returns stats, recording, input and CPU figures."""
    work.mkdir(parents=True, exist_ok=True)
    clicks, _ = analysis.clicks(RATE, seconds + 2.0, every_s=0.5)
    env = harness.alsa_env(work / "alsa", clicks)
    port = harness.free_port()
    stats = work / "stats"
    listen = harness.start("listen", ["--listen", f"127.0.0.1:{port}", "--device", "null", "--pace", "clock",
                                      "--record", str(work / "heard.wav"), "--stats", str(stats),
                                      "--duration", str(seconds + 30), *listen_args], env, work / "listen.log")
    relay = None
    try:
        harness.wait_listening(port)
        target = port
        if via_relay is not None:
            relay = JitterRelay(port, *via_relay)
            target = relay.port
        talk = harness.start("talk", ["--connect", f"127.0.0.1:{target}", "--device", "p2p_in", "--pace", "clock",
                                      "--duration", str(seconds), "--stats", str(stats)], env, work / "talk.log")
        time.sleep(cpu_window[0])
        t0, talk0, listen0 = time.monotonic(), cpu_seconds(talk.pid), cpu_seconds(listen.pid)
        time.sleep(max(1.0, seconds - cpu_window[0] - cpu_window[1]))
        t1, talk1, listen1 = time.monotonic(), cpu_seconds(talk.pid), cpu_seconds(listen.pid)
        harness.finish(talk, seconds + 30)
        time.sleep(1.0)
    finally:
        listen.send_signal(signal.SIGTERM)
        harness.finish(listen)
        if relay is not None:
            relay.close()
    _, heard = analysis.read_wav(work / "heard.wav")
    return {
        "talk": harness.stats(stats, "talk"),
        "listen": harness.stats(stats, "listen"),
        "heard": heard,
        "clicks": clicks,
        "cpu_talk_pct": (talk1 - talk0) / (t1 - t0) * 100.0,
        "cpu_listen_pct": (listen1 - listen0) / (t1 - t0) * 100.0,
    }


def click_latencies(run: Dict) -> List[float]:
    """Capture time of each click in, play time of it out (the programs' own clock anchors)."""
    talk, listen = run["talk"], run["listen"]
    if talk.get("capture_start_unix") is None or listen.get("record_start_unix") is None:
        return []
    ins = [talk["capture_start_unix"] + i / RATE for i in analysis.onsets(run["clicks"], 4000, RATE // 10)]
    outs = [listen["record_start_unix"] + o / RATE for o in analysis.onsets(run["heard"], 4000, RATE // 10)]
    latencies = []
    for played in outs:
        before = [c for c in ins if c < played]
        if before:
            latencies.append((played - before[-1]) * 1000.0)
    return latencies


def opus_cpu_pct(seconds: float = 10.0, complexity: Optional[int] = None) -> Dict[str, float]:
    """Opus alone, in this process, on what talk sends in the clean run (clicks every 0.5 s over
    silence): % of one core per second of audio to encode it at the talk's default complexity
    (or the one given) and to decode it."""
    from pi2pi.audio.codec import CodecSettings, Decoder, Encoder
    from pi2pi.audio.talk import Settings as TalkSettings

    level = TalkSettings().complexity if complexity is None else complexity
    encoder, decoder = Encoder(CodecSettings(complexity=level)), Decoder(RATE, 1)
    clicks, _ = analysis.clicks(RATE, seconds, every_s=0.5)
    chunks = [clicks[i:i + 960].astype(np.int16).tobytes() for i in range(0, clicks.size - 959, 960)]
    started = time.thread_time()
    packets = [encoder.encode(chunk) for chunk in chunks]
    encoded = time.thread_time()
    for packet in packets:
        decoder.decode(packet)
    decoded = time.thread_time()
    audio_s = len(chunks) * 960 / RATE
    return {"encode": (encoded - started) / audio_s * 100.0, "decode": (decoded - encoded) / audio_s * 100.0}


PACED_OPUS = """
import sys, time
sys.path[:0] = {paths!r}
from tests.bench.audio import opus_frames
frames = opus_frames({seconds}, {mode!r})
step = frames.pop
start, cpu, due = time.monotonic(), time.process_time(), time.monotonic()
while frames:
    due += 0.02
    delay = due - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    step()()
print((time.process_time() - cpu) / (time.monotonic() - start) * 100)
"""


def opus_frames(seconds: float, mode: str) -> List:
    """Calls that each encode (or decode) one 20 ms frame of the clean run's signal."""
    from pi2pi.audio.codec import CodecSettings, Decoder, Encoder
    from pi2pi.audio.talk import Settings as TalkSettings

    encoder = Encoder(CodecSettings(complexity=TalkSettings().complexity))
    decoder = Decoder(RATE, 1)
    clicks, _ = analysis.clicks(RATE, seconds, every_s=0.5)
    chunks = [clicks[i:i + 960].astype(np.int16).tobytes() for i in range(0, clicks.size - 959, 960)]
    if mode == "encode":
        return [lambda c=c: encoder.encode(c) for c in reversed(chunks)]
    packets = [encoder.encode(c) for c in chunks]
    return [lambda p=p: decoder.decode(p) for p in reversed(packets)]


def paced_opus_pct(mode: str, seconds: float = 8.0) -> float:
    """% of one core that a fresh Python process costs to wake every 20 ms and encode (or
    decode) one frame with the same Opus binding: talk's (listen's) job with nothing else,
    paced as a sound card paces it, so the wake-ups and the cold caches a real-time
    program meets are in the peer's figure too (on this VM a bare 20 ms wake-up alone
    costs a few tenths of a percent)."""
    import subprocess

    code = PACED_OPUS.format(paths=[str(ROOT), str(ROOT / "runtime")], seconds=seconds, mode=mode)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip())


def hw_lab_latency() -> Optional[Dict]:
    """The hardware lab's snd-aloop result, if one was written under out/hw/."""
    for path in sorted((ROOT / "out" / "hw").rglob("*.json")) if (ROOT / "out" / "hw").is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and any("latency" in k for k in data) and "audio" in json.dumps(data).lower():
            return {"file": str(path.relative_to(ROOT)), **{k: v for k, v in data.items() if "latency" in k}}
    return None


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="pi2pi-bench-audio-"))
    print(f"pi2pi audio benchmark ({os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}); work in {work}",
          flush=True)

    # A sound server runs its clients at real-time priority; without it this shared
    # machine's other work (VMs, the lab) stalls the wall-clock-paced devices.
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(20))
        realtime = "SCHED_FIFO 20 (talk, listen and the relay inherit it)"
    except (OSError, AttributeError) as err:
        realtime = f"not available ({err}); figures include scheduling stalls"
    print(f"scheduling: {realtime}", flush=True)
    rounds = []
    for r in range(ROUNDS):
        print(f"1/3 clean link, default buffer, 20 s, round {r + 1} of {ROUNDS}, then Opus alone ...", flush=True)
        run = run_call(work / f"clean-{r}", 20.0, [])
        opus = {mode: paced_opus_pct(mode) for mode in ("encode", "decode")}
        rounds.append({"run": run, "latency": click_latencies(run),
                       "opus_encode": opus["encode"], "opus_decode": opus["decode"],
                       "talk_over_opus": run["cpu_talk_pct"] - opus["encode"],
                       "listen_over_opus": run["cpu_listen_pct"] - opus["decode"]})
    clean, lat = rounds[0]["run"], [x for r in rounds for x in r["latency"]]
    round_lat = [float(np.median(r["latency"])) for r in rounds if r["latency"]]
    print("   the same with trx-like buffers (15 ms device, 10 ms floor: --periods 3 --buffer 10), 12 s ...", flush=True)
    low = run_call(work / "trx", 12.0, ["--periods", "3", "--buffer", "10"])
    low_lat = click_latencies(low)
    print("2/3 jitter 50 ms +- 30 ms, 65 s ...", flush=True)
    jitter = run_call(work / "jitter", 65.0, [], via_relay=(50.0, 30.0))
    jlat = click_latencies(jitter)
    # after the first second and before the talker hangs up (the end is not an underrun)
    played_s = jitter["listen"]["packets"] * 0.02
    late_underruns = [t for t in jitter["listen"].get("underrun_at_s", []) if 1.0 < t < played_s - 1.0]
    minutes = max(1e-9, (played_s - 2.0) / 60.0)
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))   # the simulation needs no priority
    except (OSError, AttributeError):
        pass
    print("3/3 one hour, sender 200 ppm fast, simulated ...", flush=True)
    t = time.monotonic()
    from pi2pi.audio.jitter import JitterSettings
    from pi2pi.audio.listen import Settings as ListenSettings
    defaults = ListenSettings()
    drift = simulate(3600.0, drift_ppm=200.0, delay_ms=5.0, jitter_ms=1.0,
                     settings=JitterSettings(min_ms=defaults.buffer, max_ms=defaults.buffer_max))
    sim_s = time.monotonic() - t
    by_complexity = {c: opus_cpu_pct(complexity=c)["encode"] for c in (0, 3, 5, 8, 10)}
    hw = hw_lab_latency()

    def spread(key: str) -> Tuple[float, float, float]:
        values = [r[key] if key in r else r["run"][key] for r in rounds]
        return float(np.median(values)), min(values), max(values)

    figures = {
        "latency_ms": round(float(np.median(round_lat)), 1) if round_lat else None,
        "latency_ms_range": [round(min(round_lat), 1), round(max(round_lat), 1)] if round_lat else None,
        "jitter_underruns_per_min": round(len(late_underruns) / minutes, 2),
        "jitter_latency_max_ms": round(max(jlat), 1) if jlat else None,
        "drift_buffer_max_ms": round(drift.fill_max_ms, 1),
        "hard_cuts": len(drift.hard_cuts),
        "cpu_talk_pct": round(spread("cpu_talk_pct")[0], 2),
        "cpu_listen_pct": round(spread("cpu_listen_pct")[0], 2),
        "cpu_talk_over_opus_pct": round(spread("talk_over_opus")[0], 2),
        "cpu_talk_over_opus_pct_range": [round(v, 2) for v in spread("talk_over_opus")[1:]],
        "cpu_listen_over_opus_pct": round(spread("listen_over_opus")[0], 2),
        "cpu_listen_over_opus_pct_range": [round(v, 2) for v in spread("listen_over_opus")[1:]],
        "opus_encode_paced_pct": round(spread("opus_encode")[0], 2),
        "opus_decode_paced_pct": round(spread("opus_decode")[0], 2),
        "opus_encode_pct_by_complexity": {c: round(v, 2) for c, v in by_complexity.items()},
        "rounds": ROUNDS,
        "latency_trx_like_ms": round(float(np.median(low_lat)), 1) if low_lat else None,
    }
    cl, jl = clean["listen"], jitter["listen"]
    rows = [
        ("clean: mouth-to-ear latency, median of the rounds' medians [range]",
         f"{figures['latency_ms']} ms {figures['latency_ms_range']}, {len(lat)} clicks ({min(lat):.1f}..{max(lat):.1f})"
         if round_lat else "no clicks found", "<= 35 ms"),
        ("clean, trx-like --periods 3 --buffer 10: latency median",
         f"{np.median(low_lat):.1f} ms ({min(low_lat):.1f}..{max(low_lat):.1f}); underruns "
         f"{low['listen']['underruns']}, device underruns {low['listen']['device_underruns']}" if low_lat else "no clicks found",
         "(side by side)"),
        ("clean: jitter buffer target / mean wait", f"{cl['target_ms']} ms / {cl['wait_ms_mean']} ms", ""),
        ("clean: underruns / concealed / device underruns",
         f"{cl['underruns']} / {cl['concealed']} / {cl['device_underruns']}", "0"),
        ("jitter: underruns after the first second",
         f"{len(late_underruns)} in {minutes:.2f} min = {figures['jitter_underruns_per_min']}/min", "<= 1/min"),
        ("jitter: latency max (median)",
         f"{figures['jitter_latency_max_ms']} ms ({np.median(jlat):.1f})" if jlat else "no clicks found", "< 150 ms"),
        ("jitter: measured jitter / target", f"{jl['jitter_ms']} ms / {jl['target_ms']} ms", ""),
        ("drift 200 ppm, 1 h: buffer fill max", f"{figures['drift_buffer_max_ms']} ms "
         f"(bounds {defaults.buffer:.0f}..{defaults.buffer_max:.0f} ms), removed {drift.counters.dropped_ms:.0f} ms "
         f"in {drift.counters.dropped} pauses, {drift.counters.crossfaded} cross-fades; {sim_s:.1f} s to run",
         "within bounds"),
        ("drift 200 ppm, 1 h: hard cuts in the output", str(figures["hard_cuts"]), "0"),
        ("CPU talk / listen, % of one core per s of audio (medians)",
         f"{figures['cpu_talk_pct']} / {figures['cpu_listen_pct']}", ""),
        ("  Opus alone, paced every 20 ms: encode / decode (medians)",
         f"{spread('opus_encode')[0]:.2f} / {spread('opus_decode')[0]:.2f}", "a fresh process each, same signal"),
        ("  talk over Opus's encode [range]",
         f"{figures['cpu_talk_over_opus_pct']} {figures['cpu_talk_over_opus_pct_range']}", "<= 0.3"),
        ("  listen over Opus's decode [range]",
         f"{figures['cpu_listen_over_opus_pct']} {figures['cpu_listen_over_opus_pct_range']}", "<= 0.3"),
        ("Opus encode alone, back to back, by complexity (0/3/5/8/10)",
         " / ".join(f"{v:.2f}" for v in by_complexity.values()), "% of one core"),
        ("hardware lab snd-aloop latency", json.dumps(hw) if hw else "no result under out/hw/", ""),
        ("scheduling", realtime, ""),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'measure'.ljust(width)}  {'result':60}  bar")
    for name, value, bar in rows:
        print(f"{name.ljust(width)}  {value:60}  {bar}")
    print()
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
