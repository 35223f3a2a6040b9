"""TurboJPEG (PyTurboJPEG 1.x on libjpeg-turbo 2.1): encode from YUV, decode, checks.

Encoding goes from planar YUV straight into the JPEG (tjCompressFromYUV): no
colour conversion. PyTurboJPEG expects planes padded to 4 bytes per row
(tjBufSizeYUV2 with pad 4): `yuv_buffer_size` says how big that buffer is.

Decoding refuses a JPEG of more than MAX_SCANS scans (JpegError; the viewer
counts it as corrupt and drops the peer). A progressive JPEG's decode time
grows with its scans times its pixels, and libjpeg only warns about a scan that
repeats an earlier one, so a peer can make one small frame cost seconds: 5000
copies of one scan of a flat 640x480 picture (62 kB) took 2.3 s here, 600 of a
4096x4096 one (118 kB) 16 s. libjpeg-turbo's own limit (TJFLAG_LIMITSCANS, 2.1)
gives up only after 500 scans, which still took 10.7 s at 4096x4096, so the
scans are counted here before decoding instead (bytes.count: ~10 us for a
28 kB frame); the worst still decoded, 20 scans at 4096x4096, takes 0.3-0.5 s.
Every scan starts with the bytes FF DA and entropy-coded data never holds them
(a 0xFF there is followed by 0x00 or a restart marker), so the count is never
below the real one; it is above only when a table, comment or thumbnail
happens to hold those two bytes. A baseline camera frame has 1 scan; libjpeg's
progressive modes have 6 (grey), 10 (colour) and 18 (CMYK).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import List, Optional, Tuple

import numpy as np
import turbojpeg

SAMP_420 = turbojpeg.TJSAMP_420
SAMP_422 = turbojpeg.TJSAMP_422
SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
SOS = b"\xff\xda"    # start of scan
MAX_DIMENSION = 4096  # a frame's header may not make us allocate more than this squared
MAX_SCANS = 20        # more scans than any standard progression: refused before decoding
# libjpeg's DCT, both ways: "accurate" (islow, TurboJPEG's default) or "fast" (ifast,
# GStreamer's jpegenc/jpegdec default). docs/video.md ("Which DCT") has the cost and the error.
DCT_FLAGS = {"accurate": turbojpeg.TJFLAG_ACCURATEDCT, "fast": turbojpeg.TJFLAG_FASTDCT}


class JpegError(Exception):
    """Bytes that are not a usable JPEG frame."""


def pad4(n: int) -> int:
    return (n + 3) & ~3


def yuv_buffer_size(width: int, height: int, subsample: int) -> int:
    """Bytes of a pad-4 planar buffer (what tjCompressFromYUV reads)."""
    cw = (width + 1) // 2
    ch = (height + 1) // 2 if subsample == SAMP_420 else height
    return pad4(width) * height + 2 * pad4(cw) * ch


def check_jpeg(data: bytes, max_length: int) -> None:
    """A JPEG start marker, an end marker (trailing zero padding allowed) and a sane size."""
    if len(data) < 4 or data[:2] != SOI:
        raise JpegError("no JPEG start marker")
    if len(data) > max_length:
        raise JpegError(f"{len(data)} bytes is beyond the limit of {max_length}")
    tail = data[-64:].rstrip(b"\x00")  # some drivers pad the buffer after EOI
    if not tail.endswith(EOI):
        raise JpegError("no JPEG end marker (truncated frame)")


def trim_jpeg(data: bytes) -> bytes:
    """The frame without a driver's zero padding after the end marker."""
    end = len(data)
    while end > 2 and data[end - 1] == 0:
        end -= 1
    return data[:end]


