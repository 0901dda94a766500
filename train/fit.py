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

import numpy as np
import torch

from adrt._version import __version__
from adrt.contract import RESIZE, Geometry
from adrt.data import Dataset, load_images, load_masks, split_holdout
from adrt.errors import AdrtError, DataError, InputError
from adrt.outputs import Kind, check_output, staged_folder
from adrt.runtime.geometry import cut_tiles
from adrt.runtime.limits import check_threads
from adrt.train.detector import Calibration, Detector, InputSpec, apply_calibration, calibrate, topk_count
from adrt.thresholds import CalibrationOptions
from adrt.train.registry import get_method
from adrt.train.trainer import resize_buffers

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


def input_spec(size: int = 256, input_size: tuple[int, int] | None = None,
               geometry: Geometry = RESIZE) -> InputSpec:
    """The graph's input for a model of square ``size`` (or ``input_size`` = (height, width)):
    for a tiled geometry the full frame ``input_size`` (required), checked against the tiles."""
    if geometry.tiled:
        if input_size is None:
            raise AdrtError("a tiled geometry needs the frame size: --input-size HEIGHTxWIDTH (e.g. 2048x2448)")
        spec = InputSpec(*input_size)
        try:
            geometry.check_frame(spec.height, spec.width)
        except InputError as e:
            raise AdrtError(str(e)) from None
        return spec
    return InputSpec(*(input_size or (size, size)))


class FrameTiles:
    """The tiles of training frames, read on demand: what a method's fit reads as its images (a
    sequence of uint8 th×tw×3 tiles supporting ``len``, integer and slice indexing), so that only
    one frame is decoded at a time. Tiles are cut exactly as the graph cuts them."""

    def __init__(self, paths, spec: InputSpec, geometry: Geometry):
        self.paths, self.spec, self.geometry = list(paths), spec, geometry
        ys, xs = geometry.grid(spec.height, spec.width)
        self.per_frame = len(ys) * len(xs)
        self.dtype = np.dtype(np.uint8)
        self._frame, self._tiles = -1, None

    def __len__(self) -> int:
        return len(self.paths) * self.per_frame

    @property
    def shape(self) -> tuple:
        return (len(self), *self.geometry.tile, 3)

    def _tile(self, i: int) -> np.ndarray:
        f, t = divmod(i, self.per_frame)
        if f != self._frame:
            frame = load_images([self.paths[f]], self.spec.height, self.spec.width)
            self._frame, self._tiles = f, cut_tiles(frame, self.geometry)
        return self._tiles[t]

    def __getitem__(self, key):
        if isinstance(key, slice):
            return np.stack([self._tile(i) for i in range(*key.indices(len(self)))])
        idx = np.asarray(key)
        if idx.ndim == 0:
            return self._tile(int(idx) % len(self))
        return np.stack([self._tile(int(i) % len(self)) for i in idx.ravel()])

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def training_images(paths, spec: InputSpec, geometry: Geometry, streams: bool):
    """What a method fits on: the frames at the input size (letterboxed or resized), or for a tiled
    geometry their tiles, read on demand when the method ``streams`` them, else all in memory."""
    if not geometry.tiled:
        return load_images(paths, spec.height, spec.width, geometry)
    tiles = FrameTiles(paths, spec, geometry)
    return tiles if streams else np.asarray(tiles)


def load_frames(paths, det: Detector) -> np.ndarray:
    """Frames at ``det``'s input size by its geometry (e.g. held-out images for calibration)."""
    return load_images(paths, det.spec.height, det.spec.width, det.geometry)


