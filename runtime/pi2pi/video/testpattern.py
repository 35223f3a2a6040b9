"""A test-pattern source: moving camera-like content plus a label naming the
sending host and the frame's sequence number, drawn with a built-in bitmap font.

The picture is made directly in planar YUV 4:2:0 (I420), the layout a camera
gives, so the camera encodes it with TurboJPEG without a colour conversion.
The label is black on a white box in the top-left corner, big enough to survive
JPEG at quality 50 and a scaled-down decode, so `read_label` can read it back
from the far framebuffer by matching glyphs (no OCR).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

# 5x7 glyphs, one string per row, '#' = ink. Lowercase letters are drawn with the
# uppercase glyphs: host names are case-insensitive anyway.
GLYPH_W, GLYPH_H = 5, 7
CELL_W, CELL_H = GLYPH_W + 1, GLYPH_H + 2   # a column and two rows of spacing
_FONT_ROWS: Dict[str, Tuple[str, ...]] = {
    " ": (".....", ".....", ".....", ".....", ".....", ".....", "....."),
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "D": ("###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###.."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "F": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "G": (".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "I": (".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "J": ("..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "M": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "N": ("#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "Q": (".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "V": ("#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."),
    "W": ("#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."),
    "X": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
    "Y": ("#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."),
    "Z": ("#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"),
    "-": (".....", ".....", ".....", "#####", ".....", ".....", "....."),
    ".": (".....", ".....", ".....", ".....", ".....", ".##..", ".##.."),
    "_": (".....", ".....", ".....", ".....", ".....", ".....", "#####"),
    "#": (".#.#.", ".#.#.", "#####", ".#.#.", "#####", ".#.#.", ".#.#."),
    "?": (".###.", "#...#", "....#", "...#.", "..#..", ".....", "..#.."),
}
FONT: Dict[str, np.ndarray] = {
    ch: np.array([[c == "#" for c in row] for row in rows], dtype=bool) for ch, rows in _FONT_ROWS.items()
}

# Luma levels (video range), so the label is black on white after any decode.
INK_Y, PAPER_Y = 16, 235
HOST_CHARS = 16     # the host name is cut to this many characters
SEQ_CHARS = 10      # "#" + up to 9 digits (the wire's u32 wraps at 4294967295: low 9 digits shown)


def glyph(ch: str) -> np.ndarray:
    return FONT.get(ch.upper(), FONT["?"])


@dataclass(frozen=True)
class Layout:
    """Where the label sits: two text lines in a white box at (margin, margin)."""

    scale: int
    margin: int
    columns: int

    @property
    def box(self) -> Tuple[int, int, int, int]:
        """x, y, width, height of the white box (even, so chroma lines up)."""
        w = self.columns * CELL_W * self.scale + 2 * self.scale
        h = 2 * CELL_H * self.scale + 2 * self.scale
        return self.margin, self.margin, w + (w & 1), h + (h & 1)

    def cell(self, line: int, column: int) -> Tuple[int, int]:
        """Top-left pixel of a glyph's 5x7 ink area."""
        x0, y0, _, _ = self.box
        return x0 + self.scale * (1 + column * CELL_W), y0 + self.scale * (1 + line * CELL_H + 1)


