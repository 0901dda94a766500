"""Fitting the reference method: channel scales and distance statistics of normal pairs,
after the optional self-supervised fine-tune."""
from __future__ import annotations

import numpy as np
import torch

from adrt.errors import AdrtError
from adrt.train.features import embed_images
from adrt.train.reference.model import ReferenceConfig, ReferenceScorer


def fit_scorer(cfg: ReferenceConfig, images, preprocess, seed: int = 0, log=print, references=None) -> ReferenceScorer:
    scorer = ReferenceScorer(cfg, pretrained=True).eval()
    golden = None
    if cfg.golden:
        from adrt.data import load_images

        golden = load_images([cfg.golden], images.shape[1], images.shape[2])
        references = np.broadcast_to(golden, images.shape)
    elif references is None or len(references) != len(images):
        raise AdrtError(f"reference: {len(images)} training images need as many references, got "
                        f"{0 if references is None else len(references)}")
    if cfg.finetune_steps:
        from adrt.train.reference.finetune import finetune

        done = finetune(scorer, images, references, preprocess, cfg, seed=seed, log=log)
        log(f"  fine-tuned {cfg.finetune_steps} steps: loss {done['loss_first']:.4f} -> {done['loss_last']:.4f}")
    progress = lambda i, n: log(f"  features {i}/{n}", end="\r")  # noqa: E731
    feats = embed_images(scorer.features, preprocess, images, progress=progress)
    log("")
    std = feats.transpose(0, 1).flatten(1).std(1)
    scorer.chan_scale = (1.0 / std.clamp_min(1e-3 * float(std.max()))).view(1, -1, 1, 1).contiguous()
    feats = feats * scorer.chan_scale
    if cfg.golden:
        scorer.golden_feats = embed_images(scorer.features, preprocess, golden)
        scorer.golden_feats = (scorer.golden_feats * scorer.chan_scale).contiguous()
        ref_feats = scorer.golden_feats
    else:
        ref_feats = embed_images(scorer.features, preprocess, references) * scorer.chan_scale
    with torch.inference_mode():
        d = torch.cat([scorer.distance(feats[i : i + 8], ref_feats if cfg.golden else ref_feats[i : i + 8])
                       for i in range(0, len(feats), 8)])
    scorer.set_stats(d)
    how = "per position" if scorer.mu.numel() > 1 else "global"
    src = f"golden image {cfg.golden}" if cfg.golden else f"{len(images)} per-image references"
    log(f"  {src}; distances {how}: mean {float(d.mean()):.3g}, std {float(d.std()):.3g}")
    return scorer
