"""Endpoints, the call-token handshake, and framing over real loopback sockets."""
import logging
import socket
import threading
import time

import pytest

from pi2pi import net, wire
from pi2pi.config import ConfigError
from tests.calls.sides import wait_for

TOKEN = b"0123456789abcdef-call-token"


@pytest.mark.parametrize("text, listening, want", [
    ("198.51.100.243:5010", False, ("198.51.100.243", 5010)),
    ("5010", True, ("0.0.0.0", 5010)),
    ("[::1]:1350", True, ("::1", 1350)),
])
def test_parse_endpoint(text, listening, want):
    assert net.parse_endpoint(text, listening) == want


@pytest.mark.parametrize("text, message", [
    ("5010", "want HOST:PORT"), ("gw:http", "not a number"), ("gw:70000", "outside"),
])
def test_parse_endpoint_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        net.parse_endpoint(text, listening=False)


def serve_once(listener, stop, out):
    out.append(listener.accept(stop))


def test_dialer_with_the_token_is_accepted_and_others_refused():
    listener = net.Listener("127.0.0.1", 0, TOKEN, "video")
    port = listener.address[1]
    stop = threading.Event()
    accepted = []
    server = threading.Thread(target=serve_once, args=(listener, stop, accepted))
    server.start()
    # A stranger without the token: challenged, answers garbage, gets closed.
    stranger = socket.create_connection(("127.0.0.1", port))
    stranger.recv(21)
    stranger.sendall(b"P2PR" + b"\0" * 32)
    assert stranger.recv(2) == b""
    # A dialer holding another call's token is refused as well.
    with pytest.raises(net.HandshakeError):
        sock = socket.create_connection(("127.0.0.1", port))
        net.respond(sock, b"another-call-token-000", "video")
    good = net.dial("127.0.0.1", port, stop, TOKEN, "video")
    server.join(5)
    assert good is not None and accepted and accepted[0] is not None
    accepted[0].sendall(b"hello")
    assert good.recv(5) == b"hello"
    for s in (good, accepted[0], stranger):
        s.close()
    listener.close()


def test_dial_retries_until_the_listener_answers(caplog):
    """The listener comes up only once the dialer has failed (net.dial logs its first failed
    attempt), and the dialer then connects: the connection can only come from a retry."""
    caplog.set_level(logging.INFO, logger="pi2pi.net")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    stop = threading.Event()
    result = []
    dialer = threading.Thread(target=lambda: result.append(net.dial("127.0.0.1", port, stop, None, "audio", net.Backoff(0.05, 0.1))))
    dialer.start()
    listener = None
    try:
        wait_for(lambda: [r for r in list(caplog.records) if r.name == "pi2pi.net"
                          and r.getMessage().startswith(f"dial 127.0.0.1:{port}: ")],
                 5, "a failed attempt logged", step_s=0.01)
        assert result == [], "dial returned after a failed attempt instead of retrying"
        listener = net.Listener("127.0.0.1", port, None, "audio")
        conn = wait_for(lambda: listener.poll(0.05), 5, "connection from the retrying dialer")
        dialer.join(5)
        assert result and result[0] is not None, result
        assert conn.getpeername() == result[0].getsockname()   # the dialer's own connection
        for s in (result[0], conn):
            s.close()
    finally:
        stop.set()
        dialer.join(5)
        if listener is not None:
            listener.close()


def test_dial_gives_up_when_stopped():
    stop = threading.Event()
    stop.set()
    assert net.dial("127.0.0.1", 9, stop, None, "audio") is None


def test_audio_framing_is_the_seeds_one_length_byte():
    assert wire.pack_audio_frame(b"\x01\x02\x03") == b"\x03\x01\x02\x03"
    with pytest.raises(ValueError):
        wire.pack_audio_frame(bytes(256))


def socket_pair_with(data: bytes):
    a, b = socket.socketpair()
    a.sendall(data)
    return a, b


def test_video_frame_round_trip_and_lies():
    a, b = socket_pair_with(wire.pack_video_frame(7, b"\xff\xd8jpeg\xff\xd9", 123))
    header, payload = wire.read_video_frame(b, max_length=1000, stall_s=1, first_wait_s=1)
    assert (header.seq, header.stamp_us, payload) == (7, 123, b"\xff\xd8jpeg\xff\xd9")
    # A length that lies: refused before anything is allocated for it.
    a.sendall(wire.VIDEO_HEADER.pack(wire.VIDEO_MAGIC, 8, 2**31, 0))
    with pytest.raises(wire.ProtocolError, match="outside"):
        wire.read_video_frame(b, max_length=1000, stall_s=1, first_wait_s=1)
    a.close()
    b.close()


