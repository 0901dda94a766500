"""Reduced-precision variants of a bundle's fused graph: INT8 (QDQ, static) and FP16.

Both keep the graph contract (input ``image`` uint8 N×H×W×3, float32 outputs) and reduce only the
*network*: its convolutions (Conv, and ConvTranspose for decoders) and the ops that join their
outputs (activations — ReLU/ReLU6/LeakyReLU/ELU —, residual adds, pooling — MaxPool, or the
elementwise Max of shifted slices —, the tap resize and concat). That is where the FLOPs are.
Everything else stays float32, found by structure rather than by name (see :func:`feature_region`),
for every registered method:

- the preprocessing (cast, /255, mean/std), which is cheap and feeds every later layer. INT8: a
  quantised conv's input is rounded for that conv only; the scoring reads the float tensor
  (:func:`float_outside`; ONNX Runtime's quantiser would hand MemAE's ``x − f(x)`` an 8-bit
  input);
- the method's scoring: PatchCore's bank GEMM ``|b|² − 2 q·b + |q|²`` and PaDiM's Mahalanobis form
  (differences of large terms that int8/fp16 would cancel away); the reconstruction residuals and
  their weights (MemAE/AE, VAE, inpainting's gradient-magnitude similarity after its Prewitt convs);
  MemAE's memory attention (MatMul, softmax, hard shrinkage); the students' and EfficientAD's
  feature normalisation and teacher − student / autoencoder − student distances;
- convolutions over constants (:func:`image_dependent`): the partial convs' mask convolutions,
  which count valid pixels for the renormalisation ratio (exact in float, and folded by ONNX
  Runtime anyway);
- an explicit backward pass (:func:`adjoint_convs`): the VAE's projection steps compute ∇E with
  transposed copies of the forward layers (same weight initializers, the other conv type). They
  propagate the residual x − f(x), and ONNX Runtime's quantiser cannot take them anyway (a weight
  shared by a Conv and a ConvTranspose gets per-channel scales along two different axes: it fails);
- upsampling, the Gaussian blur (GEMMs, or separable 1-channel convs: :func:`map_filters`) and the
  calibration sigmoid, which turn small raw differences into the 0.5 threshold crossing.

INT8 keeps four more parts float:

- exact selections (:func:`selection_convs`): the depthwise two-tap convs that compute the students'
  dilated max-pools as ``a + relu(b − a)`` (TensorRT pools without dilation); int8 would round the
  maximum;
- the *compared* layers (:func:`compared_layers`): the last convs whose output is subtracted from the
  input or from another network's output (the decoder's output layer; the teachers', students' and
  autoencoder's output convs): their weights and arithmetic stay float, since int8 error there is
  error on the score itself (MemAE on bottle, INT8 ``cpu`` target: image AUROC −0.95 points with
  its output layer int8, −0.56 with it float);
- the layers that address a memory (:func:`addressing_layers`: MemAE's encoder, upstream of the
  softmax attention over the memory items that the decoder reads): the hard-shrinkage addressing
  jumps with small changes of the encoding;
- a prefix of the first layers and/or a suffix of the last ones, if needed: :func:`choose_int8`
  leaves a growing number of the quantisable nodes unquantised until the raw scores of normal
  images move by at most half a calibration std on average and scatter by at most 0.1 std (PaDiM,
  whose stride-4 features come from the first layers and whose Mahalanobis distance magnifies
  their noise, needs a long prefix; EfficientAD-S on magnetic tile keeps its autoencoder's decoder
  float: quantised, it scattered the scores by 0.55 std and cost 7.9 points of image AUROC).

FP16 reduces the whole region (compared layers included): it agreed with fp32 to < 0.2 % (median
raw score) for every method measured.

``benchmarks/precision.py`` measures what this costs in AUROC and buys in latency, per method.

INT8 uses ONNX Runtime's ``quantize_static`` in QDQ format (MinMax calibration), symmetric int8
activations and per-channel symmetric int8 weights, biases left float: the form TensorRT's
explicit quantisation takes (zero points 0, no int32 bias dequantisation). ONNX Runtime on x86
fuses only part of that form into integer convolutions; the ``cpu`` target (uint8 activations)
is the one it fuses completely (:class:`Int8Target`). FP16 is our own small converter (below):
the region's weights become float16, Cast nodes sit on its boundary (onnxconverter-common's
converter would do; it is one dependency more for ~60 lines).

Needs ``onnx`` and ``onnxruntime`` (no torch): a bundle's variants can be added without its run.
"""
from __future__ import annotations

import enum
import os
import secrets
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from adrt.contract import Precision
from adrt.errors import BundleError, DataError, InputError
from adrt.runtime.bundle import open_bundle, write_manifest

# At least this many calibration images: fewer give activation ranges set by one or two images.
MIN_CALIB_IMAGES = 16
# More than this adds calibration time and changes the ranges little (MinMax); spread evenly.
MAX_CALIB_IMAGES = 64

# Ops that seed the reduced region: the network's convolutions (a transposed conv is a decoder's).
_SEED_OPS = {"Conv", "ConvTranspose"}
# Ops that may join the reduced feature region once one of their float inputs comes from it.
_REGION_OPS = _SEED_OPS | {"Clip", "Relu", "LeakyRelu", "Elu", "Add", "Mul", "AveragePool", "MaxPool",
                           "GlobalAveragePool", "Resize", "Concat", "Sigmoid", "HardSigmoid", "HardSwish", "Max",
                           "Slice"}
