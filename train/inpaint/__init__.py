"""Inpainting: a partial-convolution U-Net inpaints the image behind a set of masks that cover every pixel."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from adrt.errors import AdrtError
from adrt.train.inpaint.model import (InpaintConfig, InpaintScorer, check_config, check_size, mask_set,
                                      size_multiple, sliding_mask_map)
from adrt.train.inpaint.training import fit_scorer
from adrt.train.registry import register

__all__ = ["Inpaint", "InpaintConfig", "InpaintScorer", "mask_set", "size_multiple", "check_size",
           "sliding_mask_map", "with_mask_set", "TEST_TIME_OPTIONS"]

# Options that change only the test-time graph, not the trained network.
TEST_TIME_OPTIONS = ("cells", "n_masks", "assignment", "error", "gms_scales", "sigma")


@register("inpaint")
class Inpaint:
    """Partial-conv inpainting (Liu 2018) behind RIAD-style mask sets (Zavrtanik 2021); error map over all masks."""

    Config = InpaintConfig

    @staticmethod
    def build(cfg: InpaintConfig, pretrained: bool = False) -> InpaintScorer:
        # No pretrained weights exist for this method: everything is trained and saved in the run.
        return InpaintScorer(cfg)

    @staticmethod
    def fit(cfg: InpaintConfig, images, preprocess, seed: int = 0, log=print) -> InpaintScorer:
        return fit_scorer(cfg, images, preprocess, seed=seed, log=log)


def with_mask_set(run: str | os.PathLike, out: str | os.PathLike, data: str | os.PathLike | None = None,
                  log=lambda *a, **k: None, overwrite: bool = False, **changes) -> Path:
    """Write run folder ``out``: the trained network of inpaint run ``run`` behind another test-time
    mask set (``changes`` of TEST_TIME_OPTIONS), recalibrated on the run's own held-out images.

    The mask set is a test-time choice, so it can change without retraining. ``data`` defaults to
    the dataset recorded in the run; the held-out images are found again from the recorded seed
    and count (the split depends only on the seed and file names).
    """
    from adrt.train.detector import Detector, InputSpec
    from adrt.train.fit import load_run, save_derived_run

    bad = sorted(set(changes) - set(TEST_TIME_OPTIONS))
    if bad:
        raise AdrtError(f"with_mask_set: {', '.join(bad)} cannot change without retraining; "
                        f"test-time options: {', '.join(TEST_TIME_OPTIONS)}")
    meta_path = Path(run) / "detector.json"
    method = json.loads(meta_path.read_text()).get("method") if meta_path.is_file() else None
    if method is not None and method != "inpaint":
        raise AdrtError(f"{run}: a {method!r} run, not an inpaint run")
    det, meta = load_run(run)   # raises for anything that is not a run folder
    cfg = replace(det.scorer.cfg, **changes)
    check_config(cfg)
    spec: InputSpec = det.spec
    tr = meta["training"]
    scorer = InpaintScorer(cfg)
    scorer.net.load_state_dict(det.scorer.net.state_dict())
    scorer.set_masks(spec.height, spec.width, tr["seed"])
    new = Detector(scorer, spec, sigma=cfg.sigma, image_score=det.image_score).eval()
    return save_derived_run(new, cfg, meta, run, out, changes, data, log,
                            f"with_mask_set: cells {cfg.cells} × {cfg.n_masks} masks, error {cfg.error}",
                            overwrite=overwrite)