def test_stalled_and_vanishing_peers():
    a, b = socket_pair_with(wire.VIDEO_HEADER.pack(wire.VIDEO_MAGIC, 1, 100, 0) + b"half")
    with pytest.raises(wire.Stalled):
        wire.read_video_frame(b, max_length=1000, stall_s=0.1, first_wait_s=1)
    a.sendall(b"\x05ab")
    a.close()
    with pytest.raises(wire.PeerClosed) as closed:
        wire.read_audio_frame(b, stall_s=1, first_wait_s=1)
    assert closed.value.partial
    b.close()


# ----- the mutual handshake, its deadline, backoff (issue 10) ---------------------------------

def impostor_listener(proof: bytes, version: int = net.VERSION):
    """A listener at the dialer's address that does not hold the call's token."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    got = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(net.CHALLENGE_MAGIC + bytes((version,)) + bytes(net.NONCE_SIZE))
            conn.settimeout(5)
            got.append(conn.recv(net.ANSWER_SIZE))
            conn.sendall(proof)
            try:
                while True:
                    data = conn.recv(4096)
                    if not data:
                        break
                    got.append(data)
            except OSError:
                pass

    threading.Thread(target=serve, daemon=True).start()
    return server, got


def test_the_dialer_refuses_a_listener_that_cannot_prove_the_token():
    server, got = impostor_listener(net.PROOF_MAGIC + bytes(net.DIGEST_SIZE))
    sock = socket.create_connection(server.getsockname())
    with pytest.raises(net.HandshakeError, match="could not prove this call's token"):
        net.respond(sock, TOKEN, "video")
    sock.close()
    server.close()
    # Positive control: the real listener's proof is accepted (test above: dial succeeds).
    assert len(got[0]) == net.ANSWER_SIZE and TOKEN not in b"".join(got)


def test_a_listener_of_the_first_handshake_version_is_named():
    server, _ = impostor_listener(b"OK", version=1)
    sock = socket.create_connection(server.getsockname())
    with pytest.raises(net.HandshakeError, match="version 1, not 2: update both Pis"):
        net.respond(sock, TOKEN, "audio")
    sock.close()
    server.close()


def is_open(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def test_a_slow_stranger_neither_delays_the_real_peer_nor_holds_its_handshake_open():
    listener = net.Listener("127.0.0.1", 0, TOKEN, "video", handshake_timeout_s=1.5)
    port = listener.address[1]
    stop = threading.Event()
    slow = socket.create_connection(("127.0.0.1", port))
    trickled = []
    accepted = []
    server = threading.Thread(target=lambda: accepted.append(listener.accept(stop)))
    server.start()
    slow.settimeout(5)
    assert len(slow.recv(net.CHALLENGE_SIZE)) == net.CHALLENGE_SIZE   # challenged, like anyone
    slow.settimeout(None)

    def trickle() -> None:   # one byte of an answer every 0.2 s: 52 bytes would take 10 s
        for byte in (b"P2PR" + bytes(48)):
            if stop.wait(0.2):
                return
            try:
                slow.send(bytes((byte,)))
            except OSError:
                return
            trickled.append(byte)

    threading.Thread(target=trickle, daemon=True).start()
    good = net.dial("127.0.0.1", port, stop, TOKEN, "video")
    server.join(5)
    assert good is not None and accepted and accepted[0] is not None
    assert is_open(slow), "the real peer got in only after the slow stranger was dropped"
    # The stranger's handshake has one deadline for all of it, however it trickles.
    again = threading.Thread(target=lambda: listener.accept(stop))
    again.start()
    deadline = time.monotonic() + 10
    while is_open(slow) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_open(slow) and len(trickled) < net.ANSWER_SIZE and listener.unproven == 1
    stop.set()
    again.join(5)
    for s in (good, accepted[0], slow):
        s.close()
    listener.close()


def test_a_token_file_others_may_read_is_refused(tmp_path):
    token = tmp_path / "token"
    token.write_text("a-call-token-of-enough-length\n")
    token.chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by others \(mode 0644\): chmod 600"):
        net.load_token(str(token))
    token.chmod(0o600)
    assert net.load_token(str(token)) == b"a-call-token-of-enough-length"


def test_backoff_doubles_to_its_cap_with_jitter():
    backoff = net.Backoff(0.5, 4.0)
    delays = [backoff.next() for _ in range(8)]
    for delay, nominal in zip(delays, (0.5, 1, 2, 4, 4, 4, 4, 4)):
        assert 0.75 * nominal <= delay <= 1.25 * nominal
    assert len({round(d, 6) for d in delays[3:]}) > 1   # jitter: not all in step
    backoff.reset()
    assert backoff.next() <= 0.625


class CountingStop(threading.Event):
    """A stop event that records each wait and ends the dial after a few."""

    def __init__(self, waits: int) -> None:
        super().__init__()
        self.delays = []
        self.left = waits

    def wait(self, timeout=None):
        self.delays.append(timeout)
        self.left -= 1
        if self.left <= 0:
            self.set()
        return self.is_set()


def test_failed_dials_back_off_instead_of_a_tight_loop():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    stop = CountingStop(5)
    assert net.dial("127.0.0.1", port, stop, None, "audio") is None
    assert len(stop.delays) == 5 and stop.delays[-1] > 2 * stop.delays[0], stop.delays


def silent_has_a_dialer(server: socket.socket) -> bool:
    """A connection waits in the listening socket's backlog (it is readable)."""
    import select
    return bool(select.select([server], [], [], 0)[0])


