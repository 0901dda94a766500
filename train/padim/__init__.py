"""PaDiM: a Gaussian per feature-map position, scored by Mahalanobis distance."""
from __future__ import annotations

from adrt.train.padim.fit import fit_scorer
from adrt.train.padim.model import PaDiMConfig, PaDiMScorer
from adrt.train.registry import MethodBase


class PaDiM(MethodBase):
    Config = PaDiMConfig
    streams_images = True        # fit reads its images batch by batch (adrt.train.fit.FrameTiles)

    @staticmethod
    def build(cfg: PaDiMConfig, pretrained: bool = False) -> PaDiMScorer:
        return PaDiMScorer(cfg, pretrained=pretrained)

    @staticmethod
    def fit(cfg: PaDiMConfig, images, preprocess, seed: int = 0, log=print) -> PaDiMScorer:
        return fit_scorer(cfg, images, preprocess, seed=seed, log=log)
