"""Fuzz target `video`: a peer's bytes -> frames -> JPEG checks -> pixels, as the viewer takes them.

One input = one connection: an option byte, then the bytes the camera would
send (or, with option bit 3, one JPEG that the harness frames, so that every
mutation of it reaches the decoder instead of breaking the framing). They go
into one end of a socketpair; the other end goes through the viewer's own
steps (viewer.Receiver.serve): `wire.read_video_frame` (which parses each
header with `wire.parse_video_header`), `jpeg.check_jpeg`,
`link.newer_frame_waiting`, then `viewer.Painter.paint`, which decodes with
TurboJPEG (header, scale to fit, decode into its buffer) and paints a file
framebuffer of 16, 24 or 32 bpp (the option byte's low bits).

Allowed, because they are documented and the viewer handles each by closing
the connection: ProtocolError (bad magic, a length beyond the limit),
PeerClosed (the end of the input, mid-frame or not), Stalled and
socket.timeout (with the keep-open bits, common.keep_open, the peer keeps the
connection open: a frame that stops, no next frame), JpegError from
check_jpeg. Painter.paint returns False for a JPEG that does not decode: it
may raise nothing. newer_frame_waiting returns a bool and may raise nothing.
Every read must end within its own stall/wait deadline.

Seeds: camera-like frames (the project's test pattern encoded by TurboJPEG from
I420, as the camera does) and Pillow JPEGs of other kinds (progressive,
grayscale, 4:4:4, CMYK, restart markers, odd sizes, larger than the screen),
one to three frames per connection.
"""
from __future__ import annotations

import io
import socket
from pathlib import Path
from typing import Callable, Dict, List

import atheris
import numpy as np
from PIL import Image

from tests.fuzz import common

with atheris.instrument_imports(include=common.INSTRUMENTED):
    from pi2pi import wire
    from pi2pi.video import framebuffer, jpeg, link, testpattern, viewer

MAX_LEN = 24 << 10
MAX_FRAME = 64 << 10                  # the viewer's --max-frame (its minimum is 1 KiB)
STALL_S = 0.002                       # small: an input that keeps the connection open costs this
FIRST_WAIT_S = 0.002
FRAME_DEADLINE_S = 0.004              # the viewer's --frame-deadline-s: a frame whole this long after its first byte
GEOMETRIES = ("160x120x32", "160x120x24", "160x120x16")
AT = (8, 4)
FRAMED_BY_HARNESS = 0x08


class Harness:
    """One painter per screen depth for the whole run, as a viewer keeps one for its life."""

    def __init__(self, workdir: Path) -> None:
        self.painters: List[viewer.Painter] = []
        for i, geometry in enumerate(GEOMETRIES):
            fb = framebuffer.Framebuffer.open(str(workdir / f"fb{i}.raw"), geometry)
            self.painters.append(viewer.Painter(fb, AT, viewer.Counters()))

    def one(self, data: bytes) -> None:
        if not data:
            return
        options, stream = data[0], data[1:]
        if options & FRAMED_BY_HARNESS:
            stream = frames(stream)
        painter = self.painters[(options & 3) % len(self.painters)]
        near, far = socket.socketpair()
        try:
            near.sendall(stream)
            if not common.keep_open(options):
                near.shutdown(socket.SHUT_WR)
            self.serve(far, painter)
        finally:
            near.close()
            far.close()

    def serve(self, sock: socket.socket, painter: viewer.Painter) -> None:
        """viewer.Receiver.serve's steps, with the harness's deadlines."""
        while True:
            try:
                with common.deadline(FIRST_WAIT_S + FRAME_DEADLINE_S, "read_video_frame"):
                    header, payload = wire.read_video_frame(sock, MAX_FRAME, STALL_S, first_wait_s=FIRST_WAIT_S,
                                                            deadline_s=FRAME_DEADLINE_S)
            except (wire.ProtocolError, wire.PeerClosed, wire.Stalled, socket.timeout):
                return
            if len(payload) != header.length or not 0 < header.length <= MAX_FRAME:
                raise common.Wrong(f"frame {header.seq}: {len(payload)} bytes for a header saying {header.length}")
            try:
                jpeg.check_jpeg(payload, MAX_FRAME)
            except jpeg.JpegError:
                return
            waiting = link.newer_frame_waiting(sock, MAX_FRAME)
            if not isinstance(waiting, bool):
                raise common.Wrong(f"newer_frame_waiting returned {waiting!r}")
            if waiting:
                continue
            if not painter.paint(viewer.Received(header, payload)):
                return


