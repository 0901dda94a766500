"""Change detection against a golden reference (per image, or one baked into the graph)."""
from __future__ import annotations

from adrt.errors import AdrtError
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
    def check_training(cfg: ReferenceConfig, geometry, defects) -> None:
        if cfg.golden and geometry.mode != "resize":
            raise AdrtError("reference with a golden image: the golden image is resized to the model's input; "
                            "letterbox and tile geometries are not supported with it")
        if not cfg.golden and geometry.tiled:
            raise AdrtError("reference with a reference per image: tiling is not supported for two-input graphs "
                            "(resize or letterbox both, or --set golden=IMG)")
        if not cfg.golden and defects is not None:
            raise AdrtError("reference with a reference per image: the f1 calibration (--defects) is not "
                            "supported; use --calibration std or fpr")

    @staticmethod
    def build(cfg: ReferenceConfig, pretrained: bool = False) -> ReferenceScorer:
        return ReferenceScorer(cfg, pretrained=pretrained)

    @staticmethod
    def fit(cfg: ReferenceConfig, images, preprocess, seed: int = 0, log=print, references=None) -> ReferenceScorer:
        return fit_scorer(cfg, images, preprocess, seed=seed, log=log, references=references)
