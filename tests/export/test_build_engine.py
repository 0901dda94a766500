"""`adrt build-engine` hardening against the TensorRT fakes (tests/trt_fakes.py): the conformance
check before parsing, every output's shape/dtype/values compared with ONNX Runtime, a failed plan
not stored (unless --keep-failed, recorded), and DLA: its config calls and what it refuses."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from adrt.errors import BackendError, BundleError, InputError

from tests import trt_fakes

pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def source_bundle(runs, tmp_path_factory):
    """A PaDiM bundle with an fp16 model (made once)."""
    from adrt.export.quantize import add_variant

    dst = tmp_path_factory.mktemp("engine") / "bundle"
    shutil.copytree(runs("padim")[1], dst)
    add_variant(dst, "fp16", threads=1)
    return dst


@pytest.fixture
def bundle(source_bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(source_bundle, dst)
    return dst


def _state(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()), \
        (folder / "manifest.json").read_bytes()


def _build(bundle, precision="fp32", profile=(1, 2, 4), **kw):
    from adrt.export.engine import BatchProfile, build_into_bundle

    kw.setdefault("timing_cache", None)
    return build_into_bundle(bundle, precision, BatchProfile(*profile), **kw)


class _Stub:
    """A backend whose outputs are ONNX Runtime's, altered by ``change``."""

    def __init__(self, onnx_path, change):
        import onnxruntime as ort

        self.sess, self.change = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]), change

    def run(self, feeds):
        out = dict(zip([o.name for o in self.sess.get_outputs()], self.sess.run(None, feeds)))
        return self.change(out)


@pytest.mark.parametrize("change, problem", [
    (lambda o: {**o, "score": o["score"][:1]}, "score: engine gives float32 \\[1\\], ONNX Runtime float32 \\[3\\]"),
    (lambda o: {**o, "raw_score": o["raw_score"].max(keepdims=True).reshape(())},
     "raw_score: engine gives float32 \\[\\], ONNX Runtime float32 \\[3\\]"),
    (lambda o: {**o, "raw_map": o["raw_map"].astype(np.float16)}, "raw_map: engine gives float16"),
    (lambda o: {k: v for k, v in o.items() if k != "anomaly_map"}, "anomaly_map: missing"),
    (lambda o: {**o, "raw_map": np.where(np.arange(o["raw_map"].size).reshape(o["raw_map"].shape) == 5, np.nan,
                                         o["raw_map"]).astype(np.float32)}, "raw_map: 1 value\\(s\\) finite in one"),
    (lambda o: {**o, "raw_map": o["raw_map"] * np.float32(1.01)}, "raw_map: max \\|Δ\\| .* of its range > 0.001"),
    (lambda o: {**o, "score": o["score"] - np.float32(0.01)}, "score: max \\|Δ\\| .* > 0.001"),
])
def test_engine_parity_compares_shape_dtype_nan_and_values(bundle, change, problem):
    import re

    from adrt.export.engine import engine_parity, parity_failures

    model = bundle / "model.onnx"
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    assert parity_failures(engine_parity(_Stub(model, lambda o: o), model, images), "fp32") == []
    bad = parity_failures(engine_parity(_Stub(model, change), model, images), "fp32")
    assert bad and re.search(problem, "; ".join(bad)), bad


def test_a_plan_failing_parity_is_not_stored_unless_kept(monkeypatch, bundle):
    import adrt.export.engine as engine

    trt_fakes.install(monkeypatch, 10, "pycuda")
    before = _state(bundle)
    real = engine.engine_parity

    def off(backend, onnx_path, images):       # the engine's raw map 5 % off
        rep = real(backend, onnx_path, images)
        rep["raw_map"]["max_rel"] = 0.05
        return rep

    monkeypatch.setattr(engine, "engine_parity", off)
    with pytest.raises(BackendError, match="does not match ONNX Runtime CPU.*raw_map.*no plan stored"):
        _build(bundle)
    assert _state(bundle) == before
    rec = _build(bundle, keep_failed=True)
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["engines"][rec["file"][len("engines/"):-len(".plan")]]["parity_ok"] is False
    assert rec["parity_failures"] and "raw_map" in rec["parity_failures"][0]
    assert rec["parity_tolerance"] == {"raw_rtol": 1e-3, "normalised_atol": 1e-3}
    assert (bundle / rec["file"]).is_file()


def test_conformance_check_refuses_before_parsing(monkeypatch, bundle, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from adrt.runtime.bundle import write_manifest

    # A graph that transposes its uint8 input before the cast: TensorRT's parser refuses it.
    x = helper.make_tensor_value_info("image", TensorProto.UINT8, ["n", 64, 64, 3])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in
            ("anomaly_map", "score", "raw_map", "raw_score")]
    nodes = [helper.make_node("Transpose", ["image"], ["t"], perm=[0, 3, 1, 2], name="permute"),
             helper.make_node("Cast", ["t"], ["f"], to=TensorProto.FLOAT, name="cast")]
    nodes += [helper.make_node("Identity", ["f"], [o.name], name=f"id_{o.name}") for o in outs]
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], outs),
                                opset_imports=[helper.make_opsetid("", 18)]), bundle / "model.onnx")
    m = json.loads((bundle / "manifest.json").read_text())
    write_manifest(bundle, m)
    _, trt, _ = trt_fakes.install(monkeypatch, 10, "pycuda")
    before = _state(bundle)
    with pytest.raises(BundleError, match="(?s)model.onnx breaks .* TensorRT 10.*permute \\(Transpose\\).*uint8-io"):
        _build(bundle)
    assert "parse" not in trt.calls and _state(bundle) == before


