"""A stop request always wins: SIGTERM ends camera, viewer, talk and listen within
2 s, with their stats written, whatever the peer is doing at that moment.

Each case starts the real program over real TCP on 127.0.0.1, puts a peer in one
state (polling until it is there, seen from outside the program: the kernel's
queues, the program's live file), sends SIGTERM and measures the exit.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

from pi2pi import net, wire
from tests.audio.harness import free_port, wait_listening
from tests.audio.test_audio_call import our_packets, receive_queue_empty
from tests.video.helpers import Program, read_stats
from tests.video.test_video_hostile import pillow_jpeg

STOP_BOUND_S = 2.0   # the product's promise
TOKEN = b"stop-test-token-0123456789abcdef"
FIONREAD = 0x541B

SENDERS: Dict[str, List[str]] = {
    # 1920x1080 at quality 100: a frame (~210 kB) larger than what the kernels hold for a peer
    # that never reads (~90 kB behind its small window and segments)
    "camera": ["--source", "testpattern", "--size", "1920x1080", "--quality", "100", "--label", "stop-test"],
    "talk": ["--device", "testsignal"],
}
RECEIVERS: Dict[str, List[str]] = {
    "viewer": ["--fb", "fb.raw", "--fb-geometry", "320x240x32"],
    "listen": ["--device", "null", "--pace", "clock"],
}


class Peer:
    """The test's end of the connection, and a thread that keeps sending if the case has one."""

    def __init__(self) -> None:
        self.socks: List[socket.socket] = []
        self.done = threading.Event()
        self.sent = 0
        self.thread: Optional[threading.Thread] = None

    def keep_sending(self, sock: socket.socket, chunks: Callable[[], bytes], gap_s: float) -> None:
        def run() -> None:
            try:
                while not self.done.is_set():
                    chunk = chunks()
                    sock.sendall(chunk)
                    self.sent += len(chunk)
                    if gap_s:
                        self.done.wait(gap_s)
            except OSError:
                pass   # the program went away, or the test closed the socket

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.done.set()
        for sock in self.socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if self.thread is not None:
            self.thread.join(2)


