"""Framing on the TCP streams.

Video: every frame travels behind a 20-byte header, big-endian:

    magic  4s  b"P2V1"  (the "1" is the version)
    seq    u32 frame sequence number, from 0, wraps
    length u32 JPEG bytes that follow
    stamp  u64 capture time, microseconds since the Unix epoch (CLOCK_REALTIME)

Audio: the seed's framing exactly: one byte holding the Opus packet's length
(1..255), then the packet. A zero length carries no packet.

Readers never allocate what a length field claims before checking it against a
limit the reader sets, and give up on a peer that stalls mid-frame. Once a
frame's first byte has arrived, every later byte must come within `stall_s` of
the one before, and the whole frame (header and JPEG; length byte and packet)
within a deadline of its first byte: otherwise `Stalled`, and the reader drops
that peer. The per-byte limit alone let a peer trickle one byte every
`stall_s` - epsilon and hold a frame (and the one-peer program) open forever.
The deadline is the reader's to choose: the viewer's --frame-deadline-s (a
frame may be megabytes on a slow link), `stall_s` for audio (at most 256 bytes).

Given the program's stop event, reading and sending (`send_frame`) wait on the
peer in slices of at most STOP_POLL_S and raise `Stopped` once it is set, so a
stop request wins whatever the peer does (lifecycle.py).
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Optional, Tuple

from pi2pi.lifecycle import STOP_POLL_S

VIDEO_MAGIC = b"P2V1"
VIDEO_HEADER = struct.Struct(">4sIIQ")
AUDIO_MAX_PACKET = 255


class ProtocolError(Exception):
    """The peer sent bytes that break the protocol: close that connection."""


class PeerClosed(Exception):
    """The peer closed the connection (cleanly, or mid-frame when partial is set)."""

    def __init__(self, partial: bool) -> None:
        super().__init__("peer closed the connection mid-frame" if partial else "peer closed the connection")
        self.partial = partial


class Stalled(Exception):
    """The peer started a frame and then paused too long, or did not finish it in time
    (or, sending, took too little of it in time)."""


class Stopped(Exception):
    """The program was asked to stop while waiting for the peer (nothing the peer did wrong)."""


def recv_exact(sock: socket.socket, size: int, stall_s: float, first_wait_s: Optional[float] = None,
               deadline_s: Optional[float] = None, stop: Optional[threading.Event] = None) -> bytes:
    """Read exactly `size` bytes: a frame of its own (see `_receive`; the deadline
    `deadline_s` defaults to `stall_s`)."""
    return _receive(sock, size, stall_s, first_wait_s, stall_s if deadline_s is None else deadline_s, None, stop)[0]


def _receive(sock: socket.socket, size: int, stall_s: float, first_wait_s: Optional[float], deadline_s: float,
             complete_by: Optional[float] = None, stop: Optional[threading.Event] = None) -> Tuple[bytes, float]:
    """Exactly `size` bytes of a frame, and the time (time.monotonic()) by which
    the whole frame must have arrived.

    Without `complete_by` these bytes begin the frame: waiting for the first may
    take `first_wait_s` (None: forever; socket.timeout when it runs out), and the
    frame must be whole `deadline_s` after it. With `complete_by` the frame began
    in an earlier read. Inside a frame every byte must come within `stall_s` of the
    one before and all of them by `complete_by`, else Stalled. Once `stop` is set:
    Stopped, within STOP_POLL_S.
    """
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    started_at = last_at = time.monotonic()
    while got < size:
        if complete_by is None:   # waiting for the frame to begin
            limit = None if first_wait_s is None else started_at + first_wait_s
        else:
            limit = min(last_at + stall_s, complete_by)
        want = None if limit is None else max(0.001, limit - time.monotonic())
        if stop is not None:
            want = STOP_POLL_S if want is None else min(want, STOP_POLL_S)
        if want != sock.gettimeout():   # set only on change (a syscall each)
            sock.settimeout(want)
        try:
            n: Optional[int] = sock.recv_into(view[got:], size - got)
        except socket.timeout:
            n = None   # nothing within `want`: which limit, if any, ran out is said below
        if n == 0:
            raise PeerClosed(partial=complete_by is not None)
        now = time.monotonic()
        if n:
            got += n
            last_at = now
            if complete_by is None:
                complete_by = now + deadline_s
            if got == size:
                break
        if stop is not None and stop.is_set():
            raise Stopped(f"stopped after {got} of {size} bytes")
        if complete_by is None:
            if limit is not None and now >= limit:
                raise socket.timeout("no frame began")
        elif n is None and now >= last_at + stall_s:   # a pause says more than the deadline when both ran out
            raise Stalled(f"peer stalled after {got} of {size} bytes")
        elif now >= complete_by:
            raise _too_slow(deadline_s, got, size)
    return bytes(buf), complete_by if complete_by is not None else started_at + deadline_s


def _too_slow(deadline_s: float, got: int, size: int) -> Stalled:
    return Stalled(f"peer did not finish the frame within {deadline_s:.1f} s of its first byte ({got} of {size} bytes)")


def send_frame(sock: socket.socket, frame: bytes, stall_s: float, stop: threading.Event) -> None:
    """Send all of `frame` within `stall_s` (else Stalled), in waits of at most
    STOP_POLL_S: Stopped once `stop` is set (a frame may be left half sent)."""
    view = memoryview(frame)
    sent = 0
    give_up_at = time.monotonic() + stall_s
    while sent < len(view):
        if stop.is_set():
            raise Stopped(f"stopped after sending {sent} of {len(view)} bytes")
        left = give_up_at - time.monotonic()
        if left <= 0:
            raise Stalled(f"the peer took {sent} of {len(view)} bytes in {stall_s:.1f} s")
        want = min(left, STOP_POLL_S)
        if want != sock.gettimeout():
            sock.settimeout(want)
        try:
            sent += sock.send(view[sent:])
        except socket.timeout:
            continue


def now_us() -> int:
    """A frame's stamp: microseconds since the Unix epoch (CLOCK_REALTIME)."""
    return time.time_ns() // 1000


