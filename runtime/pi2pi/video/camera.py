"""Capture video (V4L2 or a test pattern), JPEG it and send it to the viewer.

Two threads: the capture thread takes the newest frame from the source and
leaves it in a one-frame slot; the sender thread takes whatever is newest
there, encodes it (or passes a device's JPEG through) and writes it to the
peer. A frame replaced in the slot before it was taken is dropped and counted:
nothing queues, and only frames that will be sent are encoded. A source that
makes frames on demand (test pattern or clip at --fps 0) has no capture
thread: the sender takes each frame from it when it is ready (OnDemand).
Before each frame the sender waits until what the peer has not acknowledged, less what is
merely on the wire (the link's rate times the path's shortest round trip),
fits between half a frame and --inflight frames, so a slow link drops frames
here instead of filling the kernel's buffers with old ones, and a long path
still carries the whole frame rate.

A peer that acknowledges nothing for --stall-s, or does not take a whole frame
within --stall-s, is dropped (and redialled or waited for again). A listening
camera whose peer dials again (proving the call's token) drops the connection
it serves at once and sends to the new one (net.PeerLink). A stop request
ends even a half-sent frame within 0.2 s (wire.send_frame, lifecycle.py).

The sender also follows the link (--no-adapt, or adapt = no, turns it off:
docs/video.md, "Adaptive quality"): before each frame it asks video.adapt.Adapter which quality, size and share of the frame rate to
send at, from what it measured (the drain rate, the bytes it sent, how long the
link held it back), so a slow link gets smaller frames instead of fewer. The
policy is written out in adapt.py.
"""
from __future__ import annotations

import argparse
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from pi2pi import config, net, stats, wire
from pi2pi.lifecycle import WORKER_JOIN_S, ProgramRun

log = logging.getLogger(__name__)

STREAM = "video"
SUPERSEDED_POLL_S = 0.2   # while waiting on the peer's acknowledgements, ask this often whether it dialed again
DRAIN_POLL_S = 0.002      # adapting: while a sent frame drains and no new one waits, look at the link this often
# Waiting for the budget: look again when the link should have drained the excess at the
# rate measured, within these bounds (looking every 1 ms doubled the camera's CPU at
# 640x480, 15 fps on the hardware lab VM's Pi-class core). Adapting, the gauge wants every look: 1 ms.
BUDGET_POLL_S = (0.001, 0.010)


FORMAT_NAMES = ("MJPG", "JPEG", "YUYV", "YU12", "NV12")  # as video.source.FORMAT_PREFERENCE (kept light here)


