"""PatchCore: memory bank of locally aware patch features, nearest-neighbour scoring."""
from __future__ import annotations

import torch

from adrt.train.features import embed_images
from adrt.train.patchcore.model import PatchCoreConfig, PatchCoreScorer, greedy_coreset
from adrt.train.registry import MethodBase


class PatchCore(MethodBase):
    """Fit: embed every training patch, keep a greedy coreset as the memory bank."""

    Config = PatchCoreConfig
    # Options a run saved before they existed was trained without (read by load_run).
    absent = {"embed_dim": 0}

    @staticmethod
    def build(cfg: PatchCoreConfig, pretrained: bool = False) -> PatchCoreScorer:
        return PatchCoreScorer(cfg, pretrained=pretrained)

    @staticmethod
    def fit(cfg: PatchCoreConfig, images, preprocess, seed: int = 0, log=print) -> PatchCoreScorer:
        scorer = PatchCoreScorer(cfg, pretrained=True).eval()
        feats = embed_images(scorer.features, preprocess, images,
                             progress=lambda i, n: log(f"  features {i}/{n}", end="\r"))
        log("")
        flat = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
        n_all = flat.shape[0]
        if cfg.coreset_max_patches and n_all > cfg.coreset_max_patches:
            # Deviation from the paper for CPU training: greedy selection runs on a uniform random
            # subsample (each greedy step costs one pass over all candidates).
            g = torch.Generator().manual_seed(seed)
            flat = flat[torch.randperm(n_all, generator=g)[: cfg.coreset_max_patches]]
            log(f"  {n_all} patches, coreset searched on a random {flat.shape[0]}")
        scorer.set_projection(flat)
        flat = scorer.project(flat).contiguous()
        n_keep = max(cfg.num_neighbors, int(round(cfg.coreset_ratio * flat.shape[0])))
        idx = greedy_coreset(flat, n_keep, cfg.projection_dim, seed=seed,
                             progress=lambda i, n: log(f"  coreset {i}/{n}", end="\r"))
        log("")
        scorer.set_bank(flat[idx])
        reduced = f" (principal axes of {feats.shape[1]})" if scorer.proj is not None else ""
        log(f"  memory bank {scorer.bank_size}×{flat.shape[1]}{reduced} from {n_all} patches")
        return scorer
