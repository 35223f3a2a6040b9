"""A running viewer against strangers' bytes: each bad peer gets a log line and a closed
connection, is counted, and the viewer goes on to paint the next good frame."""
from __future__ import annotations

import io
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import pytest
import turbojpeg
from PIL import Image

from pi2pi import net, wire
from tests.video.helpers import Program, fb_rgb, free_port, label_at, read_stats, rss_kb

TOKEN = b"hostile-test-token-0123456789"
GEOMETRY = "320x240x32"
STALL_S = 0.5            # the viewer's --stall-s here
FRAME_DEADLINE_S = 2.0   # and its --frame-deadline-s


def pillow_jpeg(color=(200, 30, 30), size=(64, 48), progressive: bool = False) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "JPEG", quality=80, progressive=progressive)
    return out.getvalue()


def jpeg_scans(data: bytes) -> List[Tuple[int, int]]:
    """Where each scan of a JPEG starts and ends: its SOS segment and the entropy-coded data after it."""
    scans, i = [], 2
    while data[i + 1] != 0xD9:
        end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if data[i + 1] == 0xDA:
            while data[end] != 0xFF or data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                end += 1
            scans.append((i, end))
        i = end
    return scans


def many_scans_jpeg(size=(640, 480), scans: int = 5000) -> bytes:
    """A progressive JPEG whose last scan is repeated until it has `scans` of them:
    libjpeg only warns about the repeats and decodes every one (61 kB at 640x480)."""
    data = pillow_jpeg((90, 140, 200), size, progressive=True)
    found = jpeg_scans(data)
    start, end = found[-1]
    return data[:end] + data[start:end] * (scans - len(found)) + data[end:]


def pattern_jpeg(label: str, seq: int) -> bytes:
    from pi2pi.video.jpeg import SAMP_420, Codec
    from pi2pi.video.testpattern import TestPattern

    return Codec.open().encode_yuv(TestPattern(320, 240, label).render(seq), 320, 240, 80, SAMP_420)


def dial(port: int, token: Optional[bytes] = TOKEN) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if token is not None:
        net.respond(sock, token, "video")
    return sock


def closed_by_viewer(sock: socket.socket, within_s: float = 5.0) -> bool:
    """True when the viewer closes its end (EOF or reset) within the time."""
    sock.settimeout(within_s)
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    finally:
        sock.close()


def header(seq: int, length: int, magic: bytes = wire.VIDEO_MAGIC) -> bytes:
    return struct.pack(">4sIIQ", magic, seq, length, wire.now_us())


def huge_dimensions_jpeg() -> bytes:
    """A real JPEG whose frame header claims 60000x60000 pixels."""
    data = bytearray(pillow_jpeg())
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 60000, 60000)
    return bytes(data)


def start_viewer(tmp_path: Path, token: bool = True) -> Program:
    """A listening viewer on a file framebuffer; with the call's token unless told otherwise."""
    port = free_port()
    token_args: List[str] = []
    if token:
        (tmp_path / "token").write_bytes(TOKEN)
        (tmp_path / "token").chmod(0o600)
        token_args = ["--token-file", "token"]
    program = Program(["viewer", "--listen", f"127.0.0.1:{port}", "--fb", "fb.raw", "--fb-geometry", GEOMETRY,
                       "--stats", "stats", *token_args, "--stall-s", str(STALL_S),
                       "--frame-deadline-s", str(FRAME_DEADLINE_S), "--max-frame", "1000000"],
                      tmp_path)
    program.wait_for("listening on")
    program.port = port  # type: ignore[attr-defined]
    return program


@pytest.fixture
def viewer(tmp_path: Path):
    program = start_viewer(tmp_path)
    yield program
    if program.proc.poll() is None:
        program.proc.kill()
        program.proc.wait()


def shown(tmp_path: Path) -> Optional[Tuple[str, int]]:
    """The label (host, frame number) on the viewer's file framebuffer; None while it shows none."""
    try:
        return label_at(fb_rgb(tmp_path / "fb.raw", GEOMETRY), (0, 0), (320, 240), (320, 240))
    except ValueError:
        return None