@dataclass
class Settings(config.Common):
    source: str = "testpattern"   # testpattern, /dev/videoN, or a raw I420 clip file (.yuv)
    size: str = "640x480"
    fps: float = 30.0             # 0: as fast as the source allows (test pattern or clip only)
    quality: int = 75
    label: Optional[str] = None   # the name the test pattern draws (default: this host's name)
    max_frame: int = 4 << 20      # bytes; a bigger JPEG is not sent
    stall_s: float = 5.0          # a peer that leaves a frame unacknowledged this long is given up on
    buffers: int = 4              # V4L2 capture buffers
    format: Optional[str] = None  # V4L2 pixel format (MJPG, YUYV, YU12, NV12); default: MJPEG if offered
    once: bool = False            # end when the first peer goes away (instead of waiting for the next)
    inflight: float = 1.5         # most frames the peer may leave unacknowledged (a fast link); a slow one gets less
    adapt: bool = True            # follow the link: lower quality, then size, then frame rate (video/adapt.py)
    dct: str = "fast"             # libjpeg's forward DCT: fast or accurate (docs/video.md, "Which DCT")

    def validate(self) -> None:
        super().validate()
        config.check_dct(self.dct)
        if not 1 <= self.quality <= 100:
            raise config.ConfigError(f"quality {self.quality}: want 1..100")
        if self.fps < 0 or self.fps > 240:
            raise config.ConfigError(f"fps {self.fps}: want 0..240 (0: as fast as possible)")
        if self.fps == 0 and self.source.startswith("/dev/"):
            raise config.ConfigError("fps 0 (unpaced) is only for the test pattern or a clip; a camera needs a rate")
        if not 0 <= self.inflight <= 100:
            raise config.ConfigError(f"inflight {self.inflight}: want 0..100 frames")
        if self.format is not None and self.format not in FORMAT_NAMES:
            raise config.ConfigError(f"format {self.format!r}: want one of {', '.join(FORMAT_NAMES)}")
        if not 1024 <= self.max_frame <= 64 << 20:
            raise config.ConfigError(f"max_frame {self.max_frame}: want 1024..{64 << 20}")
        if self.stall_s <= 0:
            raise config.ConfigError(f"stall_s {self.stall_s}: want a positive number of seconds")
        if not isinstance(self.adapt, bool):
            raise config.ConfigError(f"adapt {self.adapt!r}: want yes or no")
        parse_size(self.size)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS
    parser.add_argument("--source", default=S, help="testpattern, /dev/videoN, or a raw I420 clip (.yuv)")
    parser.add_argument("--size", default=S, metavar="WxH", help="frame size")
    parser.add_argument("--fps", type=float, default=S, help="frames per second (0: as fast as a test source can)")
    parser.add_argument("--quality", type=int, default=S, metavar="Q", help="JPEG quality 1..100")
    parser.add_argument("--label", default=S, metavar="NAME", help="name the test pattern draws (none: the host name)")
    parser.add_argument("--max-frame", dest="max_frame", type=int, default=S, metavar="BYTES",
                        help="a bigger JPEG is not sent")
    parser.add_argument("--stall-s", dest="stall_s", type=float, default=S, metavar="S",
                        help="give up on a peer that acknowledges nothing for this long")
    parser.add_argument("--format", default=S, metavar="FOURCC",
                        help="V4L2 pixel format: MJPG, JPEG, YUYV, YU12 or NV12 (none: the camera's MJPEG if it has it)")
    parser.add_argument("--buffers", type=int, default=S, help="V4L2 capture buffers")
    parser.add_argument("--dct", default=S, choices=config.DCTS, help="libjpeg's forward DCT (encoding from YUV)")
    parser.add_argument("--once", action="store_true", default=S, help="end when the peer goes away")
    parser.add_argument("--inflight", type=float, default=S, metavar="FRAMES",
                        help="most frames the peer may leave unacknowledged on a fast link "
                             "(raise it for round trips longer than a frame interval)")
    adapt = parser.add_argument("--adapt", action=argparse.BooleanOptionalAction, default=S,
                                help="on a slow link lower the JPEG quality, then the size, then the frame rate, "
                                     "and climb back when it recovers")
    # cli.with_defaults leaves on/off switches alone: the default is read from the dataclass here.
    adapt.help += " (default: %s)" % ("on" if config.field_defaults(Settings)["adapt"] else "off")


class Counters:
    """What the camera reports. Two threads write it, never the same field:
    the capture thread `captured` and `dropped`, the sender the rest."""

    def __init__(self) -> None:
        self.captured = 0
        self.encoded = 0
        self.frames = 0            # sent
        self.dropped = 0           # captured while a peer was connected, never sent
        self.corrupt = 0           # frames from the device that were not whole JPEGs
        self.skipped = 0           # taken but not sent: the adapted frame rate is lower than --fps
        self.bytes = 0
        self.encode_ms = stats.Samples()
        self.latency_ms = stats.Samples()  # capture -> written to the socket
        self.first_sent: Optional[float] = None
        self.last_sent: Optional[float] = None
        self.cpu_start: Optional[float] = None


def parse_size(text: str) -> Tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise config.ConfigError(f"size {text!r}: want WIDTHxHEIGHT, e.g. 640x480") from None
    if not (16 <= w <= 4096 and 16 <= h <= 4096):
        raise config.ConfigError(f"size {text!r}: each side 16..4096")
    return w, h


def capture_loop(source: Any, slot: Any, sender: "Sender", counters: Counters, run: ProgramRun) -> None:
    """Newest frame into the slot, as the source paces them."""
    while not run.stop.is_set():
        frame = source.read(run.stop)
        if frame is None:
            continue
        counters.captured += 1
        if slot.put(frame) and sender.connected:
            counters.dropped += 1


