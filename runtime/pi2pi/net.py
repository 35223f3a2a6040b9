"""Dial, listen, retry, and the call-token handshake.

Who dials is independent of which way the media flows (natpi dials every
connection). With a token, the listener speaks first:

    listener -> dialer   b"P2PC" version(1 byte) nonce(16 bytes)
    dialer   -> listener b"P2PR" HMAC-SHA256(token, b"pi2pi/1 " + stream + nonce)
    listener -> dialer   b"OK"   (or it closes the connection)

The token itself never crosses the wire and a captured answer is useless
against a fresh nonce. The stream name ("video", "audio") binds an answer to
one kind of stream. Without a token the programs speak the seed's bare protocol.
"""
from __future__ import annotations

import fcntl
import hashlib
import hmac
import logging
import os
import select
import socket
import struct
import threading
from pathlib import Path
from typing import Optional, Tuple

from pi2pi.config import ConfigError

log = logging.getLogger(__name__)

CHALLENGE_MAGIC = b"P2PC"
ANSWER_MAGIC = b"P2PR"
VERSION = 1
NONCE_SIZE = 16
DIGEST_SIZE = 32
ACCEPTED = b"OK"
SIOCOUTQ = 0x5411  # bytes in the send queue not yet acknowledged by the peer (TIOCOUTQ)
HANDSHAKE_TIMEOUT_S = 5.0


class HandshakeError(Exception):
    """The peer did not prove it belongs to this call."""


def parse_endpoint(text: str, listening: bool) -> Tuple[str, int]:
    """'HOST:PORT', '[v6]:PORT', or (listening) 'PORT' alone -> (host, port)."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        if not listening:
            raise ConfigError(f"{text!r}: want HOST:PORT")
        host, port_text = "0.0.0.0", text
    host = host.strip("[]") or ("0.0.0.0" if listening else "")
    if not host:
        raise ConfigError(f"{text!r}: missing host")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{text!r}: port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ConfigError(f"{text!r}: port {port} is outside 1..65535")
    return host, port


def load_token(path: Optional[str]) -> Optional[bytes]:
    if not path:
        return None
    try:
        token = Path(path).read_bytes().strip()
    except OSError as err:
        raise ConfigError(f"token file {path}: {err.strerror}") from None
    if len(token) < 16:
        raise ConfigError(f"token file {path}: the token must be at least 16 characters")
    return token


def _answer(token: bytes, stream: str, nonce: bytes) -> bytes:
    return hmac.new(token, b"pi2pi/1 " + stream.encode() + nonce, hashlib.sha256).digest()


def _recv_fixed(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise HandshakeError("peer closed during the handshake")
        data += chunk
    return data


def challenge(sock: socket.socket, token: bytes, stream: str) -> None:
    """Listener side: raises HandshakeError unless the dialer knows the token."""
    nonce = os.urandom(NONCE_SIZE)
    sock.settimeout(HANDSHAKE_TIMEOUT_S)
    try:
        sock.sendall(CHALLENGE_MAGIC + bytes((VERSION,)) + nonce)
        reply = _recv_fixed(sock, len(ANSWER_MAGIC) + DIGEST_SIZE)
    except socket.timeout:
        raise HandshakeError("no answer to the challenge in time") from None
    except OSError as err:
        raise HandshakeError(f"handshake failed: {err}") from None
    if reply[:4] != ANSWER_MAGIC or not hmac.compare_digest(reply[4:], _answer(token, stream, nonce)):
        raise HandshakeError("wrong answer to the challenge (not this call's token)")
    sock.sendall(ACCEPTED)


def respond(sock: socket.socket, token: bytes, stream: str) -> None:
    """Dialer side: answer the listener's challenge and wait for its OK."""
    sock.settimeout(HANDSHAKE_TIMEOUT_S)
    try:
        hello = _recv_fixed(sock, len(CHALLENGE_MAGIC) + 1 + NONCE_SIZE)
        if hello[:4] != CHALLENGE_MAGIC or hello[4] != VERSION:
            raise HandshakeError("the listener does not speak the pi2pi handshake")
        sock.sendall(ANSWER_MAGIC + _answer(token, stream, hello[5:]))
        if _recv_fixed(sock, len(ACCEPTED)) != ACCEPTED:
            raise HandshakeError("the listener refused our answer")
    except socket.timeout:
        raise HandshakeError("the listener did not finish the handshake in time") from None
    except OSError as err:
        raise HandshakeError(f"handshake failed: {err}") from None


