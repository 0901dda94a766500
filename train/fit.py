"""Training pipeline: dataset → fitted scorer → calibrated Detector → run folder.

A run folder holds ``detector.json`` (method, config, input spec, calibration, data summary) and
``weights.pt`` (a plain state dict, loaded with ``weights_only=True``: no pickled objects).
"""
from __future__ import annotations

import io
import json
import os
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch

from adrt._version import __version__
from adrt.data import Dataset, load_images, load_masks, split_holdout
from adrt.errors import AdrtError, DataError, InputError
from adrt.outputs import Kind, check_output, staged_folder
from adrt.runtime.limits import check_threads
from adrt.train.detector import Calibration, Detector, InputSpec, apply_calibration, calibrate, topk_count
from adrt.thresholds import CalibrationOptions
from adrt.train.registry import get_method

CHECKPOINT_VERSION = 1


def make_config(method: str, overrides: dict | None = None):
    """The method's frozen config with ``overrides`` applied; unknown keys raise listing the valid
    ones, and the Config itself refuses values out of range (naming the option)."""
    cls = get_method(method)
    names = {f.name: f for f in fields(cls.Config)}
    kw = {}
    for k, v in (overrides or {}).items():
        if k not in names:
            raise AdrtError(f"{method} has no option {k!r}; options: {', '.join(names)}")
        default = getattr(cls.Config(), k)
        kw[k] = _coerce(k, v, default)
    return cls.Config(**kw)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _coerce(key, value, default):
    """A --set string as the type of the option's default (the Config checks the range)."""
    if not isinstance(value, str):
        return value
    try:
        if isinstance(default, bool):
            if value.lower() not in _TRUE + _FALSE:
                raise ValueError(value)
            return value.lower() in _TRUE
        if isinstance(default, tuple):
            return tuple(type(default[0])(v) for v in value.split(",")) if default else tuple(value.split(","))
        return type(default)(value)
    except ValueError:
        raise AdrtError(f"option {key}={value!r}: expected a value like {default!r}") from None


def _log(msg: str = "", end: str = "\n") -> None:
    # Progress goes to stderr: \r-updates on a terminal, whole lines elsewhere.
    if end == "\r" and not sys.stderr.isatty():
        return
    print(msg, end=end, file=sys.stderr, flush=True)


def train(method: str, data: str | os.PathLike, out: str | os.PathLike, *, size: int = 256,
          seed: int = 0, holdout: float = 0.1, min_holdout: int = 4, options: dict | None = None,
          threads: int | None = None, log=_log, overwrite: bool = False,
          calibration: CalibrationOptions | None = None, defects: str | os.PathLike | None = None,
          image_score: str = "max") -> Path:
    """Fit ``method`` on the normal images of ``data`` and write a run folder to ``out``.

    A fraction ``holdout`` of the normal training images (at least ``min_holdout``) is kept out
    of fitting and used to calibrate the thresholds by ``calibration`` (default: mean + 3·std; see
    adrt.thresholds); ``defects``: labelled defect images for the f1 rule (see
    :func:`load_defects`). ``image_score``: ``max`` (the method's own image score, else the map's
    maximum) or ``topk:FRACTION`` (the mean of that top fraction of the smoothed map; see
    adrt.train.detector.topk_count). Returns the run folder. An existing run
    folder at ``out`` is replaced only with ``overwrite``; anything else there is refused before
    training starts (adrt.outputs).
    """
    cfg = make_config(method, options)
    threads = check_threads(threads)
    InputSpec(height=size, width=size)           # the size is checked before anything else
    topk_count(image_score, size * size)
    calibration = _check_calibration(calibration, defects, data)
    check_output(out, Kind.RUN, overwrite=overwrite, inputs=[data])
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    ds = Dataset.open(data)
    fit_paths, hold_paths = split_holdout(ds.train, holdout, min_holdout, seed)
    spec = InputSpec(height=size, width=size)
    defect_data = load_defects(defects, size, size) if defects is not None else None
    t0 = time.perf_counter()
    log(f"{method}: {len(fit_paths)} images to fit, {len(hold_paths)} held out for calibration, {size}x{size}")
    fit_imgs = load_images(fit_paths, size, size)
    cls = get_method(method)
    probe = Detector(torch.nn.Identity(), spec)
    scorer = cls.fit(cfg, fit_imgs, probe.preprocess, seed=seed, log=log)
    det = Detector(scorer, spec, sigma=cfg.sigma, image_score=image_score).eval()
    cal = calibrate(det, load_images(hold_paths, size, size), options=calibration, defects=defect_data)
    seconds = time.perf_counter() - t0
    log(f"  trained in {seconds:.1f} s; image threshold {cal.score_threshold:.4g} (raw)")
    _log_calibration(cal, log)
    meta = {
        "checkpoint_version": CHECKPOINT_VERSION,
        "adrt_version": __version__,
        "method": method,
        "config": asdict(cfg),
        "input": spec.to_dict(),
        "image_score": image_score,
        "calibration": cal.to_dict(),
        "training": {
            "data": str(Path(data).resolve()), "dataset": ds.name, "n_fit": len(fit_paths),
            "n_holdout": len(hold_paths), "seed": seed, "seconds": round(seconds, 2),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            **getattr(scorer, "fit_record", {}),
        },
    }
    return save_run(det, meta, out, overwrite=overwrite, inputs=[data])


