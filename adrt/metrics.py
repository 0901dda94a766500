"""Evaluation metrics for anomaly detection (numpy + scipy only; never imports torch).

Image level: ``image_auroc`` and ``f1_max`` over per-image scores. Pixel level: ``pixel_auroc``
and ``aupro`` (the MVTec AD per-region-overlap curve) over anomaly maps. ``evaluate`` bundles them
overall and per defect type (each type scored against all good images), ``format_table`` prints
the result.

All ROC-style computations sort the scores once (O(M log M) time, O(M) memory) and treat tied
scores exactly: a tie between a positive and a negative counts one half, which is the
Mann-Whitney U statistic with average ranks.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from adrt.errors import DataError

__all__ = ["image_auroc", "pixel_auroc", "aupro", "f1_max", "evaluate", "format_table"]

_GOOD = "good"
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# ----------------------------------------------------------------------------- validation helpers


def _as_binary(labels: Any, name: str) -> np.ndarray:
    """Return ``labels`` as a bool array; raise DataError unless every value is 0/1 (or bool)."""
    arr = np.asarray(labels)
    if arr.dtype == bool:
        return arr
    if arr.size and not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"{name} must be a 0/1 or bool array, got dtype {arr.dtype}")
    if arr.size:
        bad = ~((arr == 0) | (arr == 1))
        if bad.any():
            raise DataError(
                f"{name} must contain only 0 and 1, found {np.unique(arr[bad])[:5].tolist()}"
            )
    return arr.astype(bool)


def _as_scores(scores: Any, name: str) -> np.ndarray:
    """Return ``scores`` as a float array (float32 kept as is); raise DataError on NaN/Inf."""
    arr = np.asarray(scores)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if arr.size and not np.isfinite(arr).all():
        n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise DataError(f"{name} contains {n_bad} NaN or infinite value(s); all scores must be finite")
    return arr


def _check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str, ndim: int) -> None:
    if a.ndim != ndim:
        raise DataError(f"{name_a} must have {ndim} dimension(s), got shape {a.shape}")
    if b.ndim != ndim:
        raise DataError(f"{name_b} must have {ndim} dimension(s), got shape {b.shape}")
    if a.shape != b.shape:
        raise DataError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}; they must match")


def _check_two_classes(y: np.ndarray, what: str) -> None:
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0 or n_pos == y.size:
        only = "anomalous (1)" if n_pos else "normal (0)"
        raise DataError(
            f"AUROC needs both normal and anomalous {what}, but all {y.size} are {only}"
        )


# ----------------------------------------------------------------------------- ROC AUC


def _auc_sorted(y: np.ndarray, s: np.ndarray) -> float:
    """Exact ROC AUC for flat bool labels ``y`` and flat finite scores ``s`` (both classes present).

    Mann-Whitney with average ranks: sorts the scores once, then looks up the tie group
    [left, right) of each member of the smaller class by binary search; its average 1-based rank
    is (left + right + 1) / 2 and U = sum(ranks) - n(n + 1) / 2. Integer arithmetic throughout,
    and besides the sorted copy only arrays the size of the smaller class are allocated.
    """
    n_pos = int(np.count_nonzero(y))
    n_neg = y.size - n_pos
    use_pos = n_pos <= n_neg
    n_small = n_pos if use_pos else n_neg
    small = s[y] if use_pos else s[~y]
    s_sorted = np.sort(s.reshape(-1))
    rank_sum2 = int(np.searchsorted(s_sorted, small, side="left").sum(dtype=np.int64))
    rank_sum2 += int(np.searchsorted(s_sorted, small, side="right").sum(dtype=np.int64)) + n_small
    u_small = (rank_sum2 - n_small * (n_small + 1)) / 2.0  # pairs in which the smaller class wins
    u = u_small if use_pos else n_pos * n_neg - u_small
    return float(u / (float(n_pos) * float(n_neg)))


def image_auroc(labels: Any, scores: Any) -> float:
    """Exact image-level ROC AUC.

    Args:
        labels: (N,) array of 0/1 (or bool); 1 = anomalous.
        scores: (N,) finite float array; higher = more anomalous.

    Returns:
        The probability that a random anomalous image scores above a random normal one, ties
        counting one half (Mann-Whitney U / (n_pos * n_neg)); in [0, 1].

    Raises:
        DataError: shapes differ or are not 1-D, labels are not 0/1, only one class is present,
            or scores contain NaN/Inf.
    """
    y = _as_binary(labels, "labels")
    s = _as_scores(scores, "scores")
    _check_same_shape(y, s, "labels", "scores", ndim=1)
    _check_two_classes(y, "images")
    return _auc_sorted(y, s)


def pixel_auroc(masks: Any, maps: Any) -> float:
    """Exact pixel-level ROC AUC over all pixels of all images.

    Args:
        masks: (N, H, W) bool (or 0/1) ground truth; True = anomalous pixel.
        maps: (N, H, W) finite float anomaly maps (float32 is kept as float32, no copy made).

    Returns:
        ROC AUC with ties counting one half, in [0, 1].

    Raises:
        DataError: shapes differ or are not 3-D, masks are not binary, maps contain NaN/Inf, or
            all pixels belong to one class.

    Memory: one sorted copy of the maps plus a few arrays the size of the smaller class
    (typically the defect pixels), e.g. ~30 MB of temporaries for 100 float32 maps of 256x256.
    """
    y = _as_binary(masks, "masks")
    s = _as_scores(maps, "maps")
    _check_same_shape(y, s, "masks", "maps", ndim=3)
    y = y.reshape(-1)
    s = s.reshape(-1)
    _check_two_classes(y, "pixels")
    return _auc_sorted(y, s)


# ----------------------------------------------------------------------------- AUPRO


def _region_weights(masks: np.ndarray) -> Tuple[np.ndarray, int]:
    """Per-defect-pixel weight 1 / (|region| * n_regions), in ``masks[masks]`` order, and n_regions.

    Regions are the 8-connected components of each image's mask, labelled image by image.
    """
    labels = np.zeros(masks.shape, dtype=np.int64)
    n_regions = 0
    for i in range(masks.shape[0]):
        lab, n = ndimage.label(masks[i], structure=_EIGHT_CONNECTED)
        if n:
            labels[i] = np.where(lab > 0, lab + n_regions, 0)
            n_regions += n
    if n_regions == 0:
        return np.zeros(0), 0
    region_of_pixel = labels[masks]  # 1..n_regions
    sizes = np.bincount(region_of_pixel, minlength=n_regions + 1).astype(np.float64)
    weights = 1.0 / (sizes[region_of_pixel] * n_regions)
    return weights, n_regions


def _trapezoid_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Area under the piecewise-linear curve (x, y) from x[0] to ``limit``.

    ``x`` must be non-decreasing, start at or below ``limit`` and, unless it ends below ``limit``,
    contain a point at or beyond it; the curve is interpolated exactly at ``limit``.
    """
    beyond = np.flatnonzero(x > limit)
    if beyond.size:
        i = int(beyond[0])  # x[i-1] <= limit < x[i]
        x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        x = np.concatenate((x[:i], [limit]))
        y = np.concatenate((y[:i], [y_lim]))
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) * 0.5))


