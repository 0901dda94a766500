"""Inpainting: a partial-convolution U-Net inpaints the image behind a set of masks that cover every pixel."""
from __future__ import annotations

import os
from pathlib import Path

from adrt.train.derive import derive
from adrt.train.inpaint.fit import fit_scorer
from adrt.train.inpaint.model import (InpaintConfig, InpaintScorer, check_size, mask_set, size_multiple,
                                      sliding_mask_map)
from adrt.train.registry import MethodBase

__all__ = ["Inpaint", "InpaintConfig", "InpaintScorer", "mask_set", "size_multiple", "check_size",
           "sliding_mask_map", "with_mask_set"]


class Inpaint(MethodBase):
    """Partial-conv inpainting (Liu 2018) behind RIAD-style mask sets (Zavrtanik 2021); error map over all masks."""

    Config = InpaintConfig
    # Options that change only the test-time graph, not the trained network (adrt.train.derive).
    TEST_TIME_OPTIONS = ("cells", "n_masks", "assignment", "error", "gms_scales", "sigma")

    @staticmethod
    def build(cfg: InpaintConfig, pretrained: bool = False) -> InpaintScorer:
        # No pretrained weights exist for this method: everything is trained and saved in the run.
        return InpaintScorer(cfg)

    @staticmethod
    def fit(cfg: InpaintConfig, images, preprocess, seed: int = 0, log=print) -> InpaintScorer:
        return fit_scorer(cfg, images, preprocess, seed=seed, log=log)

    @staticmethod
    def derive(scorer: InpaintScorer, cfg: InpaintConfig, spec, seed: int) -> InpaintScorer:
        new = InpaintScorer(cfg)
        new.net.load_state_dict(scorer.net.state_dict())
        new.set_masks(spec.height, spec.width, seed)      # the run's seed: same cells as the source's
        return new


def with_mask_set(run: str | os.PathLike, out: str | os.PathLike, data: str | os.PathLike | None = None,
                  log=lambda *a, **k: None, overwrite: bool = False, **changes) -> Path:
    """Write run folder ``out``: the trained network of inpaint run ``run`` behind another test-time
    mask set (``changes`` of ``Inpaint.TEST_TIME_OPTIONS``), recalibrated on the run's own held-out
    images (adrt.train.derive.derive). ``data`` defaults to the dataset recorded in the run.
    """
    return derive(run, out, data, log, overwrite, method="inpaint", what=f"with_mask_set {changes}",
                  **changes)
