"""Endpoints, the call-token handshake, and framing over real loopback sockets."""
import socket
import threading

import pytest

from pi2pi import net, wire
from pi2pi.config import ConfigError

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


def test_dial_retries_until_the_listener_answers():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    stop = threading.Event()
    result = []
    dialer = threading.Thread(target=lambda: result.append(net.dial("127.0.0.1", port, stop, None, "audio", retry_s=0.05)))
    dialer.start()
    threading.Event().wait(0.2)  # the dialer is failing and retrying by now
    listener = net.Listener("127.0.0.1", port, None, "audio")
    conn = listener.accept(stop)
    dialer.join(5)
    assert result and result[0] is not None and conn is not None
    for s in (result[0], conn):
        s.close()
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