def poll(condition: Callable[[], bool], what: str, program: Program, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert program.proc.poll() is None, f"{what}: the program ended\n" + program.log()
        assert time.monotonic() < deadline, f"never reached: {what}\n" + program.log()
        time.sleep(0.02)


def queues(port: int, side: str) -> List[int]:
    """Recv-Q and Send-Q (ss) of the program's end of the connection on `port`
    (side "sport" when the program listens there, "dport" when it dialed it)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( {side} = :{port} )"],
                         capture_output=True, text=True).stdout.split()
    return [int(out[0]), int(out[1])] if out else [0, 0]


def unread(sock: socket.socket) -> int:
    """Bytes waiting in our receive queue that we have not read."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), FIONREAD, struct.pack("i", 0)))[0]


def flowing(tmp_path: Path, program: str) -> bool:
    try:
        return bool(json.loads((tmp_path / "stats" / f"{program}.live.json").read_text())["flowing"])
    except (OSError, ValueError):
        return False


# ----- the peer's states -------------------------------------------------------------------

def handshake_half_way(program: Program, name: str, port: int, server: Optional[socket.socket],
                       peer: Peer, tmp_path: Path) -> None:
    """The listener's challenge or the dialer's answer, half sent, then nothing."""
    if server is not None:   # the program dials us: half a challenge
        conn, _ = server.accept()
        peer.socks.append(conn)
        conn.sendall(net.challenge_message(os.urandom(net.NONCE_SIZE))[:10])
        return
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    peer.socks.append(sock)
    challenge = b""
    while len(challenge) < net.CHALLENGE_SIZE:   # the program has sent its whole challenge
        chunk = sock.recv(net.CHALLENGE_SIZE - len(challenge))
        assert chunk, "the program closed during the handshake\n" + program.log()
        challenge += chunk
    sock.sendall(net.ANSWER_MAGIC + os.urandom(6))


def never_reads(program: Program, name: str, port: int, server: Optional[socket.socket],
                peer: Peer, tmp_path: Path) -> None:
    """We take the connection and never read from it."""
    assert server is not None
    conn, _ = server.accept()
    peer.socks.append(conn)
    if name == "camera":
        # Inside sendall: what the camera has handed its kernel (its Send-Q, and what
        # waits unread here) is more than nothing and less than the frame the header
        # (peeked at, not read) announces.
        def inside_a_frame() -> bool:
            if unread(conn) < wire.VIDEO_HEADER.size:
                return False
            header = wire.parse_video_header(conn.recv(wire.VIDEO_HEADER.size, socket.MSG_PEEK), 64 << 20)
            sending = queues(port, "dport")[1]
            return 0 < sending and sending + unread(conn) < wire.VIDEO_HEADER.size + header.length

        poll(inside_a_frame, "the camera blocked half-way through sending a frame", program)
    else:
        # Our receive queue is full and talk's own queue holds 100 ms of audio and more
        poll(lambda: unread(conn) > 0 and queues(port, "dport")[1] >= 400,
             "talk's send queue filling behind a peer that does not read", program)


def mid_frame(program: Program, name: str, port: int, server: Optional[socket.socket],
              peer: Peer, tmp_path: Path) -> None:
    """Half a frame, then silence."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    peer.socks.append(sock)
    if name == "viewer":
        jpeg = pillow_jpeg()
        sock.sendall(wire.pack_video_frame(1, jpeg, wire.now_us())[:wire.VIDEO_HEADER.size + len(jpeg) // 2])
    else:
        sock.sendall(bytes((200,)) + bytes(100))
    poll(lambda: receive_queue_empty(port), "the program took in half a frame", program)


def trickle(program: Program, name: str, port: int, server: Optional[socket.socket],
            peer: Peer, tmp_path: Path) -> None:
    """One byte of a frame every 0.05 s, on and on."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    peer.socks.append(sock)
    if name == "viewer":
        frame = wire.pack_video_frame(1, pillow_jpeg(), wire.now_us())
    else:
        frame = bytes((200,)) + bytes(200)
    rest = iter(frame)
    peer.keep_sending(sock, lambda: bytes((next(rest),)), gap_s=0.05)
    poll(lambda: peer.sent >= 10 and receive_queue_empty(port), "the program reading a trickled frame", program)


def flood(program: Program, name: str, port: int, server: Optional[socket.socket],
          peer: Peer, tmp_path: Path) -> None:
    """Whole frames as fast as the program takes them."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    peer.socks.append(sock)
    if name == "viewer":
        burst = wire.pack_video_frame(1, pillow_jpeg(), wire.now_us()) * 50
    else:
        burst = wire.pack_audio_frame(our_packets(0.02, 440.0)[0]) * 1000
    peer.keep_sending(sock, lambda: burst, gap_s=0.0)
    poll(lambda: flowing(tmp_path, name) and peer.sent > 10 * len(burst), "the program taking a flood", program)


BEHAVIOURS = {f.__name__: f for f in (handshake_half_way, never_reads, mid_frame, trickle, flood)}
CASES = [
    ("camera", "handshake_half_way"), ("camera", "never_reads"),
    ("talk", "handshake_half_way"), ("talk", "never_reads"),
    ("viewer", "handshake_half_way"), ("viewer", "mid_frame"), ("viewer", "trickle"), ("viewer", "flood"),
    ("listen", "handshake_half_way"), ("listen", "mid_frame"), ("listen", "trickle"), ("listen", "flood"),
]


@pytest.mark.parametrize("name,behaviour", CASES, ids=[f"{n}-{b}" for n, b in CASES])
def test_sigterm_ends_the_program_within_2_s_with_its_stats(tmp_path: Path, name: str, behaviour: str) -> None:
    args = ["--stats", "stats", "--live"]
    if behaviour == "handshake_half_way":
        (tmp_path / "token").write_bytes(TOKEN)
        (tmp_path / "token").chmod(0o600)
        args += ["--token-file", "token"]
    server: Optional[socket.socket] = None
    if name in SENDERS:   # it dials us; a peer whose small window and segments fill at once
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(15)
        port = server.getsockname()[1]
        program = Program([name, "--connect", f"127.0.0.1:{port}", *SENDERS[name], *args], tmp_path)
    else:
        port = free_port()
        program = Program([name, "--listen", f"127.0.0.1:{port}", *RECEIVERS[name], *args], tmp_path)
        wait_listening(port)
    peer = Peer()
    try:
        BEHAVIOURS[behaviour](program, name, port, server, peer, tmp_path)
        sent_at = time.monotonic()
        program.proc.send_signal(signal.SIGTERM)
        try:
            code = program.proc.wait(15)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - sent_at
    finally:
        peer.close()
        if server is not None:
            server.close()
    assert code is not None and took <= STOP_BOUND_S, \
        f"{name} ended {took:.2f} s after SIGTERM (bound {STOP_BOUND_S} s)\n" + program.log()
    program.finish()
    stats = read_stats(tmp_path / "stats", name)
    assert stats["reason"] == "signal SIGTERM" and code == 0, (stats, program.log())