def frames(*jpegs: bytes) -> bytes:
    return b"".join(wire.pack_video_frame(seq, data, 1_700_000_000_000_000 + seq * 33_000)
                    for seq, data in enumerate(jpegs))


def camera_jpeg(width: int, height: int, seq: int, quality: int, subsample: int) -> bytes:
    """A test-pattern frame encoded as the camera does (TurboJPEG from planar YUV)."""
    codec = jpeg.Codec.open()
    i420 = testpattern.TestPattern(width, height, "fuzzpi").render(seq)
    if subsample == jpeg.SAMP_420:
        out = np.empty(jpeg.yuv_buffer_size(width, height, subsample), dtype=np.uint8)
        yuv = jpeg.i420_padded(i420, width, height, out)
    else:  # 4:2:2: each chroma row twice
        y = i420[: width * height].reshape(height, width)
        chroma = i420[width * height:].reshape(2, height // 2, width // 2)
        yuv = np.concatenate([y.reshape(-1), np.repeat(chroma, 2, axis=1).reshape(-1)])
        out = np.zeros(jpeg.yuv_buffer_size(width, height, subsample), dtype=np.uint8)
        out[: yuv.size] = yuv
        yuv = out
    return codec.encode_yuv(yuv, width, height, quality, subsample)


def pillow_jpeg(width: int, height: int, mode: str, **options: object) -> bytes:
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 255 // max(1, width - 1), yy * 255 // max(1, height - 1), (xx ^ yy) & 0xFF], axis=-1)
    image = Image.fromarray(rgb.astype(np.uint8), "RGB").convert(mode)
    out = io.BytesIO()
    image.save(out, "JPEG", **options)
    return out.getvalue()


def seeds() -> Dict[str, bytes]:
    camera_small = camera_jpeg(64, 48, 1, 50, jpeg.SAMP_420)
    camera_screen = camera_jpeg(160, 120, 7, 40, jpeg.SAMP_420)
    camera_422 = camera_jpeg(96, 64, 2, 50, jpeg.SAMP_422)
    camera_big = camera_jpeg(320, 240, 3, 20, jpeg.SAMP_420)
    kinds = {
        "progressive": pillow_jpeg(48, 32, "RGB", quality=60, progressive=True),
        "gray": pillow_jpeg(40, 24, "L", quality=60),
        "444": pillow_jpeg(24, 24, "RGB", quality=80, subsampling=0),
        "cmyk": pillow_jpeg(16, 16, "CMYK", quality=70),
        "restart": pillow_jpeg(64, 32, "RGB", quality=50, restart_marker_blocks=2),
        "odd": pillow_jpeg(33, 17, "RGB", quality=50, optimize=True),
        "tall": pillow_jpeg(8, 200, "RGB", quality=30),
    }
    found = {
        "camera-64x48": frames(camera_small),
        "camera-160x120-two": frames(camera_screen, camera_jpeg(160, 120, 8, 40, jpeg.SAMP_420)),
        "camera-422": frames(camera_422),
        "camera-320x240-scaled": frames(camera_big),
        "camera-then-kinds": frames(camera_small, kinds["progressive"], kinds["gray"]),
        "padded-after-eoi": frames(camera_small + bytes(16)),
    }
    found.update({f"pillow-{name}": frames(data) for name, data in kinds.items()})
    seeds_ = {}
    for name, stream in found.items():
        if len(stream) + 1 > MAX_LEN:
            raise ValueError(f"seed {name} is {len(stream)} bytes, beyond MAX_LEN {MAX_LEN}")
        for depth in range(len(GEOMETRIES)):
            seeds_[f"{name}-{GEOMETRIES[depth]}"] = bytes((depth,)) + stream
    for name, data in kinds.items():
        seeds_[f"jpeg-{name}"] = bytes((FRAMED_BY_HARNESS,)) + data
    seeds_["jpeg-camera-320x240"] = bytes((FRAMED_BY_HARNESS | 2,)) + camera_big
    seeds_["stall-mid-frame"] = bytes((common.KEEP_OPEN,)) + frames(camera_small)[:-40]
    return seeds_


def make(workdir: Path) -> Callable[[bytes], None]:
    return Harness(workdir).one


if __name__ == "__main__":
    common.child_main(make)
