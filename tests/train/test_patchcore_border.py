"""PatchCore on a stochastic texture whose defects are all inside the image: with the backbone's
zero padding the border patches score highest and decide the image score (adrt before the
`border` option); reflect-padding the image moves the defect images' maxima to the defects."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from patchcore_border import make_texture_set, measure  # noqa: E402


@pytest.fixture(scope="module")
def gravel(tmp_path_factory):
    # 128 px: a 16×16 patch grid, whose outer ring is 23 % of the cells; defects ≥ 16 px inside.
    return make_texture_set(tmp_path_factory.mktemp("gravel"), 128, 30, 8, 8, alpha=0.5, margin=16, seed=1)


def test_reflect_border_moves_the_maxima_off_the_border(gravel, tmp_path):
    import torch

    from adrt.train.fit import train

    torch.set_num_threads(2)
    got = {}
    for border in ("zero", "reflect"):
        run = train("patchcore", gravel, tmp_path / border, size=128, options={"border": border},
                    log=lambda *a, **k: None)
        got[border] = measure(run, gravel)
    zero, fixed = got["zero"], got["reflect"]
    ring_excess = {k: v["good_patch_score_by_ring"][0] / v["good_patch_score_by_ring"][-1] for k, v in got.items()}
    # the cause: border patches of good images score above the inside ones, less so once padded by reflection
    assert ring_excess["zero"] > 1.1 and ring_excess["reflect"] < ring_excess["zero"] - 0.05, ring_excess
    # the symptom: defect images' maxima sit on the border although every defect is inside
    assert zero["patch_max_on_border_defect"] >= 0.75 and fixed["patch_max_on_border_defect"] <= 0.5, got
    assert fixed["pixel_auroc"] > zero["pixel_auroc"] + 0.05, got
    assert np.isfinite(fixed["image_auroc"])


def test_border_option_is_checked_and_old_runs_keep_zero():
    from adrt.errors import AdrtError
    from adrt.train.fit import make_config
    from adrt.train.patchcore import PatchCore

    with pytest.raises(AdrtError, match="border='mirror': expected one of zero, reflect_local, reflect"):
        make_config("patchcore", {"border": "mirror"})
    assert PatchCore.absent["border"] == "zero"        # a run saved before the option loads as trained
