"""What camera and viewer share about their peer: the newest-frame slot and the connection.

`LatestSlot` holds one item: a new one replaces the old (which is then a
dropped frame), so a slow stage never builds a backlog (the camera's capture
and sender threads); `newer_frame_waiting` tells the viewer to skip a frame
because a newer one has already arrived. `PeerLink` hands out
one peer connection at a time, whichever way the program is set up (dial with
retries, or listen), counts reconnections, refuses a second dialer while a peer
is served, and counts dialers that fail the token handshake.
"""
from __future__ import annotations

import fcntl
import logging
import select
import socket
import struct
import threading
from typing import Generic, Optional, Tuple, TypeVar

from pi2pi import net

log = logging.getLogger(__name__)

T = TypeVar("T")
SIOCOUTQ = 0x5411  # bytes in the send queue not yet acknowledged by the peer (TIOCOUTQ)
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
            if item is not None:
                self._ready.notify_all()  # a producer may wait for the slot to empty
        return item

    def wait_empty(self, timeout_s: float) -> bool:
        """Wait until the item was taken (a producer that makes items only on demand)."""
        with self._ready:
            if self._item is not None:
                self._ready.wait(timeout_s)
            return self._item is None

    def clear(self) -> bool:
        with self._ready:
            had, self._item = self._item is not None, None
        return had


def unacked_bytes(sock: socket.socket) -> int:
    """Bytes written to the socket that the peer has not acknowledged yet (0 if unknown)."""
    try:
        raw = fcntl.ioctl(sock.fileno(), SIOCOUTQ, struct.pack("i", 0))
    except OSError:
        return 0
    return struct.unpack("i", raw)[0]


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


def peer_hung_up(sock: socket.socket) -> bool:
    """True when a peer that is not supposed to send anything has closed (or reset) its side."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class PeerLink:
    """One peer at a time: dialed (with retries) or accepted (after the token handshake)."""

    def __init__(self, connect: Optional[str], listen: Optional[str], token: Optional[bytes], stream: str) -> None:
        self.connect = connect
        self.token = token
        self.stream = stream
        self.listener: Optional[net.Listener] = None
        self.target: Optional[Tuple[str, int]] = None
        if listen:
            host, port = net.parse_endpoint(listen, listening=True)
            self.listener = net.Listener(host, port, token, stream)
        elif connect:
            self.target = net.parse_endpoint(connect, listening=False)
        self.connections = 0
        self.refused = 0        # second dialers turned away while a peer was served
        self.unproven = 0       # dialers that failed the token handshake

    @property
    def reconnects(self) -> int:
        return max(0, self.connections - 1)

    @property
    def address(self) -> Optional[Tuple[str, int]]:
        return self.listener.address[:2] if self.listener is not None else None

    def next_peer(self, stop: threading.Event) -> Optional[socket.socket]:
        """Block until a peer is connected (None once stop is set)."""
        if self.listener is not None:
            sock = self._accept(stop)
        else:
            assert self.target is not None
            sock = net.dial(self.target[0], self.target[1], stop, self.token, self.stream)
        if sock is not None:
            self.connections += 1
            if self.connections > 1:
                log.info("peer connected again (reconnect %d)", self.reconnects)
        return sock

    def _accept(self, stop: threading.Event) -> Optional[socket.socket]:
        assert self.listener is not None
        while not stop.is_set():
            if not self.listener.pending(0.2):
                continue
            try:
                conn, peer = self.listener.sock.accept()
            except OSError as err:
                log.warning("accept failed: %s", err)
                continue
            if self.token is not None:
                try:
                    net.challenge(conn, self.token, self.stream)
                except net.HandshakeError as err:
                    log.warning("refused %s:%d: %s", peer[0], peer[1], err)
                    self.unproven += 1
                    conn.close()
                    continue
            net.tune(conn)
            log.info("accepted %s:%d", peer[0], peer[1])
            return conn
        return None

    def refuse_others(self) -> None:
        """While serving a peer, close whoever else dials (one call, one peer)."""
        if self.listener is None:
            return
        while self.listener.pending(0.0):
            try:
                conn, peer = self.listener.sock.accept()
            except OSError:
                return
            log.warning("refused %s:%d: already serving a peer", peer[0], peer[1])
            self.refused += 1
            conn.close()

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
