"""Video benchmark (`make bench-video`): camera -> viewer against raw TurboJPEG and GStreamer.

Same frames for every contender: a fixed clip of camera-like content (see
`make_clip`), 640x480, JPEG quality 75, 4:2:0. The sending side (camera, raw
encode, GStreamer's sender) is pinned to one core, the receiving side to the
other. Each round runs every contender once, back to back: the raw pipelined
limit, pi2pi, GStreamer with each pair of DCTs, latency at 30 fps, single steps
on one core; each figure is a ratio within its round, and the figures printed
are the medians over the rounds (default 9) with their ranges. Prints a table,
then one JSON object as the last line (each figure's median, and
`<figure>_range`). Needs root for the rate-limited part (network namespaces
pi2pi-bench-a/b, deleted afterwards). Method: docs/video.md ("Benchmark").
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import turbojpeg

from pi2pi import config
from pi2pi.video import camera, framebuffer, viewer
from pi2pi.video.jpeg import DCT_FLAGS

WIDTH, HEIGHT, QUALITY, FPS = 640, 480, 75, 30
CLIP_FRAMES, CLIP_SEED = 60, 20261125
NS_A, NS_B = "pi2pi-bench-a", "pi2pi-bench-b"
ADDR_A, ADDR_B = "198.51.100.1", "198.51.100.2"   # documentation range, only inside our namespaces
PORT = 5010
ROUNDS = 9
RAW_S, PAIR_S, LATENCY_S = 2.5, 3.0, 4.0   # seconds of each contender in a round
# pi2pi's DCTs as shipped (camera encoding, viewer decoding), read from the programs' settings.
DEFAULT_DCT = (config.field_defaults(camera.Settings)["dct"], config.field_defaults(viewer.Settings)["dct"])
DCT_PAIRS = {"default": DEFAULT_DCT, "accurate": ("accurate", "accurate"), "fast": ("fast", "fast")}
DCT_PAIRS = {k: v for k, v in DCT_PAIRS.items() if k == "default" or v != DEFAULT_DCT}
REPORTED = ("throughput_ratio", "cpu_ratio_camera", "cpu_ratio_viewer", "gst_fps_per_cpu_ratio",
            "gst_fps_per_cpu_ratio_accurate", "gst_fps_per_cpu_ratio_fast", "latency_p50_ms", "latency_p99_ms",
            "raw_codec_cpu_ms", "rgb565_over_decode", "limit_fps", "fps", "camera_cpu_ms", "viewer_cpu_ms")


def _blur(a: np.ndarray, k: int) -> np.ndarray:
    """Box blur of radius k (summed-area table), same shape."""
    c = np.cumsum(np.cumsum(np.pad(a, ((k + 1, k), (k + 1, k)), mode="edge"), 0), 1)
    return (c[2 * k + 1:, 2 * k + 1:] - c[:-2 * k - 1, 2 * k + 1:] - c[2 * k + 1:, :-2 * k - 1]
            + c[:-2 * k - 1, :-2 * k - 1]) / (2 * k + 1) ** 2


def make_clip(frames: int = CLIP_FRAMES, w: int = WIDTH, h: int = HEIGHT, seed: int = CLIP_SEED) -> np.ndarray:
    """A deterministic clip of camera-like I420 frames (numpy's PCG64 seeded with CLIP_SEED).

    A room seen by a hand-held webcam: a lit wall with blotchy texture and fine
    grain, a bright window, a shelf of boxes, a person (head and shoulders)
    walking across, the whole view drifting a few pixels per frame, and sensor
    noise (sigma 2.5 luma levels) that differs in every frame.
    """
    rng = np.random.default_rng(seed)
    bh, bw = h + 64, w + 128
    blotches = _blur(np.kron(rng.random((bh // 8 + 1, bw // 8 + 1)), np.ones((8, 8)))[:bh, :bw], 6)
    grain = _blur(rng.random((bh, bw)), 1)
    yy, xx = np.mgrid[0:bh, 0:bw]
    scene = 70 + 90 * (1 - yy / bh) * (0.6 + 0.4 * xx / bw) + 40 * (blotches - 0.5) + 25 * (grain - 0.5)
    scene[40:200, 500:700] = 215 + 15 * (grain[40:200, 500:700] - 0.5)
    for i in range(8):
        x0, top = 40 + i * 55, 300
        scene[top:top + 30 + 7 * i, x0:x0 + 40] = 30 + 25 * i + 20 * (grain[top:top + 30 + 7 * i, x0:x0 + 40] - 0.5)
    chroma_u = 122 + 12 * _blur(rng.random((bh // 2, bw // 2)), 10)
    chroma_v = 136 + 14 * (blotches[::2, ::2] - 0.5)
    fy, fx = np.mgrid[0:h, 0:w]
    out = np.empty((frames, w * h * 3 // 2), np.uint8)
    for f in range(frames):
        t = f / frames
        dx, dy = int(32 + 30 * np.sin(2 * np.pi * t)), int(16 + 12 * np.cos(2 * np.pi * t))
        y = scene[dy:dy + h, dx:dx + w].copy()
        px, py = int(120 + 380 * t), 260
        head = ((fx - px) / 45.0) ** 2 + ((fy - (py - 90)) / 55.0) ** 2 < 1
        y[head] = 150 + 20 * grain[:h, :w][head]
        body = y[py - 30:h, max(0, px - 110):px + 110]
        body *= 0.3
        body += 35
        y += rng.normal(0, 2.5, y.shape)
        u = chroma_u[dy // 2:dy // 2 + h // 2, dx // 2:dx // 2 + w // 2].copy()
        v = chroma_v[dy // 2:dy // 2 + h // 2, dx // 2:dx // 2 + w // 2].copy()
        u[head[::2, ::2]], v[head[::2, ::2]] = 110, 150
        frame = out[f]
        frame[:w * h] = np.clip(y, 0, 255).astype(np.uint8).ravel()
        frame[w * h:w * h * 5 // 4] = np.clip(u, 0, 255).astype(np.uint8).ravel()
        frame[w * h * 5 // 4:] = np.clip(v, 0, 255).astype(np.uint8).ravel()
    return out


def cores() -> Tuple[int, int]:
    """The sending side's core and the receiving side's: two different ones where there are two."""
    mine = sorted(os.sched_getaffinity(0))
    return mine[0], mine[-1]


def raw_worker(job: str, work: Path, port: int, seconds: float, dct: str) -> Dict[str, float]:
    """One end of the raw pipeline: the least a camera and a viewer can do with these
    libraries and this kernel. "send" encodes the clip and writes each JPEG with a 4-byte
    length to TCP for `seconds`; "receive" (listening on `port`) reads them and decodes each
    onto a screen (an mmapped file), as the viewer does where it can. Each starts when the
    parent says go (stdin); CPU (user and system) and wall time per frame."""
    tj = turbojpeg.TurboJPEG()
    flags = DCT_FLAGS[dct]
    if job == "send":
        clip = np.fromfile(work / "clip.yuv", np.uint8).reshape(CLIP_FRAMES, -1)
        sock = socket.create_connection(("127.0.0.1", port))
        print("ready", flush=True)
        sys.stdin.readline()
        frames, cpu0, t0 = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            jpeg = tj.encode_from_yuv(clip[frames % CLIP_FRAMES], HEIGHT, WIDTH, QUALITY, turbojpeg.TJSAMP_420,
                                      flags=flags)
            sock.sendall(struct.pack("<I", len(jpeg)) + jpeg)
            frames += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        sock.close()
        return {"frames": frames, "ms": wall * 1000 / frames, "cpu_ms": cpu * 1000 / frames}
    server = socket.create_server(("127.0.0.1", port))
    fb_path = work / f"raw-fb-{os.getpid()}"
    fb_path.write_bytes(bytes(WIDTH * HEIGHT * 4))
    with open(fb_path, "r+b") as f:
        screen = np.ndarray((HEIGHT, WIDTH, 4), np.uint8, buffer=mmap.mmap(f.fileno(), WIDTH * HEIGHT * 4))
        print("ready", flush=True)
        conn, _ = server.accept()
        sys.stdin.readline()
        reader = conn.makefile("rb")
        frames, cpu0, t0 = 0, time.process_time(), time.perf_counter()
        while True:
            head = reader.read(4)
            if len(head) < 4:
                break
            jpeg = reader.read(struct.unpack("<I", head)[0])
            tj.decode(jpeg, pixel_format=turbojpeg.TJPF_BGRX, flags=flags, dst=screen)
            frames += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"frames": frames, "ms": wall * 1000 / frames, "cpu_ms": cpu * 1000 / frames}


def run_raw_pipeline(work: Path, seconds: float, camera_dct: str, viewer_dct: str) -> Dict[str, Any]:
    """The raw pipeline (raw_worker): its sender on the sending core, its receiver on the
    receiving one, over loopback TCP like pi2pi: what two cores, the libraries and the kernel
    do for this clip with nothing else (the pipelined limit)."""
    send_core, recv_core = cores()
    port = PORT + 2
    workers = {}
    for job, core, dct in (("receive", recv_core, viewer_dct), ("send", send_core, camera_dct)):
        workers[job] = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.video", "--raw-worker", job, "--work", str(work),
             "--port", str(port), "--seconds", str(seconds), "--dct", dct],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=lambda c=core: pin(c))
        if workers[job].stdout.readline().strip() != "ready":   # type: ignore[union-attr]
            raise RuntimeError(f"the raw pipeline's {job} end did not start")
    for proc in workers.values():
        proc.stdin.write("go\n")   # type: ignore[union-attr]
        proc.stdin.flush()         # type: ignore[union-attr]
    result = {}
    for job, proc in workers.items():
        out, _ = proc.communicate(timeout=seconds + 60)
        if proc.returncode:
            raise RuntimeError(f"the raw pipeline's {job} end failed")
        result[job] = json.loads(out.strip().splitlines()[-1])
    result["limit_fps"] = 1000 / result["receive"]["ms"]
    return result


def pin(core: int) -> None:
    os.sched_setaffinity(0, {core})


def time_single(clip: np.ndarray, jpegs: List[bytes]) -> Dict[str, float]:
    """CPU per frame of single steps on one core, medians of 5 passes over the clip: each DCT's
    encode and decode, and the RGB565 conversion (16-bpp screens) against the decode it follows."""
    tj = turbojpeg.TurboJPEG()
    old = os.sched_getaffinity(0)
    pin(cores()[1])

    def cpu_ms(step: Any, items: List[Any]) -> float:
        passes = []
        for _ in range(5):
            started = time.thread_time()
            for item in items:
                step(item)
            passes.append((time.thread_time() - started) * 1000 / len(items))
        return float(np.median(passes))

    dst = np.empty((HEIGHT, WIDTH, 4), np.uint8)
    out, scratch = np.empty((HEIGHT, WIDTH), np.uint32), np.empty((HEIGHT, WIDTH), np.uint32)
    figures: Dict[str, float] = {}
    try:
        for dct, flags in DCT_FLAGS.items():
            figures[f"encode_{dct}_cpu_ms"] = cpu_ms(
                lambda f: tj.encode_from_yuv(f, HEIGHT, WIDTH, QUALITY, turbojpeg.TJSAMP_420, flags=flags), list(clip))
            figures[f"decode_{dct}_cpu_ms"] = cpu_ms(
                lambda j: tj.decode(j, pixel_format=turbojpeg.TJPF_BGRX, flags=flags, dst=dst), jpegs)
        figures["rgb565_cpu_ms"] = cpu_ms(lambda _j: framebuffer.bgrx_to_rgb565(dst, out, scratch), jpegs)
    finally:
        os.sched_setaffinity(0, old)
    return figures


def picture_error(clip: np.ndarray) -> Dict[str, float]:
    """Luma PSNR (dB) of the clip through encode and decode, for each pair of DCTs."""
    tj = turbojpeg.TurboJPEG()
    result = {}
    for enc, dec in (("fast", "accurate"), ("accurate", "accurate"), ("fast", "fast"), ("accurate", "fast")):
        err = 0.0
        for frame in clip:
            jpeg = tj.encode_from_yuv(frame, HEIGHT, WIDTH, QUALITY, turbojpeg.TJSAMP_420, flags=DCT_FLAGS[enc])
            luma = tj.decode(jpeg, pixel_format=turbojpeg.TJPF_GRAY, flags=DCT_FLAGS[dec])[..., 0]
            diff = luma.astype(np.float64) - frame[:WIDTH * HEIGHT].reshape(HEIGHT, WIDTH)
            err += float(np.mean(diff * diff))
        result[f"{enc}/{dec}"] = round(10 * np.log10(255 ** 2 / (err / len(clip))), 2)
    return result


class Proc:
    """A child process whose own CPU time we read from wait4 when it ends."""

    def __init__(self, args: List[str], cwd: Path, netns: Optional[str] = None, core: Optional[int] = None) -> None:
        prefix = ["ip", "netns", "exec", netns] if netns else []
        env = dict(os.environ, PI2PI_CONFIG=str(cwd / "empty.conf"))
        (cwd / "empty.conf").write_text("")
        self.args = args
        self.proc = subprocess.Popen(prefix + args, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True,
                                     preexec_fn=None if core is None else (lambda: pin(core)))
        self.cpu_s = 0.0

    def end(self, timeout_s: float = 30.0, sig: Optional[int] = None) -> int:
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        deadline = time.monotonic() + timeout_s
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                self.proc.kill()
                pid, status, usage = os.wait4(self.proc.pid, 0)
                break
            time.sleep(0.02)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.cpu_s = usage.ru_utime + usage.ru_stime
        self.stderr = self.proc.stderr.read() if self.proc.stderr else ""
        return self.proc.returncode


def pi2pi(*args: str) -> List[str]:
    return [sys.executable, "-m", "pi2pi", *args]



def run_pair(work: Path, name: str, fps: float, seconds: float, netns: bool = False,
             camera_dct: str = "fast", viewer_dct: str = "accurate") -> Dict[str, Any]:
    """Our viewer (listening, on the receiving core) and camera (dialing, on the sending core)
    on the clip; both stats files."""
    stats = work / f"stats-{name}"
    shutil.rmtree(stats, ignore_errors=True)
    send_core, recv_core = cores()
    viewer_addr = ADDR_B if netns else "127.0.0.1"
    viewer = Proc(pi2pi("viewer", "--listen", f"{viewer_addr}:{PORT}", "--fb", str(work / f"fb-{name}"),
                        "--fb-geometry", f"{WIDTH}x{HEIGHT}x32", "--stats", str(stats), "--once",
                        "--stall-s", "10", "--dct", viewer_dct), work, NS_B if netns else None, recv_core)
    if not wait_for_listener(viewer_addr, PORT, NS_B if netns else None, 30):
        viewer.end(5, signal.SIGTERM)
        raise RuntimeError(f"{name}: the viewer never listened\n{viewer.stderr}")
    camera = Proc(pi2pi("camera", "--source", str(work / "clip.yuv"), "--size", f"{WIDTH}x{HEIGHT}",
                        "--fps", str(fps), "--quality", str(QUALITY), "--connect", f"{viewer_addr}:{PORT}",
                        "--duration", str(seconds), "--stats", str(stats), "--stall-s", "10",
                        "--dct", camera_dct), work, NS_A if netns else None, send_core)
    camera_code = camera.end(seconds + 30)
    viewer_code = viewer.end(30)
    if camera_code or viewer_code:
        raise RuntimeError(f"{name}: camera exit {camera_code}, viewer exit {viewer_code}\n"
                           f"{camera.stderr}\n{viewer.stderr}")
    cam = json.loads((stats / "camera.json").read_text())
    view = json.loads((stats / "viewer.json").read_text())
    # CPU while streaming (each program's own count, startup excluded) per frame painted.
    return {"camera": cam, "viewer": view, "cpu_ms_per_painted": (cam["cpu_s"] + view["cpu_s"]) * 1000 / view["frames"]}


def wait_for_listener(addr: str, port: int, netns: Optional[str], timeout_s: float) -> bool:
    """Poll the kernel's socket table (ss) until something listens on addr:port."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = subprocess.run(prefix + ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
        if f"{addr}:{port}" in out:
            return True
        time.sleep(0.05)
    return False


GST_IDCT = {"accurate": "islow", "fast": "ifast"}


def run_gstreamer(work: Path, camera_dct: str, viewer_dct: str) -> Dict[str, Any]:
    """jpegenc ! multipartmux ! tcpclientsink  ->  tcpserversrc ! multipartdemux ! jpegdec ! BGRx,
    sender on the sending core, receiver on the receiving one, each DCT as named.

    Run twice, for 5 and 25 passes over the clip: the difference is the CPU per frame
    with each process's start-up taken out (as pi2pi's own count leaves it out). The
    receiver listens so the sender's first frame is not lost; TCP's back pressure paces
    the encoder to the decoder (GStreamer drops nothing).
    """
    send_core, recv_core = cores()
    port = PORT + 1
    runs = {}
    for passes in (5, 25):
        receiver = Proc(["gst-launch-1.0", "-q", "tcpserversrc", "host=127.0.0.1", f"port={port}", "!",
                         "multipartdemux", "!", "jpegdec", f"idct-method={GST_IDCT[viewer_dct]}", "!",
                         "videoconvert", "!", "video/x-raw,format=BGRx", "!", "fakesink", "sync=false"],
                        work, core=recv_core)
        if not wait_for_listener("127.0.0.1", port, None, 30):
            receiver.end(5, signal.SIGTERM)
            raise RuntimeError(f"gstreamer's receiver never listened: {receiver.stderr}")
        sender = Proc(["gst-launch-1.0", "-q", "multifilesrc", f"location={work / 'clip.yuv'}", "loop=true",
                       f"num-buffers={passes}", "!", "rawvideoparse", f"width={WIDTH}", f"height={HEIGHT}",
                       "format=i420", "framerate=0/1", "!", "jpegenc", f"quality={QUALITY}",
                       f"idct-method={GST_IDCT[camera_dct]}", "!", "multipartmux",
                       "!", "tcpclientsink", "host=127.0.0.1", f"port={port}", "sync=false"], work, core=send_core)
        sender.end(120)
        receiver.end(120)
        if receiver.proc.returncode or sender.proc.returncode:
            raise RuntimeError(f"gstreamer failed: {sender.stderr}\n{receiver.stderr}")
        runs[passes] = sender.cpu_s + receiver.cpu_s
    frames = 20 * CLIP_FRAMES
    return {"frames": frames, "cpu_ms_per_frame": (runs[25] - runs[5]) * 1000 / frames}


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


def namespaces_down() -> None:
    for ns in (NS_A, NS_B):
        sh("ip", "netns", "del", ns, check=False)


def namespaces_up(rate_kbit: int) -> str:
    """Two namespaces joined by a veth pair; camera->viewer direction limited to rate_kbit."""
    namespaces_down()
    sh("ip", "netns", "add", NS_A)
    sh("ip", "netns", "add", NS_B)
    sh("ip", "link", "add", "p2pbench-a", "netns", NS_A, "type", "veth", "peer", "name", "p2pbench-b", "netns", NS_B)
    for ns, dev, addr in ((NS_A, "p2pbench-a", ADDR_A), (NS_B, "p2pbench-b", ADDR_B)):
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ns, "ethtool", "-K", dev, "tso", "off", "gso", "off", check=False)
    # netem's rate where the kernel has it; otherwise tbf, the same rate with a deep queue.
    netem = sh("ip", "netns", "exec", NS_A, "tc", "qdisc", "add", "dev", "p2pbench-a", "root", "netem",
               "rate", f"{rate_kbit}kbit", "limit", "10000", check=False)
    if netem.returncode == 0:
        return f"netem rate {rate_kbit}kbit"
    sh("ip", "netns", "exec", NS_A, "tc", "qdisc", "add", "dev", "p2pbench-a", "root", "tbf",
       "rate", f"{rate_kbit}kbit", "burst", "3000", "latency", "2s")
    return f"tbf rate {rate_kbit}kbit (netem: {netem.stderr.strip() or 'unavailable'})"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-video", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved rounds (figures are their medians)")
    parser.add_argument("--raw-worker", choices=("send", "receive"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=RAW_S, help=argparse.SUPPRESS)
    parser.add_argument("--dct", choices=tuple(DCT_FLAGS), default="accurate", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.raw_worker:
        print(json.dumps(raw_worker(args.raw_worker, args.work, args.port, args.seconds, args.dct)))
        return 0
    for tool in ("gst-launch-1.0", "ip", "tc", "ss"):
        if shutil.which(tool) is None:
            print(f"bench-video: {tool} is missing (make setup-test installs it)", file=sys.stderr)
            return 2
    if args.rounds < 1:
        print("bench-video: --rounds wants 1 or more", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="pi2pi-bench-video-"))
    try:
        return measure(work, args.rounds)
    finally:
        namespaces_down()
        shutil.rmtree(work, ignore_errors=True)


def median_range(values: List[float]) -> Tuple[float, float, float]:
    return float(np.median(values)), min(values), max(values)


def measure_round(work: Path) -> Dict[str, float]:
    """One round: every contender once, back to back, each figure a ratio within the round."""
    raw = run_raw_pipeline(work, RAW_S, DEFAULT_DCT[0], DEFAULT_DCT[1])
    fast = run_pair(work, "unthrottled", 0, PAIR_S)
    view, cam = fast["viewer"], fast["camera"]
    figures = {
        "throughput_ratio": view["fps"] / raw["limit_fps"],
        "cpu_ratio_camera": cam["cpu_ms_per_frame"] / raw["send"]["cpu_ms"],
        "cpu_ratio_viewer": view["cpu_ms_per_frame"] / raw["receive"]["cpu_ms"],
        "limit_fps": raw["limit_fps"], "fps": view["fps"],
        "camera_cpu_ms": cam["cpu_ms_per_frame"], "raw_send_cpu_ms": raw["send"]["cpu_ms"],
        "viewer_cpu_ms": view["cpu_ms_per_frame"], "raw_receive_cpu_ms": raw["receive"]["cpu_ms"],
    }
    # Frames per CPU second against GStreamer on equal terms: the same DCTs on both sides.
    for label, (camera_dct, viewer_dct) in DCT_PAIRS.items():
        ours = fast if (camera_dct, viewer_dct) == DEFAULT_DCT else run_pair(
            work, f"unthrottled-{label}", 0, PAIR_S, camera_dct=camera_dct, viewer_dct=viewer_dct)
        gst = run_gstreamer(work, camera_dct, viewer_dct)
        suffix = "" if (camera_dct, viewer_dct) == DEFAULT_DCT else f"_{label}"
        figures[f"gst_fps_per_cpu_ratio{suffix}"] = gst["cpu_ms_per_frame"] / ours["cpu_ms_per_painted"]
        figures[f"fps_per_cpu{suffix}"] = 1000 / ours["cpu_ms_per_painted"]
        figures[f"gst_fps_per_cpu{suffix}"] = 1000 / gst["cpu_ms_per_frame"]
    paced = run_pair(work, "30fps", FPS, LATENCY_S)
    figures["latency_p50_ms"] = paced["viewer"]["latency_ms"]["p50"]
    figures["latency_p99_ms"] = paced["viewer"]["latency_ms"]["p99"]
    return figures


def measure(work: Path, rounds: int) -> int:
    load_before = os.getloadavg()[0]
    clip = make_clip()
    clip.tofile(work / "clip.yuv")
    tj = turbojpeg.TurboJPEG()
    jpegs = [tj.encode_from_yuv(f, HEIGHT, WIDTH, QUALITY, turbojpeg.TJSAMP_420) for f in clip]
    mean_bytes, max_bytes = float(np.mean([len(j) for j in jpegs])), max(len(j) for j in jpegs)
    psnr = picture_error(clip)

    per_round: List[Dict[str, float]] = []
    for r in range(rounds):
        figures = measure_round(work)
        single = time_single(clip, jpegs)
        figures.update(single)
        figures["rgb565_over_decode"] = single["rgb565_cpu_ms"] / single[f"decode_{DEFAULT_DCT[1]}_cpu_ms"]
        figures["raw_codec_cpu_ms"] = single[f"encode_{DEFAULT_DCT[0]}_cpu_ms"] + single[f"decode_{DEFAULT_DCT[1]}_cpu_ms"]
        per_round.append(figures)
        print(f"bench-video: round {r + 1} of {rounds}: throughput {figures['throughput_ratio']:.3f}, "
              f"camera CPU {figures['cpu_ratio_camera']:.3f}, viewer CPU {figures['cpu_ratio_viewer']:.3f}",
              file=sys.stderr)
    stat = {key: median_range([f[key] for f in per_round]) for key in per_round[0]}

    bitrate_kbit = mean_bytes * 8 * FPS / 1000
    rate_kbit = int(bitrate_kbit * 0.5)
    try:
        link = namespaces_up(rate_kbit)
        limited = run_pair(work, "limited", FPS, 10, netns=True)
    finally:
        namespaces_down()
    limited_bound_ms = 3 * 1000 / FPS + max_bytes * 8 / rate_kbit
    lim_view, lim_cam = limited["viewer"], limited["camera"]

    figures_out: Dict[str, Any] = {}
    for key in REPORTED:
        med, low, high = stat[key]
        figures_out[key] = round(med, 3)
        figures_out[f"{key}_range"] = [round(low, 3), round(high, 3)]
    figures_out.update({
        "limited_latency_p99_ms": lim_view["latency_ms"]["p99"],
        "limited_latency_bound_ms": round(limited_bound_ms, 1),
        "psnr_db": psnr, "rounds": rounds,
    })

    def row(label: str, key: str, unit: str = "", bar: str = "") -> Tuple[str, str, str]:
        med, low, high = stat[key]
        spread = (high - low) / med * 100 if med else 0.0
        return (label, f"{med:.3f}{unit}  [{low:.3f} .. {high:.3f}, spread {spread:.1f} %]", bar)

    rows: List[Tuple[str, str, str]] = [
        ("machine", f"{os.cpu_count()} cores, load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
                    f"sending side on core {cores()[0]}, receiving side on core {cores()[1]}",
         "others' work on a shared machine skews wall-clock figures"),
        ("clip", f"{WIDTH}x{HEIGHT} q{QUALITY} 4:2:0, {CLIP_FRAMES} frames, mean {mean_bytes / 1000:.1f} kB", ""),
        ("rounds", f"{rounds}, each: raw pipeline, pi2pi, GStreamer x3 DCT pairs, latency, single steps",
         "median [min .. max, spread = (max - min) / median]"),
        ("pipelined limit", "", "raw: encode -> TCP -> decode onto a screen, one core each side"),
        row("  fps", "limit_fps"),
        row("  raw sender CPU per frame", "raw_send_cpu_ms", " ms"),
        row("  raw receiver CPU per frame", "raw_receive_cpu_ms", " ms"),
        ("pi2pi unthrottled", "", f"camera --fps 0 -> viewer over loopback, {PAIR_S:.0f} s"),
        row("  fps painted", "fps"),
        row("  throughput ratio", "throughput_ratio", "", "bar >= 0.9"),
        row("  camera CPU per frame", "camera_cpu_ms", " ms"),
        row("  camera / raw sender", "cpu_ratio_camera", "", "bar <= 1.05"),
        row("  viewer CPU per frame", "viewer_cpu_ms", " ms"),
        row("  viewer / raw receiver", "cpu_ratio_viewer", "", "bar <= 1.1"),
        ("frames per CPU second", "", "camera + viewer while streaming; GStreamer start-up taken out"),
    ]
    for label, (camera_dct, viewer_dct) in DCT_PAIRS.items():
        suffix = "" if (camera_dct, viewer_dct) == DEFAULT_DCT else f"_{label}"
        name = f"{camera_dct} DCT encoding, {viewer_dct} decoding" + (" (pi2pi's default)" if not suffix else "")
        rows += [(f"  {name}", "", f"luma PSNR {psnr[f'{camera_dct}/{viewer_dct}']} dB"),
                 row("    pi2pi", f"fps_per_cpu{suffix}"), row("    GStreamer", f"gst_fps_per_cpu{suffix}"),
                 row("    ratio", f"gst_fps_per_cpu_ratio{suffix}", "", "bar >= 1.1")]
    rows += [
        ("single steps, one core", "", "CPU per frame, median of 5 passes over the clip"),
        row("  encode, accurate DCT", "encode_accurate_cpu_ms", " ms"),
        row("  encode, fast DCT", "encode_fast_cpu_ms", " ms"),
        row("  decode, accurate DCT", "decode_accurate_cpu_ms", " ms"),
        row("  decode, fast DCT", "decode_fast_cpu_ms", " ms"),
        row("  RGB565 conversion", "rgb565_cpu_ms", " ms"),
        row("  RGB565 / decode", "rgb565_over_decode", "", "bar <= 0.25"),
        ("latency at 30 fps, loopback", "", f"raw encode + decode {stat['raw_codec_cpu_ms'][0]:.3f} ms "
                                             "(bars: p50 +1 ms, p99 +5 ms)"),
        row("  p50", "latency_p50_ms", " ms"), row("  p99", "latency_p99_ms", " ms"),
        ("rate-limited link (once)", f"{link}, stream {bitrate_kbit:.0f} kbit/s", ""),
        ("  latency", f"p50 {lim_view['latency_ms']['p50']} / p99 {lim_view['latency_ms']['p99']} ms",
         f"bound {limited_bound_ms:.1f} ms = 3 frame intervals + one max frame's transmission"),
        ("  frames", f"painted {lim_view['frames']}, camera dropped {lim_cam['dropped']} of {lim_cam['captured']}",
         f"{lim_view['fps']:.1f} fps painted"),
    ]
    width = max(len(r[0]) for r in rows)
    print("pi2pi video benchmark")
    for label, value, note in rows:
        print(f"  {label:<{width}}  {value}" + (f"   [{note}]" if note else ""))
    print(json.dumps(figures_out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
