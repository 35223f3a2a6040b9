"""Fuzz target `handshake`: the call-token handshake (net.py), both sides, against a peer that sends anything.

One input = one connection: an option byte, a split byte, then the peer's
messages. Option bit 0 picks the side under test:

- 0, the dialer: `net.respond` on one end of a socketpair; a fake listener on
  the other sends its first message (the challenge), waits for the dialer's
  answer when the challenge can draw one, then sends its second (the proof).
  The split byte is the first message's length.
- 1, the listener: the real `net.Listener.accept` on 127.0.0.1; a fake dialer
  connects, reads the challenge and sends its answer, in two pieces cut at
  the split byte.

Option bit 1 makes the fake peer honest: each message is the correct one with
the input's bytes XORed onto it (zeros: the right message; a flipped bit: a near
miss; extra bytes: media right behind it); bits 2 and 3 give the honest peer a
wrong token or a wrong stream name. Otherwise the input's bytes are sent as
they are. Without the keep-open bits (common.keep_open) the peer shuts its side
after its messages, with them it waits and the handshake's deadline must end it.

Allowed: HandshakeError, respond's documented refusal; Listener.accept returns
a connection or None and raises nothing. Beyond exceptions, the outcome must be
the protocol's: the side under test accepts exactly when the peer's bytes carry
this call's proof for this stream and the nonces used (with keep-open, timing
may refuse a right proof, never accept a wrong one); its own messages are the
right challenge, answer and proof; the media behind the handshake reaches
the side under test untouched; a refused peer gets nothing more and its
connection closed; the listener counts every refusal as unproven and holds no
pending handshake afterwards; every call ends within its handshake deadline.
"""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import atheris

from tests.fuzz import common

with atheris.instrument_imports(include=common.INSTRUMENTED):
    from pi2pi import net

MAX_LEN = 512
TOKEN = b"fuzz-call-token-0123456789abcdef"
OTHER_TOKEN = b"some-other-calls-token-0123456789"
STREAM, OTHER_STREAM = "video", "audio"
LONG_S = net.HANDSHAKE_TIMEOUT_S   # a peer that shuts its side never makes anyone wait for this
SHORT_S = 0.005                    # a peer that keeps the connection open: the deadline ends it
PEER_WAIT_S = 3.0                  # the fake peer's own socket timeout
LISTENER, HONEST, WRONG_TOKEN, WRONG_STREAM = 0x01, 0x02, 0x04, 0x08
NONCE_D = bytes(range(0x40, 0x50))  # an honest fake dialer's nonce (before the XOR)


def proof(role: bytes, nonce_l: bytes, nonce_d: bytes, token: bytes = TOKEN, stream: str = STREAM) -> bytes:
    return net._proof(token, role, stream, nonce_l, nonce_d)


def recv_up_to(sock: socket.socket, size: int) -> bytes:
    """Up to `size` bytes: fewer only when the other end closed."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the peer sent after the handshake (the media), until it closes."""
    sock.settimeout(PEER_WAIT_S)
    data = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return data
            data += chunk
    except socket.timeout:
        raise common.Hang(f"the fake peer did not close within {PEER_WAIT_S} s") from None


@dataclass
class Peer:
    """What one input's fake peer is and did."""

    flags: int
    first: bytes
    second: bytes
    keep_open: bool
    sent: bytes = b""
    received: bytes = b""
    error: Optional[BaseException] = None

    @property
    def honest(self) -> bool:
        return bool(self.flags & HONEST)

    @property
    def token(self) -> bytes:
        return OTHER_TOKEN if self.flags & WRONG_TOKEN else TOKEN

    @property
    def stream(self) -> str:
        return OTHER_STREAM if self.flags & WRONG_STREAM else STREAM

    def finish(self, sock: socket.socket) -> None:
        """Shut our side (unless keeping it open) and read until the side under test closes."""
        if not self.keep_open:
            sock.shutdown(socket.SHUT_WR)
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return
            self.received += chunk


