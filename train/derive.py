"""Derived runs: the trained networks of a run with other test-time options, recalibrated, written as a
new run folder. One mechanism for every method: the method lists the options in ``TEST_TIME_OPTIONS``
and rebuilds its scorer in ``derive`` (adrt.train.registry.Method); :func:`derive` checks the options,
builds the new config (which checks the values), and recalibrates on the run's own held-out images
(found again from the recorded seed and counts: the split depends only on the seed and the file names).
"""
from __future__ import annotations

import json
import os
from dataclasses import fields, replace
from pathlib import Path

import torch

from adrt.errors import AdrtError
from adrt.train.detector import Detector
from adrt.train.fit import load_run, save_derived_run
from adrt.train.registry import get_method
from adrt.train.trainer import resize_buffers


def derive(run: str | os.PathLike, out: str | os.PathLike, data: str | os.PathLike | None = None,
           log=lambda *a, **k: None, overwrite: bool = False, *, method: str | None = None,
           what: str = "", **changes) -> Path:
    """Write run folder ``out``: run ``run`` with ``changes`` (a subset of its method's
    ``TEST_TIME_OPTIONS``), recalibrated on the run's held-out images. ``method``, when given, is the
    method the run must be of; ``what`` names the derived run in the log; ``data`` defaults to the
    dataset recorded in the run."""
    meta_path = Path(run) / "detector.json"
    recorded = json.loads(meta_path.read_text()).get("method") if meta_path.is_file() else None
    if method is not None and recorded is not None and recorded != method:   # before its config is read
        raise AdrtError(f"{run}: a {recorded!r} run, not a{'n' if method[0] in 'aeiou' else ''} {method} run")
    det, meta = load_run(run)            # raises for anything that is not a run folder
    name = meta["method"]
    cls = get_method(name)
    allowed = cls.TEST_TIME_OPTIONS
    if not allowed:
        raise AdrtError(f"{run}: a {name!r} run; {name} has no test-time options (a derived run would equal it)")
    names = {f.name for f in fields(cls.Config)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise AdrtError(f"{name} has no option {', '.join(map(repr, unknown))}; options: {', '.join(sorted(names))}")
    bad = sorted(set(changes) - set(allowed))
    if bad:
        raise AdrtError(f"{name}: {', '.join(bad)} cannot change without retraining; "
                        f"test-time options: {', '.join(allowed)}")
    cfg = replace(det.scorer.cfg, **changes)
    scorer = cls.derive(det.scorer, cfg, det.spec, meta["training"]["seed"])
    new = Detector(scorer.eval(), det.spec, sigma=cfg.sigma, geometry=det.geometry,
                   image_score=det.image_score).eval()
    return save_derived_run(new, cfg, meta, run, out, changes, data, log, what or f"derived run {changes}",
                            overwrite=overwrite)


def rebuild(build, scorer: torch.nn.Module, cfg) -> torch.nn.Module:
    """``build(cfg)`` given the weights and fitted buffers of ``scorer`` (the ``derive`` of methods
    whose test-time options change no weight); terms that depend on them are recomputed (``refresh``)."""
    new = build(cfg)
    state = scorer.state_dict()
    resize_buffers(new, state)             # data-sized buffers start empty
    new.load_state_dict(state)
    if hasattr(new, "refresh"):
        new.refresh()
    return new.eval()