def tune(sock: socket.socket) -> None:
    """Media wants each write on the wire now, not coalesced (Nagle off)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def unacked_bytes(sock: socket.socket) -> int:
    """Bytes written to the socket that the peer has not acknowledged yet (0 if unknown)."""
    try:
        raw = fcntl.ioctl(sock.fileno(), SIOCOUTQ, struct.pack("i", 0))
    except OSError:
        return 0
    return struct.unpack("i", raw)[0]


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


def dial(
    host: str,
    port: int,
    stop: threading.Event,
    token: Optional[bytes],
    stream: str,
    retry_s: float = 1.0,
    connect_timeout_s: float = 5.0,
) -> Optional[socket.socket]:
    """Connect (and prove the token), retrying until it works or stop is set."""
    attempt = 0
    while not stop.is_set():
        attempt += 1
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout_s)
        except OSError as err:
            if attempt == 1 or attempt % 30 == 0:
                log.info("dial %s:%d: %s; retrying every %.1f s", host, port, err, retry_s)
            stop.wait(retry_s)
            continue
        try:
            if token is not None:
                respond(sock, token, stream)
            tune(sock)
            log.info("connected to %s:%d", host, port)
            return sock
        except (HandshakeError, OSError) as err:
            log.warning("dial %s:%d: %s", host, port, err)
            sock.close()
            stop.wait(retry_s)
    return None


class Listener:
    """A listening socket that hands out only connections that passed the handshake."""

    def __init__(self, host: str, port: int, token: Optional[bytes], stream: str) -> None:
        self.token = token
        self.stream = stream
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as err:
            self.sock.close()
            raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror}") from None
        self.sock.listen(4)
        self.address = self.sock.getsockname()
        self.unproven = 0  # dialers that failed the token handshake
        self.refused = 0   # second dialers turned away while a peer was served

    def pending(self, timeout_s: float = 0.0) -> bool:
        readable, _, _ = select.select([self.sock], [], [], timeout_s)
        return bool(readable)

    def accept(self, stop: threading.Event, poll_s: float = 0.2) -> Optional[socket.socket]:
        """Wait for a dialer that passes the handshake; None once stop is set."""
        while not stop.is_set():
            if not self.pending(poll_s):
                continue
            conn = self._accept_one()
            if conn is not None:
                return conn
        return None

    def _accept_one(self) -> Optional[socket.socket]:
        try:
            conn, peer = self.sock.accept()
        except OSError as err:
            log.warning("accept failed: %s", err)
            return None
        if self.token is not None:
            try:
                challenge(conn, self.token, self.stream)
            except HandshakeError as err:
                log.warning("refused %s:%d: %s", peer[0], peer[1], err)
                self.unproven += 1
                conn.close()
                return None
        tune(conn)
        log.info("accepted %s:%d", peer[0], peer[1])
        return conn

    def refuse_pending(self, why: str) -> None:
        """Close dialers that arrive while a peer is being served (one call, one peer)."""
        while self.pending(0.0):
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            log.warning("refused %s:%d: %s", peer[0], peer[1], why)
            self.refused += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


class PeerLink:
    """One peer at a time, whichever way the program is set up: dialed (with
    retries) or accepted (after the token handshake). Counts reconnections,
    refuses a second dialer while a peer is served, counts unproven dialers."""

    def __init__(self, connect: Optional[str], listen: Optional[str], token: Optional[bytes], stream: str) -> None:
        self.token = token
        self.stream = stream
        self.listener: Optional[Listener] = None
        self.target: Optional[Tuple[str, int]] = None
        if listen:
            self.listener = Listener(*parse_endpoint(listen, listening=True), token, stream)
        elif connect:
            self.target = parse_endpoint(connect, listening=False)  # a typo fails now, not later
        else:
            raise ConfigError("set one of --connect HOST:PORT or --listen [ADDR:]PORT")
        self.connections = 0
        self.peer: Optional[str] = None   # "host:port" of the peer served now

    def state(self) -> str:
        """What the link is doing, in a user's words: for a live status line."""
        if self.peer is not None:
            return f"connected to {self.peer}"
        if self.address is not None:
            return "listening on {}:{}".format(*self.address)
        assert self.target is not None
        return "dialing {}:{}".format(*self.target)

    @property
    def reconnects(self) -> int:
        return max(0, self.connections - 1)

    @property
    def refused(self) -> int:
        return self.listener.refused if self.listener is not None else 0

    @property
    def unproven(self) -> int:
        return self.listener.unproven if self.listener is not None else 0

    @property
    def address(self) -> Optional[Tuple[str, int]]:
        return self.listener.address[:2] if self.listener is not None else None

    def next_peer(self, stop: threading.Event) -> Optional[socket.socket]:
        """Block until a peer is connected (None once stop is set)."""
        if self.listener is not None:
            sock = self.listener.accept(stop)
        else:
            assert self.target is not None
            sock = dial(self.target[0], self.target[1], stop, self.token, self.stream)
        if sock is not None:
            self.connections += 1
            try:
                host, port = sock.getpeername()[:2]
                self.peer = f"{host}:{port}"
            except OSError:
                self.peer = "?"
            if self.connections > 1:
                log.info("peer connected again (reconnect %d)", self.reconnects)
        return sock

    def lost(self) -> None:
        """The caller closed the peer's connection."""
        self.peer = None

    def refuse_others(self) -> None:
        """While serving a peer, close whoever else dials (one call, one peer)."""
        if self.listener is not None:
            self.listener.refuse_pending("already serving a peer")

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
