"""Thresholds at run time (rt.load(threshold=...), adrt infer/eval --threshold), decisions at the
calibration's thresholds, and the overlay panel."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import adrt.runtime as rt
from adrt.cli import main
from adrt.data import Dataset, load_images
from adrt.errors import InputError
from tests.conftest import SIZE


@pytest.fixture(scope="module")
def bundle(runs):
    return runs("padim")[1]


@pytest.fixture(scope="module")
def test_images(synth_data):
    ds = Dataset.open(synth_data)
    return load_images([s.path for s in ds.test], SIZE, SIZE), np.array([s.label for s in ds.test])


def test_threshold_changes_labels_not_outputs_and_matches_raw_units(bundle, test_images):
    imgs, _ = test_images
    with rt.load(bundle) as s:
        base = s.run(imgs)
        assert s.threshold == s.pixel_threshold == 0.5
    # a threshold between two calibrated scores splits them
    u = np.unique(base.scores)
    t = float(0.5 * (u[len(u) // 2 - 1] + u[len(u) // 2]))
    assert 0.0 < t < 1.0
    with rt.load(bundle, threshold=t, pixel_threshold=0.8) as s:
        r = s.run(imgs)
        np.testing.assert_array_equal(r.scores, base.scores)
        np.testing.assert_array_equal(r.raw_maps, base.raw_maps)          # raw values always there
        np.testing.assert_array_equal(r.labels, base.scores >= t)
        assert r.labels.any() and not r.labels.all()
        np.testing.assert_array_equal(r.masks, base.maps >= 0.8)
        # the same decision in raw units
        np.testing.assert_array_equal(r.raw_scores >= s.raw_threshold() - 1e-4 * abs(s.raw_threshold()), r.labels)
        s.set_threshold(0.99)
        assert s.run(imgs).threshold == 0.99 and s.pixel_threshold == 0.8


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0, 1.0, -0.5, 2, "0.5", True])
def test_bad_thresholds_are_clear_errors(bundle, bad):
    with pytest.raises(InputError, match=r"threshold=.*expected a finite number in \(0.0, 1.0\)"):
        rt.load(bundle, threshold=bad)
    with pytest.raises(InputError, match=r"pixel_threshold="):
        rt.load(bundle, pixel_threshold=bad)
    with rt.load(bundle) as s, pytest.raises(InputError):
        s.set_threshold(bad)


def test_infer_threshold_flag(bundle, synth_data, tmp_path):
    good = sorted((synth_data / "test" / "good").glob("*.png"))
    r = CliRunner().invoke(main, ["infer", str(bundle), *map(str, good), "--threshold", "0.000001"])
    assert r.exit_code == 0, r.output
    assert all(ln.split(",")[2] == "anomalous" for ln in r.output.strip().splitlines()[1:])
    r = CliRunner().invoke(main, ["infer", str(bundle), str(good[0]), "--threshold", "nan"])
    assert r.exit_code == 1 and r.output.strip().splitlines() == [
        "Error: threshold=nan: expected a finite number in (0.0, 1.0)"]
    r = CliRunner().invoke(main, ["infer", str(bundle), str(good[0]), "--pixel-threshold", "1.5"])
    assert r.exit_code == 1 and "pixel_threshold=1.5" in r.output


def test_eval_prints_fpr_and_recall_at_the_threshold(bundle, synth_data, tmp_path, test_images):
    _, labels = test_images
    r = CliRunner().invoke(main, ["eval", str(bundle), "--data", str(synth_data), "--out", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    at = json.loads((tmp_path / "e" / "metrics.json").read_text())["at_threshold"]
    with rt.load(bundle) as s:
        scores = s.run(test_images[0]).scores
    fp, tp = int((scores[labels == 0] >= 0.5).sum()), int((scores[labels == 1] >= 0.5).sum())
    assert at["false_positives"] == fp and at["true_positives"] == tp and at["n_good"] == int((labels == 0).sum())
    assert at["false_positive_rate"] == fp / at["n_good"] and at["recall"] == tp / at["n_defect"]
    assert f"FPR {100 * fp / at['n_good']:.1f} % ({fp}/{at['n_good']} good images flagged)" in r.output
    assert f"recall {100 * tp / at['n_defect']:.1f} % ({tp}/{at['n_defect']} defect images)" in r.output
    lo, hi = at["expected_false_alarms"]["interval"]
    assert 0 <= lo <= hi <= at["n_good"] and f"predicts {lo}–{hi} false alarms" in r.output
    assert "pixel_false_positive_rate" in at and "pixels at threshold 0.5" in r.output
    # at another threshold: no calibration prediction (it is about the bundle's threshold)
    r = CliRunner().invoke(main, ["eval", str(bundle), "--data", str(synth_data), "--threshold", "0.9"])
    assert "at threshold 0.9" in r.output and "predicts" not in r.output


def test_overlay_panel_shows_verdict_contour_and_threshold_on_the_bar():
    from adrt.runtime.overlay import BAD, GOOD, colour_bar, contour, panel

    img = np.full((128, 128, 3), 100, np.uint8)
    amap = np.zeros((128, 128), np.float32)
    amap[40:80, 50:90] = 0.9
    p = panel(img, amap, score=0.8, threshold=0.5, pixel_threshold=0.6, raw_score=12.5)
    head = next(y for y in range(p.shape[0]) if tuple(p[y, 2]) != BAD)       # the header is the verdict colour
    assert head > 10 and tuple(p[1, 2]) == BAD
    assert tuple(panel(img, amap, score=0.2)[1, 2]) == GOOD
    ov = p[head:head + 128, 128:256]
    white = (ov == 255).all(-1)
    assert white[40, 60] and white[79, 60] and white[60, 50] and not white[60, 70] and not white[10, 10]
    assert white.sum() < 0.2 * 40 * 40                     # an outline, not the filled region
    # a region touching the border is closed by the border: no outline along it
    edge = contour(np.ones((10, 10), bool))
    assert not edge.any()
    bar = colour_bar(101, 0.6)
    assert (bar[40] == 255).all() and (bar[39] == 0).all()   # threshold 0.6 at 40 % from the top
    # without the pixel threshold, the contour is at the image threshold
    p2 = panel(img, amap, score=0.8, threshold=0.95)
    assert not (p2[head:head + 128, 128:256] == 255).all(-1).any()
