"""A fake V4L2 camera: stands in for the kernel's ioctl/mmap layer (source.DeviceIO) only.

It answers the ioctls the camera makes with v4l2-python3's own structures,
records their order, and serves frames a test gives it: JPEGs from an
independent encoder (Pillow) as MJPEG buffers, or raw YUV buffers.
"""
from __future__ import annotations

import errno
from typing import Any, Dict, List, Optional

import v4l2

NAMES = {v4l2.VIDIOC_QUERYCAP: "QUERYCAP", v4l2.VIDIOC_ENUM_FMT: "ENUM_FMT", v4l2.VIDIOC_S_FMT: "S_FMT",
         v4l2.VIDIOC_S_PARM: "S_PARM", v4l2.VIDIOC_REQBUFS: "REQBUFS", v4l2.VIDIOC_QUERYBUF: "QUERYBUF",
         v4l2.VIDIOC_QBUF: "QBUF", v4l2.VIDIOC_DQBUF: "DQBUF", v4l2.VIDIOC_STREAMON: "STREAMON",
         v4l2.VIDIOC_STREAMOFF: "STREAMOFF"}
FD = 77


class FakeCamera:
    def __init__(self, formats: List[str], width: int, height: int, buffer_size: int,
                 bytesperline: Optional[int] = None) -> None:
        self.formats = [v4l2.v4l2_fourcc(*f) for f in formats]
        self.width, self.height = width, height
        self.buffer_size = buffer_size
        self.bytesperline = bytesperline
        self.calls: List[str] = []
        self.buffers: List[bytearray] = []
        self.queued: List[int] = []       # in the driver's queue, waiting to be filled
        self.done: List[int] = []         # filled, waiting for DQBUF
        self.used: Dict[int, int] = {}
        self.pending: List[bytes] = []    # frames the "sensor" produces on the next wait()
        self.pixelformat = 0
        self.timeperframe = (0, 0)
        self.streaming = False
        self.closed = False
        self.padding = 0                  # zero bytes a driver leaves after the frame in bytesused

    def open(self, path: str) -> int:
        self.calls.append("open")
        return FD

    def close(self, fd: int) -> None:
        assert fd == FD
        self.calls.append("close")
        self.closed = True

    def mmap(self, fd: int, length: int, offset: int) -> Any:
        assert fd == FD and offset == len(self.buffers) * 4096 * 1000 and length == self.buffer_size
        self.calls.append("mmap")
        self.buffers.append(bytearray(length))
        return self.buffers[-1]

    def wait(self, fd: int, timeout_s: float) -> bool:
        """The sensor delivers every pending frame into queued buffers, oldest first."""
        assert self.streaming
        while self.pending and self.queued:
            index = self.queued.pop(0)
            frame = self.pending.pop(0)
            self.buffers[index][: len(frame)] = frame
            self.used[index] = min(len(frame) + self.padding, len(self.buffers[index]))
            self.done.append(index)
        return bool(self.done)

    def ioctl(self, fd: int, request: int, arg: Any) -> None:
        assert fd == FD
        name = NAMES[request]
        self.calls.append(name)
        getattr(self, "_" + name.lower())(arg)

    def _querycap(self, cap: Any) -> None:
        cap.driver = b"fakecam"
        cap.card = b"Fake camera"
        cap.capabilities = v4l2.V4L2_CAP_VIDEO_CAPTURE | v4l2.V4L2_CAP_STREAMING

    def _enum_fmt(self, desc: Any) -> None:
        if desc.index >= len(self.formats):
            raise OSError(errno.EINVAL, "Invalid argument")
        desc.pixelformat = self.formats[desc.index]

    def _s_fmt(self, fmt: Any) -> None:
        assert fmt.type == v4l2.V4L2_BUF_TYPE_VIDEO_CAPTURE
        assert fmt.fmt.pix.pixelformat in self.formats
        self.pixelformat = fmt.fmt.pix.pixelformat
        fmt.fmt.pix.width, fmt.fmt.pix.height = self.width, self.height
        yuyv = self.pixelformat == v4l2.V4L2_PIX_FMT_YUYV
        fmt.fmt.pix.bytesperline = self.bytesperline or (self.width * 2 if yuyv else self.width)
        fmt.fmt.pix.sizeimage = self.buffer_size

    def _s_parm(self, parm: Any) -> None:
        tpf = parm.parm.capture.timeperframe
        self.timeperframe = (tpf.numerator, tpf.denominator)

    def _reqbufs(self, req: Any) -> None:
        assert req.memory == v4l2.V4L2_MEMORY_MMAP
        req.count = min(req.count, 3)
        self.count = req.count

    def _querybuf(self, buf: Any) -> None:
        assert buf.index < self.count
        buf.length = self.buffer_size
        buf.m.offset = buf.index * 4096 * 1000

    def _qbuf(self, buf: Any) -> None:
        assert buf.index not in self.queued and buf.index not in self.done
        self.queued.append(buf.index)

    def _dqbuf(self, buf: Any) -> None:
        if not self.done:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        index = self.done.pop(0)
        buf.index = index
        buf.bytesused = self.used[index]
        buf.flags = 0x2000  # monotonic timestamps, stamped "now"

        import time
        now = time.monotonic_ns() // 1000
        buf.timestamp.secs, buf.timestamp.usecs = divmod(now, 1_000_000)

    def _streamon(self, kind: Any) -> None:
        assert kind.value == v4l2.V4L2_BUF_TYPE_VIDEO_CAPTURE and len(self.queued) == self.count
        self.streaming = True

    def _streamoff(self, kind: Any) -> None:
        self.streaming = False
