"""Receive JPEG frames and paint them into the Linux framebuffer.

One loop reads frames from the peer; when a complete newer frame is already
waiting in the socket, the one just read is skipped (dropped, counted), so
the newest frame always wins and nothing old is painted. The frame kept is
decoded with TurboJPEG, scaled down by TurboJPEG's own factors to fit the
screen from --at X,Y, and painted. Frames may change size mid-stream (the
camera adapts to the link: video/adapt.py); each JPEG's header says its size,
and when a picture is smaller than the one before, what the old one covered
outside the new one is painted black, so no stale edges stay on the screen. (One thread, not a receiver thread and a
painter: on a busy 2-core machine the hand-over between two Python threads
cost more CPU and tail latency than the draining does.) Bytes that break the
protocol close that connection with a log line; the viewer keeps serving and
takes the next peer. A listening viewer whose peer dials again (proving the
call's token) drops the connection it serves at once and paints from the new
one (net.PeerLink).

A peer is dropped (`corrupt` counted) when it pauses --stall-s (2 s) inside a
frame or when a frame is not whole --frame-deadline-s (10 s) after its first
byte, however steadily it trickles. The deadline is not --stall-s because a
legitimate frame may be large on a slow link: 10 s carries a 1 MB frame at
0.8 Mbit/s and the largest (--max-frame, 4 MiB) at 3.4 Mbit/s, while the
benchmark's rate-limited link (half a 640x480 stream's bitrate, ~3.3 Mbit/s)
carries its ~28 kB frames in under 0.1 s; the camera itself gives up on a frame
it cannot hand to its kernel within its own --stall-s (5 s). A stop request
ends even a half-read frame within 0.2 s (wire.Stopped, lifecycle.py).
"""
from __future__ import annotations

import argparse
import logging
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from pi2pi import config, net, stats, wire
from pi2pi.lifecycle import ProgramRun

log = logging.getLogger(__name__)

STREAM = "video"
TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12)


@dataclass
class Settings(config.Common):
    fb: str = "/dev/fb0"
    fb_geometry: Optional[str] = None   # WxHxBPP: --fb is a file, not a device
    at: str = "0,0"                     # where the picture's top-left corner goes
    snapshot: Optional[str] = None      # PNG of the screen, written at the end
    snapshot_every: float = 0.0         # seconds; also write the snapshot this often (0: only at the end)
    console: str = "/dev/tty0"          # put in graphics mode while showing ("" leaves it alone)
    max_frame: int = 4 << 20            # bytes; a longer frame closes the connection
    stall_s: float = 2.0                # a peer that pauses this long in the middle of a frame is dropped
    frame_deadline_s: float = 10.0      # a frame not whole this long after its first byte drops the peer
    peer_timeout_s: float = 10.0        # a connected peer that sends no frame for this long is dropped
    once: bool = False                  # end when the first peer goes away (instead of waiting for the next)
    dct: str = "accurate"               # libjpeg's inverse DCT: accurate or fast (docs/video.md, "Which DCT")

    def validate(self) -> None:
        super().validate()
        config.check_dct(self.dct)
        if not 1024 <= self.max_frame <= 64 << 20:
            raise config.ConfigError(f"max_frame {self.max_frame}: want 1024..{64 << 20}")
        if self.stall_s <= 0 or self.frame_deadline_s <= 0 or self.peer_timeout_s <= 0 or self.snapshot_every < 0:
            raise config.ConfigError("stall_s, frame_deadline_s and peer_timeout_s must be positive, "
                                     "snapshot_every >= 0")
        parse_at(self.at)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS
    parser.add_argument("--fb", default=S, metavar="PATH", help="framebuffer device or file")
    parser.add_argument("--fb-geometry", dest="fb_geometry", default=S, metavar="WxHxBPP",
                        help="geometry of a file-backed framebuffer (BPP 16, 24 or 32)")
    parser.add_argument("--at", default=S, metavar="X,Y", help="top-left corner of the picture")
    parser.add_argument("--snapshot", default=S, metavar="FILE.png", help="save the screen as PNG at the end")
    parser.add_argument("--snapshot-every", dest="snapshot_every", type=float, default=S, metavar="S",
                        help="also write the snapshot this often (0: only at the end)")
    parser.add_argument("--console", default=S, metavar="TTY", help="console to put in graphics mode")
    parser.add_argument("--max-frame", dest="max_frame", type=int, default=S, metavar="BYTES",
                        help="a longer frame closes the connection")
    parser.add_argument("--stall-s", dest="stall_s", type=float, default=S, metavar="S",
                        help="drop a peer that pauses this long inside a frame")
    parser.add_argument("--frame-deadline-s", dest="frame_deadline_s", type=float, default=S, metavar="S",
                        help="drop a peer whose frame is not whole this long after its first byte")
    parser.add_argument("--peer-timeout-s", dest="peer_timeout_s", type=float, default=S, metavar="S",
                        help="drop a peer that sends no frame for this long")
    parser.add_argument("--once", action="store_true", default=S, help="end when the peer goes away")
    parser.add_argument("--dct", default=S, choices=config.DCTS, help="libjpeg's inverse DCT")


