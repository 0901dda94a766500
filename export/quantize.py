"""Reduced-precision variants of a bundle: :func:`add_variant` writes ``model.fp16.onnx`` or ``model.int8.onnx``
beside the fp32 graph, checks its agreement with fp32 on normal images, and records it in the manifest
(checksum, what stayed float, parity), changing the bundle only once the variant is made and checked.

Both variants keep the graph contract (uint8 ``image`` in, float32 outputs) and reduce only the network's
feature region (:mod:`adrt.export.region`); the conversions are :mod:`adrt.export.fp16` and
:mod:`adrt.export.int8`, calibration images :mod:`adrt.export.calibration`. Why each part stays float,
with the measurements: benchmarks/results/quantize_design.md; what it costs and buys per method:
benchmarks/precision.py.

Needs ``onnx`` and ``onnxruntime`` (no torch): a bundle's variants can be added without its run.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np

from adrt.contract import Precision
from adrt.errors import BundleError, InputError
from adrt.export.calibration import MIN_CALIB_IMAGES, check_calibration_images, holdout_images, load_calibration
from adrt.export.fp16 import convert_fp16
from adrt.export.int8 import (INT8_OP_TYPES, Int8Target, check_subset, choose_int8, cpu_session, int8_region,
                              parse_target)
from adrt.export.region import describe_region, feature_region, selection_convs
from adrt.export.trt86 import add_trt86_variants
from adrt.runtime.bundle import open_bundle, write_manifest


VARIANT_FILES = {Precision.FP32: "model.onnx", Precision.FP16: "model.fp16.onnx", Precision.INT8: "model.int8.onnx"}


def parse_precision(value: str | Precision) -> Precision:
    try:
        return Precision(value)
    except ValueError:
        raise InputError(f"unknown precision {value!r}; available: {', '.join(p.value for p in Precision)}") from None


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
    ref = cpu_session(fp32_path, threads)
    got = cpu_session(variant_path, threads)
    names = [o.name for o in ref.get_outputs()]
    r = [np.concatenate(x) for x in zip(*(ref.run(None, {"image": images[i : i + 8]}) for i in range(0, len(images), 8)))]
    g = [np.concatenate(x) for x in zip(*(got.run(None, {"image": images[i : i + 8]}) for i in range(0, len(images), 8)))]
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
            target = parse_target(int8_target)
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
        add_trt86_variants(root, check_subset(check), keys=[precision.value], log=log)
    return root / name


def _random_images(h: int, w: int, n: int = 4) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
