"""The one trainer of every trained method (``students``, ``efficientad``, ``inpaint``, ``memae``, ``vae``).

* :class:`Session` runs named *stages* of optimiser steps with progress lines, stops a stage
  early on Ctrl-C (keeping the current weights: training goes on with the next stage and then to
  calibration; a second Ctrl-C within two seconds aborts), and, when a checkpoint file is given
  (the methods' ``checkpoint`` option), saves the whole training state there every ``every`` steps,
  at the end of every stage and on abort. A later run with the same data, options and seed resumes
  from it and ends with the same weights as an uninterrupted run.
* Step counting (:func:`n_steps` for pixel-based epochs, :func:`epoch_steps` for whole-image
  batches), :func:`split_validation` (normal images kept out of training for a method's own map
  statistics; the calibration holdout of ``adrt.train.fit`` is separate and comes on top),
  :func:`to_tensor` and :func:`check_size`, written once.

Checkpoints are plain ``torch.save`` dicts of tensors, numbers and strings, read back with
``weights_only=True`` (no pickled objects), written to a temporary file and moved into place.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from adrt.errors import AdrtError, DataError
from adrt.train.detector import resize_to
from adrt.train.options import int_opt

CHECKPOINT_FORMAT = 1
ABORT_WINDOW_S = 2.0


def split_validation(n: int, fraction: float, min_val: int, min_train: int, seed: int, method: str):
    """Indices ``(train, val)`` of ``n`` images: ``max(min_val, round(fraction·n))`` for validation.

    Raises :class:`DataError` saying how many images are needed when fewer than
    ``n_val + min_train`` are given. The choice depends only on ``seed``.
    """
    if not 0.0 <= float(fraction) < 1.0:
        raise AdrtError(f"{method} option val_fraction={fraction!r}: expected a number in [0, 1)")
    n_val = max(int(min_val), int(round(float(fraction) * n)))
    need = n_val + int(min_train)
    if n < need:
        # Smallest total that satisfies the split (the fraction grows with n).
        total = need
        while max(int(min_val), int(round(float(fraction) * total))) + int(min_train) > total:
            total += 1
        raise DataError(
            f"{method}: too few images for the validation split: {n} left to fit after the calibration "
            f"holdout, need at least {total} ({max(int(min_val), int(round(float(fraction) * total)))} for "
            f"validation (val_fraction={fraction}, min_val={min_val}) + {min_train} to train); "
            f"add images or lower val_fraction/min_val")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 7919)).tolist()
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return train, val


def n_steps(cap: int, epochs: float, n_images: int, input_side: int, model_side: int, batch: int = 1) -> int:
    """Optimiser steps: ``epochs`` passes over the training pixels at the input resolution, counted
    in batches of ``batch`` images at the model's side (``input_side²/model_side²`` steps per image
    per pass), capped at ``cap``. Small or low-resolution data sets train briefly, real ones reach
    the cap (as the inpainting method's rule)."""
    per_image = (input_side / model_side) ** 2
    return max(1, min(int(cap), math.ceil(epochs * n_images * per_image / batch)))


def images_digest(images: np.ndarray) -> str:
    """sha1 of the image array (shape and bytes): ties a checkpoint to its data."""
    h = hashlib.sha1(str(images.shape).encode())
    h.update(np.ascontiguousarray(images).data)
    return h.hexdigest()


def sub_seed(seed: int, name: str) -> int:
    """A deterministic 63-bit seed for stream ``name`` of run ``seed`` (independent of call order)."""
    return int.from_bytes(hashlib.sha256(f"{int(seed)}\0{name}".encode()).digest()[:8], "little") >> 1


def epoch_steps(cap: int, epochs: int, n_images: int, batch: int) -> int:
    """Optimiser steps: ``epochs`` passes over the images in batches of ``batch``, capped at ``cap``
    (small data sets train briefly, real ones reach the cap)."""
    return max(1, min(int(cap), int(epochs) * math.ceil(n_images / batch)))


@torch.no_grad()
def to_tensor(images: np.ndarray, preprocess, size: int = 0, batch: int = 32) -> torch.Tensor:
    """uint8 NHWC → normalised NCHW float, resized to ``size`` (the scorers' in-graph resize; 0 = as is)."""
    return torch.cat([resize_to(preprocess(torch.from_numpy(images[i : i + batch])), size)
                      for i in range(0, len(images), batch)])


def check_size(name: str, height: int, width: int, multiple: int) -> None:
    """Raise AdrtError unless both sides are multiples of ``multiple`` (a network's stride-2 levels)."""
    if height % multiple or width % multiple:
        works = ", ".join(str(multiple * i) for i in range(1, 9) if multiple * i <= 512)
        raise AdrtError(f"{name}: input size {height}×{width} is not a multiple of {multiple} (the network's "
                        f"stride-2 levels); sizes that work: {works}, ...")


def check_checkpoint_options(method: str, cfg) -> None:
    """The ``checkpoint`` (a path or "") and ``checkpoint_every`` (steps, 0 = stage ends only) options."""
    if not isinstance(cfg.checkpoint, str):
        raise AdrtError(f"{method} option checkpoint={cfg.checkpoint!r}: expected a string")
    int_opt(method, cfg, "checkpoint_every", 0)


class _StopFlag:
    """SIGINT handler, installed only in the main thread. The first Ctrl-C asks the running stage
    to stop at the next step boundary; a second one within ABORT_WINDOW_S asks to abort there
    (state saved when a checkpoint is set, then KeyboardInterrupt). Acting only at step
    boundaries keeps the weights and the optimiser state consistent."""

    def __init__(self, log):
        self.state: str | None = None
        self.last = -math.inf
        self.log = log
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False

    def _handle(self, signum, frame):
        now = time.monotonic()
        if now - self.last < ABORT_WINDOW_S:
            self.state = "abort"
            self.log("")
            self.log("  Ctrl-C again: aborting at the next step")
            return
        self.last = now
        self.state = "stop"
        self.log("")
        self.log(f"  Ctrl-C: stopping this stage at the next step and keeping its weights "
                 f"(Ctrl-C again within {ABORT_WINDOW_S:.0f} s aborts)")

    def take(self) -> str | None:
        r, self.state = self.state, (None if self.state == "stop" else self.state)
        return r


class Session:
    """Runs the stages of one fit; see the module docstring.

    ``modules``: name → nn.Module whose state is the training state (all trained networks and the
    buffers filled so far). ``fingerprint``: what a checkpoint must match to be resumed.
    """

    def __init__(self, method: str, cfg, images: np.ndarray, seed: int, modules: dict, log,
                 checkpoint: str | None = None, every: int | None = None):
        self.method = method
        self.seed = int(seed)
        self.modules = modules
        self.log = log
        checkpoint = cfg.checkpoint if checkpoint is None else checkpoint
        self.path = Path(checkpoint) if checkpoint else None
        self.every = int(cfg.checkpoint_every if every is None else every)
        skip = {"checkpoint", "checkpoint_every"}
        self.fingerprint = json.dumps({
            "method": method, "seed": self.seed, "images": images_digest(images),
            "config": {k: v for k, v in asdict(cfg).items() if k not in skip},
        }, sort_keys=True, default=list)
        self.done: list[str] = []
        self._resume: dict | None = None
        self.stopped: list[str] = []
        if self.path is not None and self.path.exists():
            self._load()

    # -- checkpoint -------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for a damaged or foreign file
            raise AdrtError(f"{self.path}: not a readable {self.method} checkpoint ({type(e).__name__}: {e}); "
                            "delete it or choose another checkpoint path") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise AdrtError(f"{self.path}: not a {self.method} checkpoint of format {CHECKPOINT_FORMAT}")
        if state.get("fingerprint") != self.fingerprint:
            mine, theirs = json.loads(self.fingerprint), json.loads(state.get("fingerprint", "{}"))
            diff = [k for k in ("method", "seed", "images") if mine.get(k) != theirs.get(k)]
            diff += [f"config.{k}" for k in sorted(set(mine["config"]) | set(theirs.get("config", {})))
                     if mine["config"].get(k) != theirs.get("config", {}).get(k)]
            raise AdrtError(f"{self.path}: checkpoint of another training (differs in {', '.join(diff) or '?'}); "
                            "resume with the same data, options and seed, or delete it")
        for name, mod in self.modules.items():
            _load_module(mod, state["modules"][name])
        self.done = list(state["done"])
        self._resume = state.get("current")
        where = f"stage {self._resume['stage']} step {self._resume['step']}" if self._resume else "end of stage"
        self.log(f"  resuming from {self.path}: stages done: {', '.join(self.done) or 'none'}; at {where}")

    def save(self, current: dict | None = None) -> None:
        if self.path is None:
            return
        state = {
            "format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint, "done": list(self.done),
            "current": current,
            "modules": {n: m.state_dict() for n, m in self.modules.items()},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    # -- stages -------------------------------------------------------------------------------------
    def is_done(self, name: str) -> bool:
        return name in self.done

    def mark_done(self, name: str) -> None:
        """For stages without optimiser steps (statistics): recorded so a resume skips them."""
        if name not in self.done:
            self.done.append(name)
        self.save()

    def run(self, name: str, steps: int, params, lr: float, weight_decay: float, step_fn: Callable,
            lr_drop_at: float = 1.0, describe: str = "", *, cosine: bool = False, seed: int | None = None,
            reseed_global: bool = True) -> None:
        """``steps`` Adam steps of ``step_fn(step, gen) -> (loss tensor, {name: float})``.

        ``gen`` is this stage's torch.Generator, seeded with ``seed`` (default: a sub-seed of the
        run's seed and the stage name); the global torch RNG (dropout, ``randn_like``) is reseeded the
        same way unless ``reseed_global`` is False. Their states, the optimiser's, the schedule's and
        the step travel in the checkpoint. The learning rate is multiplied by 0.1 from step
        ``lr_drop_at·steps`` on (the EfficientAD schedule; 1.0 = never), or with ``cosine`` follows a
        cosine from ``lr`` down to ``0.05·lr`` over the stage.
        """
        if self.is_done(name):
            return
        params = [p for p in params if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        drop_step = int(lr_drop_at * steps) if lr_drop_at < 1.0 else steps + 1
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05) if cosine else None
        gen = torch.Generator().manual_seed(sub_seed(self.seed, name) if seed is None else int(seed))
        if reseed_global:
            torch.manual_seed(sub_seed(self.seed, name + "/global"))
        start = 0
        if self._resume is not None and self._resume["stage"] == name:
            opt.load_state_dict(self._resume["optimizer"])
            if sched is not None:
                sched.load_state_dict(self._resume["schedule"])
            gen.set_state(self._resume["generator"])
            torch.set_rng_state(self._resume["torch_rng"])
            start = int(self._resume["step"])
            self._resume = None
        for mod in self.modules.values():
            mod.train()

        def snapshot(step: int) -> dict:
            return {"stage": name, "step": step, "optimizer": opt.state_dict(), "generator": gen.get_state(),
                    "torch_rng": torch.get_rng_state(), **({"schedule": sched.state_dict()} if sched else {})}

        self.log(f"  {name}: {steps} steps{(' of ' + describe) if describe else ''}"
                 + (f", resumed at step {start}" if start else ""))
        t0, report_every = time.perf_counter(), max(1, steps // 10)
        sums: dict[str, float] = {}
        k = 0
        step = start
        with _StopFlag(self.log) as stop:
            while step < steps:
                request = stop.take()
                if request == "abort":
                    if self.path is not None:
                        self.save(snapshot(step))
                        self.log(f"  aborted in {name} at step {step}/{steps}; state saved to {self.path} "
                                 "(run the same command again to resume)")
                    raise KeyboardInterrupt
                if request == "stop":
                    self.stopped.append(f"{name} at step {step}/{steps}")
                    self.log(f"  {name}: stopped at step {step}/{steps}; continuing with the current weights")
                    break
                if sched is None:
                    for g in opt.param_groups:
                        g["lr"] = lr * (0.1 if step >= drop_step else 1.0)
                loss, parts = step_fn(step, gen)
                if not torch.isfinite(loss):
                    raise AdrtError(f"{self.method}: {name} diverged at step {step + 1} (loss {loss.item()}); "
                                    "try a smaller lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                step += 1
                k += 1
                for key, v in parts.items():
                    sums[key] = sums.get(key, 0.0) + float(v)
                self.log(f"  {name} {step}/{steps} loss {sums.get('loss', 0.0) / k:.4f}", end="\r")
                if step % report_every == 0 or step == steps:
                    avg = " · ".join(f"{key} {v / k:.4g}" for key, v in sums.items())
                    self.log(f"  {name} step {step}/{steps}: {avg} ({time.perf_counter() - t0:.0f} s)")
                    sums, k = {}, 0
                if self.every and step % self.every == 0 and step < steps:
                    self.save(snapshot(step))
        for mod in self.modules.values():
            mod.eval()
        self.mark_done(name)


def _load_module(module: torch.nn.Module, state: dict) -> None:
    resize_buffers(module, state)
    module.load_state_dict(state)


def resize_buffers(module: torch.nn.Module, state: dict) -> None:
    """Data-sized buffers (memory bank, Gaussians, latents) start with placeholder shapes; give them
    the shapes of ``state`` before loading it."""
    for name, buf in list(module.named_buffers()):
        if name in state and buf.shape != state[name].shape:
            owner = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
            setattr(owner, name.rpartition(".")[2], torch.empty_like(state[name]))
