"""Dial, listen, retry, and the call-token handshake.

Who dials is independent of which way the media flows (natpi dials every
connection). With a token, the listener speaks first and both ends prove they
hold the call's token, so neither a stranger who dials a listener nor one who
answers at the dialer's address gets any media:

    listener -> dialer   b"P2PC" version(1 byte, 2) nonce_l(16)
    dialer   -> listener b"P2PR" nonce_d(16) HMAC-SHA256(token, b"pi2pi/2 dialer " + stream + nonce_l + nonce_d)
    listener -> dialer   b"P2PA" HMAC-SHA256(token, b"pi2pi/2 listener " + stream + nonce_l + nonce_d)

(or the listener closes the connection; the dialer closes it when the
listener's proof is wrong). The token never crosses the wire; both nonces make
every answer fresh; the role in the message keeps one end's proof from being
played back as the other's; the stream name ("video", "audio") binds an answer
to one kind of stream; proofs are compared in constant time. The whole
handshake has one deadline (HANDSHAKE_TIMEOUT_S), however slowly a peer
trickles its bytes, and a listener runs every pending handshake at once, so a
slow stranger cannot keep the real peer waiting. Without a token the programs
speak the seed's bare protocol.

One call, one peer: a listener serves one connection at a time. With a token,
a dialer that proves it while a peer is served replaces that connection (the
partner dials only after giving its old one up, so the old one is dead even
when this end cannot tell yet); without one, other dialers are closed
(`PeerLink.superseded`).

A dialer that fails, or whose connection ends soon after it was made, waits
before it dials again: a delay that doubles up to a cap, with jitter
(`Backoff`), instead of redialling in a tight loop. Every wait gives way to the
stop event within POLL_S.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import hmac
import logging
import os
import random
import select
import socket
import stat
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from pi2pi.config import ConfigError
from pi2pi.lifecycle import STOP_POLL_S

log = logging.getLogger(__name__)

CHALLENGE_MAGIC = b"P2PC"
ANSWER_MAGIC = b"P2PR"
PROOF_MAGIC = b"P2PA"
VERSION = 2
NONCE_SIZE = 16
DIGEST_SIZE = 32
CHALLENGE_SIZE = len(CHALLENGE_MAGIC) + 1 + NONCE_SIZE
ANSWER_SIZE = len(ANSWER_MAGIC) + NONCE_SIZE + DIGEST_SIZE
PROOF_SIZE = len(PROOF_MAGIC) + DIGEST_SIZE
SIOCOUTQ = 0x5411     # bytes in the send queue not yet acknowledged by the peer (TIOCOUTQ)
SIOCOUTQNSD = 0x894B  # bytes in the send queue not yet sent (Linux >= 2.6.38)
HANDSHAKE_TIMEOUT_S = 5.0   # the whole handshake, not each read
MAX_PENDING = 8             # handshakes a listener runs at once; more dialers are turned away
POLL_S = STOP_POLL_S        # the longest any wait here keeps a stop request waiting
CONNECT_TIMEOUT_S = 5.0
SHORT_LIVED_S = 5.0         # a connection that ended sooner than this counts as a failed dial


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
    """The call's token from its file, which only its owner may read."""
    if not path:
        return None
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        token = Path(path).read_bytes().strip()
    except OSError as err:
        raise ConfigError(f"token file {path}: {err.strerror}") from None
    if mode & 0o077:
        raise ConfigError(f"token file {path} is readable by others (mode {mode:04o}): chmod 600 {path}")
    if len(token) < 16:
        raise ConfigError(f"token file {path}: the token must be at least 16 characters")
    return token


def _proof(token: bytes, role: bytes, stream: str, nonce_l: bytes, nonce_d: bytes) -> bytes:
    return hmac.new(token, b"pi2pi/2 " + role + b" " + stream.encode() + nonce_l + nonce_d, hashlib.sha256).digest()


