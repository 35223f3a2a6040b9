"""Framing on the TCP streams.

Video: every frame travels behind a 20-byte header, big-endian:

    magic  4s  b"P2V1"  (the "1" is the version)
    seq    u32 frame sequence number, from 0, wraps
    length u32 JPEG bytes that follow
    stamp  u64 capture time, microseconds since the Unix epoch (CLOCK_REALTIME)

Audio: the seed's framing exactly: one byte holding the Opus packet's length
(1..255), then the packet. A zero length carries no packet.

Readers never allocate what a length field claims before checking it against a
limit the reader sets, and give up on a peer that stalls mid-frame.
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
    """The peer started a frame and then sent nothing for too long."""


def recv_exact(sock: socket.socket, size: int, stall_s: float, first_wait_s: Optional[float] = None) -> bytes:
    """Read exactly `size` bytes.

    Waiting for the first byte may take `first_wait_s` (None: forever); once
    a frame has started, every later byte must come within `stall_s`.
    """
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    started_at = time.monotonic()
    timeout: Optional[float] = -1.0  # what the socket is set to; set only on change (a syscall each)
    while got < size:
        if got == 0 and first_wait_s is not None:
            want: Optional[float] = max(0.001, first_wait_s - (time.monotonic() - started_at))
        else:
            want = None if got == 0 else stall_s
        if want != timeout:
            sock.settimeout(want)
            timeout = want
        try:
            n = sock.recv_into(view[got:], size - got)
        except socket.timeout:
            if got == 0:
                raise
            raise Stalled(f"peer stalled after {got} of {size} bytes") from None
        if n == 0:
            raise PeerClosed(partial=got > 0)
        got += n
    return bytes(buf)


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
    sock: socket.socket, max_length: int, stall_s: float, first_wait_s: Optional[float] = None
) -> Tuple[VideoHeader, bytes]:
    header = parse_video_header(recv_exact(sock, VIDEO_HEADER.size, stall_s, first_wait_s), max_length)
    try:
        payload = recv_exact(sock, header.length, stall_s, first_wait_s=stall_s)
    except socket.timeout:
        raise Stalled(f"peer stalled after the header of frame {header.seq}") from None
    except PeerClosed:
        raise PeerClosed(partial=True) from None
    return header, payload


def pack_audio_frame(packet: bytes) -> bytes:
    if not 0 < len(packet) <= AUDIO_MAX_PACKET:
        raise ValueError(f"audio packet of {len(packet)} bytes does not fit the one-byte length")
    return bytes((len(packet),)) + packet


def read_audio_frame(sock: socket.socket, stall_s: float, first_wait_s: Optional[float] = None) -> bytes:
    """The next packet; b"" for a zero length byte (the caller counts it)."""
    length = recv_exact(sock, 1, stall_s, first_wait_s)[0]
    if length == 0:
        return b""
    try:
        return recv_exact(sock, length, stall_s, first_wait_s=stall_s)
    except socket.timeout:
        raise Stalled("peer stalled after a length byte") from None
    except PeerClosed:
        raise PeerClosed(partial=True) from None
