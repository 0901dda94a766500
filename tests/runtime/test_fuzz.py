"""Fuzz tests (Hypothesis) of the two parsers of untrusted input: the manifest reader and the image
loader. The property everywhere: an adrt error, or a correct result; never any other exception, a
hang or a wrong result. A few hundred examples per test by default; `pytest -m long` runs
thousands (tests/conftest.py)."""
from __future__ import annotations

import copy
import io
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from adrt.contract import COLORS, LAYOUTS, MAX_SIDE, RESIZE_RULES, Manifest  # noqa: E402
from adrt.errors import AdrtError, BundleError, DataError  # noqa: E402

from tests.conftest import SIZE  # noqa: E402

LONG = 5000

# --- the manifest reader -------------------------------------------------------------------------

SHA = "ab" * 32
VALID = {
    "format": "adrt-bundle", "format_version": 1, "adrt_version": "0.1.0", "method": "padim",
    "config": {"n_features": 100}, "input": {"height": 64, "width": 64, "channels": 3, "mean": [0.5, 0.5, 0.5],
                                               "std": [0.5, 0.5, 0.5], "resize": "bilinear", "color": "rgb",
                                               "dtype": "uint8", "layout": "NHWC", "batch": "dynamic"},
    "outputs": {"score": "float32 N"}, "threshold": 0.5,
    "calibration": {"n_images": 4, "score_mean": 1.0, "score_std": 0.5, "score_max": 2.0, "score_threshold": 2.5,
                    "score_scale": 0.5, "map_mean": 1.0, "map_std": 0.5, "map_q999": 2.0, "map_threshold": 2.5,
                    "map_scale": 0.5, "rule": "mean + 3 std"},
    "training": {"n_fit": 16}, "metrics": {}, "export": {"opset": 18},
    "models": {"fp32": {"file": "model.onnx", "precision": "fp32"},
               "int8": {"file": "model.int8.onnx", "precision": "int8", "int8_target": "tensorrt"}},
    "files": {"model.onnx": {"sha256": SHA, "bytes": 10}, "model.int8.onnx": {"sha256": SHA, "bytes": 5},
              "engines/x.plan": {"sha256": SHA, "bytes": 3}},
    "engines": {"x": {"file": "engines/x.plan", "precision": "fp16", "gpu": "Orin", "compute_capability": "8.7",
                      "tensorrt": "8.6.2", "dla_core": None}},
}

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=10) | st.sampled_from(["../x", "/etc/passwd", "model.onnx", "", "fp32", "nearest",
                                                     "NaN", "bilinear", "adrt-bundle", "8.7", SHA]))
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                        max_size=4), max_leaves=12)


def _paths(d, prefix=()):
    """Every (path to a value) in a JSON tree."""
    out = [prefix] if prefix else []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def mutated_manifests(draw):
    m = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(m)
        path = draw(st.sampled_from(paths))
        parent = m
        for k in path[:-1]:
            parent = parent[k]
        op = draw(st.sampled_from(["replace", "delete", "add"]))
        if op == "replace":
            parent[path[-1]] = draw(json_values)
        elif op == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values)
    return m


def check_manifest(d) -> None:
    """The property: BundleError, or a manifest that keeps every promise of the contract."""
    try:
        m = Manifest.from_dict(d)
    except BundleError:
        return
    out = m.to_dict()
    assert json.dumps(Manifest.from_dict(out).to_dict(), sort_keys=True) == json.dumps(out, sort_keys=True)
    assert isinstance(m.threshold, float) and math.isfinite(m.threshold) and 0 < m.threshold < 1
    spec = m.input
    assert 1 <= spec.height <= MAX_SIDE and 1 <= spec.width <= MAX_SIDE and spec.channels == 3
    assert spec.resize in RESIZE_RULES and spec.color in COLORS and out["input"]["layout"] in LAYOUTS
    assert all(math.isfinite(x) for x in spec.mean) and all(x > 0 and math.isfinite(x) for x in spec.std)
    assert "fp32" in m.models
    for f in m.referenced_files():
        assert f in m.files and not f.startswith("/") and ".." not in f.split("/")


@given(json_values)
def test_manifest_reader_on_arbitrary_json(d):
    check_manifest(d)


@given(mutated_manifests())
def test_manifest_reader_on_mutations_of_a_valid_manifest(d):
    check_manifest(d)


@pytest.mark.long
@settings(max_examples=LONG)
@given(st.one_of(json_values, mutated_manifests()))
def test_manifest_reader_long(d):
    check_manifest(d)


def test_the_valid_manifest_is_valid_and_round_trips():
    m = Manifest.from_dict(VALID)
    assert m.to_dict() == VALID


# --- the manifest reader, on a real bundle on disk -----------------------------------------------

@pytest.fixture(scope="module")
def real_bundle(runs):
    """A pristine PaDiM bundle, the batch used to compare, and its reference result."""
    import adrt.runtime as rt

    _, b = runs("padim")
    x = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    with rt.load(b) as s:
        ref = s.run(x)
    return b, x, ref


@st.composite
def mutated_bundle_manifests(draw, base):
    m = copy.deepcopy(base)
    paths = [p for p in _paths(m) if p[0] not in ("config", "training", "export", "metrics", "outputs")]
    path = draw(st.sampled_from(paths))
    parent = m
    for k in path[:-1]:
        parent = parent[k]
    if draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(json_values)
    return m