def aupro(masks: Any, maps: Any, fpr_limit: float = 0.3, num_thresholds: Optional[int] = 200) -> float:
    """Normalised area under the per-region-overlap (PRO) curve up to ``fpr_limit`` (MVTec AD).

    Every 8-connected component of every ground-truth mask is one region. For a threshold t
    (a pixel is predicted anomalous when map > t):

    * PRO(t) = mean over all regions of |region & {map > t}| / |region|
    * FPR(t) = fraction of normal pixels (mask == 0, over all images) with map > t

    The curve runs from (0, 0) (t = +inf) to (1, 1) (t = -inf) through the points of the chosen
    thresholds, joined linearly (so ties between defect and normal pixels are interpolated, as in
    a ROC curve). It is integrated with the trapezoid rule from FPR 0 to ``fpr_limit``,
    interpolating exactly at ``fpr_limit``, and divided by ``fpr_limit``: a perfect detector
    gives 1.0.

    Args:
        masks: (N, H, W) bool (or 0/1) ground truth.
        maps: (N, H, W) finite float anomaly maps.
        fpr_limit: upper end of the FPR integration range, in (0, 1].
        num_thresholds: number of thresholds, placed at quantiles of the normal-pixel scores so
            that their FPRs are evenly spaced over [0, fpr_limit] (>= 2). ``None`` uses every
            distinct score as a threshold, giving the exact curve (same cost: one sort).

    Returns:
        AUPRO in [0, 1].

    Raises:
        DataError: shapes differ or are not 3-D, maps contain NaN/Inf, there is no defect region,
            or no normal pixel.
        ValueError: ``fpr_limit`` outside (0, 1] or ``num_thresholds`` < 2.
    """
    if not (0.0 < float(fpr_limit) <= 1.0):
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if num_thresholds is not None and int(num_thresholds) < 2:
        raise ValueError(f"num_thresholds must be >= 2 or None, got {num_thresholds}")
    fpr_limit = float(fpr_limit)
    m = _as_binary(masks, "masks")
    s = _as_scores(maps, "maps")
    _check_same_shape(m, s, "masks", "maps", ndim=3)

    weights, n_regions = _region_weights(m)
    if n_regions == 0:
        raise DataError("AUPRO needs at least one defect region, but every mask is empty")
    normal = np.sort(s[~m].reshape(-1))
    n_normal = normal.size
    if n_normal == 0:
        raise DataError("AUPRO needs normal (mask == 0) pixels, but every mask pixel is set")

    # Defect pixels sorted by score; tail_weight[k] = PRO mass of the pixels from index k upwards.
    defect_scores = s[m]
    order = np.argsort(defect_scores, kind="stable")
    defect_scores = defect_scores[order]
    tail_weight = np.concatenate((np.cumsum(weights[order][::-1])[::-1], [0.0]))

    if num_thresholds is None:
        thresholds = np.unique(np.concatenate((normal, defect_scores)))
    else:
        # Threshold normal[n - 1 - k] leaves at most k normal pixels above it: FPR <= k / n.
        fprs_wanted = np.linspace(0.0, fpr_limit, int(num_thresholds))
        k = np.clip(np.floor(fprs_wanted * n_normal).astype(np.int64), 0, n_normal - 1)
        chosen = np.unique(normal[n_normal - 1 - k])
        # Pair each threshold t with the next lower normal and defect scores, so that
        # the segment across pixels tied at t is exact and a PRO plateau below the lowest chosen
        # threshold (defect pixels scoring under normal ones) is not interpolated away.
        below = [chosen]
        for sorted_scores in (normal, defect_scores):
            idx = np.searchsorted(sorted_scores, chosen, side="left") - 1
            below.append(sorted_scores[idx[idx >= 0]])
        thresholds = np.unique(np.concatenate(below))
    thresholds = thresholds[::-1]  # descending: FPR and PRO both non-decreasing along the curve

    fpr = (n_normal - np.searchsorted(normal, thresholds, side="right")) / n_normal
    pro = tail_weight[np.searchsorted(defect_scores, thresholds, side="right")]
    fpr = np.concatenate(([0.0], fpr, [1.0]))
    pro = np.concatenate(([0.0], np.minimum(pro, 1.0), [1.0]))
    return _trapezoid_to(fpr, pro, fpr_limit) / fpr_limit