class FakeListener(Peer):
    def run(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(PEER_WAIT_S)
            challenge = net.CHALLENGE_MAGIC + bytes((net.VERSION,)) + bytes(net.NONCE_SIZE)
            first = common.xor_onto(challenge, self.first) if self.honest else self.first
            sock.sendall(first)
            self.sent = first
            second = self.second
            if len(first) >= net.CHALLENGE_SIZE and first[:5] == challenge[:5]:   # the dialer answers it
                self.received = recv_up_to(sock, net.ANSWER_SIZE)
                if len(self.received) < net.ANSWER_SIZE:
                    return
                if self.honest:
                    nonce_l, nonce_d = first[5:net.CHALLENGE_SIZE], self.received[4:4 + net.NONCE_SIZE]
                    right = net.PROOF_MAGIC + proof(b"listener", nonce_l, nonce_d, self.token, self.stream)
                    second = common.xor_onto(right, self.second)
            sock.sendall(second)
            self.sent += second
            self.finish(sock)
        except OSError as err:   # the dialer closed first: EPIPE, ECONNRESET; or our timeout
            self.error = err


class FakeDialer(Peer):
    def __init__(self, flags: int, first: bytes, second: bytes, keep_open: bool, split: int) -> None:
        super().__init__(flags, first, second, keep_open)
        self.split = split
        self.challenge = b""

    def run(self, address: Tuple[str, int]) -> None:
        sock: Optional[socket.socket] = None
        try:
            sock = socket.create_connection(address, timeout=PEER_WAIT_S)
            self.challenge = recv_up_to(sock, net.CHALLENGE_SIZE)
            if len(self.challenge) < net.CHALLENGE_SIZE:
                return
            nonce_l = self.challenge[5:]
            right = net.ANSWER_MAGIC + NONCE_D + proof(b"dialer", nonce_l, NONCE_D, self.token, self.stream)
            answer = common.xor_onto(right, self.first) if self.honest else self.first
            if 0 < self.split < len(answer):   # two pieces, each its own segment
                sock.sendall(answer[:self.split])
                time.sleep(0.001)
                sock.sendall(answer[self.split:])
            else:
                sock.sendall(answer)
            self.sent = answer
            self.finish(sock)
        except OSError as err:
            self.error = err
        finally:
            if sock is not None:
                sock.close()   # after the listener's end: no TIME_WAIT here, none left behind by 100 000 inputs


class Settled(threading.Event):
    """Listener.accept's stop for one input: set once the fake dialer is done and the
    listener holds nothing of it (pending in the backlog or mid-handshake), or at a cap."""

    def __init__(self, listener: net.Listener, dialer: threading.Thread, cap_s: float) -> None:
        super().__init__()
        self.listener, self.dialer = listener, dialer
        self.cap = time.monotonic() + cap_s

    def is_set(self) -> bool:
        if super().is_set() or time.monotonic() > self.cap:
            return True
        return not self.dialer.is_alive() and not self.listener.handshakes and not self.listener.pending(0.0)


class Harness:
    def __init__(self) -> None:
        self.listeners = {keep: net.Listener("127.0.0.1", 0, TOKEN, STREAM,
                                             handshake_timeout_s=SHORT_S if keep else LONG_S)
                          for keep in (False, True)}

    def one(self, data: bytes) -> None:
        if len(data) < 2:
            return
        flags, split, fields = data[0], data[1], data[2:]
        keep = common.keep_open(flags)
        if flags & LISTENER:
            self.listener_side(FakeDialer(flags, fields, b"", keep, split))
        else:
            self.dialer_side(FakeListener(flags, fields[:split], fields[split:], keep))

    def dialer_side(self, peer: FakeListener) -> None:
        ours, theirs = socket.socketpair()
        thread = threading.Thread(target=peer.run, args=(theirs,), daemon=True)
        thread.start()
        timeout = SHORT_S if peer.keep_open else LONG_S
        accepted = False
        try:
            with common.deadline(timeout, "respond"):
                try:
                    net.respond(ours, TOKEN, STREAM, timeout_s=timeout)
                    accepted = True
                except net.HandshakeError:
                    pass
            ours.shutdown(socket.SHUT_WR)   # what the fake listener waits for
            thread.join(PEER_WAIT_S + 1)
            if thread.is_alive():
                raise common.Hang("the fake listener still waits for the dialer to close")
            theirs.close()
            behind = read_to_end(ours) if accepted else b""
        finally:
            ours.close()
            theirs.close()
        check_dialer(peer, accepted, behind)

    def listener_side(self, peer: FakeDialer) -> None:
        listener = self.listeners[peer.keep_open]
        thread = threading.Thread(target=peer.run, args=(listener.address,), daemon=True)
        unproven = listener.unproven
        timeout = SHORT_S if peer.keep_open else LONG_S
        conn: Optional[socket.socket] = None
        thread.start()
        try:
            with common.deadline(timeout, "Listener.accept"):
                conn = listener.accept(Settled(listener, thread, timeout + common.SLACK_S + 0.5), poll_s=0.001)
            behind = b""
            if conn is not None:   # the media would start here: read it, then close (no reset for unread bytes)
                conn.shutdown(socket.SHUT_WR)
                behind = read_to_end(conn)
        finally:
            if conn is not None:
                conn.close()
            thread.join(PEER_WAIT_S + 1)
        if thread.is_alive():
            raise common.Hang("the fake dialer still waits for the listener to close")
        if listener.handshakes:
            raise common.Wrong(f"{len(listener.handshakes)} handshakes still pending after the dialer left")
        if conn is None and listener.unproven != unproven + 1:
            raise common.Wrong(f"a refused dialer counted {listener.unproven - unproven} times as unproven")
        check_listener(peer, conn is not None, behind)


def check_peer_waited(peer: Peer) -> None:
    if isinstance(peer.error, socket.timeout):
        raise common.Hang(f"the fake peer waited {PEER_WAIT_S} s for the side under test to answer or close")


def check_dialer(peer: FakeListener, accepted: bool, behind: bytes) -> None:
    check_peer_waited(peer)
    sent = peer.sent
    challenge_ok = len(sent) >= net.CHALLENGE_SIZE and sent[:4] == net.CHALLENGE_MAGIC and sent[4] == net.VERSION
    if not challenge_ok:
        if accepted:
            raise common.Wrong(f"the dialer accepted a listener whose challenge was {sent[:net.CHALLENGE_SIZE]!r}")
        return
    answer = peer.received
    if len(answer) < net.ANSWER_SIZE:
        if not peer.keep_open:   # with keep-open the short deadline may pass before the challenge arrives
            raise common.Wrong(f"the dialer answered a good challenge with {answer!r} ({peer.error!r})")
        return
    nonce_l, nonce_d = sent[5:net.CHALLENGE_SIZE], answer[4:4 + net.NONCE_SIZE]
    if answer[:net.ANSWER_SIZE] != net.ANSWER_MAGIC + nonce_d + proof(b"dialer", nonce_l, nonce_d):
        raise common.Wrong(f"the dialer's answer does not prove the token: {answer.hex()}")
    right = sent[net.CHALLENGE_SIZE:net.CHALLENGE_SIZE + net.PROOF_SIZE] == \
        net.PROOF_MAGIC + proof(b"listener", nonce_l, nonce_d)
    if accepted and not right:
        raise common.Wrong(f"the dialer accepted a wrong proof: {sent.hex()}")
    if right and not accepted and not peer.keep_open:
        raise common.Wrong(f"the dialer refused the right proof: {sent.hex()}")
    if accepted and behind != sent[net.CHALLENGE_SIZE + net.PROOF_SIZE:]:
        raise common.Wrong(f"the media behind the listener's proof arrived as {behind.hex()}: {sent.hex()}")


def check_listener(peer: FakeDialer, accepted: bool, behind: bytes) -> None:
    check_peer_waited(peer)
    challenge = peer.challenge
    if len(challenge) != net.CHALLENGE_SIZE or challenge[:5] != net.CHALLENGE_MAGIC + bytes((net.VERSION,)):
        raise common.Wrong(f"the listener's challenge is {challenge!r} ({peer.error!r})")
    nonce_l, sent = challenge[5:], peer.sent
    nonce_d = sent[4:4 + net.NONCE_SIZE]
    right = len(sent) >= net.ANSWER_SIZE and \
        sent[:net.ANSWER_SIZE] == net.ANSWER_MAGIC + nonce_d + proof(b"dialer", nonce_l, nonce_d)
    if accepted and not right:
        raise common.Wrong(f"the listener accepted a wrong answer: {sent.hex()}")
    if right and not accepted and not peer.keep_open:
        raise common.Wrong(f"the listener refused the right answer: {sent.hex()}")
    if accepted and peer.received != net.PROOF_MAGIC + proof(b"listener", nonce_l, nonce_d):
        raise common.Wrong(f"the listener's own proof is wrong: {peer.received.hex()}")
    if not accepted and peer.received:
        raise common.Wrong(f"the listener sent {peer.received!r} to a dialer it refused")
    if accepted and behind != sent[net.ANSWER_SIZE:]:
        raise common.Wrong(f"the media behind the dialer's answer arrived as {behind.hex()}: {sent.hex()}")


def seeds() -> Dict[str, bytes]:
    nonce_l = bytes(range(16))
    challenge = net.CHALLENGE_MAGIC + bytes((net.VERSION,)) + nonce_l
    keep = common.KEEP_OPEN
    return {
        "dialer-honest": bytes((HONEST, 0)),
        "dialer-honest-media-behind": bytes((HONEST, net.CHALLENGE_SIZE)) + bytes(57) + b"\x10media",
        "dialer-wrong-token": bytes((HONEST | WRONG_TOKEN, 0)),
        "dialer-wrong-stream": bytes((HONEST | WRONG_STREAM, 0)),
        "dialer-raw-challenge": bytes((0, net.CHALLENGE_SIZE)) + challenge + net.PROOF_MAGIC + bytes(32),
        "dialer-old-version": bytes((0, net.CHALLENGE_SIZE)) + challenge[:4] + b"\x01" + nonce_l,
        "dialer-keep-open-honest": bytes((keep | HONEST, 0)),
        "dialer-keep-open-short": bytes((keep, 3)) + b"P2P",
        "listener-honest": bytes((LISTENER | HONEST, 0)),
        "listener-honest-in-pieces": bytes((LISTENER | HONEST, 10)) + bytes(net.ANSWER_SIZE),
        # Found by the fuzzer as a harness defect: closing the accepted socket with the media
        # unread made the kernel reset the connection, and the dialer lost the proof.
        "listener-honest-media-behind": bytes((LISTENER | HONEST | 0x20, 0)) + bytes(81) + b"\xb3",
        "listener-wrong-token": bytes((LISTENER | HONEST | WRONG_TOKEN, 0)),
        "listener-keep-open-honest": bytes((keep | LISTENER | HONEST, 0)),
        "listener-raw": bytes((LISTENER, 0)) + net.ANSWER_MAGIC + NONCE_D + bytes(32),
        "listener-raw-short": bytes((LISTENER, 2)) + net.ANSWER_MAGIC + bytes(16),
    }


def make(workdir: Path) -> Callable[[bytes], None]:
    return Harness().one


if __name__ == "__main__":
    common.child_main(make)
