"""Training of the partial-convolution inpainting network (kept beside the model, not in it): one stage
of the shared trainer (adrt.train.trainer: progress, Ctrl-C, checkpoint/resume)."""
from __future__ import annotations

import numpy as np
import torch

from adrt.errors import AdrtError
from adrt.train.inpaint.model import (InpaintConfig, InpaintScorer, _prewitt, check_config, check_size,
                                      msgms_map, random_masks)
from adrt.train.trainer import Session, epoch_steps, to_tensor

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
    return epoch_steps(cfg.iterations, cfg.epochs, n_images, cfg.batch_size)


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
    session = Session("inpaint", cfg, images, seed, {"scorer": scorer}, log)
    x_all = to_tensor(images, preprocess).to(device)
    net = scorer.net.to(device)
    kernel = _prewitt().to(device)
    steps = n_steps(cfg, n)
    log(f"  inpainting net {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters on {device}; "
        f"{steps} steps of {cfg.batch_size} images {h}×{w} ({steps * cfg.batch_size / n:.1f} epochs)")

    def step(i, g):
        x = x_all[torch.randint(n, (cfg.batch_size,), generator=g).to(device)]
        m = random_masks(cfg.batch_size, h, w, cfg.train_cells, cfg.train_n_masks, g).to(device)
        loss, l_hole = inpaint_loss(net, x, m, cfg.gms_scales, kernel)
        return loss, {"loss": loss.item(), "hole L1": l_hole.item()}

    session.run("network", steps, net.parameters(), cfg.lr, 0.0, step, cosine=True, seed=seed, reseed_global=False,
                describe=f"{cfg.batch_size} masked images")
    net.cpu()
    if session.stopped:
        log(f"  inpaint: stopped early: {', '.join(session.stopped)}")
    return scorer.eval()