def parse_at(text: str) -> Tuple[int, int]:
    try:
        x, y = (int(v) for v in text.split(","))
    except ValueError:
        raise config.ConfigError(f"--at {text!r}: want X,Y, e.g. 208,36") from None
    if x < 0 or y < 0:
        raise config.ConfigError(f"--at {text!r}: coordinates must not be negative")
    return x, y


@dataclass
class Received:
    header: wire.VideoHeader
    payload: bytes


class Counters:
    def __init__(self) -> None:
        self.received = 0
        self.frames = 0          # painted
        self.dropped = 0         # received, replaced by a newer one before painting
        self.corrupt = 0         # connections closed for bad bytes, frames that would not decode
        self.decode_warnings = 0
        self.bytes = 0
        self.seq_gaps = 0        # frames the camera numbered but never sent (its own drops)
        self.last_seq: Optional[int] = None      # the newest frame received
        self.shown_seq: Optional[int] = None     # the frame on the screen
        self.latency_ms = stats.Samples()
        self.last_latency_ms: Optional[float] = None   # the picture on the screen: capture to paint
        self.decode_ms = stats.Samples()
        self.paint_ms = stats.Samples()
        self.first_paint: Optional[float] = None
        self.last_paint: Optional[float] = None
        self.cpu_start: Optional[float] = None
        self.scale = "1/1"
        self.frame_size: Optional[str] = None   # WxH of the frame on the screen (its JPEG header)
        self.size_changes = 0


class Receiver:
    """Serves one peer after another: read, keep the newest, paint."""

    def __init__(self, link: Any, painter: "Painter", counters: Counters, run: ProgramRun, settings: Settings) -> None:
        self.link, self.painter, self.counters, self.run = link, painter, counters, run
        self.max_frame = settings.max_frame
        self.stall_s = settings.stall_s
        self.frame_deadline_s = settings.frame_deadline_s
        self.peer_timeout_s = settings.peer_timeout_s
        self.once = settings.once
        self.snapshot_path = settings.snapshot
        self.snapshot_every = settings.snapshot_every
        self.last_snapshot = time.monotonic()

    def loop(self) -> None:
        while not self.run.stop.is_set():
            sock = self.link.next_peer(self.run.stop)
            if sock is None:
                break
            try:
                replaced = self.serve(sock)
            finally:
                sock.close()
                self.link.lost()
            if self.once and not replaced and not self.run.stop.is_set():
                self.run.end("peer gone")

    def serve(self, sock: socket.socket) -> bool:
        """Paint the peer's frames until it goes or we stop; True when the peer
        dialed again (its new connection is served next)."""
        from pi2pi.video.jpeg import JpegError, check_jpeg
        from pi2pi.video.link import newer_frame_waiting

        counters = self.counters
        last_frame_at = last_asked = time.monotonic()
        while not self.run.stop.is_set():
            now = time.monotonic()
            if now - last_asked >= 0.2:
                last_asked = now
                if self.link.superseded():   # the peer dialed again: this connection is dead
                    return True
                self.periodic_snapshot()
            try:
                header, payload = wire.read_video_frame(sock, self.max_frame, self.stall_s, first_wait_s=0.2,
                                                        deadline_s=self.frame_deadline_s, stop=self.run.stop)
            except wire.Stopped:
                return False
            except socket.timeout:
                if time.monotonic() - last_frame_at > self.peer_timeout_s:
                    log.warning("closing the connection: no frame for %.1f s", self.peer_timeout_s)
                    return False
                continue
            except wire.PeerClosed as err:
                if err.partial:
                    counters.corrupt += 1
                    log.warning("closing the connection: %s", err)
                else:
                    log.info("the peer closed the connection")
                return False
            except (wire.ProtocolError, wire.Stalled) as err:
                counters.corrupt += 1
                log.warning("closing the connection: %s", err)
                return False
            except OSError as err:
                log.warning("closing the connection: %s", err)
                return False
            try:
                check_jpeg(payload, self.max_frame)
            except JpegError as err:
                counters.corrupt += 1
                log.warning("closing the connection: frame %d is not a JPEG: %s", header.seq, err)
                return False
            last_frame_at = time.monotonic()
            quick_ack(sock)
            counters.received += 1
            counters.bytes += wire.VIDEO_HEADER.size + len(payload)
            if counters.last_seq is not None and header.seq > counters.last_seq + 1:
                counters.seq_gaps += header.seq - counters.last_seq - 1
            counters.last_seq = header.seq
            if newer_frame_waiting(sock, self.max_frame):
                counters.dropped += 1   # a whole newer frame is already here: paint that one
                continue
            if not self.painter.paint(Received(header, payload)):
                return False  # not a decodable JPEG: counted and logged by the painter
        return False

    def periodic_snapshot(self) -> None:
        if self.snapshot_path and self.snapshot_every > 0 and \
                time.monotonic() - self.last_snapshot >= self.snapshot_every:
            write_snapshot(self.painter.fb, self.snapshot_path)
            self.last_snapshot = time.monotonic()