def _recv_until(sock: socket.socket, size: int, deadline: float, stop: Optional[threading.Event]) -> bytes:
    """Exactly size bytes before the deadline (one for the whole read); stop wins within POLL_S."""
    data = b""
    while len(data) < size:
        if stop is not None and stop.is_set():
            raise HandshakeError("stopped during the handshake")
        left = deadline - time.monotonic()
        if left <= 0:
            raise HandshakeError("the peer did not finish the handshake in time")
        sock.settimeout(min(left, POLL_S))
        try:
            chunk = sock.recv(size - len(data))
        except socket.timeout:
            continue
        except OSError as err:
            raise HandshakeError(f"handshake failed: {err.strerror or err}") from None
        if not chunk:
            raise HandshakeError("peer closed during the handshake")
        data += chunk
    return data


def challenge_message(nonce_l: bytes) -> bytes:
    return CHALLENGE_MAGIC + bytes((VERSION,)) + nonce_l


def check_answer(answer: bytes, token: bytes, stream: str, nonce_l: bytes) -> bytes:
    """The listener's check of the dialer's answer; the listener's own proof to send back."""
    nonce_d = answer[4:4 + NONCE_SIZE]
    if answer[:4] != ANSWER_MAGIC or not hmac.compare_digest(
            answer[4 + NONCE_SIZE:], _proof(token, b"dialer", stream, nonce_l, nonce_d)):
        raise HandshakeError("wrong answer to the challenge (not this call's token)")
    return PROOF_MAGIC + _proof(token, b"listener", stream, nonce_l, nonce_d)


def respond(sock: socket.socket, token: bytes, stream: str, stop: Optional[threading.Event] = None,
            timeout_s: float = HANDSHAKE_TIMEOUT_S) -> None:
    """Dialer side: answer the listener's challenge, then check the listener's own proof."""
    deadline = time.monotonic() + timeout_s
    hello = _recv_until(sock, CHALLENGE_SIZE, deadline, stop)
    if hello[:4] != CHALLENGE_MAGIC:
        raise HandshakeError("the listener does not speak the pi2pi handshake")
    if hello[4] != VERSION:
        raise HandshakeError(f"the listener speaks handshake version {hello[4]}, not {VERSION}: update both Pis")
    nonce_l, nonce_d = hello[5:], os.urandom(NONCE_SIZE)
    try:
        sock.sendall(ANSWER_MAGIC + nonce_d + _proof(token, b"dialer", stream, nonce_l, nonce_d))
    except OSError as err:
        raise HandshakeError(f"handshake failed: {err.strerror or err}") from None
    proof = _recv_until(sock, PROOF_SIZE, deadline, stop)
    if proof[:4] != PROOF_MAGIC or not hmac.compare_digest(
            proof[4:], _proof(token, b"listener", stream, nonce_l, nonce_d)):
        raise HandshakeError("the listener could not prove this call's token: not our peer")


def tune(sock: socket.socket) -> None:
    """Media wants each write on the wire now, not coalesced (Nagle off)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def _queued(sock: socket.socket, request: int) -> Optional[int]:
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), request, struct.pack("i", 0)))[0]
    except OSError:
        return None


@dataclass(frozen=True)
class TcpInfo:
    """What the camera reads from the kernel's tcp_info besides SIOCOUTQ (its in-flight budget, video.adapt's gauge)."""

    min_rtt_s: Optional[float]   # the path's round trip without queueing (None: the kernel does not say)
    retransmits: int             # segments retransmitted so far (tcpi_total_retrans)


# struct tcp_info (linux/tcp.h): byte offsets of the fields read. tcpi_rtt and tcpi_total_retrans
# are in every kernel pi2pi runs on; tcpi_min_rtt came with Linux 4.10 (a shorter struct: None).
TCPI_RTT, TCPI_TOTAL_RETRANS, TCPI_MIN_RTT = 68, 100, 148


def read_tcp_info(sock: socket.socket) -> Optional[TcpInfo]:
    """The socket's tcp_info (Linux), or None where it cannot be read."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_INFO", 11), 152)
    except OSError:
        return None
    if len(raw) < TCPI_TOTAL_RETRANS + 4:
        return None
    (rtt_us,) = struct.unpack_from("I", raw, TCPI_RTT)
    (retrans,) = struct.unpack_from("I", raw, TCPI_TOTAL_RETRANS)
    min_rtt_us = struct.unpack_from("I", raw, TCPI_MIN_RTT)[0] if len(raw) >= TCPI_MIN_RTT + 4 else None
    if not min_rtt_us or min_rtt_us == 0xFFFFFFFF:   # ~0U: no sample yet
        min_rtt_us = rtt_us or None
    return TcpInfo(None if min_rtt_us is None else min_rtt_us / 1e6, retrans)


