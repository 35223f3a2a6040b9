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
"""
from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass
from typing import Optional, Tuple

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
    """The peer started a frame and then paused too long, or did not finish it in time."""


def recv_exact(sock: socket.socket, size: int, stall_s: float, first_wait_s: Optional[float] = None,
               deadline_s: Optional[float] = None) -> bytes:
    """Read exactly `size` bytes: a frame of its own (see `_receive`; the deadline
    `deadline_s` defaults to `stall_s`)."""
    return _receive(sock, size, stall_s, first_wait_s, stall_s if deadline_s is None else deadline_s)[0]


def _receive(sock: socket.socket, size: int, stall_s: float, first_wait_s: Optional[float], deadline_s: float,
             complete_by: Optional[float] = None) -> Tuple[bytes, float]:
    """Exactly `size` bytes of a frame, and the time (time.monotonic()) by which
    the whole frame must have arrived.

    Without `complete_by` these bytes begin the frame: waiting for the first may
    take `first_wait_s` (None: forever; socket.timeout when it runs out), and the
    frame must be whole `deadline_s` after it. With `complete_by` the frame began
    in an earlier read. Inside a frame every byte must come within `stall_s` of the
    one before and all of them by `complete_by`, else Stalled.
    """
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    started_at = last_at = time.monotonic()
    timeout: Optional[float] = -1.0  # what the socket is set to; set only on change (a syscall each)
    while got < size:
        now = time.monotonic()
        if complete_by is None:
            want: Optional[float] = None if first_wait_s is None else max(0.001, first_wait_s - (now - started_at))
        else:
            left = complete_by - now
            if left <= 0:
                raise _too_slow(deadline_s, got, size)
            want = min(stall_s, left)
        if want != timeout:
            sock.settimeout(want)
            timeout = want
        try:
            n = sock.recv_into(view[got:], size - got)
        except socket.timeout:
            if complete_by is None:
                raise
            if time.monotonic() - last_at >= stall_s - 0.001:   # a pause says more than the deadline
                raise Stalled(f"peer stalled after {got} of {size} bytes") from None
            raise _too_slow(deadline_s, got, size) from None
        if n == 0:
            raise PeerClosed(partial=complete_by is not None)
        last_at = time.monotonic()
        if complete_by is None:
            complete_by = last_at + deadline_s
        got += n
    return bytes(buf), complete_by if complete_by is not None else started_at + deadline_s


def _too_slow(deadline_s: float, got: int, size: int) -> Stalled:
    return Stalled(f"peer did not finish the frame within {deadline_s:.1f} s of its first byte ({got} of {size} bytes)")


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
    deadline_s: Optional[float] = None,
) -> Tuple[VideoHeader, bytes]:
    """The next frame; header and JPEG must be whole within `deadline_s` (default
    `stall_s`) of the header's first byte."""
    deadline_s = stall_s if deadline_s is None else deadline_s
    raw, complete_by = _receive(sock, VIDEO_HEADER.size, stall_s, first_wait_s, deadline_s)
    header = parse_video_header(raw, max_length)
    try:
        payload, _ = _receive(sock, header.length, stall_s, None, deadline_s, complete_by)
    except Stalled as err:
        raise Stalled(f"frame {header.seq}: {err}") from None
    return header, payload


def pack_audio_frame(packet: bytes) -> bytes:
    if not 0 < len(packet) <= AUDIO_MAX_PACKET:
        raise ValueError(f"audio packet of {len(packet)} bytes does not fit the one-byte length")
    return bytes((len(packet),)) + packet


def read_audio_frame(sock: socket.socket, stall_s: float, first_wait_s: Optional[float] = None) -> bytes:
    """The next packet; b"" for a zero length byte (the caller counts it). Length
    byte and packet (at most 256 bytes) must be whole within `stall_s` of the first."""
    raw, complete_by = _receive(sock, 1, stall_s, first_wait_s, stall_s)
    if raw[0] == 0:
        return b""
    return _receive(sock, raw[0], stall_s, None, stall_s, complete_by)[0]
