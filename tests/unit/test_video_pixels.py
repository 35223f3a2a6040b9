"""Pixels: RGB565 conversion, framebuffer geometry, scaling choice, PNG, the test pattern's label."""
from __future__ import annotations

import os
import io

import numpy as np
import pytest
import turbojpeg
from PIL import Image

from pi2pi.video import framebuffer, jpeg, png, testpattern


def bgrx(pixels):
    """(R, G, B) triples -> a (1, N, 4) BGRX picture, as TurboJPEG writes it."""
    return np.array([[[b, g, r, 0] for r, g, b in pixels]], dtype=np.uint8)


@pytest.mark.parametrize("rgb, want", [
    ((0, 0, 0), 0x0000), ((255, 255, 255), 0xFFFF), ((255, 0, 0), 0xF800), ((0, 255, 0), 0x07E0),
    ((0, 0, 255), 0x001F), ((0x12, 0x34, 0x56), (0x10 << 8) | (0x34 << 3) | 0x0A), ((7, 3, 7), 0x0000),
    ((8, 4, 8), 0x0821), ((0x80, 0x80, 0x80), 0x8410),
])
def test_rgb565_of_known_pixels(rgb, want) -> None:
    out = np.empty((1, 1), dtype=np.uint32)
    framebuffer.bgrx_to_rgb565(bgrx([rgb]), out, np.empty_like(out))
    assert int(out[0, 0]) == want


def test_rgb565_of_every_level_matches_the_plain_formula() -> None:
    levels = np.arange(256, dtype=np.uint8)
    picture = np.zeros((1, 256, 4), dtype=np.uint8)
    picture[0, :, 2], picture[0, :, 1], picture[0, :, 0] = levels, levels[::-1], levels  # R, G, B
    out = np.empty((1, 256), dtype=np.uint32)
    framebuffer.bgrx_to_rgb565(picture, out, np.empty_like(out))
    r, g, b = levels.astype(int), levels[::-1].astype(int), levels.astype(int)
    assert out[0].tolist() == ((r >> 3) << 11 | (g >> 2) << 5 | (b >> 3)).tolist()
    back = framebuffer.rgb565_to_rgb(out.astype(np.uint16))
    assert np.abs(back[0].astype(int) - np.stack([r, g, b], axis=-1)).max() <= 7


def test_file_framebuffer_geometry_and_paint_clipping(tmp_path) -> None:
    with pytest.raises(framebuffer.FramebufferError, match="WxHxBPP"):
        framebuffer.parse_geometry("800x480")
    fb = framebuffer.Framebuffer.open(str(tmp_path / "fb"), "8x4x16")
    assert (tmp_path / "fb").stat().st_size == 8 * 4 * 2
    picture = bgrx([(255, 0, 0)] * 6).repeat(3, axis=0)  # 6x3 red
    fb.paint(picture, 5, 2)  # only 3x2 of it fits
    raw = np.fromfile(tmp_path / "fb", dtype="<u2").reshape(4, 8)
    assert (raw[2:, 5:] == 0xF800).all() and (raw[:2] == 0).all() and (raw[:, :5] == 0).all()
    assert fb.rgb()[3, 7].tolist() == [255, 0, 0]
    fb.close()


@pytest.mark.parametrize("offsets, want", [
    ((16, 8, 0), turbojpeg.TJPF_BGRX), ((0, 8, 16), turbojpeg.TJPF_RGBX), ((24, 16, 8), turbojpeg.TJPF_XBGR),
])
def test_32bpp_channel_order_comes_from_the_offsets(offsets, want) -> None:
    g = framebuffer.Geometry(4, 4, 32, 16, *offsets)
    assert framebuffer.pixel_format(g) == want


@pytest.mark.parametrize("size, room, want", [
    ((640, 480), (800, 600), (1, 1)), ((640, 480), (400, 300), (5, 8)), ((640, 480), (320, 240), (1, 2)),
    ((640, 480), (60, 40), (1, 8)), ((1280, 720), (800, 480), (5, 8)),
])
def test_scaling_factor_fits_the_room(size, room, want) -> None:
    factors = turbojpeg.TurboJPEG().scaling_factors
    assert jpeg.fit_scale(*size, *room, factors) == want


def test_png_snapshot_reads_back_with_pillow(tmp_path) -> None:
    picture = (np.arange(5 * 7 * 3) % 256).astype(np.uint8).reshape(5, 7, 3)
    png.write(tmp_path / "shot.png", picture)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "shot.png")), picture)


