"""PatchCore: memory bank of locally aware patch features, nearest-neighbour scoring."""
from __future__ import annotations

from adrt.train.features import sample_patches
from adrt.train.patchcore.model import PatchCoreConfig, PatchCoreScorer, greedy_coreset
from adrt.train.registry import MethodBase


class PatchCore(MethodBase):
    """Fit: embed every training patch, keep a greedy coreset as the memory bank."""

    Config = PatchCoreConfig
    # Options a run saved before they existed was trained without (read by load_run).
    absent = {"embed_dim": 0}
    streams_images = True        # fit reads its images batch by batch (adrt.train.fit.FrameTiles)

    @staticmethod
    def build(cfg: PatchCoreConfig, pretrained: bool = False) -> PatchCoreScorer:
        return PatchCoreScorer(cfg, pretrained=pretrained)

    @staticmethod
    def fit(cfg: PatchCoreConfig, images, preprocess, seed: int = 0, log=print) -> PatchCoreScorer:
        scorer = PatchCoreScorer(cfg, pretrained=True).eval()
        # Deviation from the paper for CPU training: greedy selection runs on a uniform random
        # subsample of coreset_max_patches (each greedy step costs one pass over all candidates),
        # drawn while the features stream in, so only the subsample is ever held (bounded memory
        # whatever the number of images or tiles).
        flat, n_all = sample_patches(scorer.features, preprocess, images, cfg.coreset_max_patches, seed=seed,
                                     progress=lambda i, n: log(f"  features {i}/{n}", end="\r"))
        log("")
        if flat.shape[0] < n_all:
            log(f"  {n_all} patches, coreset searched on a random {flat.shape[0]}")
        scorer.set_projection(flat)
        flat = scorer.project(flat).contiguous()
        n_keep = max(cfg.num_neighbors, int(round(cfg.coreset_ratio * flat.shape[0])))
        idx = greedy_coreset(flat, n_keep, cfg.projection_dim, seed=seed,
                             progress=lambda i, n: log(f"  coreset {i}/{n}", end="\r"))
        log("")
        scorer.set_bank(flat[idx])
        reduced = f" (principal axes of {scorer.features.channels})" if scorer.proj is not None else ""
        log(f"  memory bank {scorer.bank_size}×{flat.shape[1]}{reduced} from {n_all} patches")
        return scorer
