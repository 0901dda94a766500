"""EfficientAD (Batzner et al., arXiv 2303.14535): PDN teacher distilled from EfficientNet-Lite,
student with the hard feature loss, autoencoder for logical anomalies, quantile-normalised maps."""
from __future__ import annotations

from adrt.train.efficientad.fit import fit_scorer
from adrt.train.efficientad.model import AutoEncoder, EfficientADConfig, EfficientADScorer, map_size, pdn
from adrt.train.registry import MethodBase

__all__ = ["EfficientAD", "EfficientADConfig", "EfficientADScorer", "AutoEncoder", "pdn", "map_size"]


class EfficientAD(MethodBase):
    """EfficientAD-S/M (size=s|m): PDN student–teacher + autoencoder, quantile-normalised maps."""

    Config = EfficientADConfig

    @staticmethod
    def build(cfg: EfficientADConfig, pretrained: bool = False) -> EfficientADScorer:
        # The teacher is distilled during fit and saved in the run; nothing pretrained is needed here.
        return EfficientADScorer(cfg)

    @staticmethod
    def fit(cfg: EfficientADConfig, images, preprocess, seed: int = 0, log=print) -> EfficientADScorer:
        return fit_scorer(cfg, images, preprocess, seed=seed, log=log)