# Inputs that are not data even when float (Resize's roi and scales are float32 whatever T is).
_DATA_INPUTS = {"Resize": 1, "Slice": 1}
# Ops that join the region only when every consumer of their output is a region op too (the
# shifted slices of the students' dilated max-pool do; a slice that starts the scoring does not).
_INNER_ONLY_OPS = {"Slice"}
# Ops whose output depends on their input's shape only, not on its values.
_SHAPE_OPS = {"Shape", "Size"}


VARIANT_FILES = {Precision.FP32: "model.onnx", Precision.FP16: "model.fp16.onnx", Precision.INT8: "model.int8.onnx"}


def parse_precision(value: str | Precision) -> Precision:
    try:
        return Precision(value)
    except ValueError:
        raise InputError(f"unknown precision {value!r}; available: {', '.join(p.value for p in Precision)}") from None


# --- graph analysis ---------------------------------------------------------------------------

def _elem_types(model) -> dict[str, int]:
    """Element type of every tensor name (graph IO, initializers, inferred value_info)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {t.name: t.type.tensor_type.elem_type for t in list(g.input) + list(g.output) + list(g.value_info)}
    types.update({i.name: i.data_type for i in g.initializer})
    return types


def image_dependent(model) -> set[str]:
    """Names of the tensors whose *values* depend on the graph input (through any op but Shape/Size).

    Tensors computed from initializers only (a partial conv's mask set, expanded to the batch with
    the input's shape) are constants of the model, not features.
    """
    graph_in = {i.name for i in model.graph.input} - {i.name for i in model.graph.initializer}
    dep = set(graph_in)
    for node in model.graph.node:
        if node.op_type not in _SHAPE_OPS and any(x in dep for x in node.input if x):
            dep.update(o for o in node.output if o)
    return dep


def adjoint_convs(model) -> set[str]:
    """Conv/ConvTranspose nodes that apply another conv's *transpose*: their weight initializer is
    also used by a node of the other conv type earlier in the graph (an explicit backward pass, e.g.
    the VAE's gradient of its energy). Graph order is execution order, so the first use of a weight
    is the forward layer."""
    first: dict[str, str] = {}
    out = set()
    for node in model.graph.node:
        if node.op_type in _SEED_OPS and len(node.input) > 1:
            kind = first.setdefault(node.input[1], node.op_type)
            if kind != node.op_type:
                out.add(node.name)
    return out


# Ops a compared tensor passes through unchanged in meaning (layout, and affine maps by constants).
_PASS_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Split", "Flatten", "Identity", "Resize",
             "Sub", "Add", "Mul", "Div"}


def _links(model) -> tuple[dict, dict]:
    """(producer node of each tensor, consumer nodes of each tensor) of ``model``'s graph."""
    prod, cons = {}, {}
    for n in model.graph.node:
        for x in n.input:
            cons.setdefault(x, []).append(n)
        for o in n.output:
            prod[o] = n
    return prod, cons


def compared_layers(model, region: Sequence[str]) -> set[str]:
    """Region convs whose output is *compared*: subtracted from another image-dependent tensor (the
    input, for a reconstruction; another network's output, for teacher/student and autoencoder
    pairs), possibly after constant affine maps (feature normalisation) and layout ops.

    They are the last layers before a difference of large terms: int8 error on them is error on
    the score itself. Found from each region output forward through ``_PASS_OPS`` (with a constant
    second operand) to a Sub of two image-dependent tensors, then back through the region's
    non-conv ops to the convs that produced it.
    """
    inside = set(region)
    inits = {i.name for i in model.graph.initializer}
    dep = image_dependent(model)
    nodes = list(model.graph.node)
    prod, cons = _links(model)
    exits = {o for n in nodes if n.name in inside for o in n.output
             if any(c.name not in inside for c in cons.get(o, []))}
    compared = set()
    for e in exits:
        stack, seen = [e], set()
        while stack and e not in compared:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            for c in cons.get(t, []):
                if c.name in inside:
                    continue
                others = [x for x in c.input if x and x != t]
                varying = [x for x in others if x in dep and x not in inits]
                if c.op_type == "Sub" and varying:
                    compared.add(e)
                    break
                if c.op_type in _PASS_OPS and (c.op_type not in {"Sub", "Add", "Mul", "Div"} or not varying):
                    stack.extend(o for o in c.output if o)
    heads, stack, seen = set(), list(compared), set()
    while stack:
        t = stack.pop()
        n = prod.get(t)
        if t in seen or n is None or n.name not in inside:
            continue
        seen.add(t)
        if n.op_type in _SEED_OPS:
            heads.add(n.name)
        else:
            stack.extend(n.input)
    return heads


def map_filters(model) -> set[str]:
    """Conv nodes with one input and one output channel (weight 1×1×kh×kw): filters on a single
    map, not network layers — the Gaussian smoothing of the anomaly map (separable 1×k and k×1
    convs in MemAE/AE and the VAE). They are part of the scoring."""
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    return {n.name for n in model.graph.node
            if n.op_type in _SEED_OPS and len(n.input) > 1 and shapes.get(n.input[1], [0, 0])[:2] == [1, 1]}


def feature_region(model, adjoints: bool = False) -> list[str]:
    """Names of the nodes that form the feature extractor (the network), in graph order.

    Seeded by every Conv and ConvTranspose whose input depends on the image (a conv over a constant,
    e.g. a partial conv's mask, stays float: it counts valid pixels exactly); a node of an op type
    in ``_REGION_OPS`` joins when one of its float data inputs comes from the region and all the
    others come from the region or from initializers. The first node outside (a Sub, Transpose,
    Gather, Reshape or MatMul that starts the scoring) ends it. Adjoint convs (an explicit backward
    pass, :func:`adjoint_convs`) seed only with ``adjoints=True``: they propagate the residual
    x − f(x), a difference of large terms. Single-map filters (:func:`map_filters`, the anomaly
    map's smoothing) never seed.
    """
    import onnx

    float_t = onnx.TensorProto.FLOAT
    types = _elem_types(model)
    inits = {i.name for i in model.graph.initializer}
    dep = image_dependent(model)
    skip = map_filters(model) | (set() if adjoints else adjoint_convs(model))
    _, cons = _links(model)
    produced_in: set[str] = set()
    region = []
    for node in model.graph.node:
        if node.op_type not in _REGION_OPS or node.name in skip:
            continue
        if node.op_type in _INNER_ONLY_OPS and not all(c.op_type in _REGION_OPS for o in node.output
                                                       for c in cons.get(o, [])):
            continue
        data = [x for x in node.input[: _DATA_INPUTS.get(node.op_type, len(node.input))] if x]
        floats = [x for x in data if types.get(x) == float_t]
        if not floats:
            continue
        if node.op_type in _SEED_OPS:
            ok = data[0] in dep and all(x in produced_in or x in inits or x == data[0] for x in floats)
        else:
            ok = any(x in produced_in for x in floats) and all(x in produced_in or x in inits for x in floats)
        if ok:
            region.append(node.name)
            produced_in.update(o for o in node.output if types.get(o) == float_t)
    if not any(n.op_type in _SEED_OPS for n in model.graph.node if n.name in set(region)):
        raise BundleError("the graph has no convolutional feature extractor to reduce (no Conv nodes)")
    return region


def float_parts(model) -> list[str]:
    """What stays float32 in every variant of ``model``, found by structure (see the module doc)."""
    adj = adjoint_convs(model)
    dep = image_dependent(model)
    const = [n for n in model.graph.node if n.op_type in _SEED_OPS and n.input[0] not in dep]
    parts = ["preprocessing (cast, scale, mean/std)"]
    if adj:
        parts.append(f"the explicit backward pass: {len(adj)} adjoint Conv/ConvTranspose nodes (transposes of "
                     "forward layers, sharing their weights) and the elementwise ops between them")
    if const:
        parts.append(f"{len(const)} convolutions over constants (partial-conv mask renormalisation)")
    filters = map_filters(model)
    if filters:
        parts.append(f"{len(filters)} single-channel map filters (the anomaly map's Gaussian smoothing)")
    parts.append("everything after the network: the method's scoring (distances, differences with the input or "
                 "between networks, feature normalisation, memory attention), upsampling, Gaussian blur, "
                 "calibration sigmoid")
    return parts


def describe_region(model, region: Sequence[str], op_types: Sequence[str] | None = None) -> dict:
    """What is reduced (region nodes, of ``op_types`` if given) and what stays float, by op type."""
    inside = {n.name for n in model.graph.node
              if n.name in set(region) and (op_types is None or n.op_type in set(op_types))}
    reduced = Counter(n.op_type for n in model.graph.node if n.name in inside)
    kept = Counter(n.op_type for n in model.graph.node if n.name not in inside)
    return {"reduced_ops": dict(sorted(reduced.items())), "float_ops": dict(sorted(kept.items())),
            "float_parts": "; ".join(float_parts(model))}


# --- FP16 -------------------------------------------------------------------------------------

def convert_fp16(model, region: Sequence[str] | None = None):
    """A copy of ``model`` whose ``region`` nodes (default: :func:`feature_region`) compute in float16.

    Weights used inside become float16 copies (a weight shared with a float32 node keeps its
    original too). A Cast goes on each float tensor entering the region (before its first use) and
    leaving it (right after its producer), so the graph's inputs and outputs keep their types.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    region = set(feature_region(model) if region is None else region)
    types = _elem_types(model)
    inits = {i.name: i for i in g.initializer}
    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    fp16_max = float(np.finfo(np.float16).max)

    produced_in = {y for n in g.node if n.name in region for y in n.output if types.get(y) == f32}
    used_outside = {o.name for o in g.output} | {x for n in g.node if n.name not in region for x in n.input}
    half_init: dict[str, str] = {}     # float32 initializer -> its float16 copy
    cast_in: dict[str, str] = {}       # float32 tensor entering the region -> its float16 cast
    nodes = []
    for node in g.node:
        if node.name not in region:
            nodes.append(node)
            continue
        n_data = _DATA_INPUTS.get(node.op_type, len(node.input))
        for k, x in enumerate(node.input):
            if not x or k >= n_data or types.get(x) != f32:
                continue
            if x in produced_in:
                node.input[k] = x + "__fp16"
            elif x in inits:
                if x not in half_init:
                    arr = numpy_helper.to_array(inits[x])
                    if arr.size and float(np.abs(arr).max()) > fp16_max:
                        raise BundleError(f"weight {x} exceeds the float16 range (|w| up to {np.abs(arr).max():.3g})")
                    half = numpy_helper.from_array(arr.astype(np.float16), x + "__fp16")
                    g.initializer.append(half)
                    half_init[x] = half.name
                node.input[k] = half_init[x]
            else:
                if x not in cast_in:
                    cast_in[x] = x + "__to_fp16"
                    nodes.append(helper.make_node("Cast", [x], [cast_in[x]], to=f16, name=f"adrt_to_fp16_{len(cast_in)}"))
                node.input[k] = cast_in[x]
        nodes.append(node)
        for j, y in enumerate(node.output):
            if y in produced_in:
                node.output[j] = y + "__fp16"
                if y in used_outside:
                    nodes.append(helper.make_node("Cast", [y + "__fp16"], [y], to=f32, name=f"adrt_to_fp32_{y}"))
    del g.node[:]
    g.node.extend(nodes)
    # float32 originals that only the region used are gone now.
    used = {x for n in g.node for x in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.value_info[:]  # types inside the region changed; ONNX Runtime infers them again
    onnx.checker.check_model(model)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)  # a type clash at the boundary fails here
    return model


# --- INT8 -------------------------------------------------------------------------------------

# Op types quantised inside the feature region. Conv alone is not enough: the Conv output would be
# quantised over its pre-activation range (depthwise convs reach ±100 before ReLU6), which on
# PatchCore/bottle doubled the normal images' nearest-neighbour distances (image AUROC 1.000 →
# 0.956). With Clip quantised too, a conv's output is quantised over the clipped range.
INT8_OP_TYPES = ("Conv", "ConvTranspose", "Clip")


class Int8Target(str, enum.Enum):
    """Who runs the INT8 graph. Both quantise weights per channel, symmetric int8.

    ``tensorrt``: activations int8 *symmetric* (zero point 0), the only form TensorRT's explicit
    quantisation takes (8.6, 10, 11); ARM CPUs prefer it too. ONNX Runtime on x86 fuses only part
    of it into integer convs. ``cpu``: activations uint8 asymmetric, which ONNX Runtime on x86
    fuses completely (every conv becomes a QLinearConv); TensorRT refuses it.
    """

    TENSORRT = "tensorrt"
    CPU = "cpu"


class _Batches:
    """A CalibrationDataReader (duck-typed: get_next) over uint8 N×H×W×3 images, in batches."""

    def __init__(self, images: np.ndarray, batch: int = 8, names=("image",)):
        # MinMax calibration keeps only per-batch minima and maxima (ReduceMin/Max outputs), so
        # memory does not grow with the image count. (CalibMaxIntermediateOutputs is not used:
        # in onnxruntime 1.32 it drops the ranges collected when the limit is reached.)
        self._it: Iterator[dict] = (_feeds(names, images[i : i + batch]) for i in range(0, len(images), batch))

    def get_next(self):
        return next(self._it, None)


def quantize_int8(model, calib_images: np.ndarray, target: Int8Target | str = Int8Target.TENSORRT,
                  op_types: Sequence[str] = INT8_OP_TYPES, region: Sequence[str] | None = None,
                  calibration_cache: Path | None = None, threads: int | None = None):
    """Statically quantised QDQ copy of ``model``: the ``op_types`` nodes of ``region`` (default: the
    feature region).

    ``calib_images``: uint8 N×H×W×3 normal images (N ≥ MIN_CALIB_IMAGES); MinMax calibration.
    ``calibration_cache``: a JSON file of tensor ranges, written on the first call and reused after
    (the ranges are those of the float graph, whatever subset is quantised).
    ``threads``: ONNX Runtime intra-op threads for the calibration runs (default: ONNX Runtime's).
    """
    import logging

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    target = _parse_target(target)
    check_calibration_images(calib_images)
    inside = set(int8_region(model) if region is None else region)
    nodes = [n.name for n in model.graph.node if n.name in inside and n.op_type in set(op_types)]
    symmetric = target is Int8Target.TENSORRT
    with tempfile.TemporaryDirectory(prefix="adrt-int8-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, src)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # it recommends a pre-processing pass the exported graph does not need
        restore = _calibration_threads(threads)
        try:
            quantize_static(
                str(src), str(dst), _Batches(calib_images, names=_graph_inputs(model)), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=sorted(set(op_types)), nodes_to_quantize=nodes, per_channel=True,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                # Bias stays float: TensorRT takes no int32 DequantizeLinear, and ONNX Runtime
                # folds a float bias into its integer conv anyway.
                extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True, "QuantizeBias": False},
                calibration_cache_path=None if calibration_cache is None else str(calibration_cache),
            )
        finally:
            root.setLevel(level)
            restore()
        # Region nodes that are not quantised (activations, adds) keep reading the int8 round trip:
        # that is what lets ONNX Runtime fuse the convs into integer kernels.
        return float_outside(onnx.load(str(dst)), inside | set(feature_region(model)), model)


def float_outside(q, region: Sequence[str], original):
    """Let every node outside ``region`` read the float tensors it reads in ``original``, not their
    int8 round trips.

    ONNX Runtime's quantiser puts one QuantizeLinear → DequantizeLinear pair on a quantised node's
    input or output tensor, and one DequantizeLinear on a quantised weight, and rewires *every*
    consumer to it: the scoring would then compare the reconstruction with a clipped, 8-bit copy of
    the input image (MemAE's ``x − f(x)``; on bottle the defects' scores dropped by 80 %), and the
    VAE's adjoint convs would use the int8-rounded weights of the forward layers they share. Those
    consumers get the float tensor back (a float weight the quantiser dropped is restored); pairs
    left without a consumer are removed.
    """
    inside = set(region)
    qdq = ("QuantizeLinear", "DequantizeLinear")
    before = {n.name: n for n in original.graph.node}
    orig_inits = {i.name: i for i in original.graph.initializer}
    have = {i.name for i in q.graph.initializer}
    for n in q.graph.node:
        o = before.get(n.name)
        if n.op_type in qdq or n.name in inside or o is None or len(o.input) != len(n.input):
            continue
        for k, (x, x0) in enumerate(zip(n.input, o.input)):
            if x != x0:
                n.input[k] = x0
                if x0 in orig_inits and x0 not in have:
                    q.graph.initializer.append(orig_inits[x0])
                    have.add(x0)
    outputs = {o.name for o in q.graph.output}
    while True:
        used = {x for n in q.graph.node for x in n.input} | outputs
        dead = [n for n in q.graph.node if n.op_type in qdq and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            q.graph.node.remove(n)
    used = {x for n in q.graph.node for x in n.input}
    keep = [i for i in q.graph.initializer if i.name in used]
    del q.graph.initializer[:]
    q.graph.initializer.extend(keep)
    return q


def _calibration_threads(threads: int | None):
    """Make ONNX Runtime's calibrator open its session with ``threads`` intra-op threads (it takes
    no session options); returns the function that undoes it."""
    from onnxruntime.quantization import calibrate

    cls = getattr(calibrate, "CalibraterBase", None)
    if not threads or not hasattr(cls, "create_inference_session"):   # another ONNX Runtime: its own threads
        return lambda: None
    original = cls.create_inference_session

    def create(self):
        import onnxruntime

        so = onnxruntime.SessionOptions()
        so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        self.infer_session = onnxruntime.InferenceSession(self.augmented_model_path, sess_options=so,
                                                          providers=self.execution_providers)

    cls.create_inference_session = create

    def restore():
        cls.create_inference_session = original

    return restore


def _session(model, threads: int | None = None):
    """A CPU InferenceSession of a ModelProto or a path, with ``threads`` intra-op threads if given."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    src = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


# How far INT8 may move the raw score of normal images, in units of the calibration's score std
# (the threshold sits 3 std above the normal mean, so 0.5 std keeps labels at the threshold close).
INT8_MAX_SHIFT_STD = 0.5
# How much INT8 may *scatter* the normal images' raw scores (std over images of the shift, in
# calibration std): a uniform shift keeps the ranking, scatter re-ranks. EfficientAD-S on magnetic
# tile with its autoencoder int8: mean shift −0.02 std but scatter 0.55 std, and image AUROC −7.9
# points; with the autoencoder's decoder float: scatter 0.06, −0.2 points.
# The holdout understates the scatter that test images get (their scores sit higher, and int8 noise
# grows with the activations): EfficientAD-M on bottle, ``cpu`` target, scatter 0.11 on the holdout
# and 0.28 on the test split's normal images. benchmarks/int8_search.py scans every split there:
# holdout scatter ≥ 0.11 lost 0.56–1.03 points of image AUROC, ≤ 0.096 lost ≤ 0.32
# (benchmarks/results/int8_search_efficientad-m_bottle.md). 0.3 and then 0.15 let it through.
INT8_MAX_SCATTER_STD = 0.1
# Quantising the first layers costs the most accuracy (PaDiM's stride-4 tap is made there, and
# per-tensor activation ranges are widest there); in other models the last ones (a decoder,
# EfficientAD's autoencoder). The search leaves a growing prefix and/or suffix of the quantisable
# nodes in float, in steps of 1/INT8_PREFIX_STEPS of them, until the shift is within bounds.
INT8_PREFIX_STEPS = 8


def addressing_layers(model, region: Sequence[str]) -> set[str]:
    """Region nodes upstream of a *memory addressing*: a Softmax whose output the network reads on
    (some region conv lies downstream of it), as MemAE's cosine attention over its memory items,
    followed by hard shrinkage, is read by the decoder. The addressing jumps with small changes of
    the encoding, so int8 noise there re-ranks images that the normal-score check cannot see
    (MemAE on bottle, INT8 ``cpu`` target: −0.56 points with the encoder int8, +0.56 with it float).
    A Softmax that only feeds a score (PatchCore's reweighting) does not count."""
    inside = set(region)
    seeds = {n.name for n in model.graph.node if n.name in inside and n.op_type in _SEED_OPS}
    prod, cons = _links(model)

    def feeds_network(node) -> bool:
        stack, seen = list(node.output), set()
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            for c in cons.get(t, []):
                if c.name in seeds:
                    return True
                stack.extend(c.output)
        return False

    found: set[str] = set()
    for sm in (n for n in model.graph.node if n.op_type == "Softmax" and feeds_network(n)):
        stack, seen = list(sm.input), set()
        while stack:
            t = stack.pop()
            n = prod.get(t)
            if t in seen or n is None:
                continue
            seen.add(t)
            if n.name in inside:
                found.add(n.name)
            stack.extend(n.input)
    return found


def selection_convs(model) -> set[str]:
    """Depthwise two-tap Conv nodes whose every filter is [1, 0] or [−1, 1]: exact selections, not
    network layers — the students' dilated max-pool in conv form, ``a + relu(b − a)``
    (adrt.train.students.model.max_pool2_dilated). INT8 would round the maximum they compute."""
    from onnx import numpy_helper

    weights = {i.name: i for i in model.graph.initializer}
    out = set()
    for n in model.graph.node:
        if n.op_type != "Conv" or len(n.input) < 2 or n.input[1] not in weights:
            continue
        w = weights[n.input[1]]
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if len(w.dims) != 4 or w.dims[1] != 1 or w.dims[0] != group or w.dims[2] * w.dims[3] != 2:
            continue
        taps = numpy_helper.to_array(w).reshape(-1, 2)
        if (taps == [1.0, 0.0]).all(1).all() or (taps == [-1.0, 1.0]).all(1).all():
            out.add(n.name)
    return out


def int8_region(model) -> list[str]:
    """The feature region's nodes INT8 quantises: its ``INT8_OP_TYPES`` nodes except the compared
    layers (:func:`compared_layers`), the layers that address a memory (:func:`addressing_layers`)
    and exact selections (:func:`selection_convs`), in graph order."""
    region = feature_region(model)
    keep = compared_layers(model, region) | addressing_layers(model, region) | selection_convs(model)
    ops = set(INT8_OP_TYPES)
    return [n.name for n in model.graph.node if n.name in set(region) and n.op_type in ops and n.name not in keep]


CHECK_IMAGES = 16


def check_subset(images: np.ndarray, n: int = CHECK_IMAGES) -> np.ndarray:
    """At most ``n`` images spread evenly over ``images``: what INT8's search and the variants'
    parity are measured on."""
    return images[:: max(1, len(images) // n)][:n]


def score_shift(ref: np.ndarray, got: np.ndarray, std: float) -> tuple[float, float]:
    """(mean, std over images) of the raw-score change ``got − ref`` in units of ``std``."""
    d = (np.asarray(got) - np.asarray(ref)) / std
    return float(np.mean(d)), float(np.std(d))


def int8_within_bounds(shift: float, scatter: float) -> bool:
    return abs(shift) <= INT8_MAX_SHIFT_STD and scatter <= INT8_MAX_SCATTER_STD


def _int8_candidates(n: int, steps: int = INT8_PREFIX_STEPS) -> list[tuple[int, int]]:
    """(float prefix, float suffix) node counts to try, fewest float nodes first (in steps of n/8;
    at a tie: a prefix, then a suffix, then both)."""
    units = sorted({round(i * n / steps) for i in range(steps)})
    pairs = [(a, b) for a in units for b in units if a + b < n and (a + b == 0 or a + b <= units[-1])]
    return sorted(pairs, key=lambda c: (c[0] + c[1], c[0] > 0 and c[1] > 0, c[1]))


def choose_int8(model, calib_images: np.ndarray, target: Int8Target | str = Int8Target.TENSORRT,
                score_std: float | None = None, check_images: np.ndarray | None = None, log=lambda m: None,
                threads: int | None = None):
    """Quantise with the fewest float nodes that keep normal scores within bounds.

    Tries the :func:`_int8_candidates` splits of :func:`int8_region` (graph order: a float prefix, a
    float suffix or both, fewest float nodes first); for each, measures on (a spread subset of) ``check_images`` the
    raw-score shift in units of ``score_std`` (the bundle's calibration std; else that of the fp32
    scores), and keeps the first whose mean is ≤ INT8_MAX_SHIFT_STD and whose scatter (std over
    images) is ≤ INT8_MAX_SCATTER_STD. ``check_images`` (default: calibration images) are normal
    images; images the model was fitted on are conservative (their scores are small, so the added
    noise weighs more). Returns (QDQ model, facts for the manifest).
    """
    target = _parse_target(target)
    check_calibration_images(calib_images)
    quantisable = int8_region(model)
    n = len(quantisable)
    region = feature_region(model)
    compared = sorted(compared_layers(model, region))
    found = addressing_layers(model, region)
    addressing = sorted(x.name for x in model.graph.node if x.name in found and x.op_type in INT8_OP_TYPES)
    check = calib_images if check_images is None else check_images
    check = check_subset(check)
    ref = _raw_scores(_session(model, threads), check)
    std = float(score_std) if score_std else float(ref.std()) or 1.0
    tried = []
    with tempfile.TemporaryDirectory(prefix="adrt-calib-") as tmp:
        cache = Path(tmp) / "ranges.json"
        for k, j in _int8_candidates(n):
            q = quantize_int8(model, calib_images, target, region=quantisable[k : n - j], calibration_cache=cache,
                              threads=threads)
            got = _raw_scores(_session(q, threads), check)
            shift, scatter = score_shift(ref, got, std)
            tried.append({"float_prefix": k, "float_suffix": j, "score_shift_std": round(shift, 3),
                          "score_scatter_std": round(scatter, 3)})
            log(f"int8: first {k} and last {j} of {n} nodes float → normal-score shift {shift:+.2f} std, "
                f"scatter {scatter:.2f} std")
            if int8_within_bounds(shift, scatter):
                facts = {"float_prefix_nodes": k, "float_suffix_nodes": j, "quantized_nodes": n - k - j,
                         "first_quantized_node": quantisable[k], "last_quantized_node": quantisable[n - j - 1],
                         "score_shift_std": round(shift, 3), "score_scatter_std": round(scatter, 3),
                         "max_shift_std": INT8_MAX_SHIFT_STD, "max_scatter_std": INT8_MAX_SCATTER_STD,
                         "search": tried, "float_compared_layers": compared,
                         "float_addressing_layers": addressing}
                return q, facts
    raise BundleError(f"INT8 moves normal scores by more than {INT8_MAX_SHIFT_STD} calibration std (or scatters "
                      f"them by more than {INT8_MAX_SCATTER_STD}) however many leading/trailing layers stay float "
                      f"(tried {tried}); use fp16 for this model")


def _feeds(names, images: np.ndarray) -> dict:
    """A graph's feeds for ``images``: a second (reference) input gets the images in another order."""
    from adrt.export.onnx import sample_feeds

    return sample_feeds(names, images)


def _graph_inputs(model) -> list:
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def _input_names(session) -> list:
    return [i.name for i in session.get_inputs()]


def _raw_scores(session, images: np.ndarray) -> np.ndarray:
    names = _input_names(session)
    return np.concatenate([session.run(["raw_score"], _feeds(names, images[i : i + 8]))[0]
                           for i in range(0, len(images), 8)])


def _parse_target(value) -> Int8Target:
    try:
        return Int8Target(value)
    except ValueError:
        raise InputError(f"unknown INT8 target {value!r}; available: {', '.join(t.value for t in Int8Target)}") from None


def check_calibration_images(images: np.ndarray, minimum: int = MIN_CALIB_IMAGES) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise InputError(f"calibration images: expected a uint8 N×H×W×3 array, got "
                         f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}")
    if len(images) < minimum:
        raise DataError(f"calibration needs at least {minimum} normal images, got {len(images)}")


def load_calibration(folder: str | os.PathLike, height: int, width: int, minimum: int = MIN_CALIB_IMAGES,
                     maximum: int = MAX_CALIB_IMAGES) -> tuple[np.ndarray, dict]:
    """Normal images for calibration from ``folder`` (MVTec category: its train/good; else the
    folder's own images), at most ``maximum`` spread evenly over the sorted list, resized by the
    runtime's rule. Returns (uint8 N×H×W×3, a summary for the manifest)."""
    from adrt.data import Dataset, load_images

    folder = Path(folder)
    try:
        ds = Dataset.open(folder)
    except DataError as e:
        raise DataError(f"calibration folder: {e}") from None
    paths = ds.train
    if len(paths) < minimum:
        raise DataError(f"calibration folder {folder}: {len(paths)} normal image(s), at least {minimum} are needed")
    if len(paths) > maximum:
        paths = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, maximum).round()]
    images = load_images(paths, height, width)
    return images, {"folder": ds.name, "root": str(Path(folder).resolve()), "images": len(paths),
                    "available": len(ds.train), "method": "minmax"}


def holdout_images(manifest: dict, calib_root: str | None, height: int, width: int) -> np.ndarray | None:
    """The bundle's calibration holdout (normal images kept out of fitting, the ones its threshold
    was set on) when the calibration folder is its training dataset; else None."""
    from adrt.data import Dataset, load_images, split_holdout

    t = manifest.get("training") or {}
    if not calib_root or not t.get("data") or not t.get("n_holdout"):
        return None
    if Path(t["data"]).resolve() != Path(calib_root).resolve():
        return None
    train = Dataset.open(calib_root).train
    k = int(t["n_holdout"])
    if not 0 < k < len(train) or len(train) != int(t.get("n_fit", -1)) + k:
        return None  # the folder changed since training: the split cannot be redone
    _, hold = split_holdout(train, k / len(train), k, int(t.get("seed", 0)))
    return load_images(hold, height, width)


# --- bundle variants --------------------------------------------------------------------------

# FP16 must agree with fp32 within this (median over images of |Δ raw score| / max(|fp32 raw
# score|, calibration score std); measured for every method: < 0.2 %). INT8 is held to INT8_MAX_SHIFT_STD by choose_int8 instead, and its
# agreement is recorded, not bounded here.
FP16_MAX_MEDIAN_REL = 0.01


def variant_parity(fp32_path: Path, variant_path: Path, images: np.ndarray, threads: int | None = None,
                   score_std: float | None = None) -> dict:
    """Differences between the fp32 graph and a variant on ``images``, on ONNX Runtime CPU.

    ``raw_score_median_rel``: median over images of |Δ raw score| / max(|fp32 raw score|,
    ``score_std``). The floor matters for methods whose raw score is normalised to ≈ 0 on normal
    images (EfficientAD's quantile normalisation): there a relative difference alone is unbounded.
    """
    out = {}
    ref = _session(fp32_path, threads)
    got = _session(variant_path, threads)
    names = [o.name for o in ref.get_outputs()]
    feeds = [_feeds(_input_names(ref), images[i : i + 8]) for i in range(0, len(images), 8)]
    r = [np.concatenate(x) for x in zip(*(ref.run(None, f) for f in feeds))]
    g = [np.concatenate(x) for x in zip(*(got.run(None, f) for f in feeds))]
    for name, a, b in zip(names, r, g):
        if not np.isfinite(b).all():
            raise BundleError(f"{variant_path.name}: output {name} is not finite on the calibration images")
        err = float(np.abs(a - b).max())
        out[name] = {"max_abs": err, "max_rel": err / (float(np.abs(a).max()) or 1.0)}
    a, b = r[names.index("raw_score")], g[names.index("raw_score")]
    out["raw_score_median_rel"] = float(np.median(np.abs(a - b) / np.maximum(np.abs(a), score_std or 1e-12)))
    return out


def add_variant(bundle: str | os.PathLike, precision: Precision | str, calib: str | os.PathLike | None = None,
                int8_target: Int8Target | str = Int8Target.TENSORRT, calib_data: tuple | None = None,
                log=lambda m: None, threads: int | None = None) -> Path:
    """Add an FP16 or INT8 model to a bundle folder (replacing one of that precision) and record it
    in the manifest with its checksum, what stayed float and its agreement with fp32.

    INT8 needs ``calib``, a folder of normal images (see :func:`load_calibration`), or
    ``calib_data``, what that function returned. The bundle is only changed once the variant has
    been made and checked.
    """
    import onnx

    precision = parse_precision(precision)
    if precision is Precision.FP32:
        raise InputError("fp32 is the bundle's own model.onnx; variants are fp16 and int8")
    b = open_bundle(bundle)
    if b.is_zip:
        b.cleanup()
        raise BundleError(f"{bundle}: adding a model needs a bundle folder, not a .zip")
    root = b.root
    spec = b.input
    h, w = int(spec["height"]), int(spec["width"])
    if calib_data is not None:
        images, calib_info = calib_data
        check_calibration_images(images, MIN_CALIB_IMAGES if precision is Precision.INT8 else 1)
        if images.shape[1:3] != (h, w):
            raise InputError(f"calibration images are {images.shape[1]}×{images.shape[2]}, the bundle takes {h}×{w}")
    elif calib is not None:
        images, calib_info = load_calibration(calib, h, w, minimum=MIN_CALIB_IMAGES if precision is Precision.INT8 else 1)
    elif precision is Precision.INT8:
        b.cleanup()
        raise InputError("int8 needs calibration images: pass a folder of normal images (--calib DIR)")
    else:
        images, calib_info = None, None
    fp32 = b.model_path("fp32")
    model = onnx.load(str(fp32))
    region = feature_region(model)
    name = VARIANT_FILES[precision]
    # Not mkstemp: its 0600 would stay on the model (others must be able to read a copied bundle).
    tmp = root / f".{name}.adrt-tmp-{secrets.token_hex(4)}"
    try:
        held = holdout_images(b.manifest, (calib_info or {}).get("root"), h, w)
        check = held if held is not None else images if images is not None else _random_images(h, w)
        measured_on = ("training holdout" if held is not None else
                       "calibration images" if images is not None else "random images")
        if precision is Precision.INT8:
            target = _parse_target(int8_target)
            score_std = (b.manifest.get("calibration") or {}).get("score_std")
            variant, search = choose_int8(model, images, target, score_std, check, log, threads)
            search["measured_on"] = measured_on
        else:
            variant = convert_fp16(model, region)
        onnx.save(variant, str(tmp))
        score_std = (b.manifest.get("calibration") or {}).get("score_std")
        parity = variant_parity(fp32, tmp, check_subset(check), threads, score_std)
        parity["measured_on"] = measured_on
        if precision is Precision.FP16 and parity["raw_score_median_rel"] > FP16_MAX_MEDIAN_REL:
            raise BundleError(f"the fp16 model does not agree with fp32: raw scores differ by "
                              f"{parity['raw_score_median_rel']:.2%} (median), more than {FP16_MAX_MEDIAN_REL:.0%}")
        reduced = region
        if precision is Precision.INT8:
            q8 = int8_region(model)
            reduced = q8[search["float_prefix_nodes"] : len(q8) - search["float_suffix_nodes"]]
        ops = INT8_OP_TYPES if precision is Precision.INT8 else None
        opset = next(o.version for o in variant.opset_import if o.domain in ("", "ai.onnx"))
        entry = {"file": name, "precision": precision.value, "opset": opset, **describe_region(model, reduced, ops),
                 "parity_vs_fp32": parity}
        if precision is Precision.FP16:
            entry["parity_tolerance"] = {"raw_score_median_rel": FP16_MAX_MEDIAN_REL}
        if precision is Precision.INT8:
            entry.update({"format": "qdq", "int8_target": target.value, "quantized_op_types": list(INT8_OP_TYPES),
                          "weights": "int8 symmetric, per channel",
                          "activations": "int8 symmetric" if target is Int8Target.TENSORRT else "uint8 asymmetric",
                          "calibration": calib_info, "float_prefix": search})
            if search["float_compared_layers"]:
                entry["float_parts"] += (f"; {len(search['float_compared_layers'])} compared output layers (convs whose "
                                         "output is subtracted from the input or another network's output): "
                                         "float weights and arithmetic")
            n_sel = len(selection_convs(model))
            if n_sel:
                entry["float_parts"] += (f"; {n_sel} selection convs (the max-pools as a + relu(b − a)): float")
            if search.get("float_addressing_layers"):
                entry["float_parts"] += (f"; {len(search['float_addressing_layers'])} layers that address a memory "
                                         "(upstream of the attention the network reads): float")
            if search["float_prefix_nodes"]:
                entry["float_parts"] += (f"; the first {search['float_prefix_nodes']} quantisable nodes of the network "
                                         f"(int8 from {search['first_quantized_node']} on)")
            if search["float_suffix_nodes"]:
                entry["float_parts"] += (f"; the last {search['float_suffix_nodes']} quantisable nodes of the network "
                                         f"(int8 up to {search['last_quantized_node']})")
        os.replace(tmp, root / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    manifest = b.manifest
    manifest["models"][precision.value] = entry
    manifest["files"][name] = {}
    write_manifest(root, manifest)
    if precision.value + ".trt86" in manifest["models"]:
        # Its opset-17 copy for TensorRT 8.6 was made from the model just replaced: make it again.
        from adrt.export.trt86 import add_trt86_variants

        add_trt86_variants(root, check_subset(check), keys=[precision.value], log=log)
    return root / name


def _random_images(h: int, w: int, n: int = 4) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
