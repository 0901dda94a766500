"""The native TensorRT path (build-engine, the tensorrt backend) against fakes of the exact TensorRT,
pycuda and cuda-python calls it makes (tests/trt_fakes.py), for TensorRT 8.6, 10 and 11.

The fake engine computes with ONNX Runtime on whatever is in (fake) device memory, so a buffer of
the wrong size, a missing copy, a copy before the engine ran or a missing synchronise changes the
result and fails these tests. Nothing here needs a GPU; benchmarks/gpu_check.py runs the real thing.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from adrt.errors import BackendError, BundleError

from tests import trt_fakes
from tests.conftest import SIZE

pytest.importorskip("onnx")
GENERATIONS = (8, 10, 11)
BINDINGS = ("pycuda", "cuda-python")


@pytest.fixture(scope="module")
def source_bundle(runs, synth_data, tmp_path_factory):
    """A PatchCore bundle with fp16 and int8 models (made once)."""
    from adrt.export.quantize import add_variant

    _, b = runs("patchcore")
    dst = tmp_path_factory.mktemp("trt") / "bundle"
    shutil.copytree(b, dst)
    add_variant(dst, "fp16")
    add_variant(dst, "int8", calib=synth_data)
    return dst


@pytest.fixture
def bundle(source_bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(source_bundle, dst)
    return dst


def _images(n, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _build(bundle, precision="fp32", profile=(1, 2, 4), **kw):
    from adrt.export.engine import BatchProfile, build_into_bundle

    return build_into_bundle(bundle, precision, BatchProfile(*profile), **kw)


@pytest.mark.parametrize("binding", BINDINGS)
@pytest.mark.parametrize("generation", GENERATIONS)
def test_build_store_load_and_run_matches_onnxruntime(monkeypatch, bundle, tmp_path, generation, binding):
    import adrt.runtime as rt
    from adrt.runtime.bundle import sha256_file

    gpu, trt, cuda = trt_fakes.install(monkeypatch, generation, binding)
    rec = _build(bundle, "fp32", timing_cache=tmp_path / "timing.cache")
    m = json.loads((bundle / "manifest.json").read_text())
    tag = f"nvidia-fake-h200-sm90-trt{trt.__version__}-fp32"
    assert rec["file"] == f"engines/{tag}.plan" and m["engines"][tag] == rec
    assert m["files"][rec["file"]]["sha256"] == sha256_file(bundle / rec["file"])
    assert (rec["gpu"], rec["compute_capability"], rec["tensorrt"], rec["precision"]) == \
        ("NVIDIA Fake H200", "9.0", trt.__version__, "fp32")
    assert rec["profile"] == {"input": "image", "min": [1, SIZE, SIZE, 3], "opt": [2, SIZE, SIZE, 3],
                              "max": [4, SIZE, SIZE, 3]}
    assert rec["cuda_binding"] == binding and rec["parity_vs_ort_cpu"]["raw_map"]["max_rel"] < 1e-6
    assert "clear_flag:TF32" in trt.calls                              # fp32 means fp32

    x = _images(7)                                                     # > max batch: runs in slices 4 + 3
    with rt.load(bundle, backend="tensorrt", precision="fp32") as s:
        got = s.run(x)
        got1 = s.run(x[0])
    with rt.load(bundle) as s:
        want = s.run(x)
    for f in ("maps", "scores", "raw_maps", "raw_scores"):
        assert np.array_equal(getattr(got, f), getattr(want, f)), f
    assert np.array_equal(got1.raw_scores, want.raw_scores[:1])
    # Per slice: input copied in, engine run, outputs copied back, then one synchronise.
    assert gpu.log[-7:] == ["htod", "execute", "dtoh", "dtoh", "dtoh", "dtoh", "sync"]
    # Everything freed, context released.
    state = cuda._state
    if binding == "pycuda":
        assert not state["live"] and not state["contexts"]
    else:
        assert not state["dev"] and not state["host"] and not state["streams"]
    assert not gpu.memory


@pytest.mark.parametrize("generation", GENERATIONS)
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_engines_use_each_generations_api(monkeypatch, bundle, generation, precision):
    import adrt.runtime as rt

    gpu, trt, _ = trt_fakes.install(monkeypatch, generation, "pycuda")
    rec = _build(bundle, precision, timing_cache=None)
    # TensorRT 8.x builds from the opset-17 copy, made (and checked against its source) on the spot.
    stem = f"model.{precision}" + (".trt86" if generation == 8 else "")
    assert rec["onnx"] == stem + ".onnx" and rec["timing_cache"] == "off"
    models = json.loads((bundle / "manifest.json").read_text())["models"]
    assert (f"{precision}.trt86" in models) == (generation == 8)
    if generation == 8:
        copy = models[f"{precision}.trt86"]
        assert copy["opset"] == 17 and copy["source"] == precision
        assert max(v["max_rel"] for k, v in copy["parity_vs_source"].items() if k.startswith("raw")) <= \
            copy["parity_tolerance"]["raw_max_rel"]
    assert rec["parity_ok"] is True
    calls = trt.calls
    if generation == 8:
        assert "create_network:1" in calls                              # EXPLICIT_BATCH
        flag = {"fp16": "set_flag:FP16", "int8": "set_flag:INT8"}[precision]
        assert flag in calls
        if precision == "fp16":                                          # the fp32 tail pinned to fp32
            assert "set_flag:OBEY_PRECISION_CONSTRAINTS" in calls and rec["fp32_pinned_layers"] > 10
    else:                                                                # strongly typed, no precision flags
        assert f"create_network:{2 if generation == 10 else 0}" in calls
        assert not [c for c in calls if c.startswith("set_flag")]
    x = _images(3)
    with rt.load(bundle, backend="tensorrt", precision=precision) as s:
        got = s.run(x)
    with rt.load(bundle, precision=precision) as s:
        want = s.run(x)
    assert np.array_equal(got.raw_maps, want.raw_maps)


def test_the_fakes_catch_a_missing_synchronise(monkeypatch, bundle):
    import adrt.runtime as rt

    trt_fakes.install(monkeypatch, 10, "pycuda")
    _build(bundle, "fp32", timing_cache=None, check=False)
    x = _images(2)
    with rt.load(bundle) as s:
        want = s.run(x)
    with rt.load(bundle, backend="tensorrt") as s:
        monkeypatch.setattr(s.backend.cuda, "synchronize", lambda stream: None)
        got = s.run(x)
    assert not np.array_equal(got.raw_maps, want.raw_maps)


def test_timing_cache_is_written_then_reused_and_a_foreign_one_replaced(monkeypatch, bundle, tmp_path):
    cache = tmp_path / "cache" / "t.cache"
    trt_fakes.install(monkeypatch, 10, "pycuda")
    assert _build(bundle, timing_cache=cache, check=False)["timing_cache"] == "new"
    assert cache.is_file()
    assert _build(bundle, timing_cache=cache, check=False)["timing_cache"] == "reused"
    trt_fakes.install(monkeypatch, 10, "pycuda", gpu=trt_fakes.FakeGPU(name="NVIDIA Other"))
    assert _build(bundle, timing_cache=cache, check=False)["timing_cache"] == "mismatched, rebuilt"


def test_a_plan_for_another_gpu_or_tensorrt_version_is_refused_naming_both(monkeypatch, bundle):
    import adrt.runtime as rt

    trt_fakes.install(monkeypatch, 10, "pycuda")
    _build(bundle, "fp16", check=False, timing_cache=None)
    trt_fakes.install(monkeypatch, 10, "pycuda", gpu=trt_fakes.FakeGPU(name="Orin", capability=(8, 7)))
    with pytest.raises(BundleError, match=r"built for NVIDIA Fake H200 \(compute capability 9\.0\) with TensorRT "
                                          r"10\.3\.0; this machine has Orin \(compute capability 8\.7\) with "
                                          r"TensorRT 10\.3\.0"):
        rt.load(bundle, backend="tensorrt", precision="fp16")
    trt_fakes.install(monkeypatch, 10, "pycuda", version="10.4.0")
    with pytest.raises(BundleError, match=r"TensorRT 10\.3\.0; this machine has NVIDIA Fake H200 .* TensorRT 10\.4\.0"):
        rt.load(bundle, backend="tensorrt", precision="fp16")
    with pytest.raises(BundleError, match=r"no int8 TensorRT engine .*adrt build-engine BUNDLE --precision int8"):
        rt.load(bundle, backend="tensorrt", precision="int8")


def test_truncated_or_foreign_plan_files_are_clear_errors(monkeypatch, bundle):
    import adrt.runtime as rt
    from adrt.runtime.bundle import write_manifest

    trt_fakes.install(monkeypatch, 10, "pycuda")
    rec = _build(bundle, "fp32", check=False, timing_cache=None)
    plan = bundle / rec["file"]
    data = plan.read_bytes()
    plan.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match=rec["file"] + r" is \d+ bytes, the manifest records \d+"):
        rt.load(bundle, backend="tensorrt")
    # The same truncated file with its checksum re-recorded: TensorRT's refusal, with its message.
    m = json.loads((bundle / "manifest.json").read_text())
    write_manifest(bundle, m)
    _, trt, cuda = trt_fakes.install(monkeypatch, 10, "pycuda")
    with pytest.raises(BackendError, match="could not deserialise the plan .*corrupt"):
        rt.load(bundle, backend="tensorrt")
    assert not cuda._state["live"] and not cuda._state["contexts"]      # cleaned up on the error path
    # A plan written by another TensorRT version but tagged as this one.
    plan.write_bytes(data.replace(b'"version": "10.3.0"', b'"version": "10.1.0"'))
    write_manifest(bundle, m)
    with pytest.raises(BackendError, match="expecting library version 10.3.0 got 10.1.0"):
        rt.load(bundle, backend="tensorrt")


@pytest.mark.parametrize("generation, gpu, precision", [
    (10, trt_fakes.FakeGPU(fast_int8=False), "int8"),
    (8, trt_fakes.FakeGPU(fast_fp16=False), "fp16"),
    (11, trt_fakes.FakeGPU(name="Old", capability=(5, 0)), "fp16"),
])
def test_unsupported_precision_is_refused_and_leaves_no_plan(monkeypatch, bundle, generation, gpu, precision):
    before = (_files(bundle), (bundle / "manifest.json").read_bytes())
    trt_fakes.install(monkeypatch, generation, "pycuda", gpu=gpu)
    with pytest.raises(BackendError, match=f"no fast {precision} support"):
        _build(bundle, precision, timing_cache=None)
    assert (_files(bundle), (bundle / "manifest.json").read_bytes()) == before


def test_a_failed_build_leaves_no_partial_plan(monkeypatch, bundle):
    before = (_files(bundle), (bundle / "manifest.json").read_bytes())
    _, trt, _ = trt_fakes.install(monkeypatch, 10, "pycuda")
    monkeypatch.setattr(trt.Builder, "build_serialized_network", lambda self, n, c: None)
    with pytest.raises(BackendError, match="failed to build the fp32 engine"):
        _build(bundle, timing_cache=None)
    # A failure after the plan is written (the manifest cannot be written) removes the plan too.
    trt_fakes.install(monkeypatch, 10, "pycuda")
    import adrt.export.engine as engine

    def broken(root, manifest):
        raise OSError("disk full")

    monkeypatch.setattr(engine, "write_manifest", broken)
    with pytest.raises(OSError, match="disk full"):
        _build(bundle, timing_cache=None, check=False)
    assert (_files(bundle), (bundle / "manifest.json").read_bytes()) == before


def test_missing_variant_cpu_int8_and_zip_are_refused(monkeypatch, runs, bundle, tmp_path):
    trt_fakes.install(monkeypatch, 10, "pycuda")
    _, plain = runs("patchcore")
    only_fp32 = tmp_path / "plain"
    shutil.copytree(plain, only_fp32)
    with pytest.raises(BundleError, match=r"lacks \(it has: fp32\).*--precision int8 --calib DIR"):
        _build(only_fp32, "int8")
    m = json.loads((bundle / "manifest.json").read_text())
    m["models"]["int8"]["int8_target"] = "cpu"
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="quantised for 'cpu'.*--int8-target tensorrt"):
        _build(bundle, "int8")
    zipped = shutil.make_archive(str(tmp_path / "z"), "zip", only_fp32)
    with pytest.raises(BundleError, match="not a .zip"):
        _build(zipped, "fp32")


@pytest.mark.parametrize("generation, binding, match", [
    (None, "pycuda", r"tensorrt Python package.*pip install -e \"\.\[tensorrt\]\" \(in the adrt source folder\)"),
    (10, None, r"pycuda or cuda-python.*pip install -e \"\.\[tensorrt\]\""),
])
def test_missing_packages_name_the_pip_extra(monkeypatch, bundle, generation, binding, match):
    import adrt.runtime as rt

    trt_fakes.install(monkeypatch, generation, binding)
    with pytest.raises(BackendError, match=match):
        rt.load(bundle, backend="tensorrt")
    with pytest.raises(BackendError, match=match):
        _build(bundle)


def test_bad_batch_profile_is_an_error():
    from adrt.errors import InputError
    from adrt.export.engine import BatchProfile

    with pytest.raises(InputError, match="min=4 opt=2 max=8"):
        BatchProfile(4, 2, 8)


def test_cli_build_engine_then_infer_on_tensorrt(monkeypatch, bundle, synth_data, tmp_path):
    from click.testing import CliRunner

    from adrt.cli import main

    trt_fakes.install(monkeypatch, 8, "cuda-python")
    r = CliRunner().invoke(main, ["build-engine", str(bundle), "--precision", "int8", "--max-batch", "4",
                                  "--timing-cache", str(tmp_path / "t.cache")])
    assert r.exit_code == 0, r.output
    assert "trt8.6.1-int8.plan" in r.output and "parity vs ONNX Runtime CPU" in r.output
    good = synth_data / "test" / "good"
    r = CliRunner().invoke(main, ["infer", str(bundle), str(good), "--backend", "tensorrt", "--precision", "int8"])
    assert r.exit_code == 0, r.output
    assert r.output.count("\n") == 1 + len(list(good.iterdir()))
    r = CliRunner().invoke(main, ["info", str(bundle)])
    assert r.exit_code == 0, r.output
    engine_lines = [line for line in r.output.splitlines() if line.startswith("engine")]
    assert len(engine_lines) == 1 and "int8: engines/" in engine_lines[0] and "TensorRT 8.6.1" in engine_lines[0]
    assert "batch 1/" in engine_lines[0] and "/4" in engine_lines[0]
    r = CliRunner().invoke(main, ["build-engine", str(bundle), "--min-batch", "3", "--opt-batch", "2"])
    assert r.exit_code != 0 and "1 ≤ min ≤ opt ≤ max" in r.output


@pytest.mark.parametrize("generation", GENERATIONS)
def test_a_two_input_bundle_builds_and_runs_with_its_references(monkeypatch, paired_run, tmp_path, generation):
    import adrt.runtime as rt

    dst = tmp_path / "paired"
    shutil.copytree(paired_run[1], dst)
    gpu, trt, _ = trt_fakes.install(monkeypatch, generation, "pycuda")
    rec = _build(dst, "fp32", timing_cache=None)
    assert rec["parity_ok"] is True and trt.calls.count("set_shape") == 2      # a profile for each input
    x, r = _images(5), _images(5, seed=2)
    with rt.load(dst, backend="tensorrt", precision="fp32") as s:
        assert s.paired
        got = s.run(x, references=r)                    # > max batch 4: slices of both inputs
        with pytest.raises(Exception, match="references"):
            s.run(x)
    with rt.load(dst) as s:
        want = s.run(x, references=r)
    # TensorRT 8.x runs the opset-17 copy: equal to float32 rounding, not bit for bit.
    for f in ("maps", "scores", "raw_maps", "raw_scores"):
        np.testing.assert_allclose(getattr(got, f), getattr(want, f), rtol=1e-5, atol=1e-6, err_msg=f)
    assert gpu.log[-8:] == ["htod", "htod", "execute", "dtoh", "dtoh", "dtoh", "dtoh", "sync"]