@dataclass
class Codec:
    """One TurboJPEG handle set per thread (PyTurboJPEG makes a tj handle per call)."""

    tj: turbojpeg.TurboJPEG
    flags: int = 0   # DCT_FLAGS[dct]

    @classmethod
    def open(cls, dct: str = "accurate") -> "Codec":
        try:
            return cls(turbojpeg.TurboJPEG(), DCT_FLAGS[dct])
        except (OSError, RuntimeError) as err:
            raise JpegError(f"cannot load libturbojpeg: {err}") from None

    def encode_yuv(self, yuv: np.ndarray, width: int, height: int, quality: int, subsample: int) -> bytes:
        return self.tj.encode_from_yuv(yuv, height, width, quality=quality, jpeg_subsample=subsample,
                                       flags=self.flags)

    def header(self, data: bytes) -> Tuple[int, int]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                width, height, _, _ = self.tj.decode_header(data)
            except (OSError, ValueError) as err:
                raise JpegError(f"unreadable JPEG header: {err}") from None
        if width == 0 or height == 0:  # PyTurboJPEG turns some header errors into warnings
            detail = "; ".join(str(w.message) for w in caught) or "no frame size"
            raise JpegError(f"unreadable JPEG header: {detail}")
        if not (0 < width <= MAX_DIMENSION and 0 < height <= MAX_DIMENSION):
            raise JpegError(f"JPEG claims {width}x{height}, beyond {MAX_DIMENSION}x{MAX_DIMENSION}")
        return width, height

    def decode(self, data: bytes, pixel_format: int, scale: Optional[Tuple[int, int]],
               dst: Optional[np.ndarray] = None) -> Tuple[np.ndarray, List[str]]:
        """Decode into `dst` when its shape fits (PyTurboJPEG ignores it otherwise).

        Returns the picture and libjpeg's warnings (e.g. corrupt data it worked
        around); a fatal error, or more than MAX_SCANS scans, raises JpegError.
        """
        scans = data.count(SOS)
        if scans > MAX_SCANS:
            raise JpegError(f"{scans} scans, beyond the limit of {MAX_SCANS}: not decoded")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                picture = self.tj.decode(data, pixel_format=pixel_format, scaling_factor=scale, flags=self.flags,
                                         dst=dst)
            except (OSError, ValueError) as err:
                raise JpegError(f"JPEG decode failed: {err}") from None
        return picture, [str(w.message) for w in caught]


def fit_scale(width: int, height: int, room_w: int, room_h: int,
              factors: Optional[frozenset] = None) -> Tuple[int, int]:
    """The largest TurboJPEG scaling factor <= 1 at which the picture fits the room (1/8 at worst)."""
    if factors is None:
        factors = frozenset({(1, 1), (7, 8), (3, 4), (5, 8), (1, 2), (3, 8), (1, 4), (1, 8)})
    best = (1, 8)
    for num, den in sorted(factors, key=lambda f: Fraction(*f), reverse=True):
        if Fraction(num, den) > 1:
            continue
        if -(-width * num // den) <= room_w and -(-height * num // den) <= room_h:
            best = (num, den)
            break
    return best


def scaled(size: int, scale: Tuple[int, int]) -> int:
    return -(-size * scale[0] // scale[1])


def yuyv_to_planar422(frame: np.ndarray, width: int, height: int, out: np.ndarray) -> np.ndarray:
    """Repack packed YUYV (Y0 U Y1 V) into pad-4 planar 4:2:2 in `out` (numpy slicing, no maths)."""
    packed = frame[: width * height * 2].reshape(height, width * 2)
    yw, cw = pad4(width), pad4(width // 2)
    y = out[: yw * height].reshape(height, yw)
    u = out[yw * height: yw * height + cw * height].reshape(height, cw)
    v = out[yw * height + cw * height: yw * height + 2 * cw * height].reshape(height, cw)
    y[:, :width] = packed[:, 0::2]
    u[:, : width // 2] = packed[:, 1::4]
    v[:, : width // 2] = packed[:, 3::4]
    return out


def nv12_to_planar420(frame: np.ndarray, width: int, height: int, out: np.ndarray) -> np.ndarray:
    """Split NV12's interleaved chroma into the U and V planes of pad-4 I420 in `out`."""
    yw, cw, ch = pad4(width), pad4(width // 2), height // 2
    y = out[: yw * height].reshape(height, yw)
    u = out[yw * height: yw * height + cw * ch].reshape(ch, cw)
    v = out[yw * height + cw * ch: yw * height + 2 * cw * ch].reshape(ch, cw)
    y[:, :width] = frame[: width * height].reshape(height, width)
    uv = frame[width * height: width * height + width * ch].reshape(ch, width)
    u[:, : width // 2] = uv[:, 0::2]
    v[:, : width // 2] = uv[:, 1::2]
    return out


def i420_padded(frame: np.ndarray, width: int, height: int, out: np.ndarray) -> np.ndarray:
    """YU12 as V4L2 packs it (no row padding) -> pad-4 I420; a no-op copy when widths are multiples of 8."""
    cw, ch = width // 2, height // 2
    if width % 8 == 0:
        return frame[: width * height * 3 // 2]
    yw, pcw = pad4(width), pad4(cw)
    out[: yw * height].reshape(height, yw)[:, :width] = frame[: width * height].reshape(height, width)
    src_u = frame[width * height: width * height + cw * ch].reshape(ch, cw)
    src_v = frame[width * height + cw * ch: width * height + 2 * cw * ch].reshape(ch, cw)
    out[yw * height: yw * height + pcw * ch].reshape(ch, pcw)[:, :cw] = src_u
    out[yw * height + pcw * ch: yw * height + 2 * pcw * ch].reshape(ch, pcw)[:, :cw] = src_v
    return out
