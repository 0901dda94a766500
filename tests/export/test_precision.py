"""FP16 and INT8 (QDQ) variants of a bundle: structure, agreement with fp32, selection at run time,
and the bad inputs (calibration folder empty or too small) that must leave the bundle untouched."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from adrt.errors import BundleError, DataError, InputError

from tests.conftest import SIZE, methods
from tests.export.helpers import run_variants

onnx = pytest.importorskip("onnx")
# The feature-extractor methods the variants were first designed for (benchmarks/precision.py); the
# other registered methods' variants and float parts are tested in test_quantize_methods.py.
MEASURED = [m for m in ("patchcore", "padim") if m in methods()]


def _copy(runs, tmp_path, method="patchcore"):
    _, b = runs(method)
    dst = tmp_path / f"{method}_bundle"
    shutil.copytree(b, dst)
    return dst


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def variants(runs, synth_data, tmp_path_factory):
    """A PatchCore bundle with fp16 and int8 (tensorrt target) models, made once for the module."""
    from adrt.export.quantize import add_variant

    _, b = runs("patchcore")
    dst = tmp_path_factory.mktemp("variants") / "bundle"
    shutil.copytree(b, dst)
    add_variant(dst, "fp16")
    add_variant(dst, "int8", calib=synth_data)
    return dst


@pytest.mark.parametrize("method", MEASURED)
def test_feature_region_is_the_backbone_only(runs, method):
    from adrt.export.region import feature_region

    _, b = runs(method)
    model = onnx.load(str(b / "model.onnx"))
    region = set(feature_region(model))
    ops_in = {n.op_type for n in model.graph.node if n.name in region}
    convs = {n.name for n in model.graph.node if n.op_type == "Conv"}
    assert convs <= region
    # The scoring, blur and calibration stay float: none of their ops is in the region.
    assert not ops_in & {"MatMul", "Sigmoid", "ReduceMin", "ArgMin", "Sqrt", "Softmax", "Transpose", "Cast"}
    # Every graph output is produced outside the region.
    producers = {o: n.name for n in model.graph.node for o in n.output}
    assert all(producers[o.name] not in region for o in model.graph.output)


@pytest.mark.parametrize("method", MEASURED)
def test_fp16_keeps_io_types_and_agrees_with_fp32(runs, method, synth_data):
    import onnxruntime as ort

    from adrt.data import Dataset, load_images
    from adrt.export.fp16 import convert_fp16
    from adrt.export.region import feature_region

    _, b = runs(method)
    model = onnx.load(str(b / "model.onnx"))
    half = convert_fp16(model)
    io = lambda m: ([(i.name, i.type.tensor_type.elem_type) for i in m.graph.input],
                    [(o.name, o.type.tensor_type.elem_type) for o in m.graph.output])
    assert io(half) == io(model)                       # uint8 in, float32 out
    region = set(feature_region(model))
    conv_weights = {n.input[1] for n in half.graph.node if n.op_type == "Conv"}
    inits = {i.name: i.data_type for i in half.graph.initializer}
    assert conv_weights and all(inits[w] == onnx.TensorProto.FLOAT16 for w in conv_weights)
    assert any(n.op_type == "MatMul" for n in half.graph.node)
    for n in half.graph.node:                          # the scoring GEMMs still read float32 weights
        if n.op_type == "MatMul":
            assert all(inits.get(x, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for x in n.input)
    assert len(region) > 20

    ds = Dataset.open(synth_data)
    x = load_images([s.path for s in ds.test], SIZE, SIZE)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"image": x})
    got = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"image": x})
    for r, g in zip(ref, got):
        assert g.dtype == np.float32 and np.isfinite(g).all()
    raw_ref, raw_got = ref[3], got[3]
    assert np.max(np.abs(raw_ref - raw_got) / np.abs(raw_ref)) < 0.01   # stated fp16 tolerance: 1 %


def test_int8_variant_is_symmetric_qdq_on_the_backbone(variants):
    m = json.loads((variants / "manifest.json").read_text())
    entry = m["models"]["int8"]
    assert entry["file"] == "model.int8.onnx" and m["files"]["model.int8.onnx"]["sha256"]
    assert entry["int8_target"] == "tensorrt" and entry["calibration"]["images"] >= 16
    assert set(entry["reduced_ops"]) <= {"Conv", "Clip"} and entry["reduced_ops"].get("Conv", 0) > 0
    assert "MatMul" in entry["float_ops"]
    assert abs(entry["float_prefix"]["score_shift_std"]) <= entry["float_prefix"]["max_shift_std"]
    q = onnx.load(str(variants / "model.int8.onnx"))
    from onnx import numpy_helper

    inits = {i.name: i for i in q.graph.initializer}
    qdq = [n for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for n in qdq:                                      # TensorRT: int8, zero point 0
        zp = numpy_helper.to_array(inits[n.input[2]])
        assert zp.dtype == np.int8 and not zp.any(), n.name
    producers = {o: n for n in q.graph.node for o in n.output}
    for n in q.graph.node:                             # nothing quantised feeds the scoring GEMMs
        if n.op_type == "MatMul":
            assert all(producers.get(x) is None or producers[x].op_type != "DequantizeLinear" for x in n.input)


def test_variants_run_through_the_runtime_and_rank_like_fp32(variants, synth_data):
    from adrt.metrics import image_auroc
    from adrt.runtime import load

    labels, out = run_variants(variants, synth_data)
    for p in ("fp16", "int8"):
        assert out[p].maps.shape == out["fp32"].maps.shape and out[p].maps.dtype == np.float32
        assert image_auroc(labels, out[p].raw_scores) >= image_auroc(labels, out["fp32"].raw_scores) - 0.1
    assert np.allclose(out["fp16"].raw_scores, out["fp32"].raw_scores, rtol=0.01)
    with pytest.raises(BundleError, match=r"no 'fp8' model .* it has: fp32, fp32.trt86, fp16, int8"):
        load(variants, precision="fp8")


def test_int8_cpu_target_uses_uint8_activations(runs, synth_data, tmp_path):
    from adrt.export.quantize import add_variant

    b = _copy(runs, tmp_path)
    add_variant(b, "int8", calib=synth_data, int8_target="cpu")
    q = onnx.load(str(b / "model.int8.onnx"))
    acts = [n for n in q.graph.node if n.op_type == "QuantizeLinear"]
    inits = {i.name: i for i in q.graph.initializer}
    assert acts and all(inits[n.input[2]].data_type == onnx.TensorProto.UINT8 for n in acts)
    assert json.loads((b / "manifest.json").read_text())["models"]["int8"]["activations"] == "uint8 asymmetric"


@pytest.mark.parametrize("n_images, match", [(0, "no images found"), (5, "5 normal image.*at least 16")])
def test_calibration_folder_empty_or_too_small_leaves_the_bundle_untouched(runs, synth_data, tmp_path, n_images,
                                                                            match):
    from adrt.export.quantize import add_variant

    b = _copy(runs, tmp_path)
    before = _snapshot(b)
    calib = tmp_path / "calib"
    calib.mkdir()
    for p in sorted((synth_data / "train" / "good").iterdir())[:n_images]:
        shutil.copy(p, calib / p.name)
    with pytest.raises(DataError, match=match):
        add_variant(b, "int8", calib=calib)
    assert _snapshot(b) == before                      # no model, no temporary file, same manifest
    with pytest.raises(InputError, match="int8 needs calibration images"):
        add_variant(b, "int8")
    assert _snapshot(b) == before


def test_export_cli_adds_variants_and_eval_selects_them(runs, synth_data, tmp_path):
    from click.testing import CliRunner

    from adrt.cli import main

    run, _ = runs("patchcore")
    out = tmp_path / "b"
    r = CliRunner().invoke(main, ["export", str(run), "--out", str(out), "--precision", "fp16", "--precision", "int8",
                                  "--calib", str(synth_data)])
    assert r.exit_code == 0, r.output
    # Each model with its opset-17 copy for TensorRT 8.6.
    assert set(json.loads((out / "manifest.json").read_text())["models"]) == \
        {"fp32", "fp16", "int8", "fp32.trt86", "fp16.trt86", "int8.trt86"}
    r = CliRunner().invoke(main, ["eval", str(out), "--data", str(synth_data), "--precision", "int8", "--record"])
    assert r.exit_code == 0, r.output
    assert f"{synth_data.name}@int8" in json.loads((out / "manifest.json").read_text())["metrics"]
    # int8 without --calib, and a calibration folder with too few images: errors, nothing written
    bad = tmp_path / "bad"
    r = CliRunner().invoke(main, ["export", str(run), "--out", str(bad), "--precision", "int8"])
    assert r.exit_code != 0 and "--calib" in r.output and not bad.exists()
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted((synth_data / "train" / "good").iterdir())[:3]:
        shutil.copy(p, few / p.name)
    r = CliRunner().invoke(main, ["export", str(run), "--out", str(bad), "--precision", "int8", "--calib", str(few)])
    assert r.exit_code != 0 and "at least 16" in r.output and not bad.exists()


def test_runtime_with_a_variant_imports_neither_torch_nor_tensorrt(variants):
    code = (
        "import sys, numpy as np, adrt.runtime as rt\n"
        f"s = rt.load({str(variants)!r}, precision='int8')\n"
        f"s.run(np.zeros((1, {SIZE}, {SIZE}, 3), np.uint8))\n"
        "bad = [m for m in ('torch', 'tensorrt', 'pycuda', 'onnx') if m in sys.modules]\n"
        "sys.exit(f'imported {bad}' if bad else 0)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_export_with_a_failing_variant_writes_no_bundle(runs, synth_data, tmp_path, monkeypatch):
    import adrt.export.quantize as quantize
    from adrt.export.pipeline import export_run

    def fail(*a, **k):
        raise BundleError("INT8 moves normal scores too far")

    monkeypatch.setattr(quantize, "choose_int8", fail)
    run, _ = runs("patchcore")
    with pytest.raises(BundleError, match="too far"):
        export_run(run, tmp_path / "b", precisions=["fp16", "int8"], calib=synth_data)
    assert list(tmp_path.iterdir()) == []              # neither the bundle nor its staging folder
