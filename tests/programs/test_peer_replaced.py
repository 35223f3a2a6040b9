"""With the call's token, the peer dialing again replaces the connection a listener serves.

The partner dials only after it has given its old connection up, so a new
connection that proves the token means the old one is dead, even when the
listening end cannot tell yet (a tunnel that keeps the connection open, a
half-open TCP connection after the far end vanished). Here the first connection
stays open and silent, as such a dead one does, and each stall limit is far
above the time allowed for the switch, so only the new connection can end the
old one: each listening program closes the first connection, serves the second
within about a second, and counts a reconnect.
"""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Callable, List, Optional

import pytest

from pi2pi import net, wire
from tests.audio.harness import wait_listening
from tests.audio.test_audio_call import our_packets, send_paced
from tests.video.helpers import Program, free_port, read_stats
from tests.video.test_video_hostile import GEOMETRY, header, pattern_jpeg, shown

TOKEN = b"replaced-test-token-0123456789abcdef"
SWITCH_S = 1.5    # "about a second": two of the programs' 0.2 s polls make the handshake, then the media
STALL_S = "30"    # every stall limit: far beyond the switch


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_bytes(TOKEN)
    path.chmod(0o600)
    return path


def start(tmp_path: Path, program: str, *args: str) -> Program:
    port = free_port()
    running = Program([program, "--listen", f"127.0.0.1:{port}", "--stats", "stats", "--token-file", "token",
                       *args], tmp_path)
    wait_listening(port)
    running.port = port  # type: ignore[attr-defined]
    return running


def proven_dial(port: int, stream: str) -> socket.socket:
    """The partner's connection: dial and prove the call's token (net's own handshake)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    net.respond(sock, TOKEN, stream)
    net.tune(sock)
    return sock


def wait_until(condition: Callable[[], bool], within_s: float, what: str, program: Program) -> float:
    """Poll the condition; how long it took (fails past within_s)."""
    started = time.monotonic()
    while not condition():
        assert program.proc.poll() is None, f"{what}: the program ended\n" + program.log()
        assert time.monotonic() - started < within_s, f"not within {within_s} s: {what}\n" + program.log()
        time.sleep(0.02)
    return time.monotonic() - started


def closed_by_program(sock: socket.socket, within_s: float) -> bool:
    """Read (and discard) whatever is left until the program's end closes: True if it does in time."""
    deadline = time.monotonic() + within_s
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if not sock.recv(1 << 16):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        pass
    return False


def live(tmp_path: Path, program: str) -> dict:
    try:
        return json.loads((tmp_path / "stats" / f"{program}.live.json").read_text())
    except (OSError, ValueError):
        return {}


def our_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def finish(program: Program, name: str, tmp_path: Path) -> dict:
    assert program.stop() == 0, program.log()
    assert "Traceback" not in program.log()
    program.wait_for("the peer dialed again: its new connection replaces this one")
    return read_stats(tmp_path / "stats", name)


def test_the_viewer_paints_the_peers_new_connection_and_closes_the_old(tmp_path: Path, token_file: Path) -> None:
    viewer = start(tmp_path, "viewer", "--fb", "fb.raw", "--fb-geometry", GEOMETRY, "--peer-timeout-s", STALL_S,
                   "--stall-s", STALL_S, "--frame-deadline-s", STALL_S)
    first = proven_dial(viewer.port, "video")  # type: ignore[attr-defined]
    frame = pattern_jpeg("first-peer", 1)
    first.sendall(header(1, len(frame)) + frame)
    wait_until(lambda: shown(tmp_path) == ("FIRST-PEER", 1), 5, "the first peer's frame painted", viewer)
    # The first connection now stays open and silent, like a dead link; the partner dials again.
    started = time.monotonic()
    second = proven_dial(viewer.port, "video")  # type: ignore[attr-defined]
    frame = pattern_jpeg("second-peer", 2)
    second.sendall(header(2, len(frame)) + frame)
    wait_until(lambda: shown(tmp_path) == ("SECOND-PEER", 2), SWITCH_S - (time.monotonic() - started),
               "the second connection's frame painted", viewer)
    assert closed_by_program(first, 0.5), "the viewer left the first connection open\n" + viewer.log()
    frame = pattern_jpeg("second-peer", 3)
    second.sendall(header(3, len(frame)) + frame)
    wait_until(lambda: shown(tmp_path) == ("SECOND-PEER", 3), 5, "the second connection still served", viewer)
    second.close()
    stats = finish(viewer, "viewer", tmp_path)
    assert stats["reconnects"] == 1 and stats["frames"] == 3 and stats["received"] == 3, stats
    assert stats["unproven"] == 0 and stats["refused"] == 0 and stats["corrupt"] == 0, stats


