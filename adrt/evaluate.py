"""`adrt eval`: run a bundle over a dataset's test split and compute the metrics (torch-free)."""
from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from adrt.data import Dataset, load_images, load_masks
from adrt.errors import DataError
from adrt.metrics import evaluate, format_table
from adrt.runtime.bundle import open_bundle, write_manifest


def evaluate_session(session, data: str | os.PathLike, out: str | os.PathLike | None = None, overlays: int = 0,
                     batch_size: int = 8, log=lambda m: print(m, file=sys.stderr), *, overwrite: bool = False,
                     inputs=()) -> dict:
    """Metrics of ``session`` (an adrt.runtime.Session) on the test split of ``data``.

    Writes metrics.json, metrics.txt and up to ``overlays`` PNG panels (spread over defect types)
    to the folder ``out`` when given (atomically; an existing eval folder only with
    ``overwrite``, see adrt.outputs). Pixel metrics are skipped, with a warning, when masks are
    missing, and for a defect type whose masks are empty at the model's size.
    """
    from adrt.outputs import Kind, check_output, staged_folder

    if out is not None:
        check_output(out, Kind.EVAL, overwrite=overwrite, inputs=[data, *inputs])
    paired = getattr(session, "paired", False)
    ds = Dataset.open(data, references=paired)
    if not ds.test:
        raise DataError(f"{ds.root}: no test images (expected {ds.root}/test/<type>/*.png)")
    h, w = session.height, session.width
    refs = None
    if paired:
        from adrt.runtime.pairs import find_references

        refs = find_references([s.path for s in ds.test])     # one error names every image without one
    geometry = getattr(session, "geometry", None)
    # Letterboxed maps are brought back to the frame (padding dropped) on the same H×W grid the masks
    # are resized to, so the padding never counts as normal pixels.
    letterboxed = geometry is not None and geometry.mode == "letterbox"
    masks = load_masks(ds.test, h, w)
    if masks is None:
        msg = f"{ds.root}: some defect images have no ground-truth mask; pixel metrics skipped"
        warnings.warn(msg)
        log("warning: " + msg)
    t0 = time.perf_counter()
    maps, scores, calibrated, cal_maps = [], [], [], []
    for i in range(0, len(ds.test), batch_size):
        batch = load_images([s.path for s in ds.test[i : i + batch_size]], h, w, geometry)
        r = session.run(batch, None if refs is None else load_images(refs[i : i + batch_size], h, w, geometry))
        sizes = _frame_sizes(ds.test[i : i + batch_size]) if letterboxed else None
        maps.append(_frame_maps(r.raw_maps, sizes, h, w) if letterboxed else r.raw_maps)
        scores.append(r.raw_scores)
        calibrated.append(r.scores)
        if masks is not None:
            m = _frame_maps(r.maps, sizes, h, w) if letterboxed else r.maps
            cal_maps.append(m >= session.pixel_threshold)
    seconds = time.perf_counter() - t0
    raw_maps, raw_scores = np.concatenate(maps), np.concatenate(scores)
    labels = np.array([s.label for s in ds.test])
    types = [s.defect_type for s in ds.test]
    # Metrics use the raw outputs: the calibrated ones are a monotone map of them, but saturate
    # in float32 far from the threshold, which would create ties.
    result = evaluate(labels, raw_scores, types, masks=masks, maps=raw_maps if masks is not None else None)
    result["at_threshold"] = at_threshold(session, labels, np.concatenate(calibrated), masks,
                                          np.concatenate(cal_maps) if masks is not None else None)
    result["data"] = {"root": str(ds.root), "n_test": len(ds.test), "pixel_metrics": masks is not None,
                      "geometry": geometry.mode if geometry is not None else "resize"}
    result["inference_seconds"] = round(seconds, 3)
    for note in result.get("notes", []):
        log("warning: " + note)
    if out is not None:
        with staged_folder(out, Kind.EVAL, overwrite=overwrite, inputs=[data, *inputs]) as tmp:
            (tmp / "metrics.json").write_text(json.dumps(result, indent=2))
            (tmp / "metrics.txt").write_text(format_table(result) + "\n")
            if overlays:
                _write_overlays(session, ds, tmp / "overlays", overlays,
                                load_masks(ds.test, h, w, geometry) if letterboxed and masks is not None else masks,
                                refs)
    return result


def _frame_sizes(samples) -> list:
    """(height, width) of each sample's image file, read from its header."""
    from adrt.runtime.image import read_image_size

    return [read_image_size(s.path) for s in samples]