class OnDemand:
    """The sender's slot for a source that makes a frame whenever asked (a test pattern or a
    clip at --fps 0): the sender takes each frame straight from the source when it is ready
    to send one, with no capture thread handing frames over (two thread switches a frame).
    Nothing is dropped: a frame is made only when it will be sent."""

    def __init__(self, source: Any, stop: Any, counters: Counters) -> None:
        self.source, self.stop, self.counters = source, stop, counters

    def take(self, timeout_s: float) -> Any:
        frame = self.source.read(self.stop)
        if frame is not None:
            self.counters.captured += 1
        return frame

    def clear(self) -> bool:
        return False


class DrainRate:
    """How fast the link drains: bytes per second the peer acknowledges while data waits.

    Measured only across polls that found bytes unacknowledged (an idle link says
    nothing about its speed), smoothed so one slow moment does not rule.
    """

    def __init__(self) -> None:
        self.bps: Optional[float] = None
        self._since: Optional[float] = None
        self._acked = 0

    def update(self, now: float, acked: int, busy: bool) -> None:
        if not busy:
            self._since = None
            return
        if self._since is None:
            self._since, self._acked = now, acked
            return
        elapsed = now - self._since
        if elapsed >= 0.005:
            rate = (acked - self._acked) / elapsed
            self.bps = rate if self.bps is None else 0.7 * self.bps + 0.3 * rate
            self._since, self._acked = now, acked