@pytest.mark.parametrize("host", ["raspberrypi5", "gw-pi_2.lan", "A1"])
def test_label_survives_jpeg_and_reads_back(host) -> None:
    pattern = testpattern.TestPattern(640, 480, host)
    codec = jpeg.Codec.open()
    for seq in (0, 7, 123456789):
        data = codec.encode_yuv(pattern.render(seq), 640, 480, 50, jpeg.SAMP_420)
        for scale in ((1, 1), (1, 2)):
            picture, warnings = codec.decode(data, turbojpeg.TJPF_RGB, scale)
            assert not warnings
            assert testpattern.read_label(picture, 640, 480) == (host.upper()[:16], seq)


def test_pattern_moves_and_an_unlabelled_picture_is_not_read() -> None:
    pattern = testpattern.TestPattern(320, 240, "host")
    first = pattern.render(1).copy()
    second = pattern.render(2).copy()
    box = pattern.layout.box
    moving = np.ones(320 * 240, dtype=bool).reshape(240, 320)
    moving[: box[1] + box[3], : box[0] + box[2]] = False
    y1, y2 = first[: 320 * 240].reshape(240, 320), second[: 320 * 240].reshape(240, 320)
    assert (y1 != y2)[moving].sum() > 500
    with pytest.raises(ValueError):
        testpattern.read_label(np.full((240, 320, 3), 128, dtype=np.uint8), 320, 240)


def test_check_jpeg() -> None:
    out = io.BytesIO()
    Image.new("RGB", (16, 16)).save(out, "JPEG")
    good = out.getvalue()
    jpeg.check_jpeg(good, 10000)
    jpeg.check_jpeg(good + b"\0" * 10, 10000)
    for bad, why in ((b"GIF89a" + good, "start"), (good[:-20], "end"), (good, "beyond")):
        with pytest.raises(jpeg.JpegError, match=why):
            jpeg.check_jpeg(bad, 10000 if why != "beyond" else 100)


def test_bgr565_framebuffer_gets_red_in_the_low_bits(tmp_path) -> None:
    # vfb at 16 bpp is BGR565 (red at bit 0): decoding to RGBX and packing as usual swaps the channels.
    g = framebuffer.Geometry(4, 2, 16, 8, 0, 5, 11)
    assert framebuffer.pixel_format(g) == turbojpeg.TJPF_RGBX
    path = tmp_path / "fb"
    path.write_bytes(bytes(g.size))
    fd = os.open(path, os.O_RDWR)
    fb = framebuffer.Framebuffer(str(path), g, fd, is_device=False)
    red_as_rgbx = np.array([[[255, 0, 0, 0]] * 4] * 2, dtype=np.uint8)
    fb.paint(red_as_rgbx, 0, 0)
    assert (np.fromfile(path, dtype="<u2") == 0x001F).all()
    assert fb.rgb()[1, 3].tolist() == [255, 0, 0]
    fb.close()
    with pytest.raises(framebuffer.FramebufferError, match="neither RGB565 nor BGR565"):
        framebuffer.pixel_format(framebuffer.Geometry(4, 2, 16, 8, 10, 5, 0))


@pytest.mark.parametrize("bpp", [32, 24])
def test_a_picture_spanning_whole_lines_is_decoded_onto_the_screen_as_one_painted_after(tmp_path, bpp) -> None:
    """The viewer decodes straight into the framebuffer where the picture spans whole lines;
    the screen then holds what decoding elsewhere and painting would have left."""
    from pi2pi import wire
    from pi2pi.video import viewer

    picture = testpattern.TestPattern(64, 48, "direct").render(7)
    data = jpeg.Codec.open().encode_yuv(picture, 64, 48, 75, jpeg.SAMP_420)
    screens = []
    for name, geometry, at in (("direct", f"64x60x{bpp}", (0, 8)), ("painted", f"80x60x{bpp}", (16, 8))):
        fb = framebuffer.Framebuffer.open(str(tmp_path / name), geometry)
        fb.screen[...] = 0x55   # old content that must go where the picture lands
        assert (fb.decode_target(*at, 48, 64) is None) == (name == "painted")
        painter = viewer.Painter(fb, at, viewer.Counters())
        header = wire.VideoHeader(1, len(data), wire.now_us())
        assert painter.paint(viewer.Received(header, data))
        rgb = fb.rgb()
        assert (rgb[:8] == 0x55).all() and (rgb[56:] == 0x55).all()   # outside the picture: untouched
        screens.append(rgb[8:56, at[0]:at[0] + 64])
        fb.close()
    assert screens[0].std() > 20   # a picture, not a blank
    assert np.array_equal(screens[0], screens[1])