def _frame_maps(maps: np.ndarray, sizes, h: int, w: int) -> np.ndarray:
    """Letterboxed maps → the frames' content (``sizes``: each frame's height, width) on an h×w grid
    (adrt.runtime.geometry.unletterbox)."""
    from adrt.runtime.geometry import unletterbox

    return np.concatenate([unletterbox(m[None], *hw, h, w) for m, hw in zip(maps, sizes)])


def at_threshold(session, labels: np.ndarray, scores: np.ndarray, masks=None, pixel_pred=None) -> dict:
    """Decisions at the session's thresholds: image FPR (good images flagged) and recall (defect
    images flagged), accuracy, and with masks the pixel FPR (on the good images) and recall (on
    the defect pixels) at the pixel threshold. At
    the bundle's own threshold, the false alarms its calibration predicts for this many good
    images (``expected_false_alarms``, a 95 % prediction interval; adrt.thresholds)."""
    from adrt.thresholds import count_interval

    y = labels.astype(bool)
    pred = scores >= session.threshold
    n_good, n_bad = int((~y).sum()), int(y.sum())
    out = {"threshold": session.threshold, "pixel_threshold": session.pixel_threshold,
           "raw_threshold": session.raw_threshold(),
           "accuracy": float((pred == y).mean()),
           "false_positive_rate": float(pred[~y].mean()) if n_good else None,
           "recall": float(pred[y].mean()) if n_bad else None,
           "false_positives": int(pred[~y].sum()), "n_good": n_good,
           "true_positives": int(pred[y].sum()), "n_defect": n_bad}
    cal = session.bundle.contract.calibration or {}
    d = cal.get("image")
    if d and n_good and session.threshold == session.bundle.contract.threshold:
        exceed = int(round(d["holdout_fpr"] * d["n_normal"]))
        lo, hi = count_interval(d["n_normal"], exceed, n_good, d["confidence"], exact=d["rule"] == "fpr")
        out["expected_false_alarms"] = {"interval": [lo, hi], "confidence": d["confidence"], "rule": d["rule"],
                                        "within": lo <= out["false_positives"] <= hi}
    if masks is not None and pixel_pred is not None:
        # Pixel FPR on the good images (comparable with the calibration's held-out pixel FPR);
        # recall over the defect pixels.
        m = np.asarray(masks, bool)
        out["pixel_false_positive_rate"] = float(pixel_pred[~y].mean()) if n_good else None
        out["pixel_recall"] = float(pixel_pred[m].mean()) if m.any() else None
    return out


def _write_overlays(session, ds, folder: Path, n: int, masks, refs=None) -> None:
    from adrt.runtime.overlay import save_panel

    folder.mkdir(parents=True, exist_ok=True)
    # Round-robin over defect types so every type shows up.
    by_type: dict[str, list[int]] = {}
    for i, s in enumerate(ds.test):
        by_type.setdefault(s.defect_type, []).append(i)
    order, k = [], 0
    while len(order) < min(n, len(ds.test)):
        for idx in by_type.values():
            if k < len(idx) and len(order) < n:
                order.append(idx[k])
        k += 1
    h, w = session.height, session.width
    geometry = getattr(session, "geometry", None)
    imgs = load_images([ds.test[i].path for i in order], h, w, geometry)
    r = session.run(imgs, None if refs is None else load_images([refs[i] for i in order], h, w, geometry))
    for j, i in enumerate(order):
        s = ds.test[i]
        save_panel(folder / f"{s.defect_type}_{s.path.stem}.png", imgs[j], r.maps[j], float(r.scores[j]),
                   session.threshold, None if masks is None else masks[i], pixel_threshold=session.pixel_threshold,
                   raw_score=float(r.raw_scores[j]))


def record_metrics(bundle, data, result, precision: str = "fp32") -> None:
    """Add eval results to a bundle folder's manifest (the manifest itself carries no checksum)."""
    b = open_bundle(bundle)
    if b.is_zip:
        b.cleanup()
        raise DataError(f"{bundle}: --record needs a bundle folder, not a .zip")
    key = Path(data).resolve().name + ("" if precision == "fp32" else f"@{precision}")
    b.manifest.setdefault("metrics", {})[key] = {
        k: result[k] for k in ("overall", "per_type", "counts", "at_threshold") if k in result}
    write_manifest(b.root, b.manifest)
