"""`adrt check`: TensorRT's ONNX-parser rules per target. One small graph per rule that must fail (and
its fixed form that must pass), and every registered method × precision × TensorRT target passing."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import methods

onnx = pytest.importorskip("onnx")
from onnx import TensorProto as TP, helper, numpy_helper  # noqa: E402

from adrt.export.trt_check import check_model  # noqa: E402
from adrt.export.trt_rules import RULES, TARGETS  # noqa: E402

F32, U8, I64, I8 = TP.FLOAT, TP.UINT8, TP.INT64, TP.INT8


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, ty, shape):
    return helper.make_tensor_value_info(name, ty, shape)


def _init(name, values, dtype):
    return numpy_helper.from_array(np.asarray(values, dtype), name)


def _rules(model, target, **kw):
    return {(v.rule, v.node) for v in check_model(model, target, **kw) if v.fatal}


def _x(shape=("n", 3, 8, 8)):
    return _vi("x", F32, list(shape))


# --- one graph per rule: broken, then fixed ------------------------------------------------------

def test_opset_range_and_foreign_domains():
    m = _model([helper.make_node("Relu", ["x"], ["y"], name="r")], [_x()], [_vi("y", F32, None)], opset=18)
    assert ("opset", "graph") in _rules(m, "8.6")
    assert not _rules(m, "10") and not _rules(m, "latest")
    m17 = _model([helper.make_node("Relu", ["x"], ["y"], name="r")], [_x()], [_vi("y", F32, None)], opset=17)
    assert not _rules(m17, "8.6")
    custom = _model([helper.make_node("Gelu", ["x"], ["y"], name="g", domain="com.microsoft")], [_x()],
                    [_vi("y", F32, None)])
    custom.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert ("opset", "g") in _rules(custom, "latest")


def test_operator_not_in_the_support_matrix():
    m = _model([helper.make_node("Unique", ["x"], ["y"], name="u")], [_x()], [_vi("y", F32, None)])
    for t in TARGETS:
        assert ("op-support", "u") in _rules(m, t)


def test_operator_type_not_in_the_matrix_int64_reduce_min_on_8_6():
    nodes = [helper.make_node("Cast", ["x"], ["i"], to=I64, name="to_int"),
             helper.make_node("ReduceMin", ["i"], ["y"], axes=[1], keepdims=0, name="rmin")]
    m = _model(nodes, [_x()], [_vi("y", I64, None)])
    assert ("op-types", "rmin") in _rules(m, "8.6")          # INT64 → INT32: not listed for ReduceMin in 8.6
    assert ("op-types", "rmin") not in _rules(m, "10")       # 10.x lists INT32 and INT64
    fixed = _model([helper.make_node("ReduceMin", ["x"], ["y"], axes=[1], keepdims=0, name="rmin")], [_x()],
                   [_vi("y", F32, None)])
    assert not _rules(fixed, "8.6")


def test_uint8_only_at_the_graph_io():
    img = _vi("image", U8, ["n", 8, 8, 3])
    out = [_vi("y", F32, None), _vi("s", I64, None)]
    bad = _model([helper.make_node("Transpose", ["image"], ["t"], perm=[0, 3, 1, 2], name="permute"),
                  helper.make_node("Cast", ["t"], ["y"], to=F32, name="cast"),
                  helper.make_node("Shape", ["image"], ["s"], name="shape")], [img], out)
    for t in TARGETS:
        found = _rules(bad, t)
        assert {("uint8-io", "permute"), ("uint8-io", "shape")} <= found, found
    to_int = _model([helper.make_node("Cast", ["image"], ["y"], to=TP.INT32, name="cast")], [img],
                    [_vi("y", TP.INT32, None)])
    assert ("uint8-io", "cast") in _rules(to_int, "latest")
    fixed = _model([helper.make_node("Cast", ["image"], ["f"], to=F32, name="cast"),
                    helper.make_node("Transpose", ["f"], ["y"], perm=[0, 3, 1, 2], name="permute"),
                    helper.make_node("Shape", ["f"], ["s"], name="shape")], [img], out)
    for t in TARGETS:
        assert not {r for r in _rules(fixed, t) if r[0] == "uint8-io"}


def test_reduction_axes_input_ignored_by_8_6_and_must_be_constant():
    axes = _init("axes", [1], np.int64)
    m = _model([helper.make_node("ReduceMax", ["x", "axes"], ["y"], keepdims=0, name="rmax")], [_x()],
               [_vi("y", F32, None)], [axes], opset=18)
    assert ("reduce-axes", "rmax") in _rules(m, "8.6")
    assert not _rules(m, "10")
    computed = _model([helper.make_node("Shape", ["x"], ["sh"], name="shape"),
                       helper.make_node("Slice", ["sh", "one", "two"], ["ax"], name="slice"),
                       helper.make_node("ReduceSum", ["x", "ax"], ["y"], keepdims=0, name="rsum")], [_x()],
                      [_vi("y", F32, None)], [_init("one", [1], np.int64), _init("two", [2], np.int64)], opset=18)
    assert ("reduce-axes", "rsum") in _rules(computed, "10")
    fixed = _model([helper.make_node("ReduceMax", ["x"], ["y"], axes=[1], keepdims=0, name="rmax")], [_x()],
                   [_vi("y", F32, None)])
    assert not _rules(fixed, "8.6")


def test_shape_start_end_ignored_by_8_6():
    m = _model([helper.make_node("Shape", ["x"], ["y"], start=0, end=1, name="batch")], [_x()],
               [_vi("y", I64, None)])
    assert ("shape-slice", "batch") in _rules(m, "8.6")
    assert not _rules(m, "10")


def test_pooling_dilations_refused_by_every_version():
    m = _model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2], name="pool")],
               [_x()], [_vi("y", F32, None)])
    for t in TARGETS:
        assert ("pool-dilations", "pool") in _rules(m, t)
    fixed = _model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], name="pool")], [_x()],
                   [_vi("y", F32, None)])
    assert not any(_rules(fixed, t) for t in TARGETS)


@pytest.mark.parametrize("zp, ty, targets", [
    ([128], np.uint8, TARGETS),       # ONNX Runtime's asymmetric uint8 (the `cpu` INT8 target)
    ([3], np.int8, TARGETS),          # int8 but not symmetric
    (None, None, ("8.6",)),           # 8.6 needs the zero-point input
])
def test_qdq_zero_points_int8_and_zero(zp, ty, targets):
    inits = [_init("s", [0.1], np.float32)] + ([_init("zp", zp, ty)] if zp is not None else [])
    q_in = ["x", "s"] + (["zp"] if zp is not None else [])
    nodes = [helper.make_node("QuantizeLinear", q_in, ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s"] + (["zp"] if zp is not None else []), ["y"], name="dq")]
    m = _model(nodes, [_x()], [_vi("y", F32, None)], inits)
    for t in targets:
        assert ("qdq", "q") in _rules(m, t)
    fixed = _model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
                    helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")], [_x()],
                   [_vi("y", F32, None)], [_init("s", [0.1], np.float32), _init("z", [0], np.int8)])
    assert not any(_rules(fixed, t) for t in TARGETS)


def test_resize_modes_and_opset18_attributes():
    sizes = _init("sizes", [1, 3, 16, 16], np.int64)
    mk = (lambda **a: _model([helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], name="rs", **a)],
                             [_x((1, 3, 8, 8))], [_vi("y", F32, None)], [sizes], opset=18))
    assert ("resize", "rs") in _rules(mk(mode="cubic"), "latest")
    assert ("resize", "rs") in _rules(mk(mode="linear", antialias=1), "10")
    assert ("resize", "rs") in _rules(mk(mode="linear", keep_aspect_ratio_policy="not_larger"), "latest")
    assert ("resize", "rs") in _rules(mk(mode="nearest", coordinate_transformation_mode="tf_crop_and_resize"), "10")
    assert not _rules(mk(mode="linear", coordinate_transformation_mode="half_pixel"), "latest")
    # 8.6: linear resize with constant scales only on the innermost three axes.
    scales = _init("scales", [2.0, 1.0, 2.0, 2.0], np.float32)
    m = _model([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear", name="rs")],
               [_x((1, 3, 8, 8))], [_vi("y", F32, None)], [scales])
    assert ("resize", "rs") in _rules(m, "8.6") and ("resize", "rs") not in _rules(m, "latest")


def test_pad_mode_and_axes_input():
    pads = _init("pads", [0, 0, 1, 1, 0, 0, 1, 1], np.int64)
    wrap = _model([helper.make_node("Pad", ["x", "pads"], ["y"], mode="wrap", name="pad")], [_x()],
                  [_vi("y", F32, None)], [pads], opset=19)
    assert ("pad", "pad") in _rules(wrap, "latest")
    axes = _model([helper.make_node("Pad", ["x", "p2", "", "ax"], ["y"], mode="reflect", name="pad")], [_x()],
                  [_vi("y", F32, None)], [_init("p2", [1, 1, 1, 1], np.int64), _init("ax", [2, 3], np.int64)],
                  opset=18)
    assert ("pad", "pad") in _rules(axes, "8.6") and ("pad", "pad") not in _rules(axes, "10")


def test_dla_rules():
    w = _init("w", np.ones((4, 3, 3, 3)), np.float32)
    big = _init("wb", np.ones((4, 3, 40, 40)), np.float32)
    conv = helper.make_node("Conv", ["x", "w"], ["c"], name="conv")
    half = [helper.make_node("Cast", ["x"], ["xh"], to=TP.FLOAT16, name="to16"),
            helper.make_node("Cast", ["w"], ["wh"], to=TP.FLOAT16, name="w16"),
            helper.make_node("Conv", ["xh", "wh"], ["ch"], name="conv16"),
            helper.make_node("Cast", ["ch"], ["y"], to=F32, name="to32")]
    m16 = _model(half, [_x((1, 3, 8, 8))], [_vi("y", F32, None)], [w])
    # fp16 on DLA, static batch: the conv is a DLA layer; the casts are not (errors without fallback).
    found = _rules(m16, "10", dla=True, precision="fp16", profile=(1, 1, 1))
    assert ("dla-layer", "to16") in found and ("dla-layer", "conv16") not in found
    assert not _rules(m16, "10", dla=True, precision="fp16", profile=(1, 1, 1), gpu_fallback=True)
    assert ("dla-shape", "graph") in _rules(m16, "10", dla=True, precision="fp16", profile=(1, 2, 4),
                                             gpu_fallback=True)
    # 10.15 (latest) has no DLA: 10.7 was the last 10.x release with it.
    assert ("dla-version", "graph") in _rules(m16, "latest", dla=True, precision="fp16", profile=(1, 1, 1),
                                               gpu_fallback=True)
    assert ("dla-version", "graph") not in _rules(m16, "8.6", dla=True, precision="fp16", profile=(1, 1, 1),
                                                   gpu_fallback=True)
    # The installed TensorRT decides (build-engine): 10.8-11.4.0 have none, 11.4.1+ has DLA again, as
    # adrt.export.dla.check_dla_request says; 11.x is checked with the latest rules.
    for version, has in (("10.3.0", True), ("10.8.0", False), ("11.4.0", False), ("11.4.1", True)):
        found = _rules(m16, "latest", dla=True, precision="fp16", profile=(1, 1, 1), gpu_fallback=True,
                       trt_version=version)
        assert (("dla-version", "graph") not in found) == has, (version, found)
    m32 = _model([conv], [_x((1, 3, 8, 8))], [_vi("c", F32, None)], [w])
    assert ("dla-precision", "graph") in _rules(m32, "10", dla=True, precision="fp32", gpu_fallback=True)
    wide = _model([helper.make_node("Cast", ["x"], ["xh"], to=TP.FLOAT16, name="to16"),
                   helper.make_node("Cast", ["wb"], ["wh"], to=TP.FLOAT16, name="w16"),
                   helper.make_node("Conv", ["xh", "wh"], ["y"], name="conv40")],
                  [_x((1, 3, 64, 64))], [_vi("y", TP.FLOAT16, None)], [big])
    assert ("dla-layer", "conv40") in _rules(wide, "10", dla=True, precision="fp16", profile=(1, 1, 1))
    qdq = _model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
                  helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")], [_x()],
                 [_vi("y", F32, None)], [_init("s", [0.1], np.float32), _init("z", [0], np.int8)])
    assert ("dla-qdq", "graph") in _rules(qdq, "8.6", dla=True, precision="int8", profile=(1, 1, 1),
                                          gpu_fallback=True)
    assert ("dla-qdq", "graph") not in _rules(qdq, "10", dla=True, precision="int8", profile=(1, 1, 1),
                                              gpu_fallback=True)


def test_every_rule_has_a_graph_here_that_breaks_it():
    import inspect
    import sys

    text = inspect.getsource(sys.modules[__name__])
    assert all(f'"{rule}"' in text for rule in RULES if rule != "op-support") and "op-support" in text


def test_every_violation_names_node_op_rule_and_source():
    m = _model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2], name="pool")],
               [_x()], [_vi("y", F32, None)], opset=18)
    for t in TARGETS:
        for v in check_model(m, t):
            assert v.rule in RULES and v.source == RULES[v.rule].source(t) and v.source
            assert v.line().startswith(f"{v.node} ({v.op}): ") and f"rule {v.rule}; " in v.line()
    src = {v.rule: v.source for v in check_model(m, "8.6")}
    assert "8.6-GA" in src["pool-dilations"] and "8.6-GA" in src["opset"]


# --- every registered method × precision × target ------------------------------------------------

@pytest.mark.parametrize("method", methods())
def test_every_method_and_precision_passes_every_target(variant_bundles, method):
    from adrt.export.trt_check import check_bundle, format_report

    b = variant_bundles(method)
    report = check_bundle(b)
    assert set(report) == set(TARGETS)
    for target, per in report.items():
        used = {json.loads((b / "manifest.json").read_text())["models"][k]["precision"] for k in per}
        assert used == {"fp32", "fp16", "int8"}, (target, list(per))
        if target == "8.6":
            assert all(k.endswith(".trt86") for k in per)
    assert not any(v.fatal for per in report.values() for vs in per.values() for v in vs), format_report(report)


@pytest.mark.parametrize("method", methods())
def test_export_records_a_clean_check_and_trt86_parity(runs, method):
    m = json.loads((runs(method)[1] / "manifest.json").read_text())
    assert m["export"]["tensorrt_check"] == {"8.6": {"fp32.trt86": 0}, "10": {"fp32": 0}, "latest": {"fp32": 0}}
    copy = m["models"]["fp32.trt86"]
    assert copy["opset"] == 17 and m["models"]["fp32"]["opset"] == 18
    tol = copy["parity_tolerance"]
    assert all(v["same_nan"] and (v["max_rel"] <= tol["raw_max_rel"] if k.startswith("raw")
                                  else v["max_abs"] <= tol["normalised_max_abs"])
               for k, v in copy["parity_vs_source"].items())


def test_cli_check_lists_violations_and_exits_1(runs, tmp_path):
    from click.testing import CliRunner

    from adrt.cli import main

    bad = tmp_path / "pool.onnx"
    onnx.save(_model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[4, 4], name="p")],
                     [_x()], [_vi("y", F32, None)]), bad)
    r = CliRunner().invoke(main, ["check", str(bad), "--trt", "10"])
    assert r.exit_code == 1 and "p (MaxPool): dilations [4, 4]" in r.output and "rule pool-dilations" in r.output
    r = CliRunner().invoke(main, ["check", str(runs("patchcore")[1])])
    assert r.exit_code == 0, r.output
    assert "TensorRT 8.6: fp32.trt86: ok" in r.output and "TensorRT latest: fp32: ok" in r.output
    r = CliRunner().invoke(main, ["check", str(runs("patchcore")[1]), "--trt", "7.2"])
    assert r.exit_code == 1 and "TensorRT 7.2 is older than" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["check", str(runs("patchcore")[1]), "--json", "--trt", "10", "--dla"])
    assert r.exit_code == 1
    doc = json.loads(r.output)
    assert {"dla-precision", "dla-layer"} <= {v["rule"] for v in doc["10"]["fp32"]}
    assert all(v["node"] and v["op"] and v["source"] for v in doc["10"]["fp32"])


def test_export_warns_with_the_list_and_records_the_counts(runs, tmp_path):
    """`adrt export` runs the check: without the opset-17 copies (--no-trt86) TensorRT 8.6 gets the
    opset-18 graph, and export warns, naming node, rule and source, and records the count."""
    from click.testing import CliRunner

    from adrt.cli import main

    run = runs("padim")[0]
    r = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "b"), "--no-trt86"])
    assert r.exit_code == 0, r.output
    assert "warning: TensorRT's ONNX parser would refuse or misread parts of this bundle" in r.output
    assert "TensorRT 8.6: fp32: " in r.output and "[rule opset; onnx/onnx-tensorrt 8.6-GA" in r.output
    assert "TensorRT 10" not in r.output                 # only the targets with violations are listed
    counts = json.loads((tmp_path / "b" / "manifest.json").read_text())["export"]["tensorrt_check"]
    assert counts["8.6"]["fp32"] > 0 and counts["10"] == {"fp32": 0} and counts["latest"] == {"fp32": 0}
    r = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "c")])
    assert r.exit_code == 0 and "warning" not in r.output, r.output


def test_check_and_build_engine_modules_need_no_torch():
    """They run where build-engine runs (a runtime install with TensorRT and onnx, e.g. a Jetson)."""
    import subprocess
    import sys

    code = ("import sys\nimport adrt.export.trt_check, adrt.export.trt86, adrt.export.engine, adrt.cli.export\n"
            "from adrt.export.trt_check import check_model\n"
            "sys.exit(3 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
