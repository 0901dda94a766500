"""Decision thresholds from held-out normal images (torch-free: numpy + scipy).

Three rules pick the raw threshold T of the image score (and, the same way, of the map's pixels):

* ``fpr``: T is an order statistic of the n held-out normal scores, the lowest one whose expected
  false-positive rate on new normal images, ``c / (n + 1)`` with ``c`` the held-out scores at or
  above T, is at most the target α. Distribution-free (only exchangeability is assumed): for
  T = X₍ₖ₎, the FPR on new normal images is exactly Beta(n − k + 1, k) distributed. When
  ``1 / (n + 1) > α`` no order statistic reaches α: T is then the maximum and the record says that
  the target was not attainable with this many held-out images (it needs ``n ≥ 1/α − 1``).
* ``std``: T = mean + k·std of the held-out normal scores (adrt's rule before ``fpr``).
* ``f1``: T maximises F1 on the held-out normals plus a few labelled defect images, midway between
  the lowest defect score kept and the next lower score.

Whatever the rule, the record states the threshold's false-positive rate on the held-out images
and a ``confidence`` interval for its FPR on new normal images: with c held-out scores at or
above T, T lies between two order statistics, so the FPR is stochastically between Beta(c, n+1−c)
and Beta(c+1, n−c); the interval takes the outer quantiles of the two (exact for the ``fpr``
rule, conservative otherwise). :func:`count_interval` gives the matching prediction interval
for the number of false alarms among m new normal images (beta-binomial).

Pixels of one image are strongly correlated (the map is smoothed), so the pixel threshold's
interval is not binomial: it is the spread (over held-out images) of the pixel FPR each image gets
from a threshold chosen on the *other* held-out images (leave one image out).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from adrt.contract import Decision
from adrt.errors import DataError, InputError
from adrt._checks import check_float

RULES = ("std", "fpr", "f1")
CONFIDENCE = 0.95
#: Pixel values used for a pixel threshold at most (a regular subsample beyond): bounds time and memory.
MAX_PIXELS = 4_000_000


@dataclass(frozen=True)
class CalibrationOptions:
    """How ``adrt train`` sets its thresholds (``--calibration``, ``--k``, ``--fpr``, ``--pixel-fpr``).

    ``rule``: one of :data:`RULES`. ``k``: the std rule's multiplier. ``fpr``: the fpr rule's
    target false-positive rate per image; ``pixel_fpr``: per pixel (default: ``fpr``). The f1 rule
    needs labelled defect images (``adrt train --defects``); its pixel threshold is F1-optimal when
    they have masks, else chosen at ``pixel_fpr`` (default 0.01).
    """

    rule: str = "std"
    k: float = 3.0
    fpr: float = 0.01
    pixel_fpr: Optional[float] = None

    def __post_init__(self):
        if not isinstance(self.rule, str) or self.rule not in RULES:
            raise InputError(f"calibration rule {self.rule!r}: expected one of {', '.join(RULES)}")
        object.__setattr__(self, "k", check_float("calibration k", self.k, 0.0))
        object.__setattr__(self, "fpr", check_float("calibration fpr", self.fpr, 0.0, 1.0, lo_open=True, hi_open=True))
        if self.pixel_fpr is not None:
            object.__setattr__(self, "pixel_fpr", check_float("calibration pixel_fpr", self.pixel_fpr, 0.0, 1.0,
                                                              lo_open=True, hi_open=True))

    @property
    def pixel_target(self) -> float:
        return self.fpr if self.pixel_fpr is None else self.pixel_fpr


def options_from_cli(rule: Optional[str], k: Optional[float], fpr: Optional[float], pixel_fpr: Optional[float],
                     defects) -> CalibrationOptions:
    """The options of ``adrt train --calibration/--k/--fpr/--pixel-fpr/--defects``: the rule is the one
    named, else ``fpr`` when ``--fpr`` is given, ``f1`` when ``--defects`` is, ``std`` otherwise. An
    option of another rule than the one in force is refused (it would be ignored)."""
    if rule is None:
        rule = "fpr" if fpr is not None else "f1" if defects is not None else "std"
    if k is not None and rule != "std":
        raise InputError(f"--k {k} is the std rule's multiplier; the calibration rule here is {rule}")
    if fpr is not None and rule != "fpr":
        raise InputError(f"--fpr {fpr} sets the fpr rule's target; the calibration rule here is {rule} "
                         f"(use --pixel-fpr for the pixel threshold of the f1 rule)")
    if rule == "std" and pixel_fpr is not None:
        raise InputError("--pixel-fpr needs --calibration fpr or f1 (the std rule uses --k for pixels too)")
    kw = {"rule": rule, "pixel_fpr": pixel_fpr}
    if k is not None:
        kw["k"] = k
    if fpr is not None:
        kw["fpr"] = fpr
    return CalibrationOptions(**kw)


# --- intervals ----------------------------------------------------------------------------------

def _upper(n: int, exceed: int, exact: bool) -> Tuple[int, int]:
    # Beta parameters of the upper side: the order statistic itself when the threshold is one
    # (exact), else the next lower one (the threshold lies between the two).
    return (exceed, n + 1 - exceed) if exact else (exceed + 1, n - exceed)


def fpr_interval(n: int, exceed: int, confidence: float = CONFIDENCE, exact: bool = False) -> Tuple[float, float]:
    """``confidence`` interval of the FPR on new normal images of a threshold that ``exceed`` of
    ``n`` held-out normal scores reach (score ≥ threshold); ``exact`` when the threshold is one of
    those scores (the fpr rule)."""
    from scipy.stats import beta

    a = (1.0 - confidence) / 2.0
    lo = 0.0 if exceed <= 0 else float(beta.ppf(a, exceed, n + 1 - exceed))
    p, q = _upper(n, exceed, exact and exceed >= 1)
    hi = 1.0 if q <= 0 else float(beta.ppf(1.0 - a, p, q))
    return lo, hi


def count_interval(n: int, exceed: int, m: int, confidence: float = CONFIDENCE,
                   exact: bool = False) -> Tuple[int, int]:
    """Prediction interval for the number of false alarms among ``m`` new normal images, for a
    threshold that ``exceed`` of ``n`` held-out normal scores reach (beta-binomial, as above)."""
    from scipy.stats import betabinom

    a = (1.0 - confidence) / 2.0
    lo = 0 if exceed <= 0 else int(betabinom.ppf(a, m, exceed, n + 1 - exceed))
    p, q = _upper(n, exceed, exact and exceed >= 1)
    hi = m if q <= 0 else int(betabinom.ppf(1.0 - a, m, p, q))
    return lo, hi


# --- image thresholds ---------------------------------------------------------------------------

def _finite(name: str, a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).ravel()
    if a.size == 0:
        raise DataError(f"{name}: no values to calibrate on")
    if not np.isfinite(a).all():
        raise DataError(f"{name}: {int((~np.isfinite(a)).sum())} value(s) are NaN/Inf; no threshold can be set")
    return a


def fpr_order_statistic(n: int, fpr: float) -> Tuple[int, bool]:
    """(k, attainable): the 1-based rank of the order statistic the fpr rule takes among n values."""
    k = math.ceil((n + 1) * (1.0 - fpr) - 1e-9)
    return min(max(k, 1), n), k <= n


def image_threshold(scores, opts: CalibrationOptions, defect_scores=None) -> Tuple[float, Decision]:
    """The raw image-score threshold by ``opts.rule`` on held-out normal ``scores`` (and, for f1,
    ``defect_scores`` of labelled defect images), with its record."""
    s = _finite("held-out normal scores", scores)
    n = s.size
    extra = {}
    attainable = True
    if opts.rule == "std":
        t = float(s.mean() + opts.k * s.std())
        extra["k"] = opts.k
    elif opts.rule == "fpr":
        k, attainable = fpr_order_statistic(n, opts.fpr)
        t = float(np.sort(s)[k - 1])
        extra["target_fpr"] = opts.fpr
    else:
        if defect_scores is None or len(defect_scores) == 0:
            raise DataError("calibration rule f1 needs labelled defect images (adrt train --defects DIR)")
        d = _finite("defect scores", defect_scores)
        t, f1 = f1_threshold(np.concatenate([s, d]), np.r_[np.zeros(n, bool), np.ones(d.size, bool)])
        extra.update(n_defect=int(d.size), f1=f1)
    exceed = int((s >= t).sum())
    lo, hi = fpr_interval(n, exceed, exact=opts.rule == "fpr")
    return t, Decision(rule=opts.rule, n_normal=n, holdout_fpr=exceed / n, fpr_interval=(lo, hi),
                       confidence=CONFIDENCE, attainable=attainable, interval="order statistic (beta)", **extra)


def f1_threshold(values: np.ndarray, labels: np.ndarray) -> Tuple[float, float]:
    """(threshold, F1): the F1-optimal threshold for ``values`` with boolean ``labels``, placed
    midway between the lowest value predicted anomalous and the next lower value (ties: higher)."""
    order = np.argsort(-values, kind="stable")
    v, y = values[order], labels[order]
    ends = np.concatenate((np.flatnonzero(v[1:] != v[:-1]), [v.size - 1]))
    tp = np.cumsum(y)[ends].astype(np.float64)
    f1 = 2.0 * tp / (ends + 1 + y.sum())
    best = int(np.argmax(f1))
    t = float(v[ends[best]])
    if ends[best] + 1 < v.size:
        t = 0.5 * (t + float(v[ends[best] + 1]))
    return t, float(f1[best])


# --- pixel thresholds ---------------------------------------------------------------------------

def _subsample(maps: np.ndarray) -> np.ndarray:
    """N×P float64 pixel values per image, regularly subsampled to at most MAX_PIXELS in all."""
    flat = np.asarray(maps).reshape(len(maps), -1)
    step = max(1, math.ceil(flat.size / MAX_PIXELS))
    return flat[:, ::step].astype(np.float64)


def _quantile_at(values: np.ndarray, fpr: float) -> float:
    """The order statistic of ``values`` (1-D) leaving a fraction ``fpr`` at or above it."""
    k, _ = fpr_order_statistic(values.size, fpr)
    return float(np.partition(values, k - 1)[k - 1])


def pixel_threshold(maps, opts: CalibrationOptions, defect_maps=None, defect_masks=None) -> Tuple[float, Decision]:
    """The raw pixel threshold by ``opts.rule`` on held-out normal ``maps`` (N×H×W; for f1, the
    defect images' maps and boolean masks when given), with its record."""
    px = _subsample(maps)
    if not np.isfinite(px).all():
        raise DataError("held-out normal maps: NaN/Inf values; no pixel threshold can be set")
    n = len(px)
    rule = opts.rule
    extra = {}
    if rule == "std":
        t = float(px.mean() + opts.k * px.std())
        extra["k"] = opts.k
    elif rule == "f1" and defect_maps is not None and defect_masks is not None and np.asarray(defect_masks).any():
        dv, dm = _subsample(defect_maps).ravel(), _subsample(defect_masks).ravel() > 0.5
        t, f1 = f1_threshold(np.concatenate([px.ravel(), dv]), np.concatenate([np.zeros(px.size, bool), dm]))
        extra.update(n_defect=len(defect_maps), f1=f1)
    else:
        rule = "fpr"
        t = _quantile_at(px.ravel(), opts.pixel_target)
        extra["target_fpr"] = opts.pixel_target
    per_image = (px >= t).mean(1)
    if n >= 2:
        # Leave one image out: the pixel FPR image i gets from the rule applied to the others.
        loo = []
        for i in range(n):
            rest = np.delete(px, i, axis=0)
            if rule == "std":
                ti = float(rest.mean() + opts.k * rest.std())
            elif rule == "fpr":
                ti = _quantile_at(rest.ravel(), opts.pixel_target)
            else:
                ti = t          # f1 depends on the defect maps too; its spread is the in-sample one
            loo.append(float((px[i] >= ti).mean()))
        a = (1.0 - CONFIDENCE) / 2.0
        lo, hi = (float(np.quantile(loo, a)), float(np.quantile(loo, 1.0 - a)))
        how = "leave-one-image-out spread" if rule != "f1" else "spread over held-out images"
    else:
        lo, hi = 0.0, 1.0
        how = "none (one held-out image)"
    return t, Decision(rule=rule, n_normal=n, holdout_fpr=float(per_image.mean()), fpr_interval=(lo, hi),
                       confidence=CONFIDENCE, attainable=True, interval=how, **extra)


def describe(d: Decision, what: str = "image") -> str:
    """One line for people: the rule, the held-out FPR and the interval."""
    rule = (f"mean + {d.k:g}·std" if d.rule == "std" else f"FPR {_pct(d.target_fpr)}" if d.rule == "fpr"
            else "F1-optimal")
    lo, hi = d.fpr_interval
    line = (f"{what} threshold: {rule} of {d.n_normal} held-out normal image(s); FPR on them {_pct(d.holdout_fpr)}, "
            f"{d.confidence:.0%} interval for new normal {what}s {_pct(lo)}–{_pct(hi)}")
    if d.f1 is not None:
        line += f"; F1 {d.f1:.3f} with {d.n_defect} defect image(s)"
    if not d.attainable:
        line += (f" — the target is not attainable with {d.n_normal} held-out images (needs ≥ "
                 f"{math.ceil(1 / d.target_fpr - 1)}); the threshold is their maximum")
    return line


def _pct(x: Optional[float]) -> str:
    if x is None:
        return "?"
    return f"{100 * x:.2g} %" if x < 0.1 else f"{100 * x:.1f} %"