class Sender:
    """The peer side: connect or accept, then send the newest frame, again and again."""

    def __init__(self, link: Any, slot: Any, counters: Counters, run: ProgramRun, settings: Settings,
                 passthrough: bool = False) -> None:
        from pi2pi.video import adapt

        self.link = link
        self.slot = slot
        self.counters = counters
        self.run = run
        self.max_frame = settings.max_frame
        self.stall_s = settings.stall_s
        self.once = settings.once
        self.inflight = settings.inflight
        # What may wait in the link: what it drains in one frame interval, between
        # half a frame and `inflight` frames. A fast link then carries the next
        # frame while the last is still acknowledged (the pipeline overlaps); a
        # link slower than the stream queues at most about one interval, so a new
        # frame is never far behind (latency stays bounded, frames drop instead).
        # Bytes on the wire are not waiting: on a long path the budget adds what
        # the link holds in flight (Sender.on_the_wire).
        self.queue_s = 1.0 / settings.fps if settings.fps > 0 else 1.0 / 30
        self.quality = settings.quality
        self.last_size = 0          # bytes of the last frame sent: the in-flight budget's unit
        self.connected = False
        self.passthrough = passthrough
        width, height = parse_size(settings.size)
        self.adapter = adapt.Adapter(adapt.ladder(settings.quality, width, height, passthrough), settings.fps,
                                     enabled=settings.adapt)
        if settings.adapt and not self.adapter.enabled:
            log.info("adapting to the link is off: --fps 0 has no frame rate to hold")
        self.gate = adapt.FrameGate(settings.fps)
        self.fps = settings.fps
        self.sent_size: Optional[Tuple[int, int]] = None   # of the last frame sent
        self.scalers: Dict[Tuple[int, int, int, int, int], Any] = {}
        self._measured = adapt.Measurements(0.0, None)    # since the adapter's last step
        from pi2pi.video.jpeg import Codec  # heavy: loaded when the camera runs

        self.codec = Codec.open(settings.dct)

    def loop(self) -> None:
        while not self.run.stop.is_set():
            sock = self.link.next_peer(self.run.stop)
            if sock is None:
                break
            self.slot.clear()  # whatever waited there is older than this peer
            self.connected = True
            try:
                reason = self.serve(sock)
            finally:
                self.connected = False
                sock.close()
                self.link.lost()
            if reason:
                log.warning("peer gone: %s", reason)
                if self.once:
                    self.run.end("peer gone")
                    break

    def serve(self, sock: socket.socket) -> Optional[str]:
        """Send frames until the peer goes or we stop; the reason the peer went, if it did."""

        from pi2pi.video.adapt import LinkRate

        counters = self.counters
        drain = DrainRate()
        gauge = LinkRate(tcp_segment(sock)) if self.adapter.enabled else None   # the adapter's view of the link
        sent = 0
        asked = time.monotonic()   # when the link was last asked whether the peer dialed again
        while not self.run.stop.is_set():
            # First wait until what the peer has not acknowledged fits the link's
            # budget, then take the newest frame: frames captured meanwhile replace
            # each other in the slot (dropped, counted) instead of queueing.
            waited_since = time.monotonic()
            dropped_before = counters.dropped
            info = net.read_tcp_info(sock)
            path_rtt_s = info.min_rtt_s if info is not None else None
            while True:
                unacked = net.unacked_bytes(sock)
                now = time.monotonic()
                drain.update(now, sent - unacked, busy=unacked > 0)
                if gauge is not None:
                    gauge.look(now, sent - unacked, unacked, net.read_tcp_info(sock))
                allowed = self.allowance(drain.bps, path_rtt_s)
                if unacked <= allowed:
                    break
                if self.run.stop.wait(budget_poll_s(unacked - allowed, drain.bps, gauge is not None)):
                    return None
                if now - waited_since > self.stall_s:
                    return f"the peer acknowledged nothing for {self.stall_s:.1f} s"
                if now - asked >= SUPERSEDED_POLL_S:   # a dead link acknowledges nothing: ask here too
                    asked = now
                    if self.link.superseded():
                        return None
            self._measured.waited_s += now - waited_since
            self._measured.busy_drops += counters.dropped - dropped_before
            item = self.next_frame(sock, gauge, sent)
            asked = time.monotonic()
            if self.link.superseded():   # the peer dialed again: this connection is dead
                return None
            if item is None:
                if net.peer_hung_up(sock):
                    return "the peer closed the connection"
                continue
            rung = self.adapt(gauge, item)
            if not self.gate.admit(item.stamp_us / 1e6, rung.rate):
                counters.skipped += 1
                continue
            payload = self.encode(item, rung)
            if payload is None:
                continue
            try:
                if gauge is not None:
                    gauge.sending(time.monotonic(), sent, sent + wire.VIDEO_HEADER.size + len(payload))
                wire.send_frame(sock, wire.pack_video_frame(item.seq, payload, item.stamp_us), self.stall_s,
                                self.run.stop)
                sent += wire.VIDEO_HEADER.size + len(payload)
            except wire.Stopped:
                return None
            except wire.Stalled:
                return f"sending stalled for {self.stall_s:.1f} s"
            except OSError as err:
                return f"send failed: {err.strerror or err}"
            now = time.monotonic()
            self._measured.frames += 1
            self._measured.bytes += len(payload)
            counters.frames += 1
            counters.bytes += wire.VIDEO_HEADER.size + len(payload)
            counters.latency_ms.add((wire.now_us() - item.stamp_us) / 1000)
            if counters.first_sent is None:
                counters.first_sent = now
            counters.last_sent = now
        return None

    def next_frame(self, sock: socket.socket, gauge: Any, sent: int) -> Any:
        """The newest frame, waiting up to 0.2 s for one. Adapting, while the last frame sent is
        still unacknowledged the link is looked at every DRAIN_POLL_S meanwhile, so the gauge
        sees when all of it was acknowledged (how fast the link is, also when it is fast)."""
        if gauge is None:
            return self.slot.take(0.2)
        deadline = time.monotonic() + 0.2
        while True:
            unacked = net.unacked_bytes(sock)
            now = time.monotonic()
            gauge.look(now, sent - unacked, unacked, net.read_tcp_info(sock))
            left = deadline - now
            if unacked == 0 or left <= DRAIN_POLL_S:
                return self.slot.take(max(0.0, left))
            item = self.slot.take(DRAIN_POLL_S)
            if item is not None:
                return item

    def adapt(self, gauge: Any, frame: Any) -> Any:
        """The rung to send this frame at: one step of the adapter with what was measured since the last."""
        from pi2pi.video.adapt import Measurements

        if gauge is None:
            return self.adapter.rung
        measured = self._measured
        measured.now = time.monotonic()
        measured.drain_bps = gauge.bps(measured.now)
        self._measured = Measurements(0.0, None)
        decision = self.adapter.step(measured)
        if decision.changed:
            s = self.adapter.state
            log.info("adapting %s (%d): %s: %s", "up" if decision.up else "down", s.adaptations,
                     decision.rung.describe(frame.width, frame.height, self.fps, self.passthrough), decision.reason)
        return decision.rung

    def allowance(self, drain_bps: Optional[float], path_rtt_s: Optional[float] = None) -> float:
        """Unacknowledged bytes allowed before the next frame goes out: what may wait in the
        link (one frame interval of its drain, between half a frame and `inflight` frames)
        plus what is on the wire."""
        most = self.inflight * self.last_size
        if drain_bps is None:
            return most
        waiting = max(min(0.5, self.inflight) * self.last_size, min(most, drain_bps * self.queue_s))
        return waiting + self.on_the_wire(drain_bps, path_rtt_s)

    def on_the_wire(self, drain_bps: float, path_rtt_s: Optional[float]) -> float:
        """Bytes in flight that are not queued anywhere: the rate the link carries (at most
        the stream's own) times the path's shortest round trip (tcp_info's min_rtt). On a LAN
        that is nothing; at 160 ms it is two frames of a 15 fps stream, which a budget of
        1.5 frames would otherwise hold back to about 9 fps on a link with room to spare.
        A link slower than the stream drains slower, so this shrinks with it."""
        if not path_rtt_s or not self.last_size:
            return 0.0
        return min(drain_bps, self.last_size / self.queue_s) * path_rtt_s

    def encode(self, frame: Any, rung: Any = None) -> Optional[bytes]:
        """The frame's JPEG: the device's own, or TurboJPEG from YUV at the rung's quality and
        size (timed, counted)."""
        counters = self.counters
        if frame.jpeg is not None:
            payload = frame.jpeg
            self.sent_size = (frame.width, frame.height)
        else:
            started = time.perf_counter()
            quality = self.quality if rung is None else rung.quality
            yuv, width, height = frame.yuv, frame.width, frame.height
            if rung is not None and rung.scale < 1:
                yuv, width, height = self.scaled(frame, rung.scale)
            payload = self.codec.encode_yuv(yuv, width, height, quality, frame.subsample)
            counters.encode_ms.add((time.perf_counter() - started) * 1000)
            self.sent_size = (width, height)
        counters.encoded += 1
        if counters.cpu_start is None:
            counters.cpu_start = time.process_time()
        if len(payload) > self.max_frame:
            log.warning("frame %d is %d bytes, beyond max_frame %d: not sent", frame.seq, len(payload), self.max_frame)
            return None
        self.last_size = len(payload)
        return payload

    def scaled(self, frame: Any, scale: float) -> Tuple[Any, int, int]:
        """The frame's YUV at a smaller size (a scaler per source size, kept)."""
        from pi2pi.video.adapt import Downscaler, scaled_size
        from pi2pi.video.jpeg import SAMP_420

        width, height = scaled_size(frame.width, frame.height, scale)
        key = (frame.width, frame.height, frame.subsample, width, height)
        scaler = self.scalers.get(key)
        if scaler is None:
            scaler = self.scalers[key] = Downscaler(frame.width, frame.height, frame.subsample == SAMP_420,
                                                    width, height)
        return scaler.scale(frame.yuv), width, height

    def adapt_report(self) -> Dict[str, Any]:
        """The rung sent at now and how often it changed (stats and the live snapshot)."""
        rung, s = self.adapter.rung, self.adapter.state
        return {"adapt": self.adapter.enabled,
                "adapt_quality": None if self.passthrough else rung.quality,
                "adapt_size": f"{self.sent_size[0]}x{self.sent_size[1]}" if self.sent_size else None,
                "adapt_fps": round(self.fps * rung.rate, 2),
                "adaptations": s.adaptations, "adapt_downs": s.downs, "adapt_ups": s.ups}


