"""Fitting PaDiM: per-position Gaussians of streamed backbone features (Ledoit–Wolf shrinkage)."""
from __future__ import annotations

from adrt.train.padim.model import GaussianMoments, PaDiMConfig, PaDiMScorer
from adrt.train.features import embed_images


def fit_scorer(cfg: PaDiMConfig, images, preprocess, seed: int = 0, log=print) -> PaDiMScorer:
    scorer = PaDiMScorer(cfg, pretrained=True, seed=seed).eval()
    # Streamed: each batch's features go into the per-position moments and are dropped.
    moments = GaussianMoments()
    embed_images(scorer.features, preprocess, images, sink=lambda f: moments.update(f[:, scorer.channel_idx]),
                 progress=lambda i, n: log(f"  features {i}/{n}", end="\r"))
    log("")
    mean, inv_cov, shrink = moments.finish(cfg.eps)
    scorer.set_gaussians(mean, inv_cov)
    log(f"  {mean.shape[0]} Gaussians of dim {mean.shape[1]}; Ledoit-Wolf shrinkage "
        f"median {shrink.median():.3f}")
    return scorer
