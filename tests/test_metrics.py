"""Tests for adrt.metrics (numpy/scipy only, small arrays, runs in well under a second)."""
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from adrt.errors import DataError
from adrt.metrics import aupro, evaluate, f1_max, format_table, image_auroc, pixel_auroc


# ----------------------------------------------------------------------------- references


def brute_auc(labels, scores):
    """Pairwise AUC: fraction of (positive, negative) pairs ordered correctly, ties 0.5."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    pos = scores[labels][:, None]
    neg = scores[~labels][None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def dense_aupro(masks, maps, fpr_limit=0.3):
    """Slow direct AUPRO: every distinct score as a threshold, regions looped explicitly,
    area from a very fine grid with np.interp (independent of the implementation's trapezoid)."""
    regions = []
    for i in range(masks.shape[0]):
        lab, n = ndimage.label(masks[i], structure=np.ones((3, 3)))
        for r in range(1, n + 1):
            regions.append(maps[i][lab == r])
    normal = maps[~masks]
    thresholds = np.concatenate(([np.inf], np.unique(maps)[::-1], [-np.inf]))
    fprs, pros = [], []
    for t in thresholds:
        fprs.append(np.mean(normal > t))
        pros.append(np.mean([np.mean(reg > t) for reg in regions]))
    grid = np.linspace(0.0, fpr_limit, 200_001)
    curve = np.interp(grid, np.array(fprs), np.array(pros))
    return float(np.sum(np.diff(grid) * (curve[1:] + curve[:-1]) / 2) / fpr_limit)


def random_case(seed, n=4, size=24):
    """Masks with blobs of very different sizes and maps that detect them only partly."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(1, n):  # image 0 stays normal
        for _ in range(rng.integers(1, 4)):
            h, w = rng.integers(1, 9, size=2)
            y, x = rng.integers(0, size - h), rng.integers(0, size - w)
            masks[i, y:y + h, x:x + w] = True
    maps = rng.normal(size=masks.shape)
    maps = maps + masks * rng.uniform(0.0, 2.5, size=(n, 1, 1)) + masks * rng.normal(scale=0.8, size=masks.shape)
    return masks, maps


# ----------------------------------------------------------------------------- image_auroc


@pytest.mark.parametrize("seed,p_pos", [(0, 0.5), (1, 0.15), (2, 0.85)])
def test_image_auroc_matches_brute_force_with_ties(seed, p_pos):
    rng = np.random.default_rng(seed)
    labels = (rng.random(300) < p_pos).astype(int)  # minority positives and minority negatives
    labels[:2] = [0, 1]
    scores = rng.integers(0, 12, size=300).astype(np.float64) + 0.3 * labels  # many ties
    got = image_auroc(labels, scores)
    assert got == pytest.approx(brute_auc(labels, scores), abs=1e-12)
    assert 0.5 < got < 1.0


def test_image_auroc_all_tied_is_half():
    assert image_auroc([0, 1, 0, 1, 1], [3.0] * 5) == pytest.approx(0.5)


def test_image_auroc_perfect_and_inverted():
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.2, 0.9, 0.8, 0.3, 0.7])
    assert image_auroc(labels, scores) == 1.0
    assert image_auroc(labels, -scores) == 0.0
    assert image_auroc(labels.astype(bool), scores.astype(np.float32)) == 1.0


def test_image_auroc_errors():
    with pytest.raises(DataError, match="both"):
        image_auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(DataError, match="both"):
        image_auroc([0, 0], [0.1, 0.2])
    with pytest.raises(DataError, match="NaN"):
        image_auroc([0, 1, 1], [0.1, np.nan, 0.3])
    with pytest.raises(DataError, match="NaN"):
        image_auroc([0, 1, 1], [0.1, np.inf, 0.3])
    with pytest.raises(DataError, match="shape"):
        image_auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(DataError, match="0 and 1"):
        image_auroc([0, 2, 1], [0.1, 0.2, 0.3])


# ----------------------------------------------------------------------------- pixel_auroc


def test_pixel_auroc_equals_image_auroc_on_flattened():
    masks, maps = random_case(3)
    maps = np.round(maps, 1)  # ties
    got = pixel_auroc(masks, maps)
    assert got == pytest.approx(image_auroc(masks.ravel().astype(int), maps.ravel()), abs=1e-12)
    assert got == pytest.approx(brute_auc(masks.ravel(), maps.ravel()), abs=1e-12)
    assert pixel_auroc(masks, maps.astype(np.float32)) == pytest.approx(got, abs=1e-6)


def test_pixel_auroc_errors():
    masks = np.zeros((2, 4, 4), dtype=bool)
    with pytest.raises(DataError, match="both"):
        pixel_auroc(masks, np.zeros((2, 4, 4)))
    masks[0, 0, 0] = True
    with pytest.raises(DataError, match="shape"):
        pixel_auroc(masks, np.zeros((2, 4, 5)))
    with pytest.raises(DataError, match="dimension"):
        pixel_auroc(masks[0], np.zeros((4, 4)))


# ----------------------------------------------------------------------------- aupro


def two_region_case():
    masks = np.zeros((2, 16, 16), dtype=bool)
    masks[0, 2:6, 2:6] = True      # region A: 16 px
    masks[1, 8:14, 3:13] = True    # region B: 60 px
    return masks


@pytest.mark.parametrize("num_thresholds", [200, None])
def test_aupro_perfect_map_is_one(num_thresholds):
    masks = two_region_case()
    assert aupro(masks, masks.astype(np.float64), num_thresholds=num_thresholds) == pytest.approx(1.0)
    assert aupro(masks, masks * 5.0 - 1.0, fpr_limit=0.05, num_thresholds=num_thresholds) == pytest.approx(1.0)


@pytest.mark.parametrize("num_thresholds", [200, None])
def test_aupro_one_of_two_regions(num_thresholds):
    masks = two_region_case()
    region_a = np.zeros_like(masks)
    region_a[0] = masks[0]
    # Region A found, region B tied with all normal pixels at 0: PRO = 0.5 at FPR 0, then the tie
    # is interpolated linearly to (1, 1): PRO(0.3) = 0.65, area = 0.3 * (0.5 + 0.65) / 2.
    maps = region_a.astype(np.float64)
    assert aupro(masks, maps, num_thresholds=num_thresholds) == pytest.approx(0.575)
    # Region B scored strictly below every normal pixel: PRO stays at exactly 0.5 up to FPR 1.
    maps_b_low = maps - 1.0 * (masks & ~region_a)
    assert aupro(masks, maps_b_low, num_thresholds=num_thresholds) == pytest.approx(0.5)
    # The mean is over regions, not pixels: finding the big region B instead also gives 0.5.
    assert aupro(masks, (masks & ~region_a) - 1.0 * region_a, num_thresholds=num_thresholds) == pytest.approx(0.5)


def test_aupro_uses_8_connectivity():
    masks = np.zeros((1, 10, 10), dtype=bool)
    masks[0, 0:2, 0:2] = True   # 4 px
    masks[0, 2:8, 2:8] = True   # 36 px, touching the first block only diagonally
    maps = np.zeros(masks.shape)
    maps[0, 0:2, 0:2] = 1.0
    maps[0, 2:8, 2:8] = -1.0
    # One 8-connected region of 40 px with 4 detected: PRO = 0.1 (4-connectivity would give 0.5).
    assert aupro(masks, maps) == pytest.approx(0.1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aupro_matches_dense_reference(seed):
    masks, maps = random_case(seed)
    ref = dense_aupro(masks, maps)
    assert 0.05 < ref < 0.95  # a non-trivial case
    assert aupro(masks, maps) == pytest.approx(ref, abs=0.02)
    assert aupro(masks, maps, num_thresholds=None) == pytest.approx(ref, abs=1e-3)
    ref_01 = dense_aupro(masks, maps, fpr_limit=0.1)
    assert aupro(masks, maps, fpr_limit=0.1) == pytest.approx(ref_01, abs=0.02)


def test_aupro_errors():
    maps = np.zeros((2, 8, 8))
    with pytest.raises(DataError, match="region"):
        aupro(np.zeros((2, 8, 8), dtype=bool), maps)
    with pytest.raises(DataError, match="normal"):
        aupro(np.ones((2, 8, 8), dtype=bool), maps)
    masks = two_region_case()
    bad = masks.astype(np.float64)
    bad[1, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        aupro(masks, bad)
    with pytest.raises(ValueError):
        aupro(masks, masks * 1.0, fpr_limit=0.0)


# ----------------------------------------------------------------------------- f1_max


def test_f1_max_hand_example():
    labels = [0, 0, 1, 1, 0, 1]
    scores = [0.1, 0.4, 0.35, 0.8, 0.2, 0.7]
    # threshold 0.35: predicted {0.8, 0.7, 0.4, 0.35} -> TP 3, FP 1, FN 0 -> F1 = 6/7
    f1, thr = f1_max(labels, scores)
    assert f1 == pytest.approx(6 / 7)
    assert thr == pytest.approx(0.35)


def test_f1_max_ties_and_errors():
    # Tied scores are all predicted together at threshold 0.5: TP 2, FP 1 -> F1 = 4/5 (best).
    f1, thr = f1_max([1, 1, 0, 0], [0.5, 0.5, 0.5, 0.1])
    assert (f1, thr) == (pytest.approx(0.8), 0.5)
    with pytest.raises(DataError):
        f1_max([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(DataError, match="NaN"):
        f1_max([0, 1, 1], [0.1, np.nan, 0.3])


# ----------------------------------------------------------------------------- evaluate / table


def evaluate_case():
    types = ["good"] * 4 + ["crack"] * 3 + ["hole"] * 3
    labels = np.array([t != "good" for t in types], dtype=int)
    # good 0.2-0.5; crack all above good; hole all below good -> per-type 1.0 and 0.0.
    scores = np.array([0.2, 0.3, 0.4, 0.5, 0.9, 0.8, 0.7, 0.0, 0.1, 0.15])
    rng = np.random.default_rng(7)
    masks = np.zeros((10, 12, 12), dtype=bool)
    for i in range(4, 10):
        masks[i, 2 + i % 3:7, 3:9] = True
    maps = rng.normal(size=masks.shape) + 2.0 * masks * np.array([0] * 7 + [1] * 3)[:, None, None]
    return labels, scores, types, masks, maps


def test_evaluate_per_type_uses_good_plus_type():
    labels, scores, types, masks, maps = evaluate_case()
    res = evaluate(labels, scores, types, masks, maps)
    json.dumps(res)
    assert res["counts"] == {"good": 4, "crack": 3, "hole": 3}
    assert set(res["per_type"]) == {"crack", "hole"}
    assert res["per_type"]["crack"]["image_auroc"] == 1.0
    assert res["per_type"]["hole"]["image_auroc"] == 0.0
    assert res["overall"]["image_auroc"] == pytest.approx(image_auroc(labels, scores))
    tarr = np.array(types)
    for t in ("crack", "hole"):
        sel = (tarr == "good") | (tarr == t)
        got = res["per_type"][t]
        assert got["f1_max"] == pytest.approx(f1_max(labels[sel], scores[sel])[0])
        assert got["pixel_auroc"] == pytest.approx(pixel_auroc(masks[sel], maps[sel]))
        assert got["aupro"] == pytest.approx(aupro(masks[sel], maps[sel]))
        assert all(isinstance(v, float) for v in got.values())
    # hole maps carry signal, crack maps do not: per-type pixel metrics must differ accordingly.
    assert res["per_type"]["hole"]["pixel_auroc"] > 0.8 > res["per_type"]["crack"]["pixel_auroc"]
    assert res["overall"]["pixel_auroc"] == pytest.approx(pixel_auroc(masks, maps))


def test_evaluate_without_masks_and_errors():
    labels, scores, types, _, _ = evaluate_case()
    res = evaluate(labels, scores, types)
    for metrics in [res["overall"], *res["per_type"].values()]:
        assert "pixel_auroc" not in metrics and "aupro" not in metrics
        assert {"image_auroc", "f1_max"} <= set(metrics)
    bad = labels.copy()
    bad[0] = 1  # a "good" image labelled anomalous
    with pytest.raises(DataError, match="good"):
        evaluate(bad, scores, types)
    with pytest.raises(DataError, match="entries"):
        evaluate(labels, scores, types[:-1])
    with pytest.raises(DataError, match="good"):
        evaluate(labels[4:], scores[4:], types[4:])
    nan_scores = scores.copy()
    nan_scores[5] = np.nan
    with pytest.raises(DataError, match="NaN"):
        evaluate(labels, nan_scores, types)


def test_format_table():
    labels, scores, types, masks, maps = evaluate_case()
    res = evaluate(labels, scores, types, masks, maps)
    table = format_table(res)
    lines = table.splitlines()
    for name in ("crack", "hole", "overall", "image AUROC", "pixel AUROC", "AUPRO", "F1-max"):
        assert name in table
    crack = next(line for line in lines if line.startswith("crack"))
    assert "1.000" in crack and f"{res['per_type']['crack']['aupro']:.3f}" in crack
    overall = next(line for line in lines if line.startswith("overall"))
    assert overall.split()[1] == "10"
    # Without pixel metrics the pixel columns show '-'.
    no_px = format_table(evaluate(labels, scores, types))
    hole = next(line for line in no_px.splitlines() if line.startswith("hole"))
    assert hole.split() == ["hole", "3", "0.000", "-", "-", f"{res['per_type']['hole']['f1_max']:.3f}"]


def test_metrics_module_does_not_import_torch():
    code = "import sys, adrt.metrics; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
