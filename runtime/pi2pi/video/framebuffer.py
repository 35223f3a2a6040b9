"""The Linux framebuffer: a device (geometry from its ioctls) or a file with explicit geometry.

A device's visible area, bits per pixel, channel offsets and line length come
from FBIOGET_VSCREENINFO / FBIOGET_FSCREENINFO; the memory is mmapped and the
picture copied row by row at (x, y), clipped to the screen. 32 and 24 bpp take
TurboJPEG's output directly (the decoder writes the device's channel order);
16 bpp (RGB565) is converted with numpy, TurboJPEG has no such output.
"""
from __future__ import annotations

import ctypes
import fcntl
import logging
import mmap
import os
import re
import stat
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import turbojpeg

log = logging.getLogger(__name__)

FBIOGET_VSCREENINFO = 0x4600
FBIOGET_FSCREENINFO = 0x4602
KDSETMODE = 0x4B3A
KDGETMODE = 0x4B3B
KD_TEXT, KD_GRAPHICS = 0x00, 0x01


class FramebufferError(Exception):
    """The framebuffer cannot be used as asked (the user's setting or the machine)."""


class FbBitfield(ctypes.Structure):
    _fields_ = [("offset", ctypes.c_uint32), ("length", ctypes.c_uint32), ("msb_right", ctypes.c_uint32)]


class FbVarScreeninfo(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in (
        "xres", "yres", "xres_virtual", "yres_virtual", "xoffset", "yoffset", "bits_per_pixel", "grayscale")] + [
        ("red", FbBitfield), ("green", FbBitfield), ("blue", FbBitfield), ("transp", FbBitfield)] + [
        (name, ctypes.c_uint32) for name in (
            "nonstd", "activate", "height", "width", "accel_flags", "pixclock", "left_margin", "right_margin",
            "upper_margin", "lower_margin", "hsync_len", "vsync_len", "sync", "vmode", "rotate", "colorspace")] + [
        ("reserved", ctypes.c_uint32 * 4)]


class FbFixScreeninfo(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_char * 16), ("smem_start", ctypes.c_ulong), ("smem_len", ctypes.c_uint32),
        ("type", ctypes.c_uint32), ("type_aux", ctypes.c_uint32), ("visual", ctypes.c_uint32),
        ("xpanstep", ctypes.c_uint16), ("ypanstep", ctypes.c_uint16), ("ywrapstep", ctypes.c_uint16),
        ("line_length", ctypes.c_uint32), ("mmio_start", ctypes.c_ulong), ("mmio_len", ctypes.c_uint32),
        ("accel", ctypes.c_uint32), ("capabilities", ctypes.c_uint16), ("reserved", ctypes.c_uint16 * 2)]


@dataclass(frozen=True)
class Geometry:
    width: int
    height: int
    bpp: int
    line_length: int
    red_offset: int = 16     # bit offsets of the channels in a pixel (little-endian word)
    green_offset: int = 8
    blue_offset: int = 0
    offset: int = 0          # byte offset of the visible area (panning)

    @property
    def size(self) -> int:
        return self.offset + self.line_length * self.height


