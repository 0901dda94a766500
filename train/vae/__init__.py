"""VAE with iterative energy-based projection (Dehaene 2020) unrolled into the graph, and the MMD score
(Šmídl, Bím, Pevný 2019) as an alternative image score."""
from __future__ import annotations

from adrt.train.derive import rebuild
from adrt.train.registry import MethodBase
from adrt.train.vae.fit import fit_scorer
from adrt.train.vae.model import VAEConfig, VAENet, VAEScorer, energy, kl_divergence

__all__ = ["VAE", "VAEConfig", "VAEScorer", "VAENet", "energy", "kl_divergence"]


class VAE(MethodBase):
    """Convolutional VAE: map from K unrolled energy-projection steps (Dehaene 2020) or reconstruction; MMD score option."""

    Config = VAEConfig
    # Options that change only the test-time graph, not the trained network (adrt.train.derive).
    TEST_TIME_OPTIONS = ("k_steps", "step_size", "lam", "grad_weight", "error", "score", "mmd_ref", "mmd_kernel",
                         "mmd_scale", "sigma")

    @staticmethod
    def build(cfg: VAEConfig, pretrained: bool = False) -> VAEScorer:
        # Nothing is pretrained: the weights and the MMD samples/references are all in the run.
        return VAEScorer(cfg)

    @staticmethod
    def fit(cfg: VAEConfig, images, preprocess, seed: int = 0, log=print) -> VAEScorer:
        return fit_scorer(cfg, images, preprocess, seed=seed, log=log)

    @staticmethod
    def derive(scorer: VAEScorer, cfg: VAEConfig, spec, seed: int) -> VAEScorer:
        return rebuild(VAEScorer, scorer, cfg)