def budget_poll_s(excess: float, drain_bps: Optional[float], adapting: bool) -> float:
    """How long to wait before looking at the link again: until it should have drained the
    bytes over the budget at its measured rate, within BUDGET_POLL_S."""
    low, high = BUDGET_POLL_S
    if adapting or not drain_bps:
        return low
    return min(high, max(low, excess / drain_bps))


def tcp_segment(sock: socket.socket) -> int:
    """The connection's TCP segment size (MSS): 1448 on Ethernet with timestamps, where it cannot be read."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG) or 1448
    except OSError:
        return 1448


def snapshot(counters: Counters, link: Any, source_description: Dict[str, Any], started: float,
             sender: Optional[Sender] = None) -> Dict[str, Any]:
    cpu_s = time.process_time() - counters.cpu_start if counters.cpu_start is not None else 0.0
    return {
        "frames": counters.frames,
        "captured": counters.captured,
        "encoded": counters.encoded,
        "dropped": counters.dropped,
        "skipped": counters.skipped,
        "corrupt": counters.corrupt,
        "unproven": link.unproven if link is not None else 0,   # dialers without this call's token
        "bytes": counters.bytes,
        **stats.stream_rates(counters.frames, counters.bytes, counters.first_sent, counters.last_sent, started),
        "reconnects": link.reconnects if link is not None else 0,
        "refused": link.refused if link is not None else 0,
        "latency_ms": counters.latency_ms.summary(),
        "encode_ms": counters.encode_ms.summary(),
        "cpu_s": round(cpu_s, 3),
        "cpu_ms_per_frame": round(cpu_s * 1000 / (counters.encoded - 1), 3) if counters.encoded > 1 else None,
        **source_description,
        **(sender.adapt_report() if sender is not None else {}),
    }


def live(counters: Counters, link: Any, sender: Optional[Sender] = None) -> Dict[str, Any]:
    return {"state": link.state() if link is not None else "starting",
            "peer": link.peer if link is not None else None,
            "flowing": counters.frames > 0,
            "frames": counters.frames, "captured": counters.captured, "dropped": counters.dropped,
            "bytes": counters.bytes, "reconnects": link.reconnects if link is not None else 0,
            **(sender.adapt_report() if sender is not None else {})}


def run(settings: Settings) -> int:
    from pi2pi.video import source as sources
    from pi2pi.video.jpeg import JpegError
    from pi2pi.video.link import LatestSlot

    settings.validate()
    width, height = parse_size(settings.size)
    token = net.load_token(settings.token_file)
    counters = Counters()
    state: Dict[str, Any] = {"link": None, "sender": None,
                             "source": {"source": settings.source, "size": settings.size}}
    started = time.monotonic()
    with ProgramRun("camera", settings.stats_dir(), settings.duration,
                    lambda: snapshot(counters, state["link"], state["source"], started, state["sender"]),
                    live=(lambda: live(counters, state["link"], state["sender"])) if settings.live else None) as run_:
        try:
            source = sources.open_source(settings.source, width, height, settings.fps, settings.quality,
                                         settings.label or socket.gethostname(), settings.max_frame, settings.buffers,
                                         settings.format)
        except sources.SourceError as err:
            run_.end(f"error: {err}")
            log.error("%s", err)
            return 1
        state["source"]["source_format"] = getattr(source, "format", "I420")
        try:
            link = net.PeerLink(settings.connect, settings.listen, token, STREAM)
        except BaseException:
            source.close()
            raise
        state["link"] = link
        if link.address:
            log.info("listening on %s:%d", *link.address)
        paced = settings.fps > 0 or settings.source.startswith("/dev/")
        slot: Any = LatestSlot() if paced else OnDemand(source, run_.stop, counters)
        try:
            sender = Sender(link, slot, counters, run_, settings, passthrough=getattr(source, "passthrough", False))
        except JpegError as err:
            log.error("%s", err)
            run_.end(f"error: {err}")
            source.close()
            link.close()
            return 1
        state["sender"] = sender
        thread = run_.worker(sender.loop, "sender")
        try:
            if paced:
                capture_loop(source, slot, sender, counters, run_)
            else:
                run_.stop.wait()
        except sources.SourceError as err:
            log.error("%s", err)
            run_.end(f"error: {err}")
        finally:
            run_.stop.set()
            thread.join(timeout=WORKER_JOIN_S)
            counters.dropped += getattr(source, "dropped", 0)
            counters.corrupt += getattr(source, "corrupt", 0)
            source.close()
            link.close()
        return 0 if run_.ended_normally() else 1