def train(method: str, data: str | os.PathLike, out: str | os.PathLike, *, size: int = 256,
          seed: int = 0, holdout: float = 0.1, min_holdout: int = 4, options: dict | None = None,
          threads: int | None = None, log=_log, overwrite: bool = False,
          geometry: Geometry = RESIZE, input_size: tuple[int, int] | None = None,
          calibration: CalibrationOptions | None = None, defects: str | os.PathLike | None = None,
          image_score: str = "max") -> Path:
    """Fit ``method`` on the normal images of ``data`` and write a run folder to ``out``.

    The model's input is ``size``×``size`` (or ``input_size`` = (height, width)); ``geometry``
    (adrt.contract.Geometry) says how frames get there: resized, letterboxed, or (``tile``) resized
    to the frame size ``input_size`` and cut into tiles of the geometry's size, on which the method
    fits (read frame by frame for methods that stream their features: PatchCore, PaDiM).
    A fraction ``holdout`` of the normal training images (at least ``min_holdout``) is kept out
    of fitting and used to calibrate the thresholds (on whole frames) by ``calibration`` (default:
    mean + 3·std; see adrt.thresholds); ``defects``: labelled defect images for the f1 rule (see
    :func:`load_defects`). ``image_score``: ``max`` (the method's own image score, else the map's
    maximum) or ``topk:FRACTION`` (the mean of that top fraction of the smoothed frame map; see
    adrt.train.detector.topk_count). Returns the run folder. An existing run folder at ``out`` is
    replaced only with ``overwrite``; anything else there is refused before training starts
    (adrt.outputs).
    """
    cfg = make_config(method, options)
    threads = check_threads(threads)
    spec = input_spec(size, input_size, geometry)     # the size is checked before anything else
    topk_count(image_score, spec.height * spec.width)
    calibration = _check_calibration(calibration, defects, data)
    cls = get_method(method)
    paired = cls.needs_references(cfg)
    cls.check_training(cfg, geometry, defects)       # what the method cannot take, before training starts
    check_output(out, Kind.RUN, overwrite=overwrite, inputs=[data])
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    ds = Dataset.open(data, references=paired)
    fit_paths, hold_paths = split_holdout(ds.train, holdout, min_holdout, seed)
    refs = {}
    if paired:
        # Every training image's reference is found before any is read (one error names them all).
        from adrt.runtime.pairs import find_references

        refs = dict(zip(fit_paths + hold_paths, find_references(fit_paths + hold_paths)))
    defect_data = load_defects(defects, spec, geometry) if defects is not None else None
    t0 = time.perf_counter()
    shape = f"{spec.height}x{spec.width}"
    if geometry.tiled:
        ys, xs = geometry.grid(spec.height, spec.width)
        shape += (f" frames, {len(ys)}x{len(xs)} tiles of {geometry.tile[0]}x{geometry.tile[1]} "
                  f"(overlap {geometry.overlap})")
    elif geometry.mode == "letterbox":
        shape += " (letterboxed)"
    log(f"{method}: {len(fit_paths)} images to fit, {len(hold_paths)} held out for calibration, {shape}")
    fit_imgs = training_images(fit_paths, spec, geometry, getattr(cls, "streams_images", False))
    probe = Detector(torch.nn.Identity(), spec)
    extra = {"references": training_images([refs[p] for p in fit_paths], spec, geometry, False)} if paired else {}
    scorer = cls.fit(cfg, fit_imgs, probe.preprocess, seed=seed, log=log, **extra)
    det = Detector(scorer, spec, sigma=cfg.sigma, geometry=geometry, image_score=image_score).eval()
    hold_refs = load_frames([refs[p] for p in hold_paths], det) if paired else None
    cal = calibrate(det, load_frames(hold_paths, det), options=calibration, defects=defect_data, references=hold_refs)
    seconds = time.perf_counter() - t0
    log(f"  trained in {seconds:.1f} s; image threshold {cal.score_threshold:.4g} (raw)")
    _log_calibration(cal, log)
    meta = {
        "checkpoint_version": CHECKPOINT_VERSION,
        "adrt_version": __version__,
        "method": method,
        "config": asdict(cfg),
        "input": spec.to_dict(),
        "geometry": geometry.to_dict(),
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

    check_output(out, Kind.RUN, overwrite=overwrite, inputs=[run])
    meta = recalibrated(new, meta, data, log, what)
    meta["config"] = asdict(cfg)
    meta["training"]["derived_from"] = {"run": str(Path(run).resolve()), "changed": dict(changed)}
    return save_run(new, meta, out, overwrite=overwrite, inputs=[run])


def recalibrated(new: Detector, meta: dict, data=None, log=lambda *a, **k: None, what: str = "derived run") -> dict:
    """Calibrate ``new`` on the held-out images of the run ``meta`` describes (found again from the
    recorded seed and counts; ``data`` defaults to the recorded dataset) and return a copy of
    ``meta`` with the new calibration, input and geometry (the calibration rule is the run's)."""
    import copy

    hold, frames, refs = _holdout_frames(new, meta, data)
    options = recorded_rule(meta.get("calibration", {}))
    log(f"{what}: recalibrating on {len(hold)} held-out images"
        + ("" if options is not None else " (the run's rule needs defect images: the std rule instead)"))
    cal = calibrate(new, frames, options=options or CalibrationOptions(), references=refs)
    meta = copy.deepcopy(meta)
    meta["input"], meta["geometry"] = new.spec.to_dict(), new.geometry.to_dict()
    meta["calibration"] = cal.to_dict()
    return meta


def recorded_rule(cal: dict) -> CalibrationOptions | None:
    """The threshold rule a run's calibration record says it was set by (std: its k; fpr: its image
    and pixel targets); None for the f1 rule (it needs the defect images) and records without one."""
    image, pixel = cal.get("image") or {}, cal.get("pixel") or {}
    if image.get("rule") == "std":
        return CalibrationOptions("std", k=image.get("k", 3.0))
    if image.get("rule") == "fpr":
        return CalibrationOptions("fpr", fpr=image["target_fpr"], pixel_fpr=pixel.get("target_fpr"))
    return None if image else CalibrationOptions()


def with_geometry(det: Detector, meta: dict, geometry: Geometry, input_size: tuple[int, int] | None, data=None,
                  log=lambda *a, **k: None) -> tuple[Detector, dict]:
    """The run's detector behind another input geometry (e.g. tiles of the trained size over a
    full frame of ``input_size``), recalibrated on the run's held-out frames. The model's own
    size cannot change: a tile must have the size the run was trained at."""
    model = det.model_size
    if geometry.tiled and det.paired:
        raise AdrtError("--tile: a run with a reference per image (two inputs) cannot be tiled")
    if geometry.tiled and tuple(geometry.tile) != tuple(model):
        raise AdrtError(f"--tile {geometry.tile[0]}x{geometry.tile[1]}: the run's model is {model[0]}x{model[1]}; "
                        f"tiles must have the size the run was trained at")
    spec = input_spec(model[0], input_size if geometry.tiled else None, geometry)
    if not geometry.tiled and input_size is not None and tuple(input_size) != tuple(model):
        raise AdrtError(f"--input-size {input_size[0]}x{input_size[1]}: an untiled bundle's input is the model's "
                        f"size {model[0]}x{model[1]} (train at that size, or export with --tile)")
    if (spec, geometry) == (det.spec, det.geometry):
        return det, meta
    spec = InputSpec(spec.height, spec.width, det.spec.channels, det.spec.mean, det.spec.std)
    new = Detector(det.scorer, spec, sigma=det.blur.sigma, geometry=geometry, image_score=det.image_score).eval()
    meta = recalibrated(new, meta, data, log, f"geometry {geometry.mode} {spec.height}x{spec.width}")
    return new, meta


def _holdout_paths(meta: dict, data=None, paired: bool = False) -> list:
    """A run's held-out images, found again from the recorded seed and counts (the split depends
    only on the seed and the file names); ``data`` defaults to the recorded dataset. ``paired``: the
    run compares images with references (reference files are then not training images)."""
    tr = meta["training"]
    ds = Dataset.open(data if data is not None else tr["data"], references=paired)
    n_total = len(ds.train)
    if n_total != tr["n_fit"] + tr["n_holdout"]:
        raise AdrtError(f"{ds.root}: {n_total} training images, the run was trained on "
                        f"{tr['n_fit']} + {tr['n_holdout']} held out; pass the run's dataset")
    return split_holdout(ds.train, tr["n_holdout"] / n_total, 0, tr["seed"])[1]


def _holdout_frames(det: Detector, meta: dict, data=None) -> tuple[list, np.ndarray, np.ndarray | None]:
    """The run's held-out paths, their frames at ``det``'s input, and (paired) their references' frames."""
    hold = _holdout_paths(meta, data, det.paired)
    refs = None
    if det.paired:
        from adrt.runtime.pairs import find_references

        refs = load_frames(find_references(hold), det)
    return hold, load_frames(hold, det), refs


def recalibrate(run, out, calibration: CalibrationOptions | None = None, *, defects=None, data=None, log=_log,
                overwrite: bool = False, image_score: str | None = None) -> Path:
    """Write run folder ``out``: run ``run`` with its thresholds chosen again by ``calibration``
    (default: the std rule) on its own held-out images, no refitting; ``defects`` as for
    :func:`train`. ``image_score``: also change the image score (``max``, ``topk:FRACTION``)."""
    import copy

    det, meta = load_run(run)
    if image_score is not None:
        det = Detector(det.scorer, det.spec, sigma=det.blur.sigma, geometry=det.geometry,
                       image_score=image_score).eval()
        meta["image_score"] = image_score
    calibration = _check_calibration(calibration, defects, data if data is not None else meta["training"]["data"])
    check_output(out, Kind.RUN, overwrite=overwrite, inputs=[run])
    if defects is not None and det.paired:
        raise AdrtError(f"{run}: a run with a reference per image; the f1 calibration (--defects) is not supported")
    _, frames, refs = _holdout_frames(det, meta, data)
    defect_data = load_defects(defects, det.spec, det.geometry) if defects is not None else None
    cal = calibrate(det, frames, options=calibration, defects=defect_data, references=refs)
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


def load_defects(folder, spec: InputSpec, geometry: Geometry = RESIZE):
    """Labelled defect images for the f1 calibration, at the input size ``spec`` by ``geometry``:
    (uint8 N×H×W×3, bool masks N×H×W or None).

    ``folder``: an MVTec-style folder (its ``test/<type>/`` defect images, with their
    ``ground_truth`` masks when every one has a mask), or a plain folder of defect images (no masks:
    the pixel threshold is then chosen at the pixel FPR)."""
    ds = Dataset.open(folder)
    if ds.is_mvtec:
        samples = [t for t in ds.test if t.label == 1]
        if not samples:
            raise DataError(f"{folder}: no defect images in test/<type>/ (expected labelled defect images)")
        h, w = spec.height, spec.width
        return load_images([t.path for t in samples], h, w, geometry), load_masks(samples, h, w, geometry)
    return load_images(ds.train, spec.height, spec.width, geometry), None


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
        stored = {**cls.absent, **meta["config"]}     # options newer than the run
        cfg = cls.Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()})
        spec = InputSpec.from_dict(meta["input"])
        geometry = Geometry.from_dict(meta.get("geometry", RESIZE.to_dict()), spec.height, spec.width)
        cal = Calibration.from_dict(meta["calibration"])
    except (KeyError, TypeError, InputError) as e:
        raise AdrtError(f"{meta_path}: not a valid run record ({type(e).__name__}: {e})") from None
    image_score = meta.get("image_score", "max")          # runs from before the option: max
    try:
        det = Detector(cls.build(cfg), spec, sigma=cfg.sigma, geometry=geometry, image_score=image_score)
    except AdrtError as e:
        raise AdrtError(f"{meta_path}: {e}") from None
    state = torch.load(w_path, map_location="cpu", weights_only=True)
    resize_buffers(det, state)
    det.load_state_dict(state)
    apply_calibration(det, cal)
    return det.eval(), meta

