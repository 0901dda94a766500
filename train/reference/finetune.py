"""Self-supervised adaptation of the backbone to a line's normal pairs (``finetune_steps``).

The pretrained taps are generic; what a line needs is features that stay put under its natural
variation (the small shifts, brightness and noise between an image and its reference) and move
when something changed. Both come from the normal pairs alone: the pair itself is the natural
variation, and a change is made synthetically, CutPaste-style (Li et al., CVPR 2021): a rectangle
or a thin "scar" strip cut from elsewhere in the image is pasted into it. The network learns to
tell the pasted positions from the rest by the same neighbourhood distance the graph computes:
binary cross-entropy on ``a·d + b`` per grid position (``a``, ``b`` learnt scalars), positives the
cells mostly covered by a paste, negatives the cells it does not touch.

Only the blocks up to the deepest tap train; BatchNorm keeps its ImageNet statistics (the
backbone stays in eval mode), and the trained weights are part of the run like any buffer.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def cutpaste(x: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A pasted copy of each image of ``x`` (N×C×H×W, normalised) and the changed pixels N×1×H×W."""
    n, _, h, w = x.shape
    out, mask = x.clone(), torch.zeros(n, 1, h, w)
    for i in range(n):
        if rng.random() < 0.5:                        # a rectangle, 3–12 % of the side
            ph, pw = (rng.uniform(0.03, 0.12, 2) * (h, w)).astype(int) + 2
        else:                                         # a scar: a thin strip, horizontal or vertical
            long, thin = int(rng.uniform(0.05, 0.2) * max(h, w)) + 4, int(rng.integers(1, 4)) * max(1, h // 256)
            ph, pw = (thin, long) if rng.random() < 0.5 else (long, thin)
        ph, pw = min(ph, h - 1), min(pw, w - 1)
        sy, sx = rng.integers(0, h - ph), rng.integers(0, w - pw)
        ty, tx = rng.integers(0, h - ph), rng.integers(0, w - pw)
        patch = x[i, :, sy : sy + ph, sx : sx + pw]
        changed = (patch - out[i, :, ty : ty + ph, tx : tx + pw]).abs().amax(0) > 0.1
        out[i, :, ty : ty + ph, tx : tx + pw] = patch
        mask[i, 0, ty : ty + ph, tx : tx + pw] = changed.float()
    return out, mask


def finetune(scorer, images: np.ndarray, references: np.ndarray, preprocess, cfg, seed: int = 0,
             log=print, batch: int = 8) -> dict:
    """Train ``scorer.features``' backbone for ``cfg.finetune_steps`` steps; returns the loss trace."""
    backbone = scorer.features.backbone
    last = max(scorer.features.taps)
    params = list(backbone._conv_stem.parameters()) + list(backbone._bn0.parameters())
    for b in backbone._blocks[: last + 1]:
        params += list(b.parameters())
    for p in params:
        p.requires_grad_(True)
    ab = torch.nn.Parameter(torch.tensor([1.0, -3.0]))
    opt = torch.optim.Adam([{"params": params, "lr": cfg.finetune_lr}, {"params": [ab], "lr": 1e-2}])
    rng = np.random.default_rng(seed)
    g = cfg.grid_stride
    # Channel scales from the frozen features, fixed during training (so the distance cannot
    # shrink by scaling the features down).
    with torch.no_grad():
        probe = scorer.features(preprocess(torch.from_numpy(images[: min(len(images), 16)])))
        scale = 1.0 / probe.transpose(0, 1).flatten(1).std(1).clamp_min(1e-6).view(1, -1, 1, 1)
    trace = []
    try:
        for step in range(cfg.finetune_steps):
            idx = rng.choice(len(images), size=min(batch, len(images)), replace=False)
            x = preprocess(torch.from_numpy(np.ascontiguousarray(images[idx])))
            r = preprocess(torch.from_numpy(np.ascontiguousarray(references[idx])))
            xc, m = cutpaste(x, rng)
            cover = F.avg_pool2d(m, g, g)                            # fraction of each cell changed
            d2 = scorer.distance(scorer.features(xc) * scale, scorer.features(r) * scale, squared=True)
            d = (d2.clamp_min(0.0) + 1e-6).sqrt().unsqueeze(1)
            pos, neg = (cover > 0.3).float(), (cover == 0).float()
            logit = ab[0] * d + ab[1]
            bce = F.binary_cross_entropy_with_logits(logit, pos, reduction="none")
            loss = (bce * pos).sum() / pos.sum().clamp_min(1) + (bce * neg).sum() / neg.sum().clamp_min(1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            trace.append(loss.item())
            if step % 20 == 0 or step == cfg.finetune_steps - 1:
                log(f"  fine-tune {step + 1}/{cfg.finetune_steps}: loss {np.mean(trace[-20:]):.4f}", end="\r")
    finally:
        for p in params:
            p.requires_grad_(False)
        log("")
    return {"loss_first": trace[0] if trace else None, "loss_last": float(np.mean(trace[-20:])) if trace else None}
