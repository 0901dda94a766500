"""Decision thresholds (adrt.thresholds, torch-free): the rules pick what they say, the stated
intervals hold their coverage, and the records round-trip through the manifest's validation."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from adrt.contract import Calibration, Decision
from adrt.errors import DataError, InputError
from adrt.thresholds import (CalibrationOptions, count_interval, f1_threshold, fpr_interval, fpr_order_statistic,
                             image_threshold, options_from_cli, pixel_threshold)


def test_fpr_rule_takes_the_order_statistic_whose_expected_fpr_meets_the_target():
    s = np.arange(1, 200, dtype=float)[::-1]               # 199 distinct scores, unsorted
    t, d = image_threshold(s, CalibrationOptions("fpr", fpr=0.05))
    k, ok = fpr_order_statistic(199, 0.05)
    assert ok and k == 190 and t == 190.0                    # ceil(200 * 0.95) = 190
    assert d.holdout_fpr == 10 / 199 and 10 / 200 <= 0.05    # expected FPR c / (n + 1) = 5 %
    assert d.rule == "fpr" and d.target_fpr == 0.05 and d.attainable


def test_fpr_below_one_over_n_plus_one_is_reported_unattainable_and_takes_the_maximum():
    s = np.random.default_rng(0).normal(size=21)
    t, d = image_threshold(s, CalibrationOptions("fpr", fpr=0.01))
    assert t == s.max() and not d.attainable
    lo, hi = d.fpr_interval                                  # Beta(1, 21): the maximum's FPR, exactly
    assert lo == pytest.approx(1 - 0.975 ** (1 / 21), rel=1e-6) and hi == pytest.approx(1 - 0.025 ** (1 / 21), rel=1e-6)


@pytest.mark.parametrize("rule", ["fpr", "std"])
def test_the_stated_interval_covers_the_true_fpr_about_95_percent_of_the_time(rule):
    rng = np.random.default_rng(1)
    hits, n = 0, 40
    opts = CalibrationOptions(rule, fpr=0.1, k=1.5)
    for _ in range(1500):
        t, d = image_threshold(rng.normal(size=n), opts)
        true_fpr = norm.sf(t)
        hits += d.fpr_interval[0] <= true_fpr <= d.fpr_interval[1]
    assert 0.93 <= hits / 1500 <= (0.975 if rule == "fpr" else 1.0)   # exact for fpr, conservative for std


def test_the_false_alarm_count_interval_for_new_images_holds():
    rng = np.random.default_rng(2)
    n, m, inside = 30, 20, 0
    for _ in range(1500):
        t, d = image_threshold(rng.normal(size=n), CalibrationOptions("fpr", fpr=0.1))
        exceed = round(d.holdout_fpr * n)
        lo, hi = count_interval(n, exceed, m, exact=True)
        inside += lo <= int((rng.normal(size=m) >= t).sum()) <= hi
    assert inside / 1500 >= 0.94


def test_std_rule_is_mean_plus_k_std():
    s = np.random.default_rng(3).normal(5, 2, size=50)
    t, d = image_threshold(s, CalibrationOptions("std", k=2.5))
    assert t == pytest.approx(s.mean() + 2.5 * s.std()) and d.k == 2.5 and d.rule == "std"


def test_f1_rule_separates_and_sits_midway():
    normal, defect = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.8, 0.9, 1.0])
    t, d = image_threshold(normal, CalibrationOptions("f1"), defect_scores=defect)
    assert t == pytest.approx(0.6) and d.f1 == 1.0 and d.n_defect == 3 and d.holdout_fpr == 0.0
    with pytest.raises(DataError, match="needs labelled defect images"):
        image_threshold(normal, CalibrationOptions("f1"))
    assert f1_threshold(np.array([3.0, 1.0, 2.0]), np.array([True, False, False]))[0] == 2.5


def test_pixel_fpr_threshold_leaves_the_target_fraction_and_states_its_spread():
    maps = np.random.default_rng(4).gamma(2.0, size=(12, 32, 32))
    t, d = pixel_threshold(maps, CalibrationOptions("fpr", fpr=0.02))
    assert (maps >= t).mean() == pytest.approx(0.02, abs=1e-3)
    assert d.rule == "fpr" and d.fpr_interval[0] < 0.02 < d.fpr_interval[1] and "leave-one-image-out" in d.interval
    # f1 with masks: the pixel threshold separates painted defect pixels
    dmaps = np.random.default_rng(5).gamma(2.0, size=(3, 32, 32))
    masks = np.zeros(dmaps.shape, bool)
    masks[:, 10:14, 10:14] = True
    dmaps[masks] += 100.0
    t, d = pixel_threshold(maps, CalibrationOptions("f1"), dmaps, masks)
    assert maps.max() < t < 100 and d.rule == "f1" and d.f1 == 1.0
    # f1 without masks: the pixel FPR rule
    assert pixel_threshold(maps, CalibrationOptions("f1"), dmaps, None)[1].rule == "fpr"


def test_non_finite_values_are_refused():
    with pytest.raises(DataError, match="NaN/Inf"):
        image_threshold([1.0, float("nan")], CalibrationOptions())
    with pytest.raises(DataError, match="NaN/Inf"):
        pixel_threshold(np.full((2, 4, 4), np.inf), CalibrationOptions())


@pytest.mark.parametrize("kw, match", [({"rule": "median"}, "expected one of std, fpr, f1"),
                                       ({"fpr": 0.0}, r"calibration fpr=0.0: expected a finite number in \(0.0, 1.0\)"),
                                       ({"fpr": float("nan")}, "calibration fpr=nan"),
                                       ({"k": -1.0}, "calibration k=-1.0"),
                                       ({"pixel_fpr": 1.0}, "calibration pixel_fpr=1.0")])
def test_bad_options_are_refused(kw, match):
    with pytest.raises(InputError, match=match):
        CalibrationOptions(**kw)


def test_cli_options_imply_the_rule_and_refuse_options_of_another_rule():
    assert options_from_cli(None, None, 0.01, None, None).rule == "fpr"
    assert options_from_cli(None, None, None, None, "d").rule == "f1"
    assert options_from_cli(None, 2.0, None, None, None) == CalibrationOptions("std", k=2.0)
    assert options_from_cli("fpr", None, None, 0.001, None).pixel_target == 0.001
    for args, match in [(("fpr", 3.0, None, None, None), "--k 3.0 is the std rule's"),
                        (("std", None, 0.01, None, None), "--fpr 0.01 sets the fpr rule's"),
                        ((None, None, None, 0.01, None), "--pixel-fpr needs")]:
        with pytest.raises(InputError, match=match):
            options_from_cli(*args)


def _cal(**extra):
    base = dict(n_images=5, score_mean=1.0, score_std=0.5, score_max=2.0, score_threshold=2.0, score_scale=0.5,
                map_mean=1.0, map_std=0.5, map_q999=2.0, map_threshold=2.0, map_scale=0.5, rule="r")
    return {**base, **extra}


def test_calibration_records_round_trip_and_old_ones_still_load():
    _, d = image_threshold(np.arange(30.0), CalibrationOptions("fpr", fpr=0.05))
    cal = Calibration.from_dict(_cal(image=d.to_dict()))
    assert cal.image == d and cal.pixel is None
    assert Calibration.from_dict(cal.to_dict()) == cal
    assert "image" not in Calibration.from_dict(_cal()).to_dict()          # a bundle from before


@pytest.mark.parametrize("change, match", [
    ({"rule": "max"}, "rule='max'"), ({"holdout_fpr": 1.5}, "holdout_fpr=1.5"),
    ({"fpr_interval": [0.3, 0.1]}, "expected low <= high"), ({"fpr_interval": [0.1]}, r"expected \[low, high\]"),
    ({"target_fpr": None}, "rule 'fpr' without 'target_fpr'"), ({"attainable": "yes"}, "attainable='yes'"),
    ({"n_normal": 0}, "n_normal=0"), ({"surprise": 1}, "unknown field"), ({"confidence": math.nan}, "confidence=nan")])
def test_invalid_decision_records_are_refused(change, match):
    _, d = image_threshold(np.arange(30.0), CalibrationOptions("fpr", fpr=0.05))
    rec = {k: v for k, v in {**d.to_dict(), **change}.items() if v is not None}
    with pytest.raises(InputError, match=match):
        Calibration.from_dict(_cal(image=rec))
    with pytest.raises(InputError, match="calibration.pixel"):
        Calibration.from_dict(_cal(pixel={k: v for k, v in rec.items() if k != "rule"}))
    assert isinstance(Decision.from_dict(d.to_dict()), Decision)
