"""Fitting PatchCore: streamed patch features, a greedy coreset as the memory bank."""
from __future__ import annotations

import torch

from adrt.train.features import sample_patches
from adrt.train.patchcore.model import PatchCoreConfig, PatchCoreScorer, greedy_coreset


def fit_scorer(cfg: PatchCoreConfig, images, preprocess, seed: int = 0, log=print) -> PatchCoreScorer:
    scorer = PatchCoreScorer(cfg, pretrained=True).eval()
    # Deviation from the paper for CPU training: greedy selection runs on a uniform random
    # subsample of coreset_max_patches (each greedy step costs one pass over all candidates),
    # drawn while the features stream in, so only the subsample is ever held (bounded memory
    # whatever the number of images or tiles). The bank size follows from ALL training patches
    # (the option's meaning), then the cap; the patch count is known before streaming (every
    # image gives the same feature grid), so the sample never holds fewer candidates than the
    # bank keeps.
    with torch.no_grad():
        grid = scorer.features(preprocess(torch.from_numpy(images[:1]))).shape[-2:]
    n_patches = len(images) * grid[0] * grid[1]
    n_keep = max(cfg.num_neighbors, int(round(cfg.coreset_ratio * n_patches)))
    capped = bool(cfg.coreset_cap) and n_keep > cfg.coreset_cap
    if capped:
        n_keep = max(cfg.num_neighbors, cfg.coreset_cap)
    keep = cfg.coreset_max_patches and max(cfg.coreset_max_patches, n_keep)
    flat, n_all = sample_patches(scorer.features, preprocess, images, keep, seed=seed,
                                 progress=lambda i, n: log(f"  features {i}/{n}", end="\r"))
    log("")
    if flat.shape[0] < n_all:
        log(f"  {n_all} patches, coreset searched on a random {flat.shape[0]}")
    scorer.set_projection(flat)
    flat = scorer.project(flat).contiguous()
    n_keep = min(n_keep, flat.shape[0])
    idx = greedy_coreset(flat, n_keep, cfg.projection_dim, seed=seed,
                         progress=lambda i, n: log(f"  coreset {i}/{n}", end="\r"))
    log("")
    scorer.set_bank(flat[idx])
    reduced = f" (principal axes of {scorer.features.channels})" if scorer.proj is not None else ""
    log(f"  memory bank {scorer.bank_size}×{flat.shape[1]}{reduced} from {n_all} patches "
        f"({100 * scorer.bank_size / n_all:.3g} % of them" + (f", capped by coreset_cap={cfg.coreset_cap})" if capped else ")"))
    # Recorded in the run (training.bank) and the bundle's manifest: what the bank really holds.
    scorer.fit_record = {"bank": {"patches": n_all, "candidates": int(flat.shape[0]), "size": scorer.bank_size,
                                  "fraction_of_patches": scorer.bank_size / n_all, "coreset_ratio": cfg.coreset_ratio,
                                  "capped": capped}}
    return scorer