def unacked_bytes(sock: socket.socket) -> int:
    """Bytes written to the socket that the peer has not acknowledged yet, in flight
    included (0 if unknown): how far the peer is behind (the camera's pacing)."""
    return _queued(sock, SIOCOUTQ) or 0


def unsent_bytes(sock: socket.socket) -> int:
    """Bytes written to the socket that have not left yet (SIOCOUTQNSD): what waits
    behind a slow link, not what is merely in flight on a long one (talk's backlog).
    Where the kernel cannot say, the unacknowledged bytes stand in."""
    unsent = _queued(sock, SIOCOUTQNSD)
    return unacked_bytes(sock) if unsent is None else unsent


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


class Backoff:
    """Delays between dial attempts: first `first_s`, doubling to `cap_s`, each
    drawn within +-25% so that many dialers do not redial in step."""

    def __init__(self, first_s: float = 0.5, cap_s: float = 4.0) -> None:
        self.first_s, self.cap_s = first_s, cap_s
        self._next = first_s

    def next(self) -> float:
        delay = self._next * random.uniform(0.75, 1.25)
        self._next = min(self.cap_s, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.first_s


def connect(host: str, port: int, stop: threading.Event, timeout_s: float = CONNECT_TIMEOUT_S) -> Optional[socket.socket]:
    """A TCP connection (blocking socket) or OSError; None once stop is set (it wins within POLL_S)."""
    last: OSError = OSError(f"{host}: no address")
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        error = sock.connect_ex(address)
        deadline = time.monotonic() + timeout_s
        while error == errno.EINPROGRESS:
            if stop.is_set():
                sock.close()
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                error = errno.ETIMEDOUT
                break
            if select.select([], [sock], [], min(left, POLL_S))[1]:
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error == 0:
            sock.setblocking(True)
            return sock
        sock.close()
        last = OSError(error, os.strerror(error))
    raise last


def dial(host: str, port: int, stop: threading.Event, token: Optional[bytes], stream: str,
         backoff: Optional[Backoff] = None) -> Optional[socket.socket]:
    """Connect (and prove the token both ways), retrying with backoff until it works or stop is set."""
    backoff = backoff or Backoff()
    attempt = 0
    while not stop.is_set():
        attempt += 1
        try:
            sock = connect(host, port, stop)
        except OSError as err:
            delay = backoff.next()
            if attempt == 1 or attempt % 20 == 0:
                log.info("dial %s:%d: %s; retrying in %.1f s", host, port, err.strerror or err, delay)
            stop.wait(delay)
            continue
        if sock is None:
            return None
        try:
            if token is not None:
                respond(sock, token, stream, stop)
            tune(sock)
            log.info("connected to %s:%d", host, port)
            return sock
        except (HandshakeError, OSError) as err:
            sock.close()
            if stop.is_set():
                return None
            delay = backoff.next()
            log.warning("dial %s:%d: %s; retrying in %.1f s", host, port, err, delay)
            stop.wait(delay)
    return None


@dataclass
class Handshake:
    """A dialer the listener has challenged and waits for: one deadline for all of it."""

    sock: socket.socket
    peer: Tuple[str, int]
    nonce: bytes
    deadline: float
    answer: bytes = b""


class Listener:
    """A listening socket that hands out only connections that passed the handshake.

    Every dialer's handshake runs at once (without threads: one select over the
    listening socket and every pending dialer), each with a whole deadline, at
    most MAX_PENDING at a time: a slow or silent stranger cannot delay the real
    peer's handshake nor hold one open.
    """

    def __init__(self, host: str, port: int, token: Optional[bytes], stream: str,
                 handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S) -> None:
        self.token = token
        self.stream = stream
        self.handshake_timeout_s = handshake_timeout_s
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as err:
            self.sock.close()
            raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror}") from None
        self.sock.listen(MAX_PENDING)
        self.sock.setblocking(False)   # poll() takes dialers in only while some wait
        self.address = self.sock.getsockname()
        self.handshakes: Dict[socket.socket, Handshake] = {}
        self.unproven = 0  # dialers that failed the token handshake (wrong, silent, too slow)
        self.refused = 0   # dialers turned away: a peer was served (no token), or too many handshakes at once

    def pending(self, timeout_s: float = 0.0) -> bool:
        readable, _, _ = select.select([self.sock], [], [], timeout_s)
        return bool(readable)

    def accept(self, stop: threading.Event, poll_s: float = POLL_S) -> Optional[socket.socket]:
        """Wait for a dialer that passes the handshake; None once stop is set."""
        while not stop.is_set():
            conn = self.poll(poll_s)
            if conn is not None:
                return conn
        return None

    def poll(self, timeout_s: float = 0.0) -> Optional[socket.socket]:
        """One step of accept(): drop handshakes past their deadline, wait at most
        timeout_s (0: not at all) for something to read, challenge whoever dialed
        and advance every handshake that sent something; a socket that proved the
        token, if one did (the others stay pending for the next step). Bounded
        work: at most MAX_PENDING dialers taken in and MAX_PENDING handshakes
        read, however many strangers dial."""
        now = time.monotonic()
        for shake in [h for h in self.handshakes.values() if h.deadline <= now]:
            self._drop(shake, "no complete answer within the handshake's deadline")
        wait = min([timeout_s] + [h.deadline - now for h in self.handshakes.values()])
        readable, _, _ = select.select([self.sock, *self.handshakes], [], [], max(0.0, wait))
        for sock in readable:
            if sock is self.sock:
                for _ in range(MAX_PENDING):   # empty the kernel's queue, so it never turns the peer away
                    taken, conn = self._accept_one()
                    if conn is not None:
                        return conn
                    if not taken:
                        break
            else:
                conn = self._advance(self.handshakes[sock])
                if conn is not None:
                    return conn
        return None

    def _accept_one(self) -> Tuple[bool, Optional[socket.socket]]:
        """Take in one waiting dialer: (whether one was waiting, its socket if it needs no handshake)."""
        try:
            conn, peer = self.sock.accept()
        except BlockingIOError:
            return False, None
        except OSError as err:
            log.warning("accept failed: %s", err)
            return False, None
        if self.token is None:
            conn.setblocking(True)
            tune(conn)
            log.info("accepted %s:%d", peer[0], peer[1])
            return True, conn
        if len(self.handshakes) >= MAX_PENDING:
            log.warning("refused %s:%d: %d handshakes already under way", peer[0], peer[1], MAX_PENDING)
            self.refused += 1
            conn.close()
            return True, None
        nonce = os.urandom(NONCE_SIZE)
        try:
            conn.setblocking(False)
            conn.send(challenge_message(nonce))   # 21 bytes into an empty send buffer
        except OSError:
            conn.close()
            return True, None
        self.handshakes[conn] = Handshake(conn, peer[:2], nonce, time.monotonic() + self.handshake_timeout_s)
        return True, None

    def _advance(self, shake: Handshake) -> Optional[socket.socket]:
        """Read what the dialer sent; its socket once it proved the token (and got our proof)."""
        assert self.token is not None
        try:
            chunk = shake.sock.recv(ANSWER_SIZE - len(shake.answer))
        except BlockingIOError:
            return None
        except OSError as err:
            self._drop(shake, f"handshake failed: {err.strerror or err}")
            return None
        if not chunk:
            self._drop(shake, "peer closed during the handshake")
            return None
        shake.answer += chunk
        if len(shake.answer) < ANSWER_SIZE:
            return None
        try:
            proof = check_answer(shake.answer, self.token, self.stream, shake.nonce)
            del self.handshakes[shake.sock]
            shake.sock.setblocking(True)
            shake.sock.settimeout(max(0.1, shake.deadline - time.monotonic()))
            shake.sock.sendall(proof)
        except (HandshakeError, OSError) as err:
            self._drop(shake, str(err))
            return None
        tune(shake.sock)
        log.info("accepted %s:%d", *shake.peer)
        return shake.sock

    def _drop(self, shake: Handshake, why: str) -> None:
        log.warning("refused %s:%d: %s", shake.peer[0], shake.peer[1], why)
        self.unproven += 1
        self.handshakes.pop(shake.sock, None)
        shake.sock.close()

    def refuse_pending(self, why: str) -> None:
        """Close dialers that arrive, or are still in their handshake, while a peer is
        being served without a token (nothing tells the peer from a stranger then)."""
        for shake in list(self.handshakes.values()):
            log.warning("refused %s:%d: %s", shake.peer[0], shake.peer[1], why)
            self.refused += 1
            self.handshakes.pop(shake.sock, None)
            shake.sock.close()
        while self.pending(0.0):
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            log.warning("refused %s:%d: %s", peer[0], peer[1], why)
            self.refused += 1
            conn.close()

    def close(self) -> None:
        for shake in list(self.handshakes.values()):
            shake.sock.close()
        self.handshakes.clear()
        self.sock.close()