def test_listen_plays_the_peers_new_connection_and_closes_the_old(tmp_path: Path, token_file: Path) -> None:
    listen = start(tmp_path, "listen", "--device", "null", "--pace", "clock", "--live", "--stall-s", STALL_S)
    first = proven_dial(listen.port, "audio")  # type: ignore[attr-defined]
    send_paced(first, our_packets(0.5, 440.0))   # 25 packets
    wait_until(lambda: live(tmp_path, "listen").get("peer") == our_address(first), 5, "the first peer served",
               listen)
    # The first connection now stays open and silent, like a dead link; the partner dials again.
    started = time.monotonic()
    second = proven_dial(listen.port, "audio")  # type: ignore[attr-defined]
    wait_until(lambda: live(tmp_path, "listen").get("peer") == our_address(second),
               SWITCH_S - (time.monotonic() - started), "the second connection served", listen)
    assert closed_by_program(first, 0.5), "listen left the first connection open\n" + listen.log()
    send_paced(second, our_packets(1.0, 880.0))   # 50 packets
    wait_until(lambda: live(tmp_path, "listen").get("packets") == 75, 5, "the second connection's packets counted",
               listen)
    second.close()
    stats = finish(listen, "listen", tmp_path)
    assert stats["packets"] == 75 and stats["reconnects"] == 1 and stats["stalls"] == 0, stats
    assert stats["unproven"] == 0 and stats["refused"] == 0, stats


def read_video_frames(sock: socket.socket, count: int) -> List[int]:
    """The sequence numbers of the next `count` frames on the connection."""
    seqs = []
    for _ in range(count):
        frame_header, _ = wire.read_video_frame(sock, 4 << 20, stall_s=5, first_wait_s=5)
        seqs.append(frame_header.seq)
    return seqs


def test_the_camera_sends_to_the_peers_new_connection_and_closes_the_old(tmp_path: Path, token_file: Path) -> None:
    camera = start(tmp_path, "camera", "--source", "testpattern", "--size", "320x240", "--fps", "20",
                   "--stall-s", STALL_S)
    first = proven_dial(camera.port, "video")  # type: ignore[attr-defined]
    before = read_video_frames(first, 3)
    # The first connection's reader now goes silent, like a dead link; the partner dials again.
    started = time.monotonic()
    second = proven_dial(camera.port, "video")  # type: ignore[attr-defined]
    after = read_video_frames(second, 1)
    assert time.monotonic() - started < SWITCH_S, camera.log()
    after += read_video_frames(second, 9)
    assert after == sorted(after) and after[0] > before[-1], (before, after)
    assert closed_by_program(first, 0.5), "the camera left the first connection open\n" + camera.log()
    second.close()
    stats = finish(camera, "camera", tmp_path)
    assert stats["reconnects"] == 1 and stats["unproven"] == 0 and stats["refused"] == 0, stats


def read_audio_packets(sock: socket.socket, count: int) -> Optional[int]:
    for _ in range(count):
        wire.read_audio_frame(sock, stall_s=5, first_wait_s=5)
    return count


def test_talk_sends_to_the_peers_new_connection_and_closes_the_old(tmp_path: Path, token_file: Path) -> None:
    talk = start(tmp_path, "talk", "--device", "testsignal", "--stall-s", STALL_S)
    first = proven_dial(talk.port, "audio")  # type: ignore[attr-defined]
    read_audio_packets(first, 10)
    # The first connection's reader now goes silent, like a dead link; the partner dials again.
    started = time.monotonic()
    second = proven_dial(talk.port, "audio")  # type: ignore[attr-defined]
    read_audio_packets(second, 1)
    assert time.monotonic() - started < SWITCH_S, talk.log()
    read_audio_packets(second, 25)
    assert closed_by_program(first, 0.5), "talk left the first connection open\n" + talk.log()
    second.close()
    stats = finish(talk, "talk", tmp_path)
    assert stats["reconnects"] == 1 and stats["unproven"] == 0 and stats["refused"] == 0, stats