def test_a_stop_request_wins_over_a_silent_listener():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)   # the kernel completes the connection; nobody ever sends a challenge
    stop = threading.Event()
    result = []
    dialer = threading.Thread(target=lambda: result.append(net.dial("127.0.0.1", silent.getsockname()[1],
                                                                   stop, TOKEN, "video")))
    dialer.start()
    deadline = time.monotonic() + 5   # until the kernel has completed the dialer's connection:
    while not silent_has_a_dialer(silent) and time.monotonic() < deadline:   # it now waits for a challenge
        time.sleep(0.01)
    assert silent_has_a_dialer(silent)
    stop.set()
    dialer.join(2)
    assert not dialer.is_alive() and result == [None]
    silent.close()


def test_a_peer_that_drops_the_dialer_at_once_is_redialled_with_backoff():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted = []
    stop = threading.Event()

    def hang_up_at_once() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            accepted.append(time.monotonic())
            conn.close()

    acceptor = threading.Thread(target=hang_up_at_once, daemon=True)
    acceptor.start()
    link = net.PeerLink(f"127.0.0.1:{server.getsockname()[1]}", None, None, "video")
    started = time.monotonic()
    while time.monotonic() - started < 2.0:
        sock = link.next_peer(stop)
        sock.close()
        link.lost()
    stop.set()
    acceptor.join(2)
    server.close()
    # 0.5 + 1 s of backoff in the first 2 s: a tight loop would have made hundreds.
    assert 2 <= len(accepted) <= 5, len(accepted)


# ----- while a peer is served: the peer dialing again replaces it -------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proven_dial(port: int, token: bytes = TOKEN, stream: str = "video") -> socket.socket:
    """Dial and answer the challenge with the token (the listener's proof comes back
    only when it polls: run this beside the polling)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    net.respond(sock, token, stream)
    return sock


def poll_until(link: net.PeerLink, condition, timeout_s: float = 5.0) -> bool:
    """Ask superseded() at the programs' cadence until it says True or the condition holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if link.superseded():
            return True
        if condition():
            return False
        time.sleep(0.02)
    raise AssertionError("neither superseded nor the condition in time")