def layout_for(width: int, height: int) -> Layout:
    """The biggest scale at which the label fits a third of the picture's width, at least 1."""
    columns = max(HOST_CHARS, SEQ_CHARS)
    scale = max(1, min(6, (width * 2 // 3) // (columns * CELL_W + 2), (height // 3) // (2 * CELL_H + 2)))
    margin = 2 * scale
    return Layout(scale=scale, margin=margin - (margin & 1), columns=columns)


def label_lines(host: str, seq: int) -> Tuple[str, str]:
    return host[:HOST_CHARS], f"#{seq % 1_000_000_000}"


class TestPattern:
    """Frames of planar I420 (Y, U, V as one contiguous buffer), each carrying its label."""

    def __init__(self, width: int, height: int, host: str) -> None:
        if width % 2 or height % 2 or width < 64 or height < 48:
            raise ValueError(f"test pattern size {width}x{height}: want even sizes of at least 64x48")
        self.width, self.height, self.host = width, height, host
        self.layout = layout_for(width, height)
        self.frame = np.empty(width * height * 3 // 2, dtype=np.uint8)
        self.y = self.frame[: width * height].reshape(height, width)
        chroma = (width // 2) * (height // 2)
        self.u = self.frame[width * height: width * height + chroma].reshape(height // 2, width // 2)
        self.v = self.frame[width * height + chroma:].reshape(height // 2, width // 2)
        # A still background like a lit room: a diagonal luma ramp and soft colour bands.
        yy, xx = np.mgrid[0:height, 0:width]
        self.base_y = (60 + 120 * (xx + yy) / (width + height)).astype(np.uint8)
        cy, cx = np.mgrid[0:height // 2, 0:width // 2]
        self.base_u = (128 + 40 * np.sin(cx / max(1, width // 2) * 2 * np.pi)).astype(np.uint8)
        self.base_v = (128 + 40 * np.cos(cy / max(1, height // 2) * 2 * np.pi)).astype(np.uint8)
        scale = self.layout.scale
        self.glyphs = {ch: np.where(np.kron(g, np.ones((scale, scale), dtype=bool)), INK_Y, PAPER_Y).astype(np.uint8)
                       for ch, g in FONT.items()}
        self.text = label_lines(host, 0)[0]

    def render(self, seq: int) -> np.ndarray:
        """The frame for sequence number `seq` (the same buffer every call: copy it to keep it)."""
        w, h = self.width, self.height
        np.copyto(self.y, self.base_y)
        np.copyto(self.u, self.base_u)
        np.copyto(self.v, self.base_v)
        # Moving content: a bar sweeping right and a block bouncing down, one step per frame.
        bar_w = max(8, w // 16) & ~1
        bx = (seq * 4) % (w - bar_w) & ~1
        self.y[:, bx:bx + bar_w] = 200
        self.u[:, bx // 2:(bx + bar_w) // 2] = 90
        self.v[:, bx // 2:(bx + bar_w) // 2] = 200
        block = max(8, h // 8) & ~1
        span = h - block
        by = (seq * 3) % (2 * span)
        by = (by if by < span else 2 * span - by) & ~1
        bxx = (w * 3 // 4) & ~1
        self.y[by:by + block, bxx:bxx + block] = 40
        self.u[by // 2:(by + block) // 2, bxx // 2:(bxx + block) // 2] = 200
        self.draw_label(seq)
        return self.frame

    def draw_label(self, seq: int) -> None:
        x0, y0, bw, bh = self.layout.box
        bw, bh = min(bw, self.width - x0) & ~1, min(bh, self.height - y0) & ~1
        self.y[y0:y0 + bh, x0:x0 + bw] = PAPER_Y
        self.u[y0 // 2:(y0 + bh) // 2, x0 // 2:(x0 + bw) // 2] = 128
        self.v[y0 // 2:(y0 + bh) // 2, x0 // 2:(x0 + bw) // 2] = 128
        size_y, size_x = GLYPH_H * self.layout.scale, GLYPH_W * self.layout.scale
        for line, text in enumerate(label_lines(self.host, seq)):
            for column, ch in enumerate(text[: self.layout.columns]):
                gx, gy = self.layout.cell(line, column)
                if gx + size_x > self.width or gy + size_y > self.height:
                    break
                self.y[gy:gy + size_y, gx:gx + size_x] = self.glyphs.get(ch.upper(), self.glyphs["?"])


def _read_cell(luma: np.ndarray, x: int, y: int, scale: float) -> str:
    """The glyph whose 5x7 pattern best matches the cell at (x, y), sampled at each dot's centre."""
    dots = np.zeros((GLYPH_H, GLYPH_W), dtype=bool)
    for r in range(GLYPH_H):
        for c in range(GLYPH_W):
            py, px = int(y + (r + 0.5) * scale), int(x + (c + 0.5) * scale)
            if py >= luma.shape[0] or px >= luma.shape[1]:
                return " "
            dots[r, c] = luma[py, px] < (INK_Y + PAPER_Y) / 2
    best, best_errors = "?", GLYPH_W * GLYPH_H + 1
    for ch, g in FONT.items():
        errors = int(np.count_nonzero(g != dots))
        if errors < best_errors:
            best, best_errors = ch, errors
    return best if best_errors <= 3 else "?"


def read_label(rgb: np.ndarray, frame_width: int, frame_height: int) -> Tuple[str, int]:
    """Read (host, seq) back from a picture of a test-pattern frame.

    `rgb` is the shown picture (H, W, 3), starting at the frame's top-left
    corner; it may be scaled down from frame_width x frame_height (the viewer's
    fit-to-screen). Raises ValueError when the label cannot be read.
    """
    layout = layout_for(frame_width, frame_height)
    ratio = rgb.shape[1] / frame_width if rgb.shape[1] < frame_width else 1.0
    luma = (rgb[..., 0].astype(np.uint16) * 77 + rgb[..., 1].astype(np.uint16) * 150
            + rgb[..., 2].astype(np.uint16) * 29) >> 8
    lines: List[str] = []
    for line in range(2):
        chars = []
        for column in range(layout.columns):
            x, y = layout.cell(line, column)
            chars.append(_read_cell(luma, int(x * ratio), int(y * ratio), layout.scale * ratio))
        lines.append("".join(chars).rstrip())
    host, seq_text = lines
    if not seq_text.startswith("#") or not seq_text[1:].isdigit():
        raise ValueError(f"no sequence number in the label (read {seq_text!r})")
    return host, int(seq_text[1:])
