"""Load a bundle and run it: the torch-free Python API.

    import adrt.runtime as rt
    with rt.load("bundle/") as det:
        result = det.run(batch)           # uint8 N×H×W×3 at the bundle's size, strict
        result = det.run_files(paths)     # decode + convert + resize/letterbox by the bundle's geometry

A bundle whose manifest lists a ``reference`` input (change detection against a reference
image given at run time, ``det.paired``) takes the references too: ``det.run(batch,
references=refs)`` (same shape) and ``det.run_files(paths)`` (each image's reference found by the
layout of adrt.runtime.pairs) or ``det.run_files(paths, references=ref_paths)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from adrt.contract import INPUT_NAME, OUTPUT_DIMS, OUTPUT_NAMES, REFERENCE_NAME
from adrt.contract import check_float, check_int
from adrt.errors import BundleError, ClosedError, InputError, ResultError
from adrt.runtime.backends import BackendName, open_backend, parse_backend
from adrt.runtime.bundle import Bundle, open_bundle
from adrt.runtime.geometry import prepare
from adrt.runtime.image import read_image
from adrt.runtime.limits import check_threads


@dataclass
class Result:
    """Outputs for N images: ``maps`` N×H×W and ``scores`` N are calibrated (0.5 at the bundle's
    thresholds); ``raw_maps``/``raw_scores`` are the method's own values. ``threshold`` and
    ``pixel_threshold`` are the session's decision thresholds on the calibrated scale."""

    maps: np.ndarray
    scores: np.ndarray
    raw_maps: np.ndarray
    raw_scores: np.ndarray
    threshold: float = 0.5
    pixel_threshold: float = 0.5

    @property
    def labels(self) -> np.ndarray:
        """True where the image is anomalous (score ≥ threshold)."""
        return self.scores >= self.threshold

    @property
    def masks(self) -> np.ndarray:
        """N×H×W, True where a pixel is anomalous (map ≥ pixel_threshold)."""
        return self.maps >= self.pixel_threshold

    def __len__(self) -> int:
        return len(self.scores)


