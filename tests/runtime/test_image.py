"""Decoding rules of adrt.runtime.image (tiny images, all written to tmp_path)."""
import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageFile

from adrt.errors import DataError, InputError
from adrt.runtime import image as im


def _noise(h=16, w=20, c=3, seed=0):
    shape = (h, w, c) if c else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


# --- read_image: modes -----------------------------------------------------------------------


def test_rgb_png_exact(tmp_path):
    a = _noise()
    p = _save(Image.fromarray(a), tmp_path / "rgb.png")
    out = im.read_image(p)
    assert out.dtype == np.uint8 and out.shape == (16, 20, 3)
    np.testing.assert_array_equal(out, a)


def test_gray_replicated(tmp_path):
    g = _noise(c=0)
    p = _save(Image.fromarray(g), tmp_path / "gray.png")
    out = im.read_image(p)
    assert out.shape == (16, 20, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], g)


def test_one_bit(tmp_path):
    bits = np.zeros((8, 8), dtype=bool)
    bits[2:5, 3:6] = True
    p = _save(Image.fromarray(bits.astype(np.uint8) * 255).convert("1"), tmp_path / "bits.png")
    assert Image.open(p).mode == "1"
    out = im.read_image(p)
    np.testing.assert_array_equal(out[:, :, 1], np.where(bits, 255, 0))


def test_gray16_high_byte(tmp_path):
    g = np.array([[0, 255, 256, 1000], [32768, 40000, 65280, 65535]], dtype=np.uint16)
    p = _save(Image.fromarray(g), tmp_path / "g16.png")
    assert Image.open(p).mode.startswith("I")
    out = im.read_image(p)
    np.testing.assert_array_equal(out[:, :, 0], (g >> 8).astype(np.uint8))
    np.testing.assert_array_equal(out[:, :, 2], out[:, :, 0])


def test_pgm16_as_mode_i_high_byte(tmp_path):
    # Pillow opens 16-bit PGM as mode "I" (values scaled to 0..65535): a faithful 16-bit source.
    vals = np.array([[0, 256, 65535]], dtype=">u2")
    p = tmp_path / "g16.pgm"
    p.write_bytes(b"P5 3 1 65535\n" + vals.tobytes())
    out = im.read_image(p)
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 255])


def test_int32_and_float_tiff_refused(tmp_path):
    i32 = Image.new("I", (4, 3))
    i32.putdata([100000 * k for k in range(12)])
    p = _save(i32, tmp_path / "i32.tif")
    with pytest.raises(DataError, match=r"i32\.tif.*32-bit integer"):
        im.read_image(p)
    f = Image.fromarray(np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4))
    p = _save(f, tmp_path / "f.tif")
    with pytest.raises(DataError, match=r"f\.tif.*mode 'F'"):
        im.read_image(p)


def test_rgba_alpha_dropped_not_composited(tmp_path):
    a = _noise(c=4)
    a[:, :, 3] = 0
    a[0, 0, 3] = 255
    p = _save(Image.fromarray(a), tmp_path / "rgba.png")
    out = im.read_image(p)
    np.testing.assert_array_equal(out, a[:, :, :3])


def test_la_alpha_dropped(tmp_path):
    g = _noise(c=0)
    img = Image.merge("LA", [Image.fromarray(g), Image.fromarray(np.zeros_like(g))])
    out = im.read_image(_save(img, tmp_path / "la.png"))
    np.testing.assert_array_equal(out[:, :, 1], g)


def test_palette_with_transparency(tmp_path):
    idx = (np.arange(24).reshape(4, 6) % 3).astype(np.uint8)
    img = Image.new("P", (6, 4))
    img.putpalette([10, 20, 30, 200, 100, 0, 5, 250, 128] + [0] * (256 * 3 - 9))
    img.putdata(idx.ravel().tolist())
    # Palette entry 1 fully transparent: its pixels must keep their RGB, not go black.
    p = _save(img, tmp_path / "pal.png", transparency=1)
    reopened = Image.open(p)
    assert reopened.mode == "P" and "transparency" in reopened.info
    out = im.read_image(p)
    lut = np.array([[10, 20, 30], [200, 100, 0], [5, 250, 128]], dtype=np.uint8)
    np.testing.assert_array_equal(out, lut[idx])


def test_cmyk_converted_by_pillow(tmp_path):
    src = Image.fromarray(_noise()).convert("CMYK")
    p = _save(src, tmp_path / "cmyk.tif")
    out = im.read_image(p)
    np.testing.assert_array_equal(out, np.asarray(src.convert("RGB")))