def parse_geometry(text: str) -> Geometry:
    """'WxHxBPP' (BPP 16, 24 or 32) for a file-backed framebuffer: 32 is BGRX, 16 is RGB565."""
    match = re.fullmatch(r"\s*(\d+)x(\d+)x(\d+)\s*", text)
    if not match:
        raise FramebufferError(f"framebuffer geometry {text!r}: want WxHxBPP, e.g. 800x480x32")
    width, height, bpp = (int(g) for g in match.groups())
    if bpp not in (16, 24, 32) or not (0 < width <= 8192 and 0 < height <= 8192):
        raise FramebufferError(f"framebuffer geometry {text!r}: size up to 8192x8192, bpp 16, 24 or 32")
    if bpp == 16:
        return Geometry(width, height, 16, width * 2, 11, 5, 0)
    return Geometry(width, height, bpp, width * bpp // 8)


def pixel_format(geometry: Geometry) -> int:
    """The TurboJPEG pixel format that matches the framebuffer's bytes (for 16 bpp: what
    bgrx_to_rgb565 packs from; decoding to RGBX instead swaps red and blue, which makes
    BGR565, the layout vfb and some panels use)."""
    if geometry.bpp == 16:
        offsets = (geometry.red_offset, geometry.green_offset, geometry.blue_offset)
        if offsets == (11, 5, 0):
            return turbojpeg.TJPF_BGRX
        if offsets == (0, 5, 11):
            return turbojpeg.TJPF_RGBX
        raise FramebufferError(f"16 bpp framebuffer with rgb offsets {offsets}: neither RGB565 nor BGR565")
    order = {geometry.red_offset // 8: "R", geometry.green_offset // 8: "G", geometry.blue_offset // 8: "B"}
    if geometry.bpp == 24:
        layout = "".join(order.get(i, "X") for i in range(3))
        formats = {"RGB": turbojpeg.TJPF_RGB, "BGR": turbojpeg.TJPF_BGR}
    else:
        layout = "".join(order.get(i, "X") for i in range(4))
        formats = {"BGRX": turbojpeg.TJPF_BGRX, "RGBX": turbojpeg.TJPF_RGBX,
                   "XBGR": turbojpeg.TJPF_XBGR, "XRGB": turbojpeg.TJPF_XRGB}
    if layout not in formats:
        raise FramebufferError(f"{geometry.bpp} bpp framebuffer with channel layout {layout} is not supported")
    return formats[layout]


def bgrx_to_rgb565(bgrx: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """BGRX bytes (H, W, 4) -> RGB565 values in `out` (H, W) uint32, truncating (r>>3, g>>2, b>>3).

    Each pixel read as one little-endian word B | G<<8 | R<<16, so three shifts
    and masks make the 565 word: faster than working on strided byte channels.
    `out` and `scratch` are preallocated: nothing is allocated per frame.
    """
    word = bgrx.view("<u4").reshape(bgrx.shape[:2])
    np.right_shift(word, 8, out=out)
    np.bitwise_and(out, 0xF800, out=out)
    np.right_shift(word, 5, out=scratch)
    np.bitwise_and(scratch, 0x07E0, out=scratch)
    np.bitwise_or(out, scratch, out=out)
    np.right_shift(word, 3, out=scratch)
    np.bitwise_and(scratch, 0x001F, out=scratch)
    np.bitwise_or(out, scratch, out=out)
    return out


def rgb565_to_rgb(pixels: np.ndarray) -> np.ndarray:
    """RGB565 (H, W) uint16 -> RGB888, each channel's top bits repeated into its low bits."""
    p = pixels.astype(np.uint32)
    r, g, b = (p >> 11) & 0x1F, (p >> 5) & 0x3F, p & 0x1F
    return np.stack([(r << 3) | (r >> 2), (g << 2) | (g >> 4), (b << 3) | (b >> 2)], axis=-1).astype(np.uint8)


class Framebuffer:
    """An mmapped framebuffer: paint a decoded picture at (x, y); read the screen back."""

    def __init__(self, path: str, geometry: Geometry, fd: int, is_device: bool) -> None:
        self.path = path
        self.geometry = geometry
        self.is_device = is_device
        self._fd = fd
        self._map = mmap.mmap(fd, geometry.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        bytes_pp = geometry.bpp // 8
        self.pixel_format = pixel_format(geometry)
        if geometry.bpp == 16:
            self.screen = np.ndarray((geometry.height, geometry.width), dtype=np.uint16, buffer=self._map,
                                     offset=geometry.offset, strides=(geometry.line_length, 2))
        else:
            self.screen = np.ndarray((geometry.height, geometry.width, bytes_pp), dtype=np.uint8, buffer=self._map,
                                     offset=geometry.offset, strides=(geometry.line_length, bytes_pp, 1))
        self._rgb565: Optional[np.ndarray] = None
        self._scratch: Optional[np.ndarray] = None

    @classmethod
    def open(cls, path: str, geometry_text: Optional[str]) -> "Framebuffer":
        try:
            mode = os.stat(path).st_mode
            exists = True
        except FileNotFoundError:
            mode, exists = 0, False
        except OSError as err:
            raise FramebufferError(f"framebuffer {path}: {err.strerror}") from None
        if exists and stat.S_ISCHR(mode):
            if geometry_text:
                raise FramebufferError(f"{path} is a device: its geometry comes from the device, drop --fb-geometry")
            return cls._open_device(path)
        if not geometry_text:
            raise FramebufferError(f"{path} is not a framebuffer device: give --fb-geometry WxHxBPP for a file")
        geometry = parse_geometry(geometry_text)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            if os.fstat(fd).st_size < geometry.size:
                os.ftruncate(fd, geometry.size)
        except OSError as err:
            raise FramebufferError(f"framebuffer file {path}: {err.strerror}") from None
        return cls(path, geometry, fd, is_device=False)

    @classmethod
    def _open_device(cls, path: str) -> "Framebuffer":
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as err:
            raise FramebufferError(f"framebuffer {path}: {err.strerror}") from None
        try:
            var, fix = FbVarScreeninfo(), FbFixScreeninfo()
            fcntl.ioctl(fd, FBIOGET_VSCREENINFO, var)
            fcntl.ioctl(fd, FBIOGET_FSCREENINFO, fix)
        except OSError as err:
            os.close(fd)
            raise FramebufferError(f"{path} does not answer the framebuffer ioctls: {err.strerror}") from None
        bpp = var.bits_per_pixel
        geometry = Geometry(
            width=var.xres, height=var.yres, bpp=bpp, line_length=fix.line_length,
            red_offset=var.red.offset, green_offset=var.green.offset, blue_offset=var.blue.offset,
            offset=var.yoffset * fix.line_length + var.xoffset * bpp // 8)
        log.info("framebuffer %s (%s): %dx%d, %d bpp, line %d bytes, rgb offsets %d/%d/%d",
                 path, fix.id.decode(errors="replace"), geometry.width, geometry.height, bpp,
                 geometry.line_length, geometry.red_offset, geometry.green_offset, geometry.blue_offset)
        if bpp not in (16, 24, 32):
            os.close(fd)
            raise FramebufferError(f"{path}: {bpp} bpp is not supported (16, 24 or 32)")
        if geometry.size > fix.smem_len:
            os.close(fd)
            raise FramebufferError(f"{path}: visible area beyond the device's {fix.smem_len} bytes")
        try:
            return cls(path, geometry, fd, is_device=True)
        except (OSError, ValueError) as err:
            os.close(fd)
            raise FramebufferError(f"{path}: cannot map it: {err}") from None

    def decode_target(self, x: int, y: int, rows: int, columns: int) -> Optional[np.ndarray]:
        """The screen's own memory for a picture of rows x columns at (x, y), where a decoder
        can write it directly: the picture lies wholly on the screen in the screen's own pixel
        format (24 or 32 bpp) and its rows are contiguous there (it spans whole lines). None
        otherwise: decode elsewhere, then paint() (TurboJPEG writes rows back to back)."""
        g = self.geometry
        if g.bpp == 16 or x != 0 or columns != g.width or y + rows > g.height:
            return None
        region = self.screen[y:y + rows]
        return region if region.flags.c_contiguous else None

    def paint(self, picture: np.ndarray, x: int, y: int) -> None:
        """Copy a decoded picture (in `pixel_format`) to (x, y), clipped to the screen."""
        g = self.geometry
        h = min(picture.shape[0], g.height - y)
        w = min(picture.shape[1], g.width - x)
        if h <= 0 or w <= 0:
            return
        if g.bpp == 16:
            if self._rgb565 is None or self._rgb565.shape != picture.shape[:2]:
                self._rgb565 = np.empty(picture.shape[:2], dtype=np.uint32)
                self._scratch = np.empty(picture.shape[:2], dtype=np.uint32)
            assert self._scratch is not None
            bgrx_to_rgb565(picture, self._rgb565, self._scratch)
            self.screen[y:y + h, x:x + w] = self._rgb565[:h, :w]  # the narrowing copy is the paint
        else:
            self.screen[y:y + h, x:x + w] = picture[:h, :w]

    def rgb(self) -> np.ndarray:
        """The whole visible screen as RGB888 (H, W, 3)."""
        g = self.geometry
        if g.bpp == 16:
            picture = rgb565_to_rgb(np.array(self.screen))
            return picture[..., ::-1].copy() if g.red_offset == 0 else picture  # BGR565
        order = {g.red_offset // 8: 0, g.green_offset // 8: 1, g.blue_offset // 8: 2}
        index = [next(i for i, c in order.items() if c == channel) for channel in range(3)]
        return np.ascontiguousarray(self.screen[..., index])

    def read_rgb(self, x: int, y: int, out: np.ndarray) -> np.ndarray:
        """The screen's area at (x, y) of out's size, as RGB888 into `out` (H, W, 3),
        clipped to the screen (what lies outside stays as it was); a view of what was filled."""
        g = self.geometry
        h = max(0, min(out.shape[0], g.height - y))
        w = max(0, min(out.shape[1], g.width - x))
        area = self.screen[y:y + h, x:x + w]
        if g.bpp == 16:
            rgb = rgb565_to_rgb(np.array(area))
            out[:h, :w] = rgb[..., ::-1] if g.red_offset == 0 else rgb   # BGR565
        else:
            for channel, offset in enumerate((g.red_offset, g.green_offset, g.blue_offset)):
                out[:h, :w, channel] = area[..., offset // 8]
        return out[:h, :w]

    def close(self) -> None:
        self.screen = None  # type: ignore[assignment]  # drop the view before closing the map
        try:
            self._map.close()
        except BufferError:
            pass
        os.close(self._fd)


class Console:
    """The text console put in graphics mode (no cursor, text or blanking over the picture), then restored."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: Optional[int] = None
        self._mode = KD_TEXT

    def __enter__(self) -> "Console":
        if not self.path:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY)
        except OSError as err:
            log.info("console %s not available (%s): leaving it alone", self.path, err.strerror)
            return self
        try:
            mode = ctypes.c_int(0)
            fcntl.ioctl(fd, KDGETMODE, mode)
            self._mode = mode.value
            fcntl.ioctl(fd, KDSETMODE, KD_GRAPHICS)
            os.write(fd, b"\033[?25l\033[9;0]")   # cursor off, no screen blanking
        except OSError as err:
            log.info("console %s: cannot switch to graphics mode (%s): leaving it alone", self.path, err.strerror)
            os.close(fd)
            return self
        self._fd = fd
        log.info("console %s in graphics mode", self.path)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._fd is None:
            return
        try:
            fcntl.ioctl(self._fd, KDSETMODE, self._mode)
            os.write(self._fd, b"\033[?25h")
            log.info("console %s restored", self.path)
        except OSError as err:
            log.warning("console %s: cannot restore text mode: %s", self.path, err.strerror)
        finally:
            os.close(self._fd)
            self._fd = None


def fit_region(geometry: Geometry, at: Tuple[int, int]) -> Tuple[int, int]:
    """Room from (x, y) to the screen's right and bottom edges."""
    return geometry.width - at[0], geometry.height - at[1]