class Session:
    """A loaded bundle on one backend. Use as a context manager or call ``close()``."""

    def __init__(self, bundle: Bundle, backend: str | BackendName = BackendName.ORT_CPU, threads: int | None = None,
                 precision: str = "fp32", threshold: float | None = None, pixel_threshold: float | None = None):
        self.backend = None
        self.bundle = bundle
        spec = bundle.contract.input
        self.height, self.width, self.channels = spec.height, spec.width, spec.channels
        self.threshold = self.pixel_threshold = bundle.contract.threshold
        self.set_threshold(threshold, pixel_threshold)
        #: How frames become the input (adrt.contract.Geometry): resize, letterbox or tile (in the graph).
        self.geometry = bundle.contract.geometry
        b = parse_backend(backend)
        threads = check_threads(threads)
        if not isinstance(precision, str):
            raise InputError(f"precision={precision!r}: expected a string such as 'fp32', 'fp16' or 'int8'")
        # precision picks the model variant (model.onnx, model.fp16.onnx, model.int8.onnx) or, for
        # the tensorrt backend, the plan of that precision built for this GPU.
        self.precision = precision
        self.backend = open_backend(bundle, b, precision, threads)

    @property
    def method(self) -> str:
        return self.bundle.method

    def set_threshold(self, threshold: float | None = None, pixel_threshold: float | None = None) -> None:
        """Change the decision thresholds of this session (None keeps one), on the calibrated
        scale of ``scores``/``maps``: a number strictly between 0 and 1, where 0.5 is the bundle's
        calibrated threshold and higher means fewer images (pixels) flagged. No re-export: the
        graph's outputs do not change, only ``Result.labels``/``Result.masks``.
        :meth:`raw_threshold` gives the same threshold in the method's raw units."""
        if threshold is not None:
            self.threshold = check_threshold("threshold", threshold)
        if pixel_threshold is not None:
            self.pixel_threshold = check_threshold("pixel_threshold", pixel_threshold)

    def raw_threshold(self, pixel: bool = False) -> float | None:
        """The session's threshold in raw units (``raw_scores``; ``pixel``: ``raw_maps``):
        ``T + s·logit(t)`` with the bundle's calibration T, s; None for a bundle without one."""
        cal = self.bundle.contract.calibration
        if not cal:
            return None
        t = self.pixel_threshold if pixel else self.threshold
        key = "map" if pixel else "score"
        return float(cal[f"{key}_threshold"] + cal[f"{key}_scale"] * np.log(t / (1.0 - t)))

    @property
    def paired(self) -> bool:
        """True when every image needs its reference image (``run(images, references=...)``)."""
        return self.bundle.contract.paired

    def check_batch(self, images: np.ndarray, what: str = "images") -> np.ndarray:
        """Validate a uint8 N×H×W×C (or H×W×C) array against the bundle's input spec."""
        if not isinstance(images, np.ndarray):
            raise InputError(f"{what}: expected a numpy uint8 array N×{self.height}×{self.width}×{self.channels}, "
                             f"got {type(images).__name__}")
        if images.ndim == 3:
            images = images[None]
        expected = (self.height, self.width, self.channels)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected or images.shape[0] == 0:
            how = "NHWC, RGB"
            if self.geometry.tiled:
                ys, xs = self.geometry.grid(self.height, self.width)
                how = (f"NHWC, RGB: the full frame of this tiled bundle, fixed at export, cut in the graph into "
                       f"{len(ys)}×{len(xs)} tiles of {self.geometry.tile[0]}×{self.geometry.tile[1]}")
            raise InputError(f"{what}: expected uint8 N×{'×'.join(map(str, expected))} ({how}), got "
                             f"{images.dtype} {'×'.join(map(str, images.shape))}; use run_files() or "
                             f"Session.prepare(image) to convert and "
                             f"{'letterbox' if self.geometry.mode == 'letterbox' else 'resize'} one image")
        return np.ascontiguousarray(images)

    def feeds(self, images: np.ndarray, references: np.ndarray | None = None) -> dict:
        """The graph's inputs for ``images`` (and ``references`` of a paired bundle), checked."""
        batch = self.check_batch(images)
        if not self.paired:
            if references is not None:
                raise self._unpaired()
            return {INPUT_NAME: batch}
        if references is None:
            raise InputError(f"references: this {self.method} bundle compares each image with a reference image; "
                             f"pass references= (uint8, the images' shape {'×'.join(map(str, batch.shape))})")
        refs = self.check_batch(references, "references")
        if refs.shape != batch.shape:
            raise InputError(f"references: {'×'.join(map(str, refs.shape))} for images "
                             f"{'×'.join(map(str, batch.shape))}; expected one reference per image, same shape")
        return {INPUT_NAME: batch, REFERENCE_NAME: refs}

    def _unpaired(self) -> InputError:
        return InputError(f"references: this {self.method} bundle takes no reference images (its manifest's "
                          f"inputs are {list(self.bundle.contract.inputs)}); pass the images alone")

    def run(self, images: np.ndarray, references: np.ndarray | None = None) -> Result:
        """Run a batch of uint8 N×H×W×C images at exactly the bundle's input size; a paired
        bundle (:attr:`paired`) also takes ``references``, one per image, of the same shape."""
        if self.backend is None:
            raise ClosedError(f"{self.bundle.root}: this Session was closed; load the bundle again to run it")
        feeds = self.feeds(images, references)
        batch = feeds[INPUT_NAME]
        out = self._check_outputs(self.backend.run(feeds), len(batch))
        # A diverging step (e.g. an iterative projection with too large a step size) yields NaN/Inf:
        # refuse it rather than hand back a map that looks like a result.
        bad = ~(np.isfinite(out["raw_score"]) & np.isfinite(out["raw_map"]).reshape(len(out["raw_map"]), -1).all(1))
        if bad.any():
            raise ResultError(f"{self.method}: the model produced NaN/Inf for image(s) {np.flatnonzero(bad).tolist()} "
                              f"of this batch; no result is returned (for an iterative method, lower its step size)")
        return Result(out["anomaly_map"], out["score"], out["raw_map"], out["raw_score"], self.threshold,
                      self.pixel_threshold)

    def _check_outputs(self, out: dict, n: int) -> dict:
        """The graph's outputs are the contract's: a foreign model is refused, not returned."""
        sizes = {"height": self.height, "width": self.width}
        for name in OUTPUT_NAMES:
            a = out.get(name)
            want = (n, *(sizes[d] for d in OUTPUT_DIMS[name]))
            if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != want:
                got = "missing" if a is None else f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}"
                raise BundleError(f"{self.bundle.root}: the model's output {name!r} is {got}; expected float32 "
                                   f"{'×'.join(map(str, want))}")
        return out

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Any uint8 gray/RGB/RGBA image → uint8 H×W×3 at the bundle's size, by the bundle's geometry
        (resize; letterbox: aspect kept, padded; a tiled bundle's input is the full frame, resized)."""
        return prepare(image, self.height, self.width, self.geometry)

    def run_files(self, paths: Sequence[str | os.PathLike] | str | os.PathLike, batch_size: int = 8,
                  max_pixels: int | None = None, references: Sequence[str | os.PathLike] | None = None) -> Result:
        """Decode, convert and resize image files (one path or a sequence), then run them in
        batches. ``max_pixels``: the decode limit per image (default: adrt.runtime.limits).
        A paired bundle reads each image's reference from ``references`` (paths, one per image)
        or, by default, finds it by the layout of adrt.runtime.pairs (an error names every image without one)."""
        paths = _path_list(paths, "paths")
        batch_size = check_int("batch_size", batch_size, 1)
        if references is not None:
            references = _path_list(references, "references")
            if not self.paired:
                raise self._unpaired()
            if len(references) != len(paths):
                raise InputError(f"run_files: {len(references)} references for {len(paths)} images; expected one each")
        elif self.paired:
            from adrt.runtime.pairs import find_references

            references = find_references(paths)

        def load(files):
            return np.stack([prepare(read_image(p, max_pixels=max_pixels), self.height, self.width, self.geometry)
                             for p in files])

        parts = []
        for i in range(0, len(paths), batch_size):
            refs = None if references is None else load(references[i : i + batch_size])
            parts.append(self.run(load(paths[i : i + batch_size]), refs))
        if not parts:
            raise InputError("run_files: no images given")
        return Result(*(np.concatenate([getattr(r, f) for r in parts]) for f in ("maps", "scores", "raw_maps", "raw_scores")),
                      threshold=self.threshold, pixel_threshold=self.pixel_threshold)

    def close(self) -> None:
        """Free the model (and a zip bundle's extracted folder). Idempotent."""
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.close()
        self.bundle.cleanup()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _path_list(paths, what: str) -> list:
    if isinstance(paths, (str, os.PathLike)):
        return [paths]
    if not isinstance(paths, Sequence):
        raise InputError(f"run_files: {what} of type {type(paths).__name__}; expected a path or a list of paths")
    return list(paths)


def check_threshold(name: str, value) -> float:
    """A decision threshold on the calibrated scale: a finite number strictly between 0 and 1."""
    return check_float(name, value, 0.0, 1.0, lo_open=True, hi_open=True) if value is not None else None


def load(path: str | os.PathLike, backend: str = "ort-cpu", threads: int | None = None,
         precision: str = "fp32", threshold: float | None = None, pixel_threshold: float | None = None) -> Session:
    """Open and verify the bundle at ``path`` (folder or .zip) and return a Session on ``backend``
    running the bundle's ``precision`` model (fp32, fp16, int8: see ``adrt info``).

    ``threshold``/``pixel_threshold``: decision thresholds on the calibrated scale of scores/maps,
    in (0, 1) (default: the bundle's, 0.5); see :meth:`Session.set_threshold`."""
    parse_backend(backend)            # a wrong backend, thread count or threshold fails before any file is read
    check_threads(threads)
    check_threshold("threshold", threshold)
    check_threshold("pixel_threshold", pixel_threshold)
    bundle = open_bundle(path)
    try:
        return Session(bundle, backend, threads, precision, threshold, pixel_threshold)
    except BaseException:
        bundle.cleanup()
        raise
