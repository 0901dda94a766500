"""The manifest's geometry record: typed, validated against the input size, round-tripped; and the
torch-free geometry rules (letterbox placement, tile offsets)."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from adrt.contract import Geometry, Manifest, tile_starts
from adrt.errors import BundleError, InputError

SHA = "0" * 64


def _manifest(geometry=None, height=128, width=160):
    """A minimal manifest; a letterbox geometry is mirrored in the input record as adrt writes it."""
    d = {"format": "adrt-bundle", "format_version": 1, "method": "patchcore",
         "input": {"height": height, "width": width, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3,
                   "resize": "bilinear", "color": "rgb", "dtype": "uint8", "layout": "NHWC", "batch": "dynamic"},
         "threshold": 0.5, "models": {"fp32": {"file": "model.onnx", "precision": "fp32"}},
         "files": {"model.onnx": {"sha256": SHA, "bytes": 1}}}
    if geometry is not None:
        d["geometry"] = geometry
        if isinstance(geometry, dict) and geometry.get("mode") == "letterbox":
            d["input"]["geometry"] = "letterbox"
    return d


def test_tile_record_round_trips_with_its_grid():
    g = Geometry("tile", tile=(64, 64), overlap=16)
    rec = g.to_manifest(128, 160)
    assert rec == {"mode": "tile", "tile": [64, 64], "overlap": 16, "blend": "linear",
                   "grid": {"rows": [0, 48, 64], "columns": [0, 48, 96], "tiles": 9}}
    m = Manifest.from_dict(_manifest(rec))
    assert m.geometry == g and m.to_dict()["geometry"] == rec
    assert Manifest.from_dict(m.to_dict()).to_dict() == m.to_dict()


def test_absent_geometry_is_resize_and_is_not_written():
    m = Manifest.from_dict(_manifest())
    assert m.geometry == Geometry() and m.geometry.mode == "resize" and "geometry" not in m.to_dict()


def test_letterbox_record():
    d = _manifest({"mode": "letterbox", "pad_value": [114, 114, 114], "align": "center"})
    m = Manifest.from_dict(d)
    assert m.geometry.pad_value == (114, 114, 114)
    assert m.to_dict()["geometry"] == {"mode": "letterbox", "pad_value": [114, 114, 114], "align": "center"}
    # Mirrored in the input record, which an adrt without geometries refuses (unknown input field).
    assert m.to_dict()["input"]["geometry"] == "letterbox"
    del d["input"]["geometry"]
    with pytest.raises(BundleError, match=r"input.geometry=None and geometry.mode='letterbox'"):
        Manifest.from_dict(d)
    with pytest.raises(BundleError, match=r"input.geometry='letterbox' and geometry.mode='resize'"):
        Manifest.from_dict(_manifest(None) | {"input": {**_manifest()["input"], "geometry": "letterbox"}})
    with pytest.raises(BundleError, match=r"input.geometry='tile': expected one of letterbox"):
        Manifest.from_dict(_manifest(None) | {"input": {**_manifest()["input"], "geometry": "tile"}})


@pytest.mark.parametrize("rec,message", [
    ({"mode": "crop"}, r"geometry.mode='crop': expected one of resize, letterbox, tile"),
    ({}, r"geometry: lacks 'mode'"),
    ("tile", r"geometry: expected a JSON object"),
    ({"mode": "tile", "tile": [64, 64], "overlap": 16, "stride": 48}, r"geometry: unknown field\(s\) 'stride'"),
    ({"mode": "tile", "tile": [256, 64]}, r"geometry.tile=\[256, 64\]: larger than the input 128×160"),
    ({"mode": "tile", "tile": [64]}, r"geometry.tile=\[64\]: expected \[height, width\]"),
    ({"mode": "tile", "tile": [16, 16]}, r"geometry.tile\[0\]=16: expected an integer in \[32, "),
    ({"mode": "tile", "tile": [64, 64], "overlap": 40}, r"geometry.overlap=40: expected at most half the tile's side"),
    ({"mode": "tile", "tile": [64, 64], "overlap": -1}, r"geometry.overlap=-1"),
    ({"mode": "tile", "tile": [64, 64], "overlap": 1.5}, r"geometry.overlap=1.5: expected an integer"),
    ({"mode": "tile", "tile": [64, 64], "blend": "max"}, r"geometry.blend='max': expected one of linear"),
    ({"mode": "tile", "tile": [64, 64], "overlap": 16, "grid": {"rows": [0, 64], "columns": [0, 96], "tiles": 4}},
     r"geometry.grid=.*does not follow from the tile"),
    ({"mode": "resize", "tile": [64, 64]}, r"geometry.tile=\[64, 64\]: not a field of mode 'resize'"),
    ({"mode": "letterbox", "pad_value": [0, 0, 256]}, r"geometry.pad_value\[2\]=256"),
    ({"mode": "letterbox", "pad_value": 7}, r"geometry.pad_value=7: expected 3 integers"),
    ({"mode": "letterbox", "align": "top-left"}, r"geometry.align='top-left': expected one of center"),
    ({"mode": "tile", "tile": [64, 64], "align": "center"}, r"geometry.align: only a letterbox geometry"),
    ({"mode": "letterbox", "overlap": 4}, r"geometry.overlap=4: not a field of mode 'letterbox'"),
])
def test_bad_geometry_records_are_refused_naming_the_field(rec, message):
    with pytest.raises(BundleError, match=r"manifest.json: " + message):
        Manifest.from_dict(_manifest(rec))


def test_too_many_tiles_are_refused():
    with pytest.raises(BundleError, match=r"geometry: 128×128 tiles of 32×32 over 4096×4096; expected at most 1024"):
        Manifest.from_dict(_manifest({"mode": "tile", "tile": [32, 32]}, 4096, 4096))


@pytest.mark.parametrize("size,tile,overlap,expect", [
    (64, 64, 0, [0]), (128, 64, 0, [0, 64]), (130, 64, 0, [0, 64, 66]), (128, 64, 16, [0, 48, 64]),
    (2448, 256, 32, [0, 224, 448, 672, 896, 1120, 1344, 1568, 1792, 2016, 2192]),
])
def test_tile_starts_cover_the_frame_last_tile_at_the_edge(size, tile, overlap, expect):
    assert tile_starts(size, tile, overlap) == expect


def test_letterbox_keeps_aspect_and_pads_with_the_recorded_value():
    from adrt.runtime.geometry import letterbox, letterbox_box, prepare, prepare_mask

    assert letterbox_box(100, 200, 64, 64) == (16, 0, 32, 64)
    assert letterbox_box(200, 100, 64, 96) == (0, 32, 64, 32)
    img = np.full((100, 200, 3), 200, np.uint8)
    out = letterbox(img, 64, 64, (1, 2, 3))
    assert out.shape == (64, 64, 3)
    assert (out[:16] == [1, 2, 3]).all() and (out[48:] == [1, 2, 3]).all() and (out[16:48] == 200).all()
    g = Geometry("letterbox", pad_value=(1, 2, 3))
    np.testing.assert_array_equal(prepare(img[..., 0], 64, 64, g)[16:48], 200)      # gray → RGB, then placed
    mask = np.zeros((100, 200), bool)
    mask[:, 100:] = True
    m = prepare_mask(mask, 64, 64, g)
    assert not m[:16].any() and not m[48:].any() and m[16:48, 32:].all() and not m[16:48, :32].any()


def test_cli_geometry_options_contradictions_are_errors():
    from adrt.runtime.geometry import geometry_from_options, parse_size

    assert parse_size("2048x2448") == (2048, 2448) and parse_size("256") == (256, 256)
    with pytest.raises(InputError, match=r"--input-size '2048 by 2448': expected HEIGHTxWIDTH"):
        parse_size("2048 by 2448")
    with pytest.raises(InputError, match=r"--tile and --letterbox: choose one"):
        geometry_from_options("64", None, True)
    with pytest.raises(InputError, match=r"--overlap goes with --tile"):
        geometry_from_options(None, 8)
    with pytest.raises(InputError, match=r"--pad-value goes with --letterbox"):
        geometry_from_options(None, None, False, "3")
    assert geometry_from_options(None, None, True, "114").pad_value == (114, 114, 114)
    assert geometry_from_options("64x96", 8) == Geometry("tile", tile=(64, 96), overlap=8)


def test_unletterbox_drops_the_padding_and_returns_the_frame_grid():
    from adrt.runtime.geometry import unletterbox

    maps = np.full((2, 64, 64), -1.0, np.float32)          # padding: -1
    maps[:, 16:48] = np.arange(64, dtype=np.float32)        # a 100×200 frame's content: a ramp along x
    out = unletterbox(maps, 100, 200, 50, 100)
    assert out.shape == (2, 50, 100) and out.min() >= 0.0   # no padding left
    np.testing.assert_allclose(out[0, 25], np.interp((np.arange(100) + 0.5) * 0.64 - 0.5, np.arange(64),
                                                     np.arange(64)), atol=0.6)


def test_fine_synthetic_defects_are_at_most_that_wide():
    from scipy.ndimage import distance_transform_edt

    from adrt.synth import make_image, paint_defect

    for kind in ("scratch", "spot"):
        for i in range(4):
            rng = np.random.default_rng(i)
            img = make_image("weave", 256, rng)
            out, mask = paint_defect(img, kind, rng, fine=6)
            assert 0 < mask.sum() < 600 and 2 * distance_transform_edt(mask).max() <= 6.0 + 1e-6
            assert (out[mask] != img[mask]).any(axis=1).all() and (out[~mask] == img[~mask]).all()
