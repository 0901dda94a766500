"""Change detection against a golden reference (per image, or one baked into the graph)."""
from __future__ import annotations

from adrt.train.reference.fit import fit_scorer
from adrt.train.reference.model import ReferenceConfig, ReferenceScorer
from adrt.train.registry import MethodBase


class Reference(MethodBase):
    """Change detection: feature distance to a reference image within a neighbourhood, normalised."""

    Config = ReferenceConfig

    @staticmethod
    def needs_references(cfg: ReferenceConfig) -> bool:
        """True when every image comes with its own reference (no ``golden`` image)."""
        return not cfg.golden

    @staticmethod
    def build(cfg: ReferenceConfig, pretrained: bool = False) -> ReferenceScorer:
        return ReferenceScorer(cfg, pretrained=pretrained)

    @staticmethod
    def fit(cfg: ReferenceConfig, images, preprocess, seed: int = 0, log=print, references=None) -> ReferenceScorer:
        return fit_scorer(cfg, images, preprocess, seed=seed, log=log, references=references)