# ----------------------------------------------------------------------------- F1


def f1_max(labels: Any, scores: Any) -> Tuple[float, float]:
    """Best F1 over all thresholds (predict anomalous when score >= threshold).

    Args:
        labels: (N,) array of 0/1 (or bool); 1 = anomalous.
        scores: (N,) finite float array.

    Returns:
        (f1, threshold): the maximum F1 and the score value achieving it; when several
        thresholds tie, the highest one.

    Raises:
        DataError: shapes differ or are not 1-D, labels are not 0/1, there is no anomalous
            image (F1 undefined), or scores contain NaN/Inf.
    """
    y = _as_binary(labels, "labels")
    s = _as_scores(scores, "scores")
    _check_same_shape(y, s, "labels", "scores", ndim=1)
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0:
        raise DataError(f"F1 needs at least one anomalous (1) label, but all {y.size} are 0")
    order = np.argsort(-s.astype(np.float64), kind="stable")
    s_desc = s[order]
    y_desc = y[order]
    # Last index of each group of equal scores: thresholding at that score includes the group.
    ends = np.concatenate((np.flatnonzero(s_desc[1:] != s_desc[:-1]), [s_desc.size - 1]))
    tp = np.cumsum(y_desc)[ends].astype(np.float64)
    predicted = (ends + 1).astype(np.float64)
    f1 = 2.0 * tp / (predicted + n_pos)  # 2TP / (2TP + FP + FN), with TP + FP = predicted
    best = int(np.argmax(f1))
    return float(f1[best]), float(s_desc[ends[best]])


