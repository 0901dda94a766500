"""Training loop of the partial-convolution inpainting network (kept beside the model, not in it)."""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from adrt.errors import AdrtError
from adrt.train.inpaint.model import (InpaintConfig, InpaintScorer, _prewitt, check_config, check_size,
                                      msgms_map, random_masks)

# Loss weights: hole L1 and valid L1 in the ratio of Liu et al. (6 : 1), plus RIAD's MSGMS term on
# the composite (input outside the holes, output inside). Liu's perceptual/style terms need a
# pretrained VGG and are left out.
W_HOLE, W_VALID, W_GMS = 1.0, 1.0 / 6.0, 1.0


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` (raises when CUDA is not available) or ``auto`` (cuda when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AdrtError("inpaint option device='cuda': torch.cuda.is_available() is False on this machine "
                        "(torch " + torch.__version__ + "); use device=cpu or device=auto")
    if name not in ("cpu", "cuda"):
        raise AdrtError(f"inpaint option device={name!r}: expected cpu, cuda or auto")
    return torch.device(name)


def n_steps(cfg: InpaintConfig, n_images: int) -> int:
    """Optimiser steps: ``epochs`` passes over the images, capped at ``iterations``."""
    return max(1, min(cfg.iterations, cfg.epochs * math.ceil(n_images / cfg.batch_size)))


def inpaint_loss(net, x: torch.Tensor, m: torch.Tensor, gms_scales: int, kernel: torch.Tensor):
    """Loss of ``net`` inpainting the holes (m = 0) of x (B×3×h×w, in [-1, 1]); returns (loss, hole L1)."""
    y = net(x * m, m)
    hole = 1.0 - m
    err = (y - x).abs().mean(1, keepdim=True)
    l_hole = (err * hole).sum() / hole.sum().clamp_min(1.0)
    l_valid = (err * m).sum() / m.sum().clamp_min(1.0)
    comp = x * m + y * hole
    l_gms = msgms_map(x, comp, gms_scales, kernel).mean()
    return W_HOLE * l_hole + W_VALID * l_valid + W_GMS * l_gms, l_hole


def fit_scorer(cfg: InpaintConfig, images: np.ndarray, preprocess, seed: int = 0, log=print) -> InpaintScorer:
    """Train the inpainting network on uint8 N×H×W×3 normal images and set the test mask set."""
    check_config(cfg)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise AdrtError(f"inpaint: expected uint8 images N×H×W×3 with N ≥ 1, got shape {tuple(images.shape)}")
    n, h, w, _ = images.shape
    check_size(cfg, h, w)
    device = resolve_device(cfg.device)
    torch.manual_seed(seed)
    scorer = InpaintScorer(cfg)
    scorer.set_masks(h, w, seed)
    with torch.no_grad():
        x_all = torch.cat([preprocess(torch.from_numpy(images[i : i + 32])) for i in range(0, n, 32)]).to(device)
    net = scorer.net.to(device).train()
    kernel = _prewitt().to(device)
    steps = n_steps(cfg, n)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=cfg.lr * 0.05)
    g = torch.Generator().manual_seed(seed)
    log(f"  inpainting net {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters on {device}; "
        f"{steps} steps of {cfg.batch_size} images {h}×{w} ({steps * cfg.batch_size / n:.1f} epochs)")
    t0, every, run_loss, run_hole, k = time.perf_counter(), max(1, steps // 10), 0.0, 0.0, 0
    for it in range(1, steps + 1):
        x = x_all[torch.randint(n, (cfg.batch_size,), generator=g).to(device)]
        m = random_masks(cfg.batch_size, h, w, cfg.train_cells, cfg.train_n_masks, g).to(device)
        loss, l_hole = inpaint_loss(net, x, m, cfg.gms_scales, kernel)
        l_hole = l_hole.detach()
        if not torch.isfinite(loss):
            raise AdrtError(f"inpaint: training diverged at step {it} (loss {loss.item()}); try a smaller lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run_loss, run_hole, k = run_loss + loss.item(), run_hole + l_hole.item(), k + 1
        log(f"  step {it}/{steps} loss {run_loss / k:.4f}", end="\r")
        if it % every == 0 or it == steps:
            log(f"  step {it}/{steps}: loss {run_loss / k:.4f} (hole L1 {run_hole / k:.4f}), "
                f"{time.perf_counter() - t0:.0f} s")
            run_loss, run_hole, k = 0.0, 0.0, 0
    net.eval().cpu()
    return scorer.eval()