def test_jpeg_and_uppercase_suffix(tmp_path):
    p = _save(Image.fromarray(np.full((8, 8, 3), 120, np.uint8)), tmp_path / "x.JPG", format="JPEG", quality=95)
    out = im.read_image(p)
    assert out.shape == (8, 8, 3) and abs(int(out.mean()) - 120) <= 2
    assert im.is_image_file(p) and not im.is_image_file(tmp_path / "x.txt")
    assert not im.is_image_file(tmp_path / ".hidden.png")
    assert set(im.IMAGE_SUFFIXES) == {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


# --- read_image: errors ---------------------------------------------------------------------


def _truncated(tmp_path, name, fmt):
    buf = io.BytesIO()
    Image.fromarray(_noise(48, 48)).save(buf, format=fmt)
    data = buf.getvalue()
    p = tmp_path / name
    p.write_bytes(data[: len(data) // 2])
    return p


@pytest.mark.parametrize("name,fmt", [("cut.png", "PNG"), ("cut.jpg", "JPEG")])
def test_truncated_raises(tmp_path, name, fmt):
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    p = _truncated(tmp_path, name, fmt)
    with pytest.raises(DataError, match=name.replace(".", r"\.")):
        im.read_image(p)


def test_text_file_named_png(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("not an image\n")
    with pytest.raises(DataError, match=r"notes\.png.*not a readable image"):
        im.read_image(p)


def test_missing_and_folder(tmp_path):
    with pytest.raises(DataError, match=r"nope\.png: no such file"):
        im.read_image(tmp_path / "nope.png")
    with pytest.raises(DataError, match="is a folder"):
        im.read_image(tmp_path)


def test_read_image_size_header_only(tmp_path):
    p = _save(Image.fromarray(_noise(7, 11)), tmp_path / "s.png")
    assert im.read_image_size(p) == (7, 11)


# --- to_rgb --------------------------------------------------------------------------------


def test_to_rgb_accepts():
    g = _noise(4, 5, 0)
    np.testing.assert_array_equal(im.to_rgb(g)[:, :, 2], g)
    np.testing.assert_array_equal(im.to_rgb(g[:, :, None])[:, :, 0], g)
    rgb = _noise(4, 5)
    assert im.to_rgb(rgb) is rgb  # already contiguous RGB: no copy
    rgba = _noise(4, 5, 4)
    out = im.to_rgb(rgba)
    assert out.shape == (4, 5, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgba[:, :, :3])


@pytest.mark.parametrize(
    "arr,match",
    [
        (np.zeros((4, 5, 3), np.float32), "float32"),
        (np.zeros((4, 5, 3), np.uint16), "uint16"),
        (np.zeros((4, 5, 2), np.uint8), r"\(4, 5, 2\)"),
        (np.zeros((1, 4, 5, 3), np.uint8), r"\(1, 4, 5, 3\)"),
        (np.zeros((5,), np.uint8), r"\(5,\)"),
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        ([[1, 2], [3, 4]], "list"),
    ],
)
def test_to_rgb_refuses(arr, match):
    with pytest.raises(InputError, match=match) as e:
        im.to_rgb(arr)
    assert "expected" in str(e.value)


# --- resize --------------------------------------------------------------------------------


def test_resize_shape_and_identity():
    a = _noise(10, 14)
    out = im.resize(a, 6, 8)
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    assert im.resize(a, 10, 14) is a
    flat = np.full((10, 14, 3), 77, np.uint8)
    assert (im.resize(flat, 23, 5) == 77).all()
    assert im.RESIZE_RULE == "bilinear"
    ref = np.asarray(Image.fromarray(a).resize((8, 6), Image.BILINEAR))
    np.testing.assert_array_equal(out, ref)


def test_resize_refuses_bad_input():
    with pytest.raises(InputError, match="uint8 H x W x 3"):
        im.resize(np.zeros((4, 4), np.uint8), 2, 2)
    with pytest.raises(InputError, match="height=0"):
        im.resize(np.zeros((4, 4, 3), np.uint8), 0, 2)


# --- read_mask -----------------------------------------------------------------------------


def test_read_mask_binary_and_nearest(tmp_path):
    m = np.zeros((8, 12), np.uint8)
    m[2:6, 3:9] = 255
    m[0, 0] = 1  # any nonzero counts
    p = _save(Image.fromarray(m), tmp_path / "m.png")
    full = im.read_mask(p)
    assert full.dtype == bool and full.sum() == 25
    small = im.read_mask(p, 4, 6, expect_size=(8, 12))
    assert small.shape == (4, 6) and small.dtype == bool
    np.testing.assert_array_equal(small, full[1::2, 1::2])  # Pillow samples pixel centres
    big = im.read_mask(p, 16, 24)
    np.testing.assert_array_equal(big, np.repeat(np.repeat(full, 2, 0), 2, 1))


def test_read_mask_rgb_palette_modes(tmp_path):
    m = np.zeros((4, 4, 3), np.uint8)
    m[1, 1, 2] = 9
    p = _save(Image.fromarray(m), tmp_path / "rgbmask.png")
    assert im.read_mask(p).sum() == 1
    g16 = np.zeros((4, 4), np.uint16)
    g16[3, 3] = 1
    p = _save(Image.fromarray(g16), tmp_path / "m16.png")
    assert im.read_mask(p)[3, 3] and im.read_mask(p).sum() == 1


def test_read_mask_size_mismatch(tmp_path):
    p = _save(Image.fromarray(np.zeros((8, 12), np.uint8)), tmp_path / "bad_mask.png")
    with pytest.raises(DataError, match=r"bad_mask\.png.*8x12.*10x12"):
        im.read_mask(p, 4, 4, expect_size=(10, 12))


def test_read_mask_missing(tmp_path):
    with pytest.raises(DataError, match=r"gone_mask\.png: no such file"):
        im.read_mask(tmp_path / "gone_mask.png")


# --- torch-free ----------------------------------------------------------------------------


def test_import_does_not_pull_torch():
    code = "import sys, adrt.runtime.image; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"