@dataclass(frozen=True)
class VideoHeader:
    seq: int
    length: int
    stamp_us: int


def pack_video_frame(seq: int, jpeg: bytes, stamp_us: int) -> bytes:
    return VIDEO_HEADER.pack(VIDEO_MAGIC, seq & 0xFFFFFFFF, len(jpeg), stamp_us) + jpeg


def parse_video_header(raw: bytes, max_length: int) -> VideoHeader:
    magic, seq, length, stamp_us = VIDEO_HEADER.unpack(raw)
    if magic != VIDEO_MAGIC:
        raise ProtocolError(f"bad frame magic {magic!r} (want {VIDEO_MAGIC!r})")
    if length == 0 or length > max_length:
        raise ProtocolError(f"frame length {length} outside 1..{max_length}")
    return VideoHeader(seq, length, stamp_us)


def read_video_frame(
    sock: socket.socket, max_length: int, stall_s: float, first_wait_s: Optional[float] = None,
    deadline_s: Optional[float] = None, stop: Optional[threading.Event] = None,
) -> Tuple[VideoHeader, bytes]:
    """The next frame; header and JPEG must be whole within `deadline_s` (default
    `stall_s`) of the header's first byte."""
    deadline_s = stall_s if deadline_s is None else deadline_s
    raw, complete_by = _receive(sock, VIDEO_HEADER.size, stall_s, first_wait_s, deadline_s, None, stop)
    header = parse_video_header(raw, max_length)
    try:
        payload, _ = _receive(sock, header.length, stall_s, None, deadline_s, complete_by, stop)
    except Stalled as err:
        raise Stalled(f"frame {header.seq}: {err}") from None
    return header, payload


def pack_audio_frame(packet: bytes) -> bytes:
    if not 0 < len(packet) <= AUDIO_MAX_PACKET:
        raise ValueError(f"audio packet of {len(packet)} bytes does not fit the one-byte length")
    return bytes((len(packet),)) + packet


def read_audio_frame(sock: socket.socket, stall_s: float, first_wait_s: Optional[float] = None,
                     stop: Optional[threading.Event] = None) -> bytes:
    """The next packet; b"" for a zero length byte (the caller counts it). Length
    byte and packet (at most 256 bytes) must be whole within `stall_s` of the first."""
    raw, complete_by = _receive(sock, 1, stall_s, first_wait_s, stall_s, None, stop)
    if raw[0] == 0:
        return b""
    return _receive(sock, raw[0], stall_s, None, stall_s, complete_by, stop)[0]