def save_run(det: Detector, meta: dict, out, *, overwrite: bool = False, inputs=()) -> Path:
    """Write weights + metadata to a temporary folder beside ``out``, then move it into place (no
    half-written run). An existing run folder is replaced only with ``overwrite``; a folder that
    is not a run, or one of ``inputs``, never (adrt.outputs)."""
    out = Path(out)
    # Serialised in memory first: torch.save reports a full disk as a RuntimeError, a file write
    # as an OSError (which staged_folder turns into a clear OutputError).
    buf = io.BytesIO()
    torch.save(det.state_dict(), buf)
    with staged_folder(out, Kind.RUN, overwrite=overwrite, inputs=inputs) as tmp:
        with open(tmp / "weights.pt", "wb") as f:
            f.write(buf.getbuffer())
        (tmp / "detector.json").write_text(json.dumps(meta, indent=2))
    return out


def save_derived_run(new: Detector, cfg, meta: dict, run, out, changed: dict, data=None,
                     log=lambda *a, **k: None, what: str = "derived run", overwrite: bool = False) -> Path:
    """Write run folder ``out`` for ``new``: a detector rebuilt from run ``run`` (its ``meta``) with
    config ``cfg``, recalibrated on the run's own held-out images, and recorded as derived from it
    with ``changed``. The held-out images are found again from the recorded seed and counts (the
    split depends only on the seed and the file names); ``data`` defaults to the recorded dataset."""
    import copy

    check_output(out, Kind.RUN, overwrite=overwrite, inputs=[run])
    hold = _holdout_paths(meta, data)
    log(f"{what}: recalibrating on {len(hold)} held-out images")
    cal = calibrate(new, load_images(hold, new.spec.height, new.spec.width))
    meta = copy.deepcopy(meta)
    meta["config"] = asdict(cfg)
    meta["calibration"] = cal.to_dict()
    meta["training"]["derived_from"] = {"run": str(Path(run).resolve()), "changed": dict(changed)}
    return save_run(new, meta, out, overwrite=overwrite, inputs=[run])


def _holdout_paths(meta: dict, data=None) -> list:
    """A run's held-out images, found again from the recorded seed and counts (the split depends
    only on the seed and the file names); ``data`` defaults to the recorded dataset."""
    tr = meta["training"]
    ds = Dataset.open(data if data is not None else tr["data"])
    n_total = len(ds.train)
    if n_total != tr["n_fit"] + tr["n_holdout"]:
        raise AdrtError(f"{ds.root}: {n_total} training images, the run was trained on "
                        f"{tr['n_fit']} + {tr['n_holdout']} held out; pass the run's dataset")
    return split_holdout(ds.train, tr["n_holdout"] / n_total, 0, tr["seed"])[1]


def recalibrate(run, out, calibration: CalibrationOptions | None = None, *, defects=None, data=None, log=_log,
                overwrite: bool = False, image_score: str | None = None) -> Path:
    """Write run folder ``out``: run ``run`` with its thresholds chosen again by ``calibration``
    (default: the std rule) on its own held-out images, no refitting; ``defects`` as for
    :func:`train`. ``image_score``: also change the image score (``max``, ``topk:FRACTION``)."""
    import copy

    det, meta = load_run(run)
    if image_score is not None:
        det = Detector(det.scorer, det.spec, sigma=det.blur.sigma, image_score=image_score).eval()
        meta["image_score"] = image_score
    calibration = _check_calibration(calibration, defects, data if data is not None else meta["training"]["data"])
    check_output(out, Kind.RUN, overwrite=overwrite, inputs=[run])
    hold = _holdout_paths(meta, data)
    h, w = det.spec.height, det.spec.width
    defect_data = load_defects(defects, h, w) if defects is not None else None
    cal = calibrate(det, load_images(hold, h, w), options=calibration, defects=defect_data)
    _log_calibration(cal, log)
    meta = copy.deepcopy(meta)
    meta["calibration"] = cal.to_dict()
    meta["training"]["derived_from"] = {"run": str(Path(run).resolve()),
                                        "changed": {"calibration": cal.rule, "image_score": meta.get("image_score", "max")}}
    return save_run(det, meta, out, overwrite=overwrite, inputs=[run])


