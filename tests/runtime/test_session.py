"""The torch-free runtime: bundle verification, strict inputs, backends, results."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from adrt.errors import BackendError, BundleError, InputError

from tests.conftest import SIZE


@pytest.fixture
def bundle(runs, tmp_path):
    """A private copy of the PatchCore bundle that tests may damage."""
    _, b = runs("patchcore")
    dst = tmp_path / "bundle"
    shutil.copytree(b, dst)
    return dst


def test_runtime_never_imports_torch(runs):
    _, b = runs("padim")
    code = (
        "import sys, numpy as np, adrt.runtime as rt\n"
        f"s = rt.load({str(b)!r})\n"
        f"r = s.run(np.zeros((2, {SIZE}, {SIZE}, 3), np.uint8))\n"
        "assert r.maps.shape == (2, %d, %d)\n"
        "import adrt.cli, adrt.cli.bundle, adrt.evaluate, adrt.metrics\n"
        "sys.exit(3 if 'torch' in sys.modules else 0)\n" % (SIZE, SIZE)
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_a_source_checkout_imports_the_runtime_in_place():
    # `python -c "import adrt.runtime"` in the repository root, with adrt not installed (or installed
    # but shadowed by the checkout's adrt/ folder): the parts are found in the top-level folders,
    # and torch is still not imported. The editable install's finder is removed to emulate that.
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys\n"
        "sys.meta_path[:] = [m for m in sys.meta_path if getattr(m, '__name__', '') != '_EditableFinder']\n"
        "import adrt.runtime, adrt.runtime.bundle\n"
        "print(adrt.runtime.__file__)\n"
        "sys.exit(3 if 'torch' in sys.modules else 0)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert p.returncode == 0, p.stderr
    assert Path(p.stdout.strip()) == root / "runtime" / "__init__.py"


def test_the_runtime_imports_with_numpy_alone(tmp_path):
    # An interpreter with numpy but without Pillow, ONNX Runtime or torch (blocked here through
    # sys.modules) still imports the runtime; reading an image then says what to install.
    code = (
        "import sys\n"
        "for m in ('PIL', 'onnxruntime', 'torch'): sys.modules[m] = None\n"
        "import adrt.runtime as rt\n"
        "from adrt.errors import AdrtError\n"
        "from adrt.runtime.image import read_image\n"
        "try:\n"
        f"    read_image({str(tmp_path / 'x.png')!r})\n"
        "except AdrtError as e:\n"
        "    assert 'pip install pillow' in str(e), e\n"
        "else:\n"
        "    sys.exit(4)\n"
    )
    (tmp_path / "x.png").write_bytes(b"not decoded")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_run_returns_calibrated_maps_scores_labels(bundle, synth_data):
    import adrt.runtime as rt
    from adrt.data import Dataset

    ds = Dataset.open(synth_data)
    with rt.load(bundle) as s:
        assert (s.height, s.width, s.channels) == (SIZE, SIZE, 3)
        r = s.run_files([x.path for x in ds.test])
    assert r.maps.shape == (len(ds.test), SIZE, SIZE) and r.maps.dtype == np.float32
    assert np.array_equal(r.labels, r.scores >= 0.5)
    good = np.array([x.label == 0 for x in ds.test])
    assert r.scores[~good].mean() > r.scores[good].mean()
    # The calibrated score is the documented sigmoid of the raw one.
    cal = json.loads((bundle / "manifest.json").read_text())["calibration"]
    expect = 1 / (1 + np.exp(-(r.raw_scores - cal["score_threshold"]) / cal["score_scale"]))
    assert np.allclose(r.scores, expect, atol=1e-5)


def test_single_image_and_any_batch_size(bundle):
    import adrt.runtime as rt

    x = np.random.default_rng(0).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    with rt.load(bundle) as s:
        r5 = s.run(x)
        r1 = s.run(x[2])                    # H×W×C → batch of one
    assert len(r5) == 5 and len(r1) == 1
    assert np.allclose(r5.scores[2], r1.scores[0], atol=1e-5)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((1, SIZE, SIZE, 3), np.float32), "expected uint8"),
    (np.zeros((1, SIZE, SIZE, 4), np.uint8), "got uint8 1×64×64×4"),
    (np.zeros((1, SIZE + 1, SIZE, 3), np.uint8), "got uint8 1×65×64×3"),
    (np.zeros((SIZE, SIZE), np.uint8), "got uint8 64×64"),
    (np.zeros((0, SIZE, SIZE, 3), np.uint8), "got uint8 0×64×64×3"),
    ([[1, 2]], "got list"),
])
def test_wrong_input_is_refused_with_the_expected_spec(bundle, bad, match):
    import adrt.runtime as rt

    with rt.load(bundle) as s, pytest.raises(InputError, match=match):
        s.run(bad)


def test_prepare_converts_gray_and_rgba_of_any_size(bundle):
    import adrt.runtime as rt

    with rt.load(bundle) as s:
        assert s.prepare(np.zeros((100, 37), np.uint8)).shape == (SIZE, SIZE, 3)
        assert s.prepare(np.zeros((10, 300, 4), np.uint8)).shape == (SIZE, SIZE, 3)


def test_tampered_model_fails_checksum(bundle):
    import adrt.runtime as rt

    with open(bundle / "model.onnx", "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(BundleError, match="checksum mismatch for model.onnx"):
        rt.load(bundle)


def test_missing_file_unknown_version_and_not_a_bundle(bundle, tmp_path):
    import adrt.runtime as rt

    m = json.loads((bundle / "manifest.json").read_text())
    m["format_version"] = 7
    m["adrt_version"] = "9.9"
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"format version 7 \(written by adrt 9.9\).*reads format version 1"):
        rt.load(bundle)
    m["format_version"] = 1
    (bundle / "manifest.json").write_text(json.dumps(m))
    (bundle / "model.onnx").unlink()
    with pytest.raises(BundleError, match="model.onnx listed in the manifest is missing"):
        rt.load(bundle)
    with pytest.raises(BundleError, match="no such bundle"):
        rt.load(tmp_path / "nope")
    with pytest.raises(BundleError, match="manifest.json missing"):
        rt.load(tmp_path)
    (tmp_path / "x.zip").write_text("not a zip")
    with pytest.raises(BundleError, match="not a bundle folder or .zip"):
        rt.load(tmp_path / "x.zip")


def test_zip_bundle_loads_and_cleans_up(bundle, tmp_path):
    import adrt.runtime as rt

    z = tmp_path / "b.zip"
    with zipfile.ZipFile(z, "w") as f:
        for p in bundle.iterdir():
            f.write(p, f"bundle/{p.name}")
    s = rt.load(z)
    root = s.bundle.root
    assert root.exists() and s.run(np.zeros((1, SIZE, SIZE, 3), np.uint8)).maps.shape == (1, SIZE, SIZE)
    s.close()
    assert not root.exists()


def test_gpu_backend_that_is_not_active_is_refused(bundle):
    import onnxruntime as ort

    import adrt.runtime as rt

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a CUDA-capable onnxruntime is installed; the refusal is tested with a fake below")
    with pytest.raises(BackendError, match="needs CUDAExecutionProvider.*installed providers: .*CPUExecutionProvider"):
        rt.load(bundle, backend="ort-cuda")
    with pytest.raises(BackendError, match="unknown backend 'gpu'; available: ort-cpu, ort-cuda, ort-trt"):
        rt.load(bundle, backend="gpu")


def test_silent_cpu_fallback_is_detected(bundle, monkeypatch):
    """onnxruntime-gpu lists CUDA without a GPU, then runs on CPU: the backend must raise."""
    import onnxruntime as ort

    import adrt.runtime as rt

    real = ort.InferenceSession

    class FallbackSession(real):
        def __init__(self, path, sess_options=None, providers=None):
            super().__init__(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FallbackSession)
    with pytest.raises(BackendError, match="installed but not active.*refusing to fall back silently"):
        rt.load(bundle, backend="ort-cuda")


def test_non_finite_outputs_are_refused(bundle):
    """A graph that yields NaN for some images raises ResultError naming them; finite ones pass."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    import adrt.runtime as rt
    from adrt.errors import ResultError
    from adrt.runtime.bundle import write_manifest

    # raw_score = log(mean pixel - 100): NaN for dark images; the map is finite everywhere.
    f = helper.make_tensor_value_info
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[3], keepdims=0),
        helper.make_node("ReduceMean", ["m"], ["s"], axes=[1, 2], keepdims=0),
        helper.make_node("Sub", ["s", "c"], ["d"]),
        helper.make_node("Log", ["d"], ["raw_score"]),
        helper.make_node("Identity", ["m"], ["raw_map"]),
        helper.make_node("Identity", ["m"], ["anomaly_map"]),
        helper.make_node("Identity", ["raw_score"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes, "nan", [f("image", TensorProto.UINT8, ["n", SIZE, SIZE, 3])],
        [f("anomaly_map", TensorProto.FLOAT, ["n", SIZE, SIZE]), f("score", TensorProto.FLOAT, ["n"]),
         f("raw_map", TensorProto.FLOAT, ["n", SIZE, SIZE]), f("raw_score", TensorProto.FLOAT, ["n"])],
        initializer=[helper.make_tensor("c", TensorProto.FLOAT, [], [100.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(bundle / "model.onnx"))
    write_manifest(bundle, json.loads((bundle / "manifest.json").read_text()))
    x = np.full((3, SIZE, SIZE, 3), 200, np.uint8)
    x[1] = 10
    with rt.load(bundle) as s:
        assert np.isfinite(s.run(x[[0, 2]]).scores).all()
        with pytest.raises(ResultError, match=r"NaN/Inf for image\(s\) \[1\]"):
            s.run(x)
