"""The opset-17 copies for TensorRT 8.6 (adrt.export.trt86): each rewrite on a small graph, equal on
ONNX Runtime and clean under 8.6's rules; what has no opset-17 form refused by name; bundle copies
made, checked and renewed; export_onnx(opset=17) really writes opset 17."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto as TP, helper, numpy_helper  # noqa: E402

from adrt.errors import BundleError  # noqa: E402
from adrt.export.trt86 import to_trt86  # noqa: E402
from adrt.export.trt_check import check_model  # noqa: E402


def _model(nodes, out_shape=None, inits=(), opset=18, x_shape=(2, 4, 6, 6)):
    x = helper.make_tensor_value_info("x", TP.FLOAT, list(x_shape))
    outs = [helper.make_tensor_value_info(o, TP.FLOAT if not o.startswith("s") else TP.INT64, None)
            for o in nodes[-1].output]
    g = helper.make_graph(nodes, "g", [x], outs, initializer=list(inits))
    # Outputs typed by inference (the exporter writes them with shapes; the checker wants them).
    return onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]))


def _run(model, x):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})


def _same(model, converted):
    x = np.random.default_rng(0).normal(size=(2, 4, 6, 6)).astype(np.float32)
    for a, b in zip(_run(model, x), _run(converted, x)):
        assert a.shape == b.shape and np.array_equal(a, b)


def _ax(values):
    return numpy_helper.from_array(np.array(values, np.int64), "axes")


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMean", "ReduceMin", "ReduceL2", "ReduceProd", "ReduceSumSquare"])
def test_reduction_axes_input_becomes_the_attribute(op):
    m = _model([helper.make_node(op, ["x", "axes"], ["y"], keepdims=0, name="r")], inits=[_ax([1, 3])])
    assert any(v.rule == "reduce-axes" for v in check_model(m, "8.6"))
    c, done = to_trt86(m)
    node = c.graph.node[0]
    assert list(node.input) == ["x"] and [list(a.ints) for a in node.attribute if a.name == "axes"] == [[1, 3]]
    assert done == {"reduce axes input -> attribute": 1} and c.opset_import[0].version == 17
    assert not check_model(c, "8.6")
    _same(m, c)


def test_reduce_sum_keeps_its_axes_input_which_8_6_reads():
    m = _model([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0, name="r")], inits=[_ax([2])])
    c, _ = to_trt86(m)
    assert list(c.graph.node[0].input) == ["x", "axes"] and not check_model(c, "8.6")
    _same(m, c)


def test_shape_start_end_becomes_shape_and_slice():
    m = _model([helper.make_node("Shape", ["x"], ["s"], start=1, end=3, name="shp")])
    c, done = to_trt86(m)
    assert [n.op_type for n in c.graph.node] == ["Shape", "Slice"] and done == {"Shape start/end -> Shape + Slice": 1}
    assert not any(a.name in ("start", "end") for n in c.graph.node for a in n.attribute)
    assert not check_model(c, "8.6")
    _same(m, c)


def test_uneven_split_gets_explicit_sizes():
    m = _model([helper.make_node("Split", ["x"], ["y0", "y1", "y2"], axis=3, num_outputs=3, name="sp")],
               x_shape=(2, 4, 6, 7))
    c, done = to_trt86(m)
    sizes = {i.name: numpy_helper.to_array(i).tolist() for i in c.graph.initializer}
    assert list(sizes.values()) == [[3, 3, 1]] and done == {"Split num_outputs -> sizes": 1}
    x = np.random.default_rng(0).normal(size=(2, 4, 6, 7)).astype(np.float32)
    for a, b in zip(_run(m, x), _run(c, x)):
        assert np.array_equal(a, b)


def test_resize_defaults_are_dropped_and_antialias_refused():
    sizes = numpy_helper.from_array(np.array([2, 4, 12, 12], np.int64), "sizes")
    m = _model([helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear", antialias=0,
                                 keep_aspect_ratio_policy="stretch", name="rs")], inits=[sizes])
    c, _ = to_trt86(m)
    assert {a.name for a in c.graph.node[0].attribute} == {"mode"} and not check_model(c, "8.6")
    _same(m, c)
    aa = _model([helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear", antialias=1,
                                  name="rs")], inits=[sizes])
    with pytest.raises(BundleError, match="Resize rs: antialias=1 has no opset-17 form"):
        to_trt86(aa)


def test_an_operator_without_an_opset17_form_is_refused_by_name():
    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    m = _model([helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"], mode="reflect", name="pd")],
               inits=[pads, _ax([0, 1, 2, 3])])
    with pytest.raises(BundleError, match="Pad pd: an axes input has no opset-17 form"):
        to_trt86(m)
    scale = numpy_helper.from_array(np.ones(2, np.float32), "scale")
    bias = numpy_helper.from_array(np.zeros(2, np.float32), "bias")
    gn = _model([helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], num_groups=2, name="gn")],
                inits=[scale, bias])
    with pytest.raises(BundleError, match="GroupNormalization gn: .*no opset-17 form"):
        to_trt86(gn)


def test_bundle_copies_are_made_checked_and_renewed(runs, tmp_path):
    from adrt.export.quantize import add_variant
    from adrt.export.trt86 import add_trt86_variants
    from adrt.runtime.bundle import open_bundle, sha256_file, write_manifest

    b = tmp_path / "b"
    shutil.copytree(runs("padim")[1], b)
    assert add_trt86_variants(b) == []                       # export made fp32.trt86 already: nothing to do
    add_variant(b, "fp16", threads=1)
    assert add_trt86_variants(b) == ["fp16.trt86"]
    m = json.loads((b / "manifest.json").read_text())
    copy = m["models"]["fp16.trt86"]
    assert copy["file"] == "model.fp16.trt86.onnx" and copy["source"] == "fp16" and copy["opset"] == 17
    assert copy["source_sha256"] == sha256_file(b / "model.fp16.onnx")
    tol = copy["parity_tolerance"]
    assert all(v["max_rel"] <= tol["raw_max_rel"] if k.startswith("raw") else v["max_abs"] <= tol["normalised_max_abs"]
               for k, v in copy["parity_vs_source"].items())
    # A changed source makes the copy stale: it is made again.
    src = onnx.load(str(b / "model.fp16.onnx"))
    src.doc_string = "changed"
    onnx.save(src, str(b / "model.fp16.onnx"))
    write_manifest(b, m)
    assert add_trt86_variants(b) == ["fp16.trt86"]
    assert json.loads((b / "manifest.json").read_text())["models"]["fp16.trt86"]["source_sha256"] == \
        sha256_file(b / "model.fp16.onnx")
    # add_variant replacing the fp16 model renews its copy itself.
    add_variant(b, "fp16", threads=1)
    assert json.loads((b / "manifest.json").read_text())["models"]["fp16.trt86"]["source_sha256"] == \
        sha256_file(b / "model.fp16.onnx")
    open_bundle(b).cleanup()                                     # checksums of every file hold


def test_export_onnx_at_opset17_writes_opset17(runs, tmp_path):
    from adrt.export.onnx import export_onnx
    from adrt.train.fit import load_run

    det, _ = load_run(runs("padim")[0])
    p17 = export_onnx(det, tmp_path / "m17.onnx", opset=17)
    p18 = export_onnx(det, tmp_path / "m18.onnx")
    assert onnx.load(str(p17)).opset_import[0].version == 17 and onnx.load(str(p18)).opset_import[0].version == 18
    img = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    a = ort.InferenceSession(str(p17), providers=["CPUExecutionProvider"]).run(None, {"image": img})
    b = ort.InferenceSession(str(p18), providers=["CPUExecutionProvider"]).run(None, {"image": img})
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not check_model(p17, "8.6")