def _check_bundle(real_bundle, data) -> None:
    import adrt.runtime as rt

    b, x, ref = real_bundle
    base = json.loads((b / "manifest.json").read_text())
    m = data.draw(mutated_bundle_manifests(base))
    with tempfile.TemporaryDirectory() as tmp:
        copy_ = Path(tmp) / "b"
        shutil.copytree(b, copy_)
        (copy_ / "manifest.json").write_text(json.dumps(m))
        try:
            s = rt.load(copy_)
        except AdrtError:
            return
        with s:
            r = s.run(x)
        # Accepted: the verified model gives exactly the reference maps and scores.
        assert np.array_equal(r.maps, ref.maps) and np.array_equal(r.scores, ref.scores)
        assert np.array_equal(r.labels, r.scores >= s.threshold)


@settings(max_examples=60)
@given(st.data())
def test_loading_a_bundle_with_a_mutated_manifest(real_bundle, data):
    _check_bundle(real_bundle, data)


@pytest.mark.long
@settings(max_examples=1000)
@given(st.data())
def test_loading_a_bundle_with_a_mutated_manifest_long(real_bundle, data):
    _check_bundle(real_bundle, data)


# --- the image loader ----------------------------------------------------------------------------

def _encode(img, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _seed_images() -> list[tuple[str, bytes]]:
    """Small real files in many modes and formats: the starting points of the mutations."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    gray = rgb[:, :, 0]
    out = [("png", _encode(Image.fromarray(rgb), "PNG")), ("jpg", _encode(Image.fromarray(rgb), "JPEG", quality=80)),
           ("png", _encode(Image.fromarray(gray), "PNG")), ("bmp", _encode(Image.fromarray(rgb), "BMP")),
           ("png", _encode(Image.fromarray(np.dstack([rgb, gray])), "PNG")),
           ("png", _encode(Image.fromarray((gray.astype(np.uint16) * 257)), "PNG")),
           ("gif", _encode(Image.fromarray(rgb).convert("P"), "GIF")),
           ("tif", _encode(Image.fromarray(gray.astype(np.float32)), "TIFF")),
           ("webp", _encode(Image.fromarray(rgb), "WEBP")),
           ("jpg", _encode(Image.fromarray(rgb).convert("CMYK"), "JPEG")),
           ("png", _encode(Image.fromarray(gray > 128), "PNG"))]
    return out


SEEDS = _seed_images()


@st.composite
def mutated_images(draw):
    suffix, data = draw(st.sampled_from(SEEDS))
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite_header"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:
            j = draw(st.integers(0, min(32, len(data) - 1)))
            data[j] = draw(st.integers(0, 255))
    return suffix, bytes(data)


def check_image(suffix: str, data: bytes) -> None:
    from adrt.runtime.image import read_image, read_image_size

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / f"x.{suffix}"
        p.write_bytes(data)
        try:
            a = read_image(p, max_pixels=1 << 20)
        except DataError:
            return
        assert isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
        assert a.flags.c_contiguous and (a.shape[0], a.shape[1]) == read_image_size(p)


@given(st.binary(max_size=3000), st.sampled_from(["png", "jpg", "bmp", "tif", "gif", "webp"]))
def test_image_loader_on_random_bytes(data, suffix):
    check_image(suffix, data)


@given(mutated_images())
def test_image_loader_on_mutated_real_files(sample):
    check_image(*sample)


@pytest.mark.long
@settings(max_examples=LONG)
@given(st.one_of(mutated_images(), st.tuples(st.sampled_from(["png", "jpg", "tif"]), st.binary(max_size=3000))))
def test_image_loader_long(sample):
    check_image(*sample)


# Odd modes with known content: the result must follow the decoding rules exactly.
small = st.tuples(st.integers(1, 12), st.integers(1, 12))


@given(hnp.arrays(np.uint8, small))
def test_gray_is_replicated(gray):
    from PIL import Image

    _roundtrip_equals(Image.fromarray(gray), "PNG", np.repeat(gray[:, :, None], 3, axis=2))


@given(hnp.arrays(np.uint16, small))
def test_16_bit_gray_keeps_the_high_byte(gray):
    from PIL import Image

    _roundtrip_equals(Image.fromarray(gray), "PNG", np.repeat((gray >> 8).astype(np.uint8)[:, :, None], 3, axis=2))


@given(hnp.arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12), st.just(4))))
def test_rgba_drops_alpha_without_compositing(rgba):
    from PIL import Image

    _roundtrip_equals(Image.fromarray(rgba, "RGBA"), "PNG", rgba[:, :, :3])


@given(hnp.arrays(np.bool_, small))
def test_one_bit_is_zero_or_255(bits):
    from PIL import Image

    img = Image.fromarray(bits.astype(np.uint8) * 255).convert("1")
    _roundtrip_equals(img, "PNG", np.repeat((bits.astype(np.uint8) * 255)[:, :, None], 3, axis=2))


@given(hnp.arrays(np.float32, small, elements=st.floats(-1e3, 1e3, width=32)))
def test_float_images_are_refused(a):
    from PIL import Image

    with pytest.raises(DataError, match="unsupported image mode 'F'"):
        _roundtrip_equals(Image.fromarray(a), "TIFF", None)


def _roundtrip_equals(img, fmt, expect):
    from adrt.runtime.image import read_image

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / f"x.{fmt.lower()}"
        img.save(p, format=fmt)
        got = read_image(p)
    assert np.array_equal(got, expect)
