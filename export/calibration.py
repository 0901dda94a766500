"""Normal images for INT8 calibration: read from a folder (MVTec category or plain images), checked, and
the bundle's own calibration holdout when the folder is its training dataset."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from adrt.data import Dataset, load_images, split_holdout
from adrt.errors import DataError, InputError


# At least this many calibration images: fewer give activation ranges set by one or two images.
MIN_CALIB_IMAGES = 16
# More than this adds calibration time and changes the ranges little (MinMax); spread evenly.
MAX_CALIB_IMAGES = 64


def check_calibration_images(images: np.ndarray, minimum: int = MIN_CALIB_IMAGES) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise InputError(f"calibration images: expected a uint8 N×H×W×3 array, got "
                         f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}")
    if len(images) < minimum:
        raise DataError(f"calibration needs at least {minimum} normal images, got {len(images)}")


def load_calibration(folder: str | os.PathLike, height: int, width: int, minimum: int = MIN_CALIB_IMAGES,
                     maximum: int = MAX_CALIB_IMAGES) -> tuple[np.ndarray, dict]:
    """Normal images for calibration from ``folder`` (MVTec category: its train/good; else the
    folder's own images), at most ``maximum`` spread evenly over the sorted list, resized by the
    runtime's rule. Returns (uint8 N×H×W×3, a summary for the manifest)."""
    folder = Path(folder)
    try:
        ds = Dataset.open(folder)
    except DataError as e:
        raise DataError(f"calibration folder: {e}") from None
    paths = ds.train
    if len(paths) < minimum:
        raise DataError(f"calibration folder {folder}: {len(paths)} normal image(s), at least {minimum} are needed")
    if len(paths) > maximum:
        paths = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, maximum).round()]
    images = load_images(paths, height, width)
    return images, {"folder": ds.name, "root": str(Path(folder).resolve()), "images": len(paths),
                    "available": len(ds.train), "method": "minmax"}


def holdout_images(manifest: dict, calib_root: str | None, height: int, width: int) -> np.ndarray | None:
    """The bundle's calibration holdout (normal images kept out of fitting, the ones its threshold
    was set on) when the calibration folder is its training dataset; else None."""
    t = manifest.get("training") or {}
    if not calib_root or not t.get("data") or not t.get("n_holdout"):
        return None
    if Path(t["data"]).resolve() != Path(calib_root).resolve():
        return None
    train = Dataset.open(calib_root).train
    k = int(t["n_holdout"])
    if not 0 < k < len(train) or len(train) != int(t.get("n_fit", -1)) + k:
        return None  # the folder changed since training: the split cannot be redone
    _, hold = split_holdout(train, k / len(train), k, int(t.get("seed", 0)))
    return load_images(hold, height, width)
