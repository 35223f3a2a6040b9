"""The V4L2 source's ioctl sequence against a fake device serving Pillow's JPEGs and raw YUV."""
from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import v4l2
from PIL import Image

from pi2pi.video.source import SourceError, V4L2Source
from tests.video.fake_v4l2 import FakeCamera

W, H = 160, 120


def pillow_jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    picture = (rng.random((H, W, 3)) * 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(picture).save(out, "JPEG", quality=85)
    return out.getvalue()


def planes(seed: int, w: int = W, h: int = H):
    """Camera-like Y (a ramp plus a seed-dependent block) and smooth chroma, full size."""
    yy, xx = np.mgrid[0:h, 0:w]
    y = (40 + xx + yy // 2).astype(np.uint8)
    y[20:60, 10 + seed * 10: 50 + seed * 10] = 220
    u = (100 + xx // 4).astype(np.uint8)
    v = (160 - yy // 4).astype(np.uint8)
    return y, u, v


def decoded_ycbcr(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("YCbCr")).astype(int)


def start(camera: FakeCamera, fps: float = 15) -> V4L2Source:
    return V4L2Source("/dev/video9", W, H, fps, quality=90, io=camera)


def test_mjpeg_is_preferred_and_passed_through_untouched() -> None:
    camera = FakeCamera(["YUYV", "MJPG"], W, H, buffer_size=64 * 1024)
    source = start(camera)
    assert camera.calls[:2] == ["open", "QUERYCAP"]
    setup = camera.calls[2:]
    assert setup[: setup.index("S_FMT")] == ["ENUM_FMT"] * 3  # two formats, then EINVAL
    rest = setup[setup.index("S_FMT"):]
    assert rest == ["S_FMT", "S_PARM", "REQBUFS"] + ["QUERYBUF", "mmap"] * 3 + ["QBUF"] * 3 + ["STREAMON"]
    assert camera.pixelformat == v4l2.V4L2_PIX_FMT_MJPEG and camera.timeperframe == (1000, 15000)
    jpegs = [pillow_jpeg(i) for i in range(3)]
    camera.padding = 300
    stop = threading.Event()
    for expected in jpegs:
        camera.pending.append(expected)
        frame = source.read(stop)
        assert frame is not None and frame.jpeg == expected  # byte for byte, the driver's zero padding trimmed
    assert [f for f in camera.calls if f in ("DQBUF", "QBUF")][-2:] == ["DQBUF", "QBUF"]
    source.close()
    assert camera.calls[-2:] == ["STREAMOFF", "close"] and not camera.streaming


def test_newest_buffer_wins_and_older_ones_are_counted_dropped() -> None:
    camera = FakeCamera(["MJPG"], W, H, buffer_size=64 * 1024)
    source = start(camera)
    jpegs = [pillow_jpeg(i) for i in range(3)]
    camera.pending.extend(jpegs)  # three frames ready at once: the consumer was slow
    frame = source.read(threading.Event())
    assert frame is not None and frame.jpeg == jpegs[-1]
    assert source.dropped == 2
    assert sorted(camera.queued) == [0, 1, 2]  # every buffer went back to the driver
    source.close()


def test_a_truncated_mjpeg_buffer_is_skipped_and_counted() -> None:
    camera = FakeCamera(["MJPG"], W, H, buffer_size=64 * 1024)
    source = start(camera)
    camera.pending.append(pillow_jpeg(1)[:-100])
    assert source.read(threading.Event()) is None and source.corrupt == 1
    camera.pending.append(pillow_jpeg(2))
    assert source.read(threading.Event()).jpeg == pillow_jpeg(2)
    source.close()


@pytest.mark.parametrize("fmt", ["YUYV", "YU12", "NV12"])
@pytest.mark.parametrize("w, h", [(W, H), (300, 120)])  # 300: chroma rows of 150, padded to 152 for TurboJPEG
def test_yuv_buffers_are_encoded_without_colour_conversion(fmt: str, w: int, h: int) -> None:
    size = w * h * 2 if fmt == "YUYV" else w * h * 3 // 2
    camera = FakeCamera([fmt], w, h, buffer_size=size)
    source = V4L2Source("/dev/video9", w, h, 15, quality=90, io=camera)
    y, u, v = planes(2, w, h)
    if fmt == "YUYV":  # 4:2:2, each pair of pixels shares the chroma of its left one
        packed = np.empty((h, w * 2), dtype=np.uint8)
        packed[:, 0::2], packed[:, 1::4], packed[:, 3::4] = y, u[:, 0::2], v[:, 0::2]
        raw = packed.tobytes()
    else:
        cu, cv = u[0::2, 0::2], v[0::2, 0::2]
        if fmt == "YU12":
            raw = y.tobytes() + cu.tobytes() + cv.tobytes()
        else:
            uv = np.empty((h // 2, w), dtype=np.uint8)
            uv[:, 0::2], uv[:, 1::2] = cu, cv
            raw = y.tobytes() + uv.tobytes()
    camera.pending.append(raw)
    frame = source.read(threading.Event())
    from pi2pi.video.jpeg import Codec

    data = Codec.open().encode_yuv(frame.yuv, frame.width, frame.height, 90, frame.subsample)
    got = decoded_ycbcr(data)  # Pillow decodes: an independent decoder
    assert got.shape[:2] == (h, w)
    assert np.abs(got[..., 0] - y).mean() < 2.0
    assert np.abs(got[..., 1] - u).mean() < 3.0 and np.abs(got[..., 2] - v).mean() < 3.0
    source.close()


def test_a_camera_without_a_usable_format_is_refused_clearly() -> None:
    camera = FakeCamera(["RGBP"], W, H, buffer_size=W * H * 2)
    with pytest.raises(SourceError, match="offers RGBP"):
        start(camera)
    assert camera.closed


def test_a_chosen_format_wins_over_the_preference_or_is_refused_clearly() -> None:
    camera = FakeCamera(["YUYV", "MJPG"], W, H, buffer_size=64 * 1024)
    source = V4L2Source("/dev/video9", W, H, 15, quality=90, io=camera, pixel_format="YUYV")
    assert camera.pixelformat == v4l2.V4L2_PIX_FMT_YUYV and source.format == "YUYV"
    source.close()
    camera = FakeCamera(["YUYV"], W, H, buffer_size=64 * 1024)
    with pytest.raises(SourceError, match="does not offer MJPG"):
        V4L2Source("/dev/video9", W, H, 15, quality=90, io=camera, pixel_format="MJPG")
    assert camera.closed
