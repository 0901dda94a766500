"""Shared parts of the generative detectors (``memae``, ``vae``): scoring heads (reconstruction errors,
SSIM, MMD, the non-finite guard), the training loop, and runs derived with other test-time options."""
from __future__ import annotations

from adrt.train.generative.heads import ReconError, guard_finite, mmd2, ssim_error
from adrt.train.generative.loop import train_network, with_options

__all__ = ["ReconError", "guard_finite", "mmd2", "ssim_error", "train_network", "with_options"]