def test_dla_build_sets_the_core_and_fallback_and_the_plan_runs_on_it(monkeypatch, bundle):
    import adrt.runtime as rt

    gpu = trt_fakes.FakeGPU(name="Orin", capability=(8, 7), dla_cores=2)
    _, trt, _ = trt_fakes.install(monkeypatch, 10, "pycuda", gpu=gpu, version="10.3.0")
    from adrt.export.engine import DlaOptions

    rec = _build(bundle, "fp16", profile=(2, 2, 2), dla=DlaOptions(1, gpu_fallback=True))
    assert {"default_device_type:DLA", "DLA_core:1", "set_flag:GPU_FALLBACK"} <= set(trt.calls)
    assert rec["file"].endswith("-fp16-dla1.plan") and (rec["dla_core"], rec["gpu_fallback"]) == (1, True)
    x = np.random.default_rng(2).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    with rt.load(bundle, backend="tensorrt", precision="fp16") as s:
        got = s.run(x)
    assert "runtime.DLA_core:1" in trt.calls
    with rt.load(bundle, precision="fp16") as s:
        assert np.array_equal(got.raw_maps, s.run(x).raw_maps)


@pytest.mark.parametrize("precision, profile, version, kw, error, match", [
    ("fp32", (1, 1, 1), "10.3.0", {}, InputError, "DLA runs fp16 or int8 layers only"),
    ("fp16", (1, 2, 4), "10.3.0", {}, InputError, "DLA needs a static batch .*1/2/4"),
    ("fp16", (1, 1, 1), "10.8.0", {}, BackendError, "TensorRT 10.8.0 has no DLA on Jetson"),
    ("fp16", (1, 1, 1), "10.3.0", {"core": 2}, BackendError, "DLA core 2 does not exist: Orin has 2"),
    ("fp16", (1, 1, 1), "10.3.0", {"gpu_fallback": False}, BundleError,
     "(?s)breaks .* rule\\(s\\) of TensorRT 10.*is not a DLA layer; without --gpu-fallback"),
])
def test_dla_refusals_are_clear_and_leave_the_bundle_alone(monkeypatch, bundle, precision, profile, version, kw,
                                                            error, match):
    from adrt.export.engine import DlaOptions

    gpu = trt_fakes.FakeGPU(name="Orin", capability=(8, 7), dla_cores=2)
    trt_fakes.install(monkeypatch, 10 if version.startswith("10") else 11, "pycuda", gpu=gpu, version=version)
    before = _state(bundle)
    opts = {"core": 0, "gpu_fallback": True, **kw}
    with pytest.raises(error, match=match):
        _build(bundle, precision, profile=profile, dla=DlaOptions(**opts))
    assert _state(bundle) == before


def test_dla_on_a_tensorrt_11_with_dla_passes_the_conformance_check(monkeypatch, bundle):
    """11.4.1+ has DLA again (check_dla_request lets it through): the conformance check, which uses
    the latest rules for 11.x, must not refuse it for having no DLA; 11.4.0 is refused up front."""
    gpu = trt_fakes.FakeGPU(name="Orin", capability=(8, 7), dla_cores=2)
    _, trt, _ = trt_fakes.install(monkeypatch, 11, "pycuda", gpu=gpu, version="11.4.1")
    from adrt.export.engine import DlaOptions

    rec = _build(bundle, "fp16", profile=(1, 1, 1), dla=DlaOptions(0, gpu_fallback=True))
    assert rec["file"].endswith("-fp16-dla0.plan") and "DLA_core:0" in trt.calls
    trt_fakes.install(monkeypatch, 11, "pycuda", gpu=gpu, version="11.4.0")
    with pytest.raises(BackendError, match="TensorRT 11.4.0 has no DLA"):
        _build(bundle, "fp16", profile=(1, 1, 1), dla=DlaOptions(0, gpu_fallback=True))


def test_cli_build_engine_dla_flags(monkeypatch, bundle):
    from click.testing import CliRunner

    from adrt.cli import main

    trt_fakes.install(monkeypatch, 8, "cuda-python", gpu=trt_fakes.FakeGPU(name="Orin", capability=(8, 7),
                                                                           dla_cores=2))
    r = CliRunner().invoke(main, ["build-engine", str(bundle), "--gpu-fallback"])
    assert r.exit_code != 0 and "--gpu-fallback goes with --dla-core" in r.output
    r = CliRunner().invoke(main, ["build-engine", str(bundle), "--precision", "fp16", "--dla-core", "0",
                                  "--gpu-fallback", "--no-timing-cache"])
    assert r.exit_code != 0 and "DLA needs a static batch" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["build-engine", str(bundle), "--precision", "fp16", "--dla-core", "0",
                                  "--gpu-fallback", "--max-batch", "1", "--no-timing-cache"])
    assert r.exit_code == 0, r.output
    assert "DLA core 0" in r.output and "model.fp16.trt86.onnx" in r.output and "parity vs ONNX Runtime" in r.output
