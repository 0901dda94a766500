"""Load a bundle and run it: the torch-free Python API.

    import adrt.runtime as rt
    with rt.load("bundle/") as det:
        result = det.run(batch)           # uint8 N×H×W×3 at the bundle's size, strict
        result = det.run_files(paths)     # decode + convert + resize/letterbox by the bundle's geometry
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from adrt.contract import OUTPUT_DIMS, OUTPUT_NAMES
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

    def check_batch(self, images: np.ndarray) -> np.ndarray:
        """Validate a uint8 N×H×W×C (or H×W×C) array against the bundle's input spec."""
        if not isinstance(images, np.ndarray):
            raise InputError(f"images: expected a numpy uint8 array N×{self.height}×{self.width}×{self.channels}, "
                             f"got {type(images).__name__}")
        if images.ndim == 3:
            images = images[None]
        expected = (self.height, self.width, self.channels)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected or images.shape[0] == 0:
            what = "NHWC, RGB"
            if self.geometry.tiled:
                ys, xs = self.geometry.grid(self.height, self.width)
                what = (f"NHWC, RGB: the full frame of this tiled bundle, fixed at export, cut in the graph into "
                        f"{len(ys)}×{len(xs)} tiles of {self.geometry.tile[0]}×{self.geometry.tile[1]}")
            raise InputError(f"images: expected uint8 N×{'×'.join(map(str, expected))} ({what}), got "
                             f"{images.dtype} {'×'.join(map(str, images.shape))}; use run_files() or "
                             f"Session.prepare(image) to convert and "
                             f"{'letterbox' if self.geometry.mode == 'letterbox' else 'resize'} one image")
        return np.ascontiguousarray(images)

    def run(self, images: np.ndarray) -> Result:
        """Run a batch of uint8 N×H×W×C images at exactly the bundle's input size."""
        if self.backend is None:
            raise ClosedError(f"{self.bundle.root}: this Session was closed; load the bundle again to run it")
        batch = self.check_batch(images)
        out = self._check_outputs(self.backend.run({"image": batch}), len(batch))
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
                  max_pixels: int | None = None) -> Result:
        """Decode, convert and resize image files (one path or a sequence), then run them in
        batches. ``max_pixels``: the decode limit per image (default: adrt.runtime.limits)."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        elif not isinstance(paths, Sequence):
            raise InputError(f"run_files: paths of type {type(paths).__name__}; expected a path or a list of paths")
        batch_size = check_int("batch_size", batch_size, 1)
        parts = []
        for i in range(0, len(paths), batch_size):
            batch = np.stack([prepare(read_image(p, max_pixels=max_pixels), self.height, self.width, self.geometry)
                              for p in paths[i : i + batch_size]])
            parts.append(self.run(batch))
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