def test_with_a_token_the_peer_dialing_again_replaces_the_connection_served():
    link = net.PeerLink(None, f"127.0.0.1:{free_port()}", TOKEN, "video")
    port = link.address[1]
    stop = threading.Event()
    dialed = []
    first_dialer = threading.Thread(target=lambda: dialed.append(proven_dial(port)))
    first_dialer.start()
    served = link.next_peer(stop)
    first_dialer.join(5)
    assert served is not None and link.connections == 1 and not link.superseded()
    # A stranger: challenged, answers wrongly, closed and counted unproven; the peer stays served.
    stranger = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert not poll_until(link, lambda: link.listener.handshakes)   # taken in and challenged
    assert len(stranger.recv(net.CHALLENGE_SIZE)) == net.CHALLENGE_SIZE
    stranger.sendall(net.ANSWER_MAGIC + bytes(net.NONCE_SIZE + net.DIGEST_SIZE))
    assert not poll_until(link, lambda: link.unproven == 1)
    assert stranger.recv(1) == b"" and link.refused == 0 and link.peer is not None
    # The partner dials again (it gave the first connection up): superseded, and next_peer hands it out at once.
    again = threading.Thread(target=lambda: dialed.append(proven_dial(port)))
    again.start()
    assert poll_until(link, lambda: False)
    again.join(5)
    assert len(dialed) == 2 and link.superseded()   # asked again before next_peer: still True
    served.close()
    link.lost()
    started = time.monotonic()
    replacement = link.next_peer(stop)
    assert replacement is not None and time.monotonic() - started < 0.1
    assert link.reconnects == 1 and not link.superseded()
    replacement.sendall(b"new")
    assert dialed[1].recv(3) == b"new"
    for s in (replacement, stranger, *dialed):
        s.close()
    link.close()


def test_a_kept_replacement_is_closed_with_the_link():
    link = net.PeerLink(None, f"127.0.0.1:{free_port()}", TOKEN, "audio")
    port = link.address[1]
    stop = threading.Event()
    dialed = []
    threading.Thread(target=lambda: dialed.append(proven_dial(port, stream="audio"))).start()
    served = link.next_peer(stop)
    threading.Thread(target=lambda: dialed.append(proven_dial(port, stream="audio"))).start()
    assert poll_until(link, lambda: False)
    link.close()   # the program stops before it takes the new connection
    deadline = time.monotonic() + 5
    while len(dialed) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    dialed[1].settimeout(5)
    assert dialed[1].recv(1) == b""
    for s in (served, *dialed):
        s.close()


def test_without_a_token_other_dialers_are_refused_while_a_peer_is_served():
    link = net.PeerLink(None, f"127.0.0.1:{free_port()}", None, "video")
    port = link.address[1]
    stop = threading.Event()
    first = socket.create_connection(("127.0.0.1", port), timeout=5)
    served = link.next_peer(stop)
    other = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert not poll_until(link, lambda: link.refused == 1)
    assert other.recv(100) == b""   # closed without a word
    assert link.unproven == 0 and link.reconnects == 0
    for s in (first, served, other):
        s.close()
    link.close()


def test_a_flood_of_strangers_neither_blocks_poll_nor_keeps_the_partner_out():
    """poll() takes in at most MAX_PENDING dialers and reads at most MAX_PENDING
    handshakes per call, never waits; the strangers beyond MAX_PENDING are turned
    away (refused), the silent ones expire (unproven); the partner still gets in."""
    listener = net.Listener("127.0.0.1", 0, TOKEN, "video", handshake_timeout_s=1.0)
    port = listener.address[1]
    strangers = []
    for _ in range(3):   # as many at a time as the kernel's queue holds (listen's backlog)
        strangers += [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(net.MAX_PENDING)]
        time.sleep(0.05)
        started = time.monotonic()
        assert listener.poll() is None
        assert time.monotonic() - started < 0.1
    assert len(listener.handshakes) == net.MAX_PENDING and listener.refused == 2 * net.MAX_PENDING
    for stranger in strangers[net.MAX_PENDING:]:
        assert stranger.recv(1) == b""   # turned away without a challenge
    time.sleep(1.1)   # the silent strangers' handshakes expire
    dialed = []
    partner = threading.Thread(target=lambda: dialed.append(proven_dial(port)))
    partner.start()
    proven = None
    deadline = time.monotonic() + 5
    while proven is None and time.monotonic() < deadline:
        proven = listener.poll()
        time.sleep(0.02)
    partner.join(5)
    assert proven is not None and dialed
    assert listener.unproven == net.MAX_PENDING
    assert listener.refused + listener.unproven == len(strangers)
    for s in (proven, *dialed, *strangers):
        s.close()
    listener.close()


def test_tcp_info_is_read_where_the_kernel_has_it() -> None:
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()) as client:
            peer, _ = server.accept()
            with peer:
                client.sendall(b"x" * 10_000)
                got = 0
                while got < 10_000:
                    got += len(peer.recv(10_000))
                info = net.read_tcp_info(client)
    assert info is not None and info.retransmits == 0
    assert info.min_rtt_s is not None and 0 < info.min_rtt_s < 0.05