# ----------------------------------------------------------------------------- evaluate / table


def _metrics(labels: np.ndarray, scores: np.ndarray, masks: Optional[np.ndarray],
             maps: Optional[np.ndarray]) -> Dict[str, float]:
    f1, thr = f1_max(labels, scores)
    out: Dict[str, float] = {"image_auroc": image_auroc(labels, scores), "f1_max": f1, "f1_threshold": thr}
    # Masks that vanish at the model's size (defects smaller than one model pixel) give no pixel
    # metrics for this selection; evaluate() records a note instead of failing the whole run.
    if masks is not None and maps is not None and masks.any():
        out["pixel_auroc"] = pixel_auroc(masks, maps)
        out["aupro"] = aupro(masks, maps)
    return out


def evaluate(labels: Any, scores: Any, defect_types: Sequence[str], masks: Any = None,
             maps: Any = None) -> Dict[str, Any]:
    """All metrics, overall and per defect type.

    Args:
        labels: (N,) 0/1; must be 0 exactly for the images whose type is "good".
        scores: (N,) finite float image scores.
        defect_types: N strings; good images are "good".
        masks: optional (N, H, W) bool ground truth (all False for good images).
        maps: optional (N, H, W) float anomaly maps; pixel metrics need both masks and maps.

    Returns:
        A JSON-serialisable dict::

            {"overall": metrics, "per_type": {type: metrics}, "counts": {type: n}}

        where metrics has "image_auroc", "f1_max", "f1_threshold" and, when masks and maps are
        given, "pixel_auroc" and "aupro" (all Python floats). Per-type metrics for a defect type
        T are computed on the good images plus the images of type T (MVTec practice); "good"
        itself gets no per-type entry. counts holds every type, "good" included.

    Raises:
        DataError: lengths/shapes disagree, labels contradict the types, there are no good or no
            defective images, or a metric cannot be computed (the message names the type).
    """
    y = _as_binary(labels, "labels")
    s = _as_scores(scores, "scores")
    _check_same_shape(y, s, "labels", "scores", ndim=1)
    types = [str(t) for t in defect_types]
    n = y.size
    if len(types) != n:
        raise DataError(f"defect_types has {len(types)} entries but labels has {n}")
    types_arr = np.asarray(types, dtype=object)
    is_good = types_arr == _GOOD
    if np.any(y == is_good):
        i = int(np.flatnonzero(y == is_good)[0])
        raise DataError(
            f"image {i} has type {types[i]!r} but label {int(y[i])}; "
            f"images of type 'good' must have label 0 and all others label 1"
        )
    if not is_good.any():
        raise DataError("evaluate needs at least one image of type 'good'")
    if is_good.all():
        raise DataError("evaluate needs at least one defective (non-'good') image")

    if (masks is None) != (maps is None):
        raise DataError("masks and maps must be given together (or both omitted)")
    m = mp = None
    if masks is not None:
        m = _as_binary(masks, "masks")
        mp = _as_scores(maps, "maps")
        _check_same_shape(m, mp, "masks", "maps", ndim=3)
        if m.shape[0] != n:
            raise DataError(f"masks/maps hold {m.shape[0]} images but labels has {n}")

    def run(sel: Optional[np.ndarray], what: str) -> Dict[str, float]:
        try:
            if sel is None:
                return _metrics(y, s, m, mp)
            return _metrics(y[sel], s[sel], None if m is None else m[sel], None if mp is None else mp[sel])
        except DataError as exc:
            raise DataError(f"{what}: {exc}") from exc

    counts: Dict[str, int] = {}
    for t in types:
        counts[t] = counts.get(t, 0) + 1
    per_type: Dict[str, Dict[str, float]] = {}
    notes: List[str] = []
    for t in sorted(c for c in counts if c != _GOOD):
        if m is not None and not m[types_arr == t].any():
            notes.append(f"defect type {t!r}: every mask is empty at {m.shape[1]}x{m.shape[2]} (defects smaller "
                         f"than a model pixel?); pixel metrics skipped for it")
        per_type[t] = run(is_good | (types_arr == t), f"defect type {t!r}")
    result: Dict[str, Any] = {"overall": run(None, "overall"), "per_type": per_type, "counts": counts}
    if notes:
        result["notes"] = notes
    return result


