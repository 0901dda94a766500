"""FP16 and INT8 variants of every registered method's bundle (not only the feature-extractor ones):
the reduced region is the network, the parts decided to stay float do stay float in the graph, and
the variants load and run through the runtime close to fp32.

Tiny synthetic runs (tests/conftest.py); each variant is made once per method for the session
(``variant_bundles`` in tests/conftest.py).
Stated tolerances on the raw image scores: fp16 within 1 % of the largest fp32 score on every test
image; int8 within 1 calibration std on average over the normal test images, finite outputs, and
an image AUROC at most 0.1 below fp32's (these tiny models see 20 images; the real-data bound of
0.5 AUROC points is measured by benchmarks/precision.py).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import SIZE, methods
from tests.export.helpers import run_variants

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# PatchCore and PaDiM variants are covered by test_precision.py.
OTHERS = [m for m in methods() if m not in ("patchcore", "padim")]
FP16_MAX_REL = 0.01
INT8_MAX_NORMAL_STD = 1.0
# Ops that belong to the scoring of some method and must never be reduced.
SCORING_OPS = {"MatMul", "Softmax", "Sub", "Div", "Sqrt", "Pow", "ReduceMean", "ReduceSum", "ReduceMax",
               "Exp", "Sign", "Abs", "Where", "Transpose", "Cast"}


@pytest.mark.parametrize("method", methods())
def test_region_is_the_network_and_the_scoring_stays_float(runs, method):
    from adrt.export.region import _SEED_OPS, adjoint_convs, feature_region, image_dependent, map_filters

    _, b = runs(method)
    model = onnx.load(str(b / "model.onnx"))
    region = set(feature_region(model))
    nodes = {n.name: n for n in model.graph.node}
    adjoints = adjoint_convs(model)
    filters = map_filters(model)
    dep = image_dependent(model)
    convs = {n.name for n in model.graph.node if n.op_type in _SEED_OPS}
    constant = {c for c in convs if nodes[c].input[0] not in dep}
    # Every forward conv over image data is reduced; adjoint convs, convs over constants and the
    # anomaly map's smoothing filters are not.
    assert convs - adjoints - constant - filters <= region
    assert not region & (adjoints | constant | filters)
    if method in ("memae", "vae"):
        assert len(filters) == 2                       # the separable Gaussian blur of the map
    assert not {nodes[n].op_type for n in region} & SCORING_OPS
    producers = {o: n.name for n in model.graph.node for o in n.output}
    assert all(producers[o.name] not in region for o in model.graph.output)


def test_structure_of_the_float_parts(runs):
    """The method-specific float parts are found where they exist: the VAE's explicit backward pass
    (adjoint convs sharing the forward weights), the partial convs' mask convolutions."""
    from adrt.export.region import adjoint_convs, image_dependent

    found = {}
    for method in ("vae", "inpaint", "memae"):
        if method not in methods():
            continue
        model = onnx.load(str(runs(method)[1] / "model.onnx"))
        dep = image_dependent(model)
        found[method] = (len(adjoint_convs(model)),
                         sum(n.op_type == "Conv" and n.input[0] not in dep for n in model.graph.node))
    if "vae" in found:
        assert found["vae"][0] > 0 and found["vae"][1] == 0
    if "inpaint" in found:
        assert found["inpaint"] == (0, found["inpaint"][1]) and found["inpaint"][1] > 0
    if "memae" in found:
        assert found["memae"] == (0, 0)


@pytest.mark.parametrize("method", OTHERS)
def test_fp16_and_int8_run_through_the_runtime_close_to_fp32(variant_bundles, synth_data, method):
    from adrt.metrics import image_auroc

    b = variant_bundles(method)
    labels, out = run_variants(b, synth_data)
    ref = out["fp32"].raw_scores
    for p in ("fp16", "int8"):
        r = out[p]
        assert r.maps.shape == out["fp32"].maps.shape and r.maps.dtype == np.float32
        assert np.isfinite(r.raw_maps).all() and np.isfinite(r.raw_scores).all()
    # fp16: relative to the largest fp32 score (EfficientAD's and the students' normalised scores of
    # normal images are near 0, where a difference relative to the score itself is unbounded).
    d16 = np.abs(out["fp16"].raw_scores - ref) / np.abs(ref).max()
    assert d16.max() <= FP16_MAX_REL, d16
    # int8: on the normal test images, in calibration std (the unit choose_int8 bounds on normal
    # images it has seen: shift ≤ 0.5, scatter ≤ 0.3); defects' scores are only required to rank.
    std = json.loads((b / "manifest.json").read_text())["calibration"]["score_std"]
    d8 = np.abs(out["int8"].raw_scores - ref)[labels == 0] / std
    assert d8.mean() <= INT8_MAX_NORMAL_STD, d8
    assert image_auroc(labels, out["int8"].raw_scores) >= image_auroc(labels, ref) - 0.1


