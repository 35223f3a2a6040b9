"""A real camera's error paths: a clear error, stats written, no hang."""
from __future__ import annotations

import fcntl
import os
import socket
import threading
import time

import v4l2

from tests.hw import hwlib
from tests.hw.programs import Program, free_port, start

SIZE = "320x180"


def assert_clear_failure(camera: Program, timeout: float, *words: str) -> dict:
    """The camera ended by itself, non-zero, said why in one line, wrote its stats."""
    started = time.monotonic()
    status = camera.wait(timeout)
    log = camera.log()
    assert status != 0, f"the camera exited 0 after an error:\n{log}"
    assert "Traceback" not in log, log
    record = camera.stats()
    assert record["reason"].startswith("error:"), record["reason"]
    for word in words:
        assert word.lower() in record["reason"].lower(), record["reason"]
        assert word.lower() in log.lower(), log
    return {"record": record, "waited_s": time.monotonic() - started}


class Sink:
    """A TCP peer that takes whatever the camera sends, counting the bytes."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.received = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            while True:
                data = conn.recv(1 << 16)
                if not data:
                    return
                self.received += len(data)

    def close(self) -> None:
        self.server.close()


def test_camera_busy(vivid, results):
    # Another program streams from the camera: it owns the device's buffers.
    fd = os.open(vivid, os.O_RDWR)
    try:
        hwlib.set_format(fd, "YUYV", 320, 180)
        request = v4l2.v4l2_requestbuffers()
        request.count = 2
        request.type = v4l2.V4L2_BUF_TYPE_VIDEO_CAPTURE
        request.memory = v4l2.V4L2_MEMORY_MMAP
        fcntl.ioctl(fd, v4l2.VIDIOC_REQBUFS, request)
        camera = start("camera", ["--source", vivid, "--size", SIZE, "--fps", "10",
                                  "--connect", f"127.0.0.1:{free_port()}", "--duration", "120"], results)
        try:
            assert_clear_failure(camera, 60, vivid, "busy")
        finally:
            camera.stop()
    finally:
        os.close(fd)


def test_camera_disconnected_mid_stream(vivid, results):
    sink = Sink()
    camera = start("camera", ["--source", vivid, "--size", SIZE, "--fps", "10",
                              "--connect", f"127.0.0.1:{sink.port}", "--duration", "120"], results)
    try:
        deadline = time.monotonic() + 60
        while sink.received < 10000 and camera.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sink.received >= 10000, f"the camera never streamed:\n{camera.log()}"
        # vivid's Disconnect control: the device goes away as a USB camera
        # pulled out does; its node is unregistered.
        fd = os.open(vivid, os.O_RDWR)
        try:
            hwlib.set_control(fd, "Disconnect", 0)
        finally:
            os.close(fd)
        outcome = assert_clear_failure(camera, 30, vivid)
        assert outcome["waited_s"] < 15, f"the camera took {outcome['waited_s']:.1f} s to notice"
        assert outcome["record"]["frames"] >= 1
    finally:
        camera.stop()
        sink.close()


def test_camera_refuses_to_stream(vivid, results):
    # vivid's error injection: its next VIDIOC_STREAMON fails, as a camera
    # that cannot start (no bandwidth, a firmware fault) does.
    fd = os.open(vivid, os.O_RDWR)
    try:
        hwlib.set_control(fd, "Inject VIDIOC_STREAMON Error", 0)
    finally:
        os.close(fd)
    camera = start("camera", ["--source", vivid, "--size", SIZE, "--fps", "10",
                              "--connect", f"127.0.0.1:{free_port()}", "--duration", "120"], results)
    try:
        assert_clear_failure(camera, 60, vivid)
    finally:
        camera.stop()


def test_camera_asked_for_a_format_the_device_refuses(vivid, results):
    # vivid has no MJPEG: asking for it must fail at once, naming what it offers.
    camera = start("camera", ["--source", vivid, "--format", "MJPG", "--size", SIZE, "--fps", "10",
                              "--connect", f"127.0.0.1:{free_port()}", "--duration", "120"], results)
    try:
        assert_clear_failure(camera, 60, vivid)
        assert "does not offer MJPG" in camera.log()
    finally:
        camera.stop()


def test_camera_takes_the_size_the_device_offers(vivid, results):
    # 1000x700 is not one of vivid's webcam sizes: the driver picks its own.
    sink = Sink()
    camera = start("camera", ["--source", vivid, "--size", "1000x700", "--fps", "10",
                              "--connect", f"127.0.0.1:{sink.port}", "--duration", "4"], results)
    try:
        assert camera.wait(60) == 0, camera.log()
    finally:
        camera.stop()
        sink.close()
    log = camera.log()
    assert "instead of 1000x700" in log, log
    assert "Traceback" not in log, log
    record = camera.stats()
    assert record["reason"] == "duration reached"
    assert record["frames"] >= 1 and sink.received > 0