_COLUMNS: List[Tuple[str, Optional[str]]] = [
    ("type", None), ("n", None), ("image AUROC", "image_auroc"), ("pixel AUROC", "pixel_auroc"),
    ("AUPRO", "aupro"), ("F1-max", "f1_max"),
]


def format_table(result: Dict[str, Any]) -> str:
    """Plain-text table of an ``evaluate`` result.

    One row per defect type (in ``result["per_type"]`` order) and a final "overall" row; columns
    type, n, image AUROC, pixel AUROC, AUPRO, F1-max. Values have 3 decimals, '-' when absent.
    n is the number of images of that type (for "overall": all images).
    """
    counts = result.get("counts", {})

    def fmt(metrics: Dict[str, Any], key: str) -> str:
        v = metrics.get(key)
        return "-" if v is None else f"{float(v):.3f}"

    rows = []
    for t, metrics in result.get("per_type", {}).items():
        n = counts.get(t)
        rows.append([str(t), "-" if n is None else str(n)] + [fmt(metrics, k) for _, k in _COLUMNS[2:]])
    total = sum(counts.values()) if counts else None
    rows.append(["overall", "-" if total is None else str(total)]
                + [fmt(result.get("overall", {}), k) for _, k in _COLUMNS[2:]])

    header = [c for c, _ in _COLUMNS]
    widths = [max(len(header[j]), *(len(r[j]) for r in rows)) for j in range(len(header))]

    def line(cells: List[str]) -> str:
        return "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths)))

    sep = "-" * len(line(header))
    table = "\n".join([line(header), sep] + [line(r) for r in rows[:-1]] + [sep, line(rows[-1])])
    at = result.get("at_threshold")
    return table if not at else table + "\n" + format_at_threshold(at)


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100.0 * v:.1f} %"


def format_at_threshold(at: Dict[str, Any]) -> str:
    """The decision lines under the table: FPR and recall at the threshold (see adrt.evaluate)."""
    raw = at.get("raw_threshold")
    text = (f"at threshold {at['threshold']:.3g}" + (f" (raw {raw:.4g})" if raw is not None else "") + ": "
            f"FPR {_pct(at.get('false_positive_rate'))} ({at.get('false_positives')}/{at.get('n_good')} good images "
            f"flagged), recall {_pct(at.get('recall'))} ({at.get('true_positives')}/{at.get('n_defect')} defect "
            f"images), accuracy {_pct(at.get('accuracy'))}")
    exp = at.get("expected_false_alarms")
    if exp:
        lo, hi = exp["interval"]
        text += (f"\n  calibration ({exp['rule']}) predicts {lo}–{hi} false alarms among {at.get('n_good')} good "
                 f"images ({exp['confidence']:.0%}): {'within' if exp['within'] else 'OUTSIDE'}")
    if at.get("pixel_false_positive_rate") is not None or at.get("pixel_recall") is not None:
        text += (f"\n  pixels at threshold {at['pixel_threshold']:.3g}: FPR {_pct(at.get('pixel_false_positive_rate'))} "
                 f"(good images), "
                 f"recall {_pct(at.get('pixel_recall'))}")
    return text
