"""INT8 copy of a fused graph: ONNX Runtime's static QDQ quantisation (MinMax calibration, per-channel
symmetric int8 weights, float biases) of the feature region's convolutions, and the search
(:func:`choose_int8`) for the fewest float layers that keep the raw scores of normal images within
INT8_MAX_SHIFT_STD / INT8_MAX_SCATTER_STD calibration std of fp32.

Two targets (:class:`Int8Target`): symmetric int8 activations for TensorRT (and ARM), uint8 ones that
ONNX Runtime on x86 fuses completely. The bounds and what they were set from:
benchmarks/results/quantize_design.md and benchmarks/results/int8_search_*.md.
"""
from __future__ import annotations

import enum
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from adrt.errors import BundleError, InputError

from adrt.export.calibration import check_calibration_images
from adrt.export.region import addressing_layers, compared_layers, feature_region, selection_convs


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

    def __init__(self, images: np.ndarray, batch: int = 8):
        # MinMax calibration keeps only per-batch minima and maxima (ReduceMin/Max outputs), so
        # memory does not grow with the image count. (CalibMaxIntermediateOutputs is not used:
        # in onnxruntime 1.32 it drops the ranges collected when the limit is reached.)
        self._it: Iterator[dict] = ({"image": images[i : i + batch]} for i in range(0, len(images), batch))

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

    target = parse_target(target)
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
                str(src), str(dst), _Batches(calib_images), quant_format=QuantFormat.QDQ,
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


def cpu_session(model, threads: int | None = None):
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


def int8_candidates(n: int, steps: int = INT8_PREFIX_STEPS) -> list[tuple[int, int]]:
    """(float prefix, float suffix) node counts to try, fewest float nodes first (in steps of n/8;
    at a tie: a prefix, then a suffix, then both)."""
    units = sorted({round(i * n / steps) for i in range(steps)})
    pairs = [(a, b) for a in units for b in units if a + b < n and (a + b == 0 or a + b <= units[-1])]
    return sorted(pairs, key=lambda c: (c[0] + c[1], c[0] > 0 and c[1] > 0, c[1]))


def choose_int8(model, calib_images: np.ndarray, target: Int8Target | str = Int8Target.TENSORRT,
                score_std: float | None = None, check_images: np.ndarray | None = None, log=lambda m: None,
                threads: int | None = None):
    """Quantise with the fewest float nodes that keep normal scores within bounds.

    Tries the :func:`int8_candidates` splits of :func:`int8_region` (graph order: a float prefix, a
    float suffix or both, fewest float nodes first); for each, measures on (a spread subset of) ``check_images`` the
    raw-score shift in units of ``score_std`` (the bundle's calibration std; else that of the fp32
    scores), and keeps the first whose mean is ≤ INT8_MAX_SHIFT_STD and whose scatter (std over
    images) is ≤ INT8_MAX_SCATTER_STD. ``check_images`` (default: calibration images) are normal
    images; images the model was fitted on are conservative (their scores are small, so the added
    noise weighs more). Returns (QDQ model, facts for the manifest).
    """
    target = parse_target(target)
    check_calibration_images(calib_images)
    quantisable = int8_region(model)
    n = len(quantisable)
    region = feature_region(model)
    compared = sorted(compared_layers(model, region))
    found = addressing_layers(model, region)
    addressing = sorted(x.name for x in model.graph.node if x.name in found and x.op_type in INT8_OP_TYPES)
    check = calib_images if check_images is None else check_images
    check = check_subset(check)
    ref = raw_scores(cpu_session(model, threads), check)
    std = float(score_std) if score_std else float(ref.std()) or 1.0
    tried = []
    with tempfile.TemporaryDirectory(prefix="adrt-calib-") as tmp:
        cache = Path(tmp) / "ranges.json"
        for k, j in int8_candidates(n):
            q = quantize_int8(model, calib_images, target, region=quantisable[k : n - j], calibration_cache=cache,
                              threads=threads)
            got = raw_scores(cpu_session(q, threads), check)
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


def raw_scores(session, images: np.ndarray) -> np.ndarray:
    return np.concatenate([session.run(["raw_score"], {"image": images[i : i + 8]})[0] for i in range(0, len(images), 8)])


def parse_target(value) -> Int8Target:
    try:
        return Int8Target(value)
    except ValueError:
        raise InputError(f"unknown INT8 target {value!r}; available: {', '.join(t.value for t in Int8Target)}") from None
