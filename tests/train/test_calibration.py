"""adrt train's calibration options: the rule chosen is the one recorded in the run and the
bundle's manifest, the thresholds are what the rule says on the held-out images, and bad
combinations fail before training."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from adrt.cli import main
from tests.conftest import SIZE

pytest.importorskip("torch")


def _train(tmp_path, synth_data, *extra):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "padim", "--data", str(synth_data), "--out", str(out), "--size", str(SIZE),
                                  "--export", str(tmp_path / "bundle"), *map(str, extra)])
    return r, out


def _holdout_raw(run):
    from adrt.data import load_images
    from adrt.train.detector import run_raw
    from adrt.train.fit import _holdout_paths, load_run

    det, meta = load_run(run)
    return run_raw(det, load_images(_holdout_paths(meta), SIZE, SIZE)), meta


def test_fpr_calibration_is_recorded_and_is_the_order_statistic(tmp_path, synth_data):
    r, run = _train(tmp_path, synth_data, "--fpr", "0.1", "--pixel-fpr", "0.05")
    assert r.exit_code == 0, r.output
    assert "image threshold: FPR 10.0 % of 4 held-out normal image(s)" in r.output
    cal = json.loads((tmp_path / "bundle" / "manifest.json").read_text())["calibration"]
    assert cal["image"]["rule"] == "fpr" and cal["image"]["target_fpr"] == 0.1 and not cal["image"]["attainable"]
    assert cal["pixel"]["rule"] == "fpr" and cal["pixel"]["target_fpr"] == 0.05
    (maps, scores), _ = _holdout_raw(run)
    assert cal["score_threshold"] == pytest.approx(float(scores.max()), rel=1e-5)   # n=4 < 1/0.1 - 1: the maximum
    assert (maps >= cal["map_threshold"]).mean() == pytest.approx(0.05, abs=2e-3)


def test_std_k_and_f1_with_defects(tmp_path, synth_data):
    from adrt.synth import make_dataset

    r, run = _train(tmp_path, synth_data, "--calibration", "std", "--k", "1.5")
    assert r.exit_code == 0, r.output
    (maps, scores), meta = _holdout_raw(run)
    assert meta["calibration"]["image"]["k"] == 1.5
    assert meta["calibration"]["score_threshold"] == pytest.approx(scores.mean() + 1.5 * scores.std(), rel=1e-4)
    defects = make_dataset(tmp_path / "defects", size=SIZE, n_train=2, n_test_good=1, n_test_defect=3, seed=7)
    r = CliRunner().invoke(main, ["train", "padim", "--data", str(synth_data), "--out", str(tmp_path / "run_f1"),
                                  "--size", str(SIZE), "--defects", str(defects)])
    assert r.exit_code == 0, r.output
    cal = json.loads((tmp_path / "run_f1" / "detector.json").read_text())["calibration"]
    assert cal["image"]["rule"] == "f1" and cal["image"]["n_defect"] == len(list((defects / "test").glob("[!g]*/*.png"))) and 0 < cal["image"]["f1"] <= 1
    assert cal["pixel"]["rule"] == "f1"                      # the defects have masks


@pytest.mark.parametrize("args, match", [
    (["--fpr", "0.01", "--k", "2"], "--k 2.0 is the std rule's multiplier"),
    (["--fpr", "1.5"], "calibration fpr=1.5"),
    (["--calibration", "f1"], "needs labelled defect images"),
    (["--defects", "{data}"], "is the training dataset"),
])
def test_bad_calibration_options_fail_before_training(tmp_path, synth_data, args, match):
    args = [a.format(data=synth_data) for a in args]
    r = CliRunner().invoke(main, ["train", "padim", "--data", str(synth_data), "--out", str(tmp_path / "r"), *args])
    assert r.exit_code == 1 and match in r.output and r.output.startswith("Error:"), r.output
    assert not (tmp_path / "r").exists()


def test_recalibrate_keeps_the_model_and_changes_only_the_threshold(tmp_path, runs):
    from adrt.thresholds import CalibrationOptions
    from adrt.train.fit import load_run, recalibrate

    run = runs("padim")[0]
    new = recalibrate(run, tmp_path / "re", CalibrationOptions("fpr", fpr=0.3), log=lambda *a, **k: None)
    (m0, s0), meta0 = _holdout_raw(run)
    (m1, s1), meta1 = _holdout_raw(new)
    np.testing.assert_array_equal(s0, s1)
    assert meta1["calibration"]["image"]["rule"] == "fpr" and meta0["calibration"]["image"]["rule"] == "std"
    assert load_run(new)[0].score_threshold.item() == pytest.approx(meta1["calibration"]["score_threshold"])
