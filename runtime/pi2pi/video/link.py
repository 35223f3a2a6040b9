"""What camera and viewer share about frames in flight: the newest-frame slot.

`LatestSlot` holds one item: a new one replaces the old (which is then a
dropped frame), so a slow stage never builds a backlog (the camera's capture
and sender threads); `newer_frame_waiting` tells the viewer to skip a frame
because a newer one has already arrived. The connection itself is net.PeerLink.
"""
from __future__ import annotations

import fcntl
import socket
import struct
import threading
from typing import Generic, Optional, TypeVar

T = TypeVar("T")
FIONREAD = 0x541B  # bytes waiting in the receive queue (SIOCINQ)


class LatestSlot(Generic[T]):
    """A one-item mailbox: put() replaces, take() waits for an item."""

    def __init__(self) -> None:
        self._item: Optional[T] = None
        self._ready = threading.Condition()

    def put(self, item: T) -> bool:
        """Store the item; True when it replaced one nobody took (a dropped frame)."""
        with self._ready:
            replaced = self._item is not None
            self._item = item
            self._ready.notify()
        return replaced

    def take(self, timeout_s: float) -> Optional[T]:
        with self._ready:
            if self._item is None and timeout_s > 0:
                self._ready.wait(timeout_s)
            item, self._item = self._item, None
        return item

    def clear(self) -> bool:
        with self._ready:
            had, self._item = self._item is not None, None
        return had


def newer_frame_waiting(sock: socket.socket, max_length: int) -> bool:
    """True when a whole next video frame already sits in the socket's receive buffer."""
    from pi2pi import wire  # the framing: header size and its checks

    try:
        waiting = struct.unpack("i", fcntl.ioctl(sock.fileno(), FIONREAD, struct.pack("i", 0)))[0]
        if waiting < wire.VIDEO_HEADER.size:
            return False
        raw = sock.recv(wire.VIDEO_HEADER.size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        if len(raw) < wire.VIDEO_HEADER.size:
            return False
        header = wire.parse_video_header(raw, max_length)
    except (OSError, wire.ProtocolError):
        return False  # reading it will tell what is wrong
    return waiting >= wire.VIDEO_HEADER.size + header.length
