"""A frame's whole deadline: a peer trickling bytes faster than the per-byte stall
limit, but too slowly for a real frame, is given up on within the deadline."""
from __future__ import annotations

import socket
import threading
import time
from typing import List

import pytest

from pi2pi import wire

STALL_S = 0.8      # no pause between the trickler's bytes comes near this
GAP_S = 0.1        # the trickler: one byte every 0.1 s
DEADLINE_S = 1.5   # the whole frame


class Trickler:
    """Sends `data` in pieces, `gap_s` apart, from a thread; notes when the first left."""

    def __init__(self, sock: socket.socket, data: bytes, piece: int = 1, gap_s: float = GAP_S,
                 delay_s: float = 0.0) -> None:
        self.sock, self.data, self.piece, self.gap_s, self.delay_s = sock, data, piece, gap_s, delay_s
        self.first_sent_at: List[float] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        time.sleep(self.delay_s)
        try:
            for start in range(0, len(self.data), self.piece):
                self.sock.sendall(self.data[start:start + self.piece])
                if not self.first_sent_at:
                    self.first_sent_at.append(time.monotonic())
                time.sleep(self.gap_s)
        except OSError:
            pass   # the reader gave up and the test closed the pair


def video_frame(length: int) -> bytes:
    return wire.pack_video_frame(1, b"\xff\xd8" + b"j" * (length - 4) + b"\xff\xd9", wire.now_us())


def test_a_video_frame_trickled_a_byte_at_a_time_is_given_up_within_its_deadline() -> None:
    peer, reader = socket.socketpair()
    trickler = Trickler(peer, video_frame(200))   # 220 bytes at 10 a second: 22 s if it were waited for
    with pytest.raises(wire.Stalled, match=r"within 1\.5 s of its first byte"):
        wire.read_video_frame(reader, 1000, STALL_S, first_wait_s=5, deadline_s=DEADLINE_S)
    took = time.monotonic() - trickler.first_sent_at[0]
    peer.close()
    reader.close()
    assert DEADLINE_S - 0.1 <= took <= DEADLINE_S + 0.7, f"given up {took:.2f} s after the first byte"


def test_an_audio_packet_trickled_a_byte_at_a_time_is_given_up_within_stall_s() -> None:
    """Audio's deadline is its stall limit: 256 bytes at most, on any real link at once."""
    peer, reader = socket.socketpair()
    trickler = Trickler(peer, wire.pack_audio_frame(bytes(range(60))))   # 6 s if it were waited for
    with pytest.raises(wire.Stalled, match=r"within 0\.8 s of its first byte"):
        wire.read_audio_frame(reader, STALL_S, first_wait_s=5)
    took = time.monotonic() - trickler.first_sent_at[0]
    peer.close()
    reader.close()
    assert STALL_S - 0.1 <= took <= STALL_S + 0.7, f"given up {took:.2f} s after the first byte"


def test_a_slow_frame_within_its_deadline_is_read_whole() -> None:
    """Pieces 0.2 s apart (under the stall limit), 0.8 s in all (under the deadline),
    after the reader had already waited 1 s for the frame to begin: the wait before
    the first byte is not part of the frame's deadline."""
    peer, reader = socket.socketpair()
    frame = video_frame(40_000)
    Trickler(peer, frame, piece=len(frame) // 5 + 1, gap_s=0.2, delay_s=1.0)
    header, payload = wire.read_video_frame(reader, 100_000, STALL_S, first_wait_s=5, deadline_s=DEADLINE_S)
    assert wire.VIDEO_HEADER.size + header.length == len(frame) and payload == frame[wire.VIDEO_HEADER.size:]
    peer.close()
    reader.close()


def test_a_pause_longer_than_the_stall_limit_is_still_a_stall() -> None:
    peer, reader = socket.socketpair()
    peer.sendall(video_frame(200)[:30])
    with pytest.raises(wire.Stalled, match="stalled after 10 of 200 bytes"):
        wire.read_video_frame(reader, 1000, 0.2, first_wait_s=5, deadline_s=DEADLINE_S)
    peer.close()
    reader.close()