def quick_ack(sock: socket.socket) -> None:
    """Acknowledge now, not after the delayed-ACK timer (~40 ms): the camera paces itself on our ACKs."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)
    except OSError:
        pass


class Painter:
    """Decode the newest frame, scaled to fit, and paint it."""

    def __init__(self, fb: Any, at: Tuple[int, int], counters: Counters, dct: str = "accurate") -> None:
        from pi2pi.video.jpeg import Codec

        self.fb, self.at, self.counters = fb, at, counters
        self.codec = Codec.open(dct)
        self.room = (fb.geometry.width - at[0], fb.geometry.height - at[1])
        # Per frame size: its scale and a decode buffer. A stream changes size rarely;
        # a peer claiming a new size per frame must not grow these: the newest
        # SIZES_KEPT sizes are kept (least recently used goes).
        self.scales: "OrderedDict[Tuple[int, int], Tuple[int, int]]" = OrderedDict()
        self.buffers: "OrderedDict[Tuple[int, int], Any]" = OrderedDict()
        self.shown: Optional[Tuple[int, int]] = None   # rows, columns the last picture covers on the screen
        self.frame_size_px: Optional[Tuple[int, int]] = None

    def scale_for(self, width: int, height: int) -> Tuple[int, int]:
        from pi2pi.video.jpeg import fit_scale

        key = (width, height)
        if key not in self.scales:
            scale = fit_scale(width, height, self.room[0], self.room[1], self.codec.tj.scaling_factors)
            self.scales[key] = scale
            self.counters.scale = f"{scale[0]}/{scale[1]}"
            log.info("frames of %dx%d shown at scale %d/%d in %dx%d at %d,%d",
                     width, height, scale[0], scale[1], self.room[0], self.room[1], *self.at)
        keep_newest(self.scales, key)
        return self.scales[key]

    def paint(self, item: Received) -> bool:
        import numpy as np

        from pi2pi.video.jpeg import JpegError, scaled

        counters = self.counters
        started = time.perf_counter()
        try:
            width, height = self.codec.header(item.payload)
            scale = self.scale_for(width, height)
            shape = (scaled(height, scale), scaled(width, scale))
            # Straight onto the screen where it can take the decoder's rows as they are (the
            # copy is then saved: a fifth of a 640x480 decode); a decode that fails there
            # leaves a part-new picture until the next frame. Otherwise into a buffer, then paint.
            dst = direct = self.fb.decode_target(*self.at, *shape)
            if dst is None:
                dst = self.buffers.get(shape)
                if dst is None:
                    channels = 3 if self.fb.geometry.bpp == 24 else 4
                    dst = self.buffers[shape] = np.empty(shape + (channels,), dtype=np.uint8)
                keep_newest(self.buffers, shape)
            picture, warnings = self.codec.decode(item.payload, self.fb.pixel_format, scale, dst=dst)
        except JpegError as err:
            counters.corrupt += 1
            log.warning("closing the connection: frame %d: %s", item.header.seq, err)
            return False
        if warnings:
            counters.decode_warnings += 1
            log.debug("frame %d: %s", item.header.seq, "; ".join(warnings))
        decoded = time.perf_counter()
        self.uncover(picture.shape[0], picture.shape[1])
        if picture is not direct:
            self.fb.paint(picture, *self.at)
        painted = time.perf_counter()
        if (width, height) != self.frame_size_px:
            if self.frame_size_px is not None:
                counters.size_changes += 1
            self.frame_size_px = (width, height)
            counters.frame_size = f"{width}x{height}"
        counters.last_latency_ms = (wire.now_us() - item.header.stamp_us) / 1000
        counters.latency_ms.add(counters.last_latency_ms)
        counters.decode_ms.add((decoded - started) * 1000)
        counters.paint_ms.add((painted - decoded) * 1000)
        counters.frames += 1
        counters.shown_seq = item.header.seq
        if counters.first_paint is None:
            counters.first_paint = painted
            counters.cpu_start = time.process_time()
        counters.last_paint = painted
        return True


    def uncover(self, rows: int, columns: int) -> None:
        """Black out what the last picture covered and this one (rows x columns at --at) will not."""
        g, (x, y) = self.fb.geometry, self.at
        rows, columns = min(rows, g.height - y), min(columns, g.width - x)
        if self.shown is not None and self.shown != (rows, columns):
            old_rows, old_columns = self.shown
            screen = self.fb.screen
            if old_columns > columns:   # a strip on the right
                screen[y:y + old_rows, x + columns:x + old_columns] = 0
            if old_rows > rows:         # a strip below
                screen[y + rows:y + old_rows, x:x + min(columns, old_columns)] = 0
        self.shown = (rows, columns)


SIZES_KEPT = 4


def keep_newest(cache: "OrderedDict[Any, Any]", key: Any) -> None:
    """Mark key as just used; forget the least recently used beyond SIZES_KEPT."""
    cache.move_to_end(key)
    while len(cache) > SIZES_KEPT:
        cache.popitem(last=False)


def snapshot(counters: Counters, link: Any, started: float, extra: Dict[str, Any]) -> Dict[str, Any]:
    cpu_s = time.process_time() - counters.cpu_start if counters.cpu_start is not None else 0.0
    return {
        "frames": counters.frames,
        "received": counters.received,
        "dropped": counters.dropped,
        "corrupt": counters.corrupt,
        "unproven": link.unproven if link is not None else 0,   # dialers without this call's token
        "decode_warnings": counters.decode_warnings,
        "bytes": counters.bytes,
        **stats.stream_rates(counters.frames, counters.bytes, counters.first_paint, counters.last_paint, started),
        "reconnects": link.reconnects if link is not None else 0,
        "refused": link.refused if link is not None else 0,
        "seq_gaps": counters.seq_gaps,
        "last_seq": counters.last_seq,
        "shown_seq": counters.shown_seq,
        "latency_ms": counters.latency_ms.summary(),
        "decode_ms": counters.decode_ms.summary(),
        "paint_ms": counters.paint_ms.summary(),
        "scale": counters.scale,
        "frame_size": counters.frame_size,
        "size_changes": counters.size_changes,
        "cpu_s": round(cpu_s, 3),
        "cpu_ms_per_frame": round(cpu_s * 1000 / (counters.frames - 1), 3) if counters.frames > 1 else None,
        **extra,
    }


def write_snapshot(fb: Any, path: str) -> None:
    from pi2pi.video import png

    try:
        png.write(Path(path), fb.rgb())
    except OSError as err:
        log.error("cannot write the snapshot %s: %s", path, err.strerror)


def live(counters: Counters, link: Any) -> Dict[str, Any]:
    return {"state": link.state() if link is not None else "starting",
            "peer": link.peer if link is not None else None,
            "flowing": counters.frames > 0,
            "frames": counters.frames, "received": counters.received, "dropped": counters.dropped,
            "corrupt": counters.corrupt, "bytes": counters.bytes, "shown_seq": counters.shown_seq,
            "frame_size": counters.frame_size,
            "latency_ms": None if counters.last_latency_ms is None else round(counters.last_latency_ms, 1),
            "reconnects": link.reconnects if link is not None else 0}


def run(settings: Settings) -> int:
    from pi2pi.video.framebuffer import Console, Framebuffer, FramebufferError
    from pi2pi.video.jpeg import JpegError

    settings.validate()
    at = parse_at(settings.at)
    token = net.load_token(settings.token_file)
    try:
        fb = Framebuffer.open(settings.fb, settings.fb_geometry)
    except FramebufferError as err:
        raise config.ConfigError(str(err)) from None
    g = fb.geometry
    if at[0] >= g.width or at[1] >= g.height:
        fb.close()
        raise config.ConfigError(f"--at {settings.at} is outside the {g.width}x{g.height} screen")
    counters = Counters()
    state: Dict[str, Any] = {"link": None}
    extra = {"fb": settings.fb, "fb_geometry": f"{g.width}x{g.height}x{g.bpp}", "at": settings.at}
    started = time.monotonic()
    try:
        with ProgramRun("viewer", settings.stats_dir(), settings.duration,
                        lambda: snapshot(counters, state["link"], started, extra),
                        live=(lambda: live(counters, state["link"])) if settings.live else None) as run_, \
                Console(settings.console if fb.is_device else ""):
            link = net.PeerLink(settings.connect, settings.listen, token, STREAM)
            state["link"] = link
            if link.address:
                log.info("listening on %s:%d", *link.address)
            try:
                painter = Painter(fb, at, counters, settings.dct)
            except JpegError as err:
                log.error("%s", err)
                run_.end(f"error: {err}")
                link.close()
                return 1
            receiver = Receiver(link, painter, counters, run_, settings)
            try:
                receiver.loop()
            finally:
                run_.stop.set()
                link.close()
                if settings.snapshot:
                    write_snapshot(fb, settings.snapshot)
    finally:
        fb.close()
    return 0 if run_.ended_normally() else 1