@pytest.mark.parametrize("method", OTHERS)
def test_float_parts_stay_float_in_the_variant_graphs(variant_bundles, method):
    from adrt.export.int8 import int8_region
    from adrt.export.region import _SEED_OPS, adjoint_convs, compared_layers, feature_region, image_dependent, map_filters

    b = variant_bundles(method)
    fp32 = onnx.load(str(b / "model.onnx"))
    nodes32 = {n.name: n for n in fp32.graph.node}
    region = set(feature_region(fp32))
    adjoints = adjoint_convs(fp32)
    dep = image_dependent(fp32)
    kept = {n.name for n in fp32.graph.node if n.name not in region}
    constant = {n.name for n in fp32.graph.node if n.op_type in _SEED_OPS and n.input[0] not in dep}
    constant |= map_filters(fp32)

    # FP16: every reduced conv reads a float16 weight; every node outside the region keeps its
    # float32 initializers (adjoint convs share weights with reduced ones: they keep the float32 copy).
    half = onnx.load(str(b / "model.fp16.onnx"))
    inits = {i.name: i.data_type for i in half.graph.initializer}
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    for n in half.graph.node:
        if n.op_type in _SEED_OPS and n.name in region:
            assert inits[n.input[1]] == f16, n.name
        elif n.name in kept:
            assert all(inits.get(x, f32) != f16 for x in n.input), n.name

    # INT8: only region Conv/ConvTranspose/Clip are quantised; nothing outside the region reads a
    # dequantised tensor except through the region's own float outputs.
    q = onnx.load(str(b / "model.int8.onnx"))
    producers = {o: n for n in q.graph.node for o in n.output}
    for n in q.graph.node:
        if n.name in adjoints | constant or (n.name in kept and n.op_type in SCORING_OPS | _SEED_OPS):
            for x in n.input:
                p = producers.get(x)
                assert p is None or p.op_type != "DequantizeLinear", (n.name, x)
    # The compared output layers keep float weights (no DequantizeLinear feeds their weight input).
    m = json.loads((b / "manifest.json").read_text())["models"]
    search = m["int8"]["float_prefix"]
    compared = set(search["float_compared_layers"])
    assert compared == compared_layers(fp32, sorted(region))
    if method in ("memae", "vae", "students", "efficientad"):
        assert compared, "the layers whose output is compared must be found"
    qn = {n.name: n for n in q.graph.node}
    for name in compared:
        w = qn[name].input[1]
        assert w not in producers or producers[w].op_type != "DequantizeLinear", name
    quantised = {n.name for n in q.graph.node if n.op_type in _SEED_OPS and producers.get(n.input[1]) is not None
                 and producers[n.input[1]].op_type == "DequantizeLinear"}
    q8 = int8_region(fp32)
    expect = q8[search["float_prefix_nodes"] : len(q8) - search["float_suffix_nodes"]]
    assert quantised == {x for x in expect if nodes32[x].op_type in _SEED_OPS}
    assert abs(search["score_shift_std"]) <= search["max_shift_std"]
    assert search["score_scatter_std"] <= search["max_scatter_std"]
    assert set(m["int8"]["reduced_ops"]) <= {"Conv", "ConvTranspose", "Clip"}
    if adjoints:
        assert "backward pass" in m["int8"]["float_parts"] and "backward pass" in m["fp16"]["float_parts"]
    if constant - map_filters(fp32):
        assert "over constants" in m["int8"]["float_parts"]
    if map_filters(fp32):
        assert "map filters" in m["int8"]["float_parts"] and "map filters" in m["fp16"]["float_parts"]


