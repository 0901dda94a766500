"""MemAE (Gong et al. 2019): memory-augmented autoencoder, reconstruction-error map, optional MMD score."""
from __future__ import annotations

from adrt.train.derive import rebuild
from adrt.train.memae.fit import fit_scorer
from adrt.train.memae.model import MemAEConfig, MemAENet, MemAEScorer, Memory, entropy
from adrt.train.registry import MethodBase

__all__ = ["MemAE", "MemAEConfig", "MemAEScorer", "MemAENet", "Memory", "entropy"]


class MemAE(MethodBase):
    """Memory-augmented autoencoder (Gong 2019): memory of normal prototypes, reconstruction error (or SSIM) map."""

    Config = MemAEConfig
    # Options that change only the test-time graph, not the trained network (adrt.train.derive).
    TEST_TIME_OPTIONS = ("error", "score", "mmd_kernel", "mmd_scale", "sigma")

    @staticmethod
    def build(cfg: MemAEConfig, pretrained: bool = False) -> MemAEScorer:
        # Nothing is pretrained: every weight, the memory and the MMD reference are in the run.
        return MemAEScorer(cfg)

    @staticmethod
    def fit(cfg: MemAEConfig, images, preprocess, seed: int = 0, log=print) -> MemAEScorer:
        return fit_scorer(cfg, images, preprocess, seed=seed, log=log)

    @staticmethod
    def derive(scorer: MemAEScorer, cfg: MemAEConfig, spec, seed: int) -> MemAEScorer:
        return rebuild(MemAEScorer, scorer, cfg)