def wait_shown(tmp_path: Path, viewer: Program, label: str, seq: int, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while shown(tmp_path) != (label.upper(), seq):
        assert time.monotonic() < deadline, f"{label} #{seq} was never painted:\n" + viewer.log()
        time.sleep(0.05)


def send_good_frame_and_check(viewer: Program, tmp_path: Path, label: str, seq: int) -> None:
    sock = dial(viewer.port)  # type: ignore[attr-defined]
    frame = pattern_jpeg(label, seq)
    sock.sendall(header(seq, len(frame)) + frame)
    wait_shown(tmp_path, viewer, label, seq)
    sock.close()
    viewer.wait_for("the peer closed the connection", count=seq)


Case = Callable[[int], socket.socket]


def bad_magic(port: int) -> socket.socket:
    sock = dial(port)
    sock.sendall(header(1, 100, magic=b"GET ") + b"x" * 100)
    return sock


def length_beyond_maximum(port: int) -> socket.socket:
    sock = dial(port)
    sock.sendall(header(1, 0xFFFFFFF0))
    return sock


def not_a_jpeg(port: int) -> socket.socket:
    sock = dial(port)
    payload = b"<html>this is not a picture</html>" * 10
    sock.sendall(header(1, len(payload)) + payload)
    return sock


def garbage_inside_markers(port: int) -> socket.socket:
    sock = dial(port)
    payload = b"\xff\xd8" + bytes(range(256)) * 4 + b"\xff\xd9"
    sock.sendall(header(1, len(payload)) + payload)
    return sock


def claims_huge_dimensions(port: int) -> socket.socket:
    sock = dial(port)
    payload = huge_dimensions_jpeg()
    sock.sendall(header(1, len(payload)) + payload)
    return sock


def stalls_mid_frame(port: int) -> socket.socket:
    sock = dial(port)
    payload = pillow_jpeg()
    sock.sendall(header(1, len(payload)) + payload[:50])
    return sock  # and sends nothing more: the viewer gives up after --stall-s


def disconnects_mid_frame(port: int) -> socket.socket:
    sock = dial(port)
    payload = pillow_jpeg()
    sock.sendall(header(1, len(payload)) + payload[:50])
    sock.shutdown(socket.SHUT_WR)
    return sock


def thousands_of_scans(port: int) -> socket.socket:
    sock = dial(port)
    payload = many_scans_jpeg()
    sock.sendall(header(1, len(payload)) + payload)
    return sock


def wrong_token(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    with pytest.raises(net.HandshakeError):
        net.respond(sock, b"not-this-calls-token-at-all", "video")
    return sock


def no_token(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    payload = pillow_jpeg()
    sock.sendall(header(1, len(payload)) + payload)  # the seed's bare protocol: no answer to the challenge
    return sock


CASES = [
    (bad_magic, "bad frame magic"),
    (length_beyond_maximum, "outside 1..1000000"),
    (not_a_jpeg, "is not a JPEG"),
    (garbage_inside_markers, "unreadable JPEG header"),
    (claims_huge_dimensions, "beyond 4096x4096"),
    (thousands_of_scans, "5000 scans, beyond the limit"),
    (stalls_mid_frame, "stalled after"),
    (disconnects_mid_frame, "mid-frame"),
    (wrong_token, "not this call's token"),
    (no_token, "not this call's token"),
]


def test_each_bad_peer_is_logged_closed_and_counted_and_the_viewer_keeps_serving(viewer: Program,
                                                                                 tmp_path: Path) -> None:
    for number, (case, message) in enumerate(CASES, start=1):
        sock = case(viewer.port)  # type: ignore[attr-defined]
        assert closed_by_viewer(sock), f"{case.__name__}: connection left open\n" + viewer.log()
        line = viewer.wait_for(message)
        assert "WARNING" in line, line
        send_good_frame_and_check(viewer, tmp_path, f"good-after-{number}", number)
    rss = rss_kb(viewer.proc.pid)
    assert rss < 300_000, f"viewer grew to {rss} kB"  # a length field allocated nothing
    assert viewer.stop() == 0
    stats = read_stats(tmp_path / "stats", "viewer")
    assert stats["corrupt"] + stats["unproven"] == len(CASES) and stats["unproven"] == 2   # the token cases
    assert stats["frames"] == len(CASES) and stats["reconnects"] == 2 * len(CASES) - 1 - 2
    assert "Traceback" not in viewer.log()


def test_strangers_dialing_while_a_peer_is_served_fail_the_handshake_and_the_peer_stays(viewer: Program,
                                                                                        tmp_path: Path) -> None:
    """With the call's token, whoever dials while a peer is served is challenged: a
    stranger fails (unproven) and the peer served is not disturbed."""
    first = dial(viewer.port)  # type: ignore[attr-defined]
    frame = pattern_jpeg("first-peer", 1)
    first.sendall(header(1, len(frame)) + frame)
    wait_shown(tmp_path, viewer, "first-peer", 1)
    silent = socket.create_connection(("127.0.0.1", viewer.port), timeout=5)  # type: ignore[attr-defined]
    assert silent.recv(net.CHALLENGE_SIZE)[:4] == net.CHALLENGE_MAGIC   # challenged, then says nothing
    with pytest.raises(net.HandshakeError):
        dial(viewer.port, token=b"another-call-token-0123456789")  # type: ignore[attr-defined]
    viewer.wait_for("not this call's token")
    for seq in (2, 3):   # the first peer is still served, the silent stranger pending meanwhile
        frame = pattern_jpeg("first-peer", seq)
        first.sendall(header(seq, len(frame)) + frame)
        wait_shown(tmp_path, viewer, "first-peer", seq)
    assert closed_by_viewer(silent, within_s=net.HANDSHAKE_TIMEOUT_S + 2)   # at its handshake's deadline
    viewer.wait_for("within the handshake's deadline")
    frame = pattern_jpeg("first-peer", 4)
    first.sendall(header(4, len(frame)) + frame)
    wait_shown(tmp_path, viewer, "first-peer", 4)
    first.close()
    assert viewer.stop() == 0
    stats = read_stats(tmp_path / "stats", "viewer")
    assert stats["unproven"] == 2 and stats["refused"] == 0 and stats["reconnects"] == 0
    assert stats["corrupt"] == 0 and stats["frames"] == 4


def test_without_a_token_a_second_dialer_is_refused_while_a_peer_is_served(tmp_path: Path) -> None:
    """The seed's bare protocol cannot tell the partner from a stranger: a second
    dialer is closed without a word (refused), the first peer keeps being served."""
    viewer = start_viewer(tmp_path, token=False)
    first = dial(viewer.port, token=None)  # type: ignore[attr-defined]
    frame = pattern_jpeg("first-peer", 1)
    first.sendall(header(1, len(frame)) + frame)
    wait_shown(tmp_path, viewer, "first-peer", 1)
    second = socket.create_connection(("127.0.0.1", viewer.port), timeout=5)  # type: ignore[attr-defined]
    second.settimeout(5)
    assert second.recv(100) == b""   # not even a challenge
    second.close()
    viewer.wait_for("already serving a peer")
    frame = pattern_jpeg("first-peer", 2)
    first.sendall(header(2, len(frame)) + frame)  # the first peer is still served
    wait_shown(tmp_path, viewer, "first-peer", 2)
    first.close()
    assert viewer.stop() == 0
    stats = read_stats(tmp_path / "stats", "viewer")
    assert stats["refused"] == 1 and stats["unproven"] == 0 and stats["reconnects"] == 0
    assert stats["corrupt"] == 0 and stats["frames"] == 2


def test_a_new_frame_size_every_frame_does_not_grow_the_viewer(viewer: Program, tmp_path: Path) -> None:
    """Each size a peer claims used to keep its own decode buffer forever."""
    sizes = [(w, w * 3 // 4) for w in range(120, 420)]   # 300 sizes, each decoded into its own shape
    frames = [pillow_jpeg((w % 256, 80, 160), size) for w, size in zip(range(len(sizes)), sizes)]
    sock = dial(viewer.port)  # type: ignore[attr-defined]
    pid = viewer.proc.pid
    for seq, frame in enumerate(frames, start=1):
        sock.sendall(header(seq, len(frame)) + frame)
        if seq == 30:
            deadline = time.monotonic() + 5   # wait until the viewer has taken those in
            while net.unacked_bytes(sock) and time.monotonic() < deadline:
                time.sleep(0.01)
            settled = rss_kb(pid)
        time.sleep(0.003)   # about 300 frames a second: most are painted, not skipped
    deadline = time.monotonic() + 10
    while net.unacked_bytes(sock) and time.monotonic() < deadline:
        time.sleep(0.01)
    sock.close()
    viewer.wait_for("the peer closed the connection")
    peak = rss_kb(pid, "VmHWM")
    assert viewer.stop() == 0
    stats = read_stats(tmp_path / "stats", "viewer")
    assert stats["received"] == len(frames) and stats["frames"] >= len(frames) // 2, stats
    # 150+ painted sizes x up to 300 kB of buffer each would be 40 MB and more.
    assert peak - settled < 12_000, f"the viewer grew from {settled} kB to a peak of {peak} kB"


def test_a_peer_trickling_a_frame_is_dropped_at_the_frame_deadline_and_a_camera_then_gets_in(
        viewer: Program, tmp_path: Path) -> None:
    """One byte every 0.2 s never pauses for --stall-s, but the frame is not whole
    --frame-deadline-s after its first byte: that peer used to hold the viewer for good."""
    sock = dial(viewer.port)  # type: ignore[attr-defined]
    payload = pillow_jpeg()
    frame = header(1, len(payload)) + payload   # 2 minutes at this pace
    first_sent: list = []
    done = threading.Event()

    def trickle() -> None:
        for byte in frame:
            try:
                sock.send(bytes((byte,)))
            except OSError:
                return   # the viewer (or the test) closed it
            if not first_sent:
                first_sent.append(time.monotonic())
            if done.wait(STALL_S * 0.4):
                return

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    closed = closed_by_viewer(sock, within_s=FRAME_DEADLINE_S + 5)
    dropped_after = time.monotonic() - first_sent[0]
    done.set()
    trickler.join(2)
    assert closed, "the trickling peer was never dropped\n" + viewer.log()
    assert FRAME_DEADLINE_S - 0.1 <= dropped_after <= FRAME_DEADLINE_S + 1.5, \
        f"dropped {dropped_after:.2f} s after its first byte (deadline {FRAME_DEADLINE_S} s)"
    assert "WARNING" in viewer.wait_for(f"did not finish the frame within {FRAME_DEADLINE_S:.1f} s")

    port = viewer.port  # type: ignore[attr-defined]
    camera = Program(["camera", "--connect", f"127.0.0.1:{port}", "--token-file", "token",
                      "--source", "testpattern", "--size", "320x240", "--fps", "10", "--label", "real-camera",
                      "--stats", "camera-stats"], tmp_path)
    deadline = time.monotonic() + 10
    while True:
        try:
            if label_at(fb_rgb(tmp_path / "fb.raw", GEOMETRY), (0, 0), (320, 240), (320, 240))[0] == "REAL-CAMERA":
                break
        except ValueError:
            pass
        assert time.monotonic() < deadline, "the camera's frames were never painted:\n" + viewer.log() + \
            "\n" + camera.log()
        time.sleep(0.05)
    assert camera.stop() == 0, camera.log()
    assert viewer.stop() == 0, viewer.log()
    stats = read_stats(tmp_path / "stats", "viewer")
    assert stats["corrupt"] == 1 and stats["frames"] >= 1 and stats["reconnects"] == 1, stats


def test_a_jpeg_of_thousands_of_scans_is_refused_at_once_and_normal_ones_still_decode() -> None:
    """It decoded, with a warning, in about 2 s (4096x4096: 10 s for 600 scans)."""
    from pi2pi.video.jpeg import Codec, JpegError

    codec = Codec.open()
    crafted = many_scans_jpeg()
    assert len(jpeg_scans(crafted)) == 5000
    started = time.perf_counter()
    with pytest.raises(JpegError, match="5000 scans"):
        codec.decode(crafted, turbojpeg.TJPF_BGRX, None)
    took = time.perf_counter() - started
    assert took < 0.1, f"refusing took {took:.3f} s"
    for progressive, scans in ((False, 1), (True, 10)):
        normal = pillow_jpeg((90, 140, 200), (320, 240), progressive=progressive)
        assert len(jpeg_scans(normal)) == scans
        picture, warnings = codec.decode(normal, turbojpeg.TJPF_RGBX, None)
        assert picture.shape == (240, 320, 4) and warnings == []
        assert abs(picture[..., :3].reshape(-1, 3).mean(axis=0) - (90, 140, 200)).max() < 3