class PeerLink:
    """One peer at a time, whichever way the program is set up: dialed (with
    retries) or accepted (after the token handshake). Counts reconnections and
    unproven dialers.

    While a listener serves its peer it asks superseded() now and then. With a
    token, whoever dials meanwhile is challenged as usual (a stranger fails and
    counts as unproven; the peer served is not disturbed), and a dialer that
    proves the token replaces the connection served: only the call's partner
    holds the token, and it dials only after giving its old connection up, so
    the old one is dead even if this end cannot tell yet (a tunnel that keeps
    it open, a half-open TCP connection). Without a token nothing tells the
    partner from a stranger: other dialers are closed without a word (refused).
    """

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
        self.backoff = Backoff()
        self._connected_at: Optional[float] = None
        self._short_lived = False         # the last connection ended soon after it was made
        self._next: Optional[socket.socket] = None   # the peer's newer connection, served next

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
        if self._next is not None:        # the peer dialed again while its old connection was served
            sock, self._next = self._next, None
        elif self.listener is not None:
            sock = self.listener.accept(stop)
        else:
            assert self.target is not None
            if self._short_lived:   # connected, then lost at once: not a tight redial loop
                stop.wait(self.backoff.next())
            else:
                self.backoff.reset()
            sock = dial(self.target[0], self.target[1], stop, self.token, self.stream, self.backoff)
        if sock is not None:
            self._connected_at = time.monotonic()
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
        self._short_lived = self._connected_at is not None and time.monotonic() - self._connected_at < SHORT_LIVED_S

    def superseded(self) -> bool:
        """While serving a peer, deal with whoever else dials; True when the peer has
        dialed again: the caller ends the connection it serves, and next_peer()
        hands out the new one at once. Non-blocking, bounded work (Listener.poll)."""
        if self._next is not None:
            return True
        if self.listener is None:
            return False
        if self.token is None:
            self.listener.refuse_pending("already serving a peer")
            return False
        self._next = self.listener.poll()
        if self._next is None:
            return False
        log.info("the peer dialed again: its new connection replaces this one")
        return True

    def close(self) -> None:
        if self._next is not None:
            self._next.close()
            self._next = None
        if self.listener is not None:
            self.listener.close()
