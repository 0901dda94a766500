"""Training loop shared by the generative detectors, and runs derived with other test-time options.

The loop lives beside the models, not in them (the models' eval forward is the exported graph).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from adrt.errors import AdrtError


def check_images(name: str, images: np.ndarray, multiple: int, sigma: float = 0.0) -> None:
    """Raise AdrtError for anything but uint8 N×H×W×3 with N ≥ 2 and H, W multiples of ``multiple``,
    or for images too small for the smoothing radius of ``sigma``."""
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[-1] != 3 or len(images) < 2:
        shape = getattr(images, "shape", None)
        raise AdrtError(f"{name}: expected uint8 images N×H×W×3 with N ≥ 2, got shape {shape}")
    h, w = images.shape[1:3]
    check_size(name, h, w, multiple)
    from adrt.train.generative.heads import blur_radius

    if blur_radius(sigma) >= min(h, w):
        raise AdrtError(f"{name} option sigma={sigma}: the smoothing radius {blur_radius(sigma)} px "
                        f"needs images larger than {h}×{w}")


def check_size(name: str, height: int, width: int, multiple: int) -> None:
    if height % multiple or width % multiple:
        works = ", ".join(str(multiple * i) for i in range(1, 9) if multiple * i <= 512)
        raise AdrtError(f"{name}: input size {height}×{width} is not a multiple of {multiple} (the network's "
                        f"stride-2 levels); sizes that work: {works}, ...")


def n_steps(iterations: int, epochs: int, n_images: int, batch_size: int) -> int:
    """Optimiser steps: ``epochs`` passes over the images, capped at ``iterations`` (small data sets
    train briefly, real ones reach the cap)."""
    return max(1, min(iterations, epochs * math.ceil(n_images / batch_size)))


def to_tensor(images: np.ndarray, preprocess) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([preprocess(torch.from_numpy(images[i : i + 32])) for i in range(0, len(images), 32)])


def train_network(name: str, net: torch.nn.Module, loss_fn: Callable[[torch.Tensor], tuple[torch.Tensor, dict]],
                  x_all: torch.Tensor, *, iterations: int, epochs: int, batch_size: int, lr: float, seed: int,
                  log=print) -> dict:
    """Adam + cosine schedule on random mini-batches of ``x_all`` (N×C×H×W, normalised).

    ``loss_fn(batch) -> (loss, parts)``; ``parts`` (floats) are averaged into the log lines.
    A non-finite loss raises AdrtError (divergence) instead of training on. Returns a summary.
    """
    n = x_all.shape[0]
    bs = min(batch_size, n)
    steps = n_steps(iterations, epochs, n, bs)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05)
    g = torch.Generator().manual_seed(seed)
    n_par = sum(p.numel() for p in net.parameters())
    log(f"  {name}: {n_par / 1e6:.2f} M parameters; {steps} steps of {bs} images "
        f"({steps * bs / n:.1f} epochs)")
    net.train()
    t0, every = time.perf_counter(), max(1, steps // 8)
    acc: dict[str, float] = {}
    k, first, last = 0, None, None
    for it in range(1, steps + 1):
        idx = torch.randperm(n, generator=g)[:bs]
        loss, parts = loss_fn(x_all[idx])
        if not torch.isfinite(loss):
            raise AdrtError(f"{name}: training diverged at step {it} (loss {loss.item()}); try a smaller lr "
                            f"(now {lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        for key, v in parts.items():
            acc[key] = acc.get(key, 0.0) + float(v)
        k += 1
        if it % every == 0 or it == steps:
            means = {key: v / k for key, v in acc.items()}
            first = first or means
            last = means
            log(f"  step {it}/{steps}: " + ", ".join(f"{key} {v:.4g}" for key, v in means.items())
                + f" ({time.perf_counter() - t0:.0f} s)")
            acc, k = {}, 0
    net.eval()
    return {"steps": steps, "batch_size": bs, "seconds": round(time.perf_counter() - t0, 1),
            "first": first, "last": last}


# --- derived runs: same trained network, other test-time options -------------------------------------

def rebuild_scorer(cls, scorer: torch.nn.Module, cfg) -> torch.nn.Module:
    """A new scorer of method class ``cls`` built for ``cfg`` (validated) with the weights and fitted
    buffers of ``scorer``; terms that depend on test-time options are recomputed."""
    new = cls.build(cfg)
    state = scorer.state_dict()
    for name, buf in list(new.named_buffers()):
        if name in state and buf.shape != state[name].shape:   # latent-sized buffers start empty
            owner = new.get_submodule(name.rpartition(".")[0]) if "." in name else new
            setattr(owner, name.rpartition(".")[2], torch.empty_like(state[name]))
    new.load_state_dict(state)
    if hasattr(new, "refresh"):
        new.refresh()
    return new.eval()


def with_options(run: str | os.PathLike, out: str | os.PathLike, data: str | os.PathLike | None = None,
                 log=lambda *a, **k: None, overwrite: bool = False, **changes) -> Path:
    """Write run folder ``out``: the trained network of run ``run`` (a ``memae`` or ``vae`` run) with
    other test-time options (``changes``, a subset of the method's ``TEST_TIME_OPTIONS``, e.g.
    ``k_steps=20`` or ``score="mmd"``), recalibrated on the run's own held-out images.

    The held-out images are found again from the recorded seed and counts (the split depends only
    on the seed and the file names); ``data`` defaults to the dataset recorded in the run.
    """
    from adrt.train.detector import Detector
    from adrt.train.fit import load_run, save_derived_run
    from adrt.train.registry import get_method

    meta_path = Path(run) / "detector.json"
    method = json.loads(meta_path.read_text()).get("method") if meta_path.is_file() else None
    det, meta = load_run(run)            # raises for anything that is not a run folder
    cls = get_method(meta["method"])
    allowed = getattr(cls, "TEST_TIME_OPTIONS", None)
    if allowed is None:
        raise AdrtError(f"{run}: a {method!r} run; with_options works on memae and vae runs")
    names = {f.name for f in fields(cls.Config)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise AdrtError(f"{method} has no option {', '.join(map(repr, unknown))}; options: {', '.join(sorted(names))}")
    bad = sorted(set(changes) - set(allowed))
    if bad:
        raise AdrtError(f"{method}: {', '.join(bad)} cannot change without retraining; "
                        f"test-time options: {', '.join(allowed)}")
    cfg = replace(det.scorer.cfg, **changes)
    scorer = rebuild_scorer(cls, det.scorer, cfg)
    new = Detector(scorer.eval(), det.spec, sigma=cfg.sigma, image_score=det.image_score).eval()
    return save_derived_run(new, cfg, meta, run, out, changes, data, log, f"with_options {changes}",
                            overwrite=overwrite)
