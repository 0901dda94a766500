"""PatchCore: memory bank of locally aware patch features, nearest-neighbour scoring."""
from __future__ import annotations

from adrt.train.patchcore.fit import fit_scorer
from adrt.train.patchcore.model import PatchCoreConfig, PatchCoreScorer
from adrt.train.registry import MethodBase


class PatchCore(MethodBase):
    """Fit: embed every training patch, keep a greedy coreset as the memory bank."""

    Config = PatchCoreConfig
    # Options a run saved before they existed was trained without (read by load_run).
    absent = {"embed_dim": 0, "border": "zero"}
    streams_images = True        # fit reads its images batch by batch (adrt.train.fit.FrameTiles)

    @staticmethod
    def build(cfg: PatchCoreConfig, pretrained: bool = False) -> PatchCoreScorer:
        return PatchCoreScorer(cfg, pretrained=pretrained)

    @staticmethod
    def fit(cfg: PatchCoreConfig, images, preprocess, seed: int = 0, log=print) -> PatchCoreScorer:
        return fit_scorer(cfg, images, preprocess, seed=seed, log=log)
