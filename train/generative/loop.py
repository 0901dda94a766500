"""Training stage shared by the generative detectors (one stage of the shared trainer,
adrt.train.trainer: progress, Ctrl-C, checkpoint/resume), and runs derived with other test-time options.

Training lives beside the models, not in them (the models' eval forward is the exported graph).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from adrt.errors import AdrtError
from adrt.train.derive import derive, rebuild
from adrt.train.generative.heads import blur_radius
from adrt.train.trainer import Session, check_size, epoch_steps


def check_images(name: str, images: np.ndarray, multiple: int, sigma: float = 0.0) -> None:
    """Raise AdrtError for anything but uint8 N×H×W×3 with N ≥ 2 and H, W multiples of ``multiple``,
    or for images too small for the smoothing radius of ``sigma``."""
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[-1] != 3 or len(images) < 2:
        shape = getattr(images, "shape", None)
        raise AdrtError(f"{name}: expected uint8 images N×H×W×3 with N ≥ 2, got shape {shape}")
    h, w = images.shape[1:3]
    check_size(name, h, w, multiple)
    if blur_radius(sigma) >= min(h, w):
        raise AdrtError(f"{name} option sigma={sigma}: the smoothing radius {blur_radius(sigma)} px "
                        f"needs images larger than {h}×{w}")


def train_network(session: Session, net: torch.nn.Module,
                  loss_fn: Callable[[torch.Tensor], tuple[torch.Tensor, dict]], x_all: torch.Tensor, *,
                  iterations: int, epochs: int, batch_size: int, lr: float, seed: int, describe: str) -> int:
    """Stage "network" of ``session``: Adam + cosine schedule on random mini-batches of ``x_all``
    (N×C×H×W, normalised); ``loss_fn(batch) -> (loss, parts)``, ``parts`` (floats) averaged into
    the progress lines. A non-finite loss raises AdrtError (divergence). Returns the step count."""
    n = x_all.shape[0]
    bs = min(batch_size, n)
    steps = epoch_steps(iterations, epochs, n, bs)
    n_par = sum(p.numel() for p in net.parameters())
    session.log(f"  {describe}: {n_par / 1e6:.2f} M parameters; {steps} steps of {bs} images "
                f"({steps * bs / n:.1f} epochs)")

    def step(i, g):
        loss, parts = loss_fn(x_all[torch.randperm(n, generator=g)[:bs]])
        return loss, {"loss": loss.item(), **parts}

    session.run("network", steps, net.parameters(), lr, 0.0, step, cosine=True, seed=seed, reseed_global=False,
                describe=f"{bs} images")
    if session.stopped:
        session.log(f"  {session.method}: stopped early: {', '.join(session.stopped)}")
    return steps


# --- derived runs: same trained network, other test-time options -------------------------------------

def rebuild_scorer(cls, scorer: torch.nn.Module, cfg) -> torch.nn.Module:
    """A new scorer of method class ``cls`` built for ``cfg`` with the weights and fitted buffers of
    ``scorer`` (adrt.train.derive.rebuild)."""
    return rebuild(cls.build, scorer, cfg)


def with_options(run: str | os.PathLike, out: str | os.PathLike, data: str | os.PathLike | None = None,
                 log=lambda *a, **k: None, overwrite: bool = False, **changes) -> Path:
    """Write run folder ``out``: the trained network of run ``run`` (a ``memae`` or ``vae`` run) with
    other test-time options (``changes``, a subset of the method's ``TEST_TIME_OPTIONS``, e.g.
    ``k_steps=20`` or ``score="mmd"``), recalibrated on the run's own held-out images
    (adrt.train.derive.derive). ``data`` defaults to the dataset recorded in the run.
    """
    return derive(run, out, data, log, overwrite, what=f"with_options {changes}", **changes)
