"""PatchCore: memory bank of locally aware patch features, nearest-neighbour scoring."""
from __future__ import annotations

import torch

from adrt.train.features import embed_images
from adrt.train.patchcore.model import PatchCoreConfig, PatchCoreScorer, greedy_coreset
from adrt.train.registry import register


@register("patchcore")
class PatchCore:
    """Fit: embed every training patch, keep a greedy coreset as the memory bank."""

    Config = PatchCoreConfig

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
        # The bank size follows from ALL training patches (the option's meaning), then the cap.
        n_keep = max(cfg.num_neighbors, int(round(cfg.coreset_ratio * n_all)))
        capped = bool(cfg.coreset_cap) and n_keep > cfg.coreset_cap
        if capped:
            n_keep = max(cfg.num_neighbors, cfg.coreset_cap)
        if cfg.coreset_max_patches and n_all > cfg.coreset_max_patches:
            # Deviation from the paper for CPU training: greedy selection runs on a uniform random
            # subsample of candidates (each greedy step costs one pass over all of them); never
            # fewer candidates than the bank keeps.
            g = torch.Generator().manual_seed(seed)
            n_cand = min(n_all, max(cfg.coreset_max_patches, n_keep))
            flat = flat[torch.randperm(n_all, generator=g)[:n_cand]]
            log(f"  {n_all} patches, coreset searched on a random {flat.shape[0]}")
        scorer.set_projection(flat)
        flat = scorer.project(flat).contiguous()
        n_keep = min(n_keep, flat.shape[0])
        idx = greedy_coreset(flat, n_keep, cfg.projection_dim, seed=seed,
                             progress=lambda i, n: log(f"  coreset {i}/{n}", end="\r"))
        log("")
        scorer.set_bank(flat[idx])
        reduced = f" (principal axes of {feats.shape[1]})" if scorer.proj is not None else ""
        log(f"  memory bank {scorer.bank_size}×{flat.shape[1]}{reduced} from {n_all} patches "
            f"({100 * scorer.bank_size / n_all:.3g} % of them" + (f", capped by coreset_cap={cfg.coreset_cap})" if capped else ")"))
        # Recorded in the run (training.bank) and the bundle's manifest: what the bank really holds.
        scorer.fit_record = {"bank": {"patches": n_all, "candidates": int(flat.shape[0]), "size": scorer.bank_size,
                                      "fraction_of_patches": scorer.bank_size / n_all, "coreset_ratio": cfg.coreset_ratio,
                                      "capped": capped}}
        return scorer
