"""Newest frame wins: the one-frame slot between the camera's (or viewer's) two threads."""
from __future__ import annotations

import pytest
import socket
import threading
import time

from pi2pi import wire
from pi2pi.net import peer_hung_up, unacked_bytes
from pi2pi.video.link import LatestSlot


def test_newer_item_replaces_an_untaken_one() -> None:
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True       # 1 was never taken: dropped
    assert slot.take(0) == 2
    assert slot.take(0) is None
    assert slot.put(3) is False


def test_take_waits_for_a_put_from_another_thread() -> None:
    slot: LatestSlot[str] = LatestSlot()
    threading.Timer(0.05, slot.put, args=("frame",)).start()
    started = time.monotonic()
    assert slot.take(2.0) == "frame"
    assert time.monotonic() - started < 1.0
    assert slot.take(0.05) is None


def test_video_frames_cross_a_socket_and_the_sender_sees_acknowledgement_and_hang_up() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    try:
        client = socket.create_connection(server.getsockname())
        conn, _ = server.accept()
        client.sendall(wire.pack_video_frame(7, b"\xff\xd8payload\xff\xd9", 123))
        header, payload = wire.read_video_frame(conn, 1000, 1.0)
        assert (header.seq, header.stamp_us, payload) == (7, 123, b"\xff\xd8payload\xff\xd9")
        deadline = time.monotonic() + 2
        while unacked_bytes(client) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert unacked_bytes(client) == 0
        assert not peer_hung_up(client)
        conn.close()
        deadline = time.monotonic() + 2
        while not peer_hung_up(client):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        client.close()
    finally:
        server.close()


def test_in_flight_budget_follows_the_link_speed() -> None:
    from pi2pi.video.camera import DrainRate, Sender

    drain = DrainRate()
    drain.update(0.0, 0, busy=True)
    drain.update(0.1, 41_600, busy=True)      # a 3.3 Mbit/s link: 416 kB/s while data waited
    drain.update(0.2, 50_000, busy=False)     # an idle poll tells nothing and changes nothing
    assert drain.bps == pytest.approx(416_000)
    sender = Sender.__new__(Sender)           # only the budget's arithmetic, no peer
    sender.inflight, sender.queue_s, sender.last_size = 1.5, 1 / 30, 27_700
    assert sender.allowance(None) == pytest.approx(1.5 * 27_700)        # not measured yet: the most
    assert sender.allowance(416_000) == pytest.approx(416_000 / 30)     # slow link: one interval's worth
    assert sender.allowance(50e6) == pytest.approx(1.5 * 27_700)        # fast link: capped
    assert sender.allowance(100_000) == pytest.approx(0.5 * 27_700)     # never below half a frame


def test_waiting_for_the_budget_looks_again_when_the_excess_should_have_drained() -> None:
    from pi2pi.video.camera import BUDGET_POLL_S, budget_poll_s

    low, high = BUDGET_POLL_S
    assert budget_poll_s(4_160, 416_000, adapting=False) == pytest.approx(0.010)   # 10 ms of this link
    assert budget_poll_s(2_080, 416_000, adapting=False) == pytest.approx(0.005)
    assert budget_poll_s(100, 416_000, adapting=False) == low       # never busier than every 1 ms
    assert budget_poll_s(1e6, 416_000, adapting=False) == high      # nor later than 10 ms
    assert budget_poll_s(4_160, None, adapting=False) == low        # not measured yet
    assert budget_poll_s(4_160, 416_000, adapting=True) == low      # the adapter's gauge wants every look