def test_int8_search_leaves_a_suffix_float_when_the_last_layers_scatter_the_scores(runs, monkeypatch):
    """When quantising the last layers scatters normal scores (EfficientAD-S's autoencoder on
    magnetic tile), the search keeps the fewest last layers float, not almost everything."""
    import adrt.export.int8 as Q

    model = onnx.load(str(runs("efficientad")[1] / "model.onnx"))
    q8 = Q.int8_region(model)
    n = len(q8)
    step = round(n / 8)
    assert Q.int8_candidates(n)[:3] == [(0, 0), (step, 0), (0, step)]
    images = np.zeros((16, SIZE, SIZE, 3), np.uint8)
    last = set(q8[n - step:])
    tried = []

    def fake_quantize(model, images, target, region=None, **kw):
        tried.append(len(region))
        return {"noisy": bool(last & set(region))}

    def fake_scores(session, images):
        base = np.linspace(1.0, 2.0, len(images))
        if session is None or not session["noisy"]:
            return base
        return base + np.random.default_rng(0).normal(0, 1.0, len(images))     # scatter ≫ the bound

    monkeypatch.setattr(Q, "quantize_int8", fake_quantize)
    monkeypatch.setattr(Q, "cpu_session", lambda m, threads=None: m if isinstance(m, dict) else None)
    monkeypatch.setattr(Q, "raw_scores", fake_scores)
    _, facts = Q.choose_int8(model, images, "cpu", score_std=1.0)
    assert (facts["float_prefix_nodes"], facts["float_suffix_nodes"]) == (0, step)
    assert facts["quantized_nodes"] == n - step and tried == [n, n - step, n - step]
    assert [t["score_scatter_std"] > Q.INT8_MAX_SCATTER_STD for t in facts["search"]] == [True, True, False]


@pytest.mark.parametrize("method", methods())
def test_only_memaes_encoder_addresses_a_memory(runs, method):
    # INT8 keeps the layers that address MemAE's memory float (the attention's hard shrinkage jumps
    # with small changes of the encoding); no other method has such a Softmax (PatchCore's only
    # feeds the score), and MemAE's decoder stays quantisable.
    from adrt.export.int8 import int8_region
    from adrt.export.region import _SEED_OPS, addressing_layers, feature_region

    model = onnx.load(str(runs(method)[1] / "model.onnx"))
    region = feature_region(model)
    found = addressing_layers(model, region)
    quantised = set(int8_region(model))
    assert not found & quantised
    convs = [n.name for n in model.graph.node if n.name in set(region) and n.op_type in _SEED_OPS]
    if method == "memae":
        assert found and quantised
        # The encoder comes first in graph order: every addressing conv precedes every quantised one.
        order = {name: i for i, name in enumerate(convs)}
        assert max(order[c] for c in found if c in order) < min(order[c] for c in quantised if c in order)
    else:
        assert not found


def test_int8_search_benchmark_scans_the_splits_choose_int8_tries(runs, synth_data, tmp_path):
    # benchmarks/int8_search.py is the evidence INT8_MAX_SCATTER_STD is set from: it must quantise the
    # same splits, in the same order, as choose_int8, and mark as accepted exactly those within bounds.
    import importlib.util
    from pathlib import Path

    from adrt.export import int8 as Q

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "int8_search.py"
    spec = importlib.util.spec_from_file_location("int8_search", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    bundle = runs("memae")[1]
    out = tmp_path / "scan"
    assert mod.main([str(bundle), str(synth_data), "--name", "t", "--max-splits", "3", "--threads", "1",
                     "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    n = len(Q.int8_region(onnx.load(str(bundle / "model.onnx"))))
    assert report["quantisable_nodes"] == n
    assert [(r["float_prefix"], r["float_suffix"]) for r in report["splits"]] == Q.int8_candidates(n)[:3]
    for r in report["splits"]:
        assert r["accepted_now"] == (abs(r["holdout_shift_std"]) <= Q.INT8_MAX_SHIFT_STD
                                     and r["holdout_scatter_std"] <= Q.INT8_MAX_SCATTER_STD)
        assert 0 <= r["image_auroc"] <= 1 and np.isfinite(r["test_good_scatter_std"])
    assert "| float prefix |" in out.with_suffix(".md").read_text()
