"""Image score options (max / top-k mean), PatchCore's coreset size meaning and border option."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from adrt.errors import AdrtError  # noqa: E402
from tests.conftest import SIZE  # noqa: E402
from tests.train.helpers import preprocess, quiet, synth_images  # noqa: E402


class _Fixed(torch.nn.Module):
    """A scorer whose patch map is given; its own image score is -1 (so any other is visible)."""

    def __init__(self, patch):
        super().__init__()
        self.patch = patch

    def forward(self, x):
        return self.patch.expand(x.shape[0], -1, -1), torch.full((x.shape[0],), -1.0)


def test_topk_is_the_mean_of_the_top_fraction_of_the_smoothed_map():
    from adrt.contract import InputSpec
    from adrt.train.detector import Detector

    patch = torch.zeros(1, 8, 8)
    patch[0, 0, 0] = 50.0                          # one hot cell at the corner
    patch[0, 3:5, 3:5] = 10.0                      # a defect inside
    spec = InputSpec(height=64, width=64)
    img = torch.zeros(1, 64, 64, 3, dtype=torch.uint8)
    m, s = Detector(_Fixed(patch), spec, image_score="max").raw(img)
    assert s.item() == -1.0                                      # max: the method's own score
    m, s = Detector(_Fixed(patch), spec, image_score="topk:0.05").raw(img)
    k = round(0.05 * 64 * 64)
    assert s.item() == pytest.approx(float(m.flatten().topk(k).values.mean()), rel=1e-6)
    assert s.item() < float(m.max())


@pytest.mark.parametrize("spec, match", [("median", "expected 'max' or 'topk:FRACTION'"), ("topk:0", "topk:FRACTION"),
                                         ("topk:x", "topk:FRACTION"), ("topk:1.5", "topk:FRACTION"),
                                         ("topk:0.5", "TensorRT's TopK takes at most 3840")])
def test_bad_image_scores_are_refused(spec, match):
    from adrt.train.detector import topk_count

    with pytest.raises(AdrtError, match=match):
        topk_count(spec, 128 * 128)


def test_topk_from_the_cli_is_recorded_and_exported_with_parity(tmp_path, synth_data):
    import adrt.runtime as rt
    from adrt.cli import main
    from adrt.data import Dataset, load_images

    r = CliRunner().invoke(main, ["train", "padim", "--data", str(synth_data), "--out", str(tmp_path / "run"),
                                  "--size", str(SIZE), "--image-score", "topk:0.02", "--export", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run" / "detector.json").read_text())["image_score"] == "topk:0.02"
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["outputs"]["image_score"] == "topk:0.02"
    imgs = load_images([s.path for s in Dataset.open(synth_data).test], SIZE, SIZE)
    with rt.load(tmp_path / "b") as s:
        out = s.run(imgs)
    k = round(0.02 * SIZE * SIZE)
    want = np.sort(out.raw_maps.reshape(len(imgs), -1), axis=1)[:, -k:].mean(1)
    np.testing.assert_allclose(out.raw_scores, want, rtol=1e-5)
    r = CliRunner().invoke(main, ["train", "padim", "--data", str(synth_data), "--out", str(tmp_path / "r2"),
                                  "--image-score", "top:3"])
    assert r.exit_code == 1 and "Error: image score 'top:3'" in r.output and not (tmp_path / "r2").exists()


def _fit_patchcore(synth_data, **kw):
    from adrt.train.fit import make_config
    from adrt.train.patchcore import PatchCore

    cfg = make_config("patchcore", kw)
    return PatchCore.fit(cfg, synth_images(synth_data, 16), preprocess, log=quiet)


def test_coreset_ratio_is_a_fraction_of_all_patches_and_the_cap_is_a_cap(synth_data):
    n_all = 16 * (SIZE // 8) ** 2                                   # 16 images × 8×8 patches
    s = _fit_patchcore(synth_data, coreset_ratio=0.25, coreset_max_patches=200)
    assert s.bank_size == round(0.25 * n_all)                        # not 25 % of the 200 candidates
    assert s.fit_record["bank"] == {"patches": n_all, "candidates": round(0.25 * n_all), "size": round(0.25 * n_all),
                                    "fraction_of_patches": 0.25, "coreset_ratio": 0.25, "capped": False}
    s = _fit_patchcore(synth_data, coreset_ratio=0.25, coreset_cap=100)
    assert s.bank_size == 100 and s.fit_record["bank"]["capped"] and s.fit_record["bank"]["candidates"] == n_all


def test_bank_record_reaches_the_run(runs):
    meta = json.loads((runs("patchcore")[0] / "detector.json").read_text())
    bank = meta["training"]["bank"]
    assert bank["size"] == max(9, round(0.01 * bank["patches"])) and bank["patches"] == meta["training"]["n_fit"] * 64