def _check_calibration(calibration, defects, data) -> CalibrationOptions:
    calibration = CalibrationOptions() if calibration is None else calibration
    if not isinstance(calibration, CalibrationOptions):
        raise InputError(f"calibration={calibration!r}: expected an adrt.thresholds.CalibrationOptions")
    if (calibration.rule == "f1") != (defects is not None):
        raise InputError("the f1 calibration needs labelled defect images (--defects DIR), and defect images are "
                         "used only by it (--calibration f1)")
    if defects is not None and Path(defects).resolve() == Path(data).resolve():
        raise InputError(f"--defects {defects} is the training dataset: its test images would then set the "
                         f"threshold they are evaluated at; pass a separate folder of labelled defect images")
    return calibration


def load_defects(folder, height: int, width: int):
    """Labelled defect images for the f1 calibration: (uint8 N×H×W×3, bool masks N×H×W or None).

    ``folder``: an MVTec-style folder (its ``test/<type>/`` defect images, with their
    ``ground_truth`` masks when every one has a mask), or a plain folder of defect images (no masks:
    the pixel threshold is then chosen at the pixel FPR)."""
    ds = Dataset.open(folder)
    if ds.is_mvtec:
        samples = [t for t in ds.test if t.label == 1]
        if not samples:
            raise DataError(f"{folder}: no defect images in test/<type>/ (expected labelled defect images)")
        return load_images([t.path for t in samples], height, width), load_masks(samples, height, width)
    return load_images(ds.train, height, width), None


def _log_calibration(cal: Calibration, log) -> None:
    from adrt.thresholds import describe

    for what in ("image", "pixel"):
        d = getattr(cal, what)
        if d is not None:
            log(f"  {describe(d, what)}")


def load_run(run) -> tuple[Detector, dict]:
    """Rebuild the Detector of a run folder (no pretrained weights needed: all are in weights.pt)."""
    run = Path(run)
    meta_path, w_path = run / "detector.json", run / "weights.pt"
    for p in (meta_path, w_path):
        if not p.is_file():
            raise AdrtError(f"{run}: not a run folder ({p.name} missing); create one with `adrt train`")
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise AdrtError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("checkpoint_version") != CHECKPOINT_VERSION:
        version = meta.get("checkpoint_version") if isinstance(meta, dict) else None
        raise AdrtError(f"{run}: checkpoint version {version!r}, this adrt reads version {CHECKPOINT_VERSION}")
    try:
        cls = get_method(meta["method"])
        stored = {**getattr(cls.Config, "absent", {}), **meta["config"]}     # options newer than the run
        cfg = cls.Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()})
        spec = InputSpec.from_dict(meta["input"])
        cal = Calibration.from_dict(meta["calibration"])
    except (KeyError, TypeError, InputError) as e:
        raise AdrtError(f"{meta_path}: not a valid run record ({type(e).__name__}: {e})") from None
    image_score = meta.get("image_score", "max")          # runs from before the option: max
    try:
        det = Detector(cls.build(cfg), spec, sigma=cfg.sigma, image_score=image_score)
    except AdrtError as e:
        raise AdrtError(f"{meta_path}: {e}") from None
    state = torch.load(w_path, map_location="cpu", weights_only=True)
    _resize_buffers(det, state)
    det.load_state_dict(state)
    apply_calibration(det, cal)
    return det.eval(), meta


def _resize_buffers(module: torch.nn.Module, state: dict) -> None:
    # Data-sized buffers (memory bank, Gaussians) start empty; give them the saved shapes.
    for name, buf in list(module.named_buffers()):
        if name in state and buf.shape != state[name].shape:
            owner = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
            setattr(owner, name.rpartition(".")[2], torch.empty_like(state[name]))


