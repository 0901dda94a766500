"""Dataset folders: the MVTec AD layout, or a plain folder of good images (numpy only, no torch).

MVTec AD layout, rooted at one category folder::

    CATEGORY/train/good/*.png                  good images for fitting
    CATEGORY/test/good/*.png                   good test images            (label 0)
    CATEGORY/test/<defect_type>/*.png          defective test images       (label 1)
    CATEGORY/ground_truth/<defect_type>/<stem>_mask.png   (or <stem>.png)  pixel masks

Any other folder with image files directly in it is a plain folder of good images used for
training only. Hidden files and files without an image suffix (:data:`IMAGE_SUFFIXES`) are ignored;
every list is sorted so that runs are deterministic.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from adrt.errors import DataError, InputError
from adrt.runtime.image import IMAGE_SUFFIXES, read_image, read_image_size, read_mask, resize, scan_images

__all__ = ["Sample", "Dataset", "load_images", "load_masks", "split_holdout", "list_images"]

GOOD = "good"
_LAYOUT_HINT = "expected MVTec AD layout CATEGORY/train/good/*.png or a folder of images"


@dataclass(frozen=True)
class Sample:
    """One test image: ``label`` 0 (good) or 1 (defect); ``mask_path`` None for good images and for
    defect images whose mask file is missing."""

    path: Path
    label: int
    defect_type: str
    mask_path: Optional[Path] = None


def list_images(folder: Path) -> List[Path]:
    """Sorted image files directly in ``folder`` (hidden and non-image files skipped; entries
    named like images that are not regular files, e.g. a FIFO, are skipped with a notice)."""
    if not folder.is_dir():
        return []
    return sorted(scan_images(folder), key=lambda p: p.name)


def _subfolders(folder: Path) -> List[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _find_mask(gt_dir: Path, stem: str) -> Optional[Path]:
    """``<stem>_mask.png``, then ``<stem>.png``, then the same names with other image suffixes."""
    suffixes = (".png",) + tuple(s for s in IMAGE_SUFFIXES if s != ".png")
    for base in (f"{stem}_mask", stem):
        for suffix in suffixes:
            for cand in (gt_dir / f"{base}{suffix}", gt_dir / f"{base}{suffix.upper()}"):
                if cand.is_file():
                    return cand
    return None


@dataclass(frozen=True)
class Dataset:
    """A dataset folder opened with :meth:`open`.

    ``train``: sorted good images to fit on. ``test``: samples sorted by defect type, then file name
    (empty for a plain folder of images).
    """

    root: Path
    train: List[Path]
    test: List[Sample]
    name: str

    @property
    def has_masks(self) -> bool:
        """True when every defect test sample has a mask file (vacuously true without defects)."""
        return all(s.mask_path is not None for s in self.test if s.label == 1)

    @property
    def defect_types(self) -> List[str]:
        """Sorted defect type names found in ``test/`` (``good`` excluded)."""
        return sorted({s.defect_type for s in self.test if s.label == 1})

    @property
    def is_mvtec(self) -> bool:
        return (self.root / "train" / GOOD).is_dir()

    @classmethod
    def open(cls, root: Union[str, Path], references: bool = False) -> "Dataset":
        """Open an MVTec AD category folder or a plain folder of good images.

        ``references``: the images have reference images (adrt.runtime.pairs); files named ``*_ref.*``
        are then references, not images of the dataset.

        Raises :class:`~adrt.errors.DataError` for a missing folder, a folder without images, or a
        ``test/`` folder without images in its ``test/<type>/`` subfolders.
        """
        root = Path(root)
        if not root.exists():
            raise DataError(f"{root}: no such folder ({_LAYOUT_HINT})")
        if not root.is_dir():
            raise DataError(f"{root}: is a file, not a folder ({_LAYOUT_HINT})")
        name = root.resolve().name or str(root)

        keep = _not_references if references else (lambda paths: paths)
        train_dir = root / "train" / GOOD
        if train_dir.is_dir():
            train = keep(list_images(train_dir))
            if not train:
                raise DataError(f"no images found in {train_dir} ({_LAYOUT_HINT})")
            test = _read_test(root, keep)
            return cls(root=root, name=name, train=train, test=test)

        train = keep(list_images(root))
        if not train:
            hint = _LAYOUT_HINT
            categories = [d.name for d in _subfolders(root) if (d / "train" / GOOD).is_dir()]
            if categories:
                shown = ", ".join(categories[:5]) + (", ..." if len(categories) > 5 else "")
                hint += f"; this looks like a folder of categories, pass one of them: {shown}"
            elif (root / "train").is_dir():
                hint += f"; {root / 'train'} exists but has no 'good' subfolder"
            raise DataError(f"no images found in {root} ({hint})")
        return cls(root=root, name=name, train=train, test=[])


def _not_references(paths: List[Path]) -> List[Path]:
    from adrt.runtime.pairs import is_reference

    return [p for p in paths if not is_reference(p.name)]


def _read_test(root: Path, keep=lambda paths: paths) -> List[Sample]:
    test_dir = root / "test"
    if not test_dir.exists():
        return []
    if not test_dir.is_dir():
        raise DataError(f"{test_dir}: is a file (expected a folder test/<defect_type>/*.png)")
    gt_root = root / "ground_truth"
    samples: List[Sample] = []
    for type_dir in _subfolders(test_dir):
        dtype = type_dir.name
        for p in keep(list_images(type_dir)):
            if dtype == GOOD:
                samples.append(Sample(path=p, label=0, defect_type=GOOD, mask_path=None))
            else:
                mask = _find_mask(gt_root / dtype, p.stem)
                samples.append(Sample(path=p, label=1, defect_type=dtype, mask_path=mask))
    if not samples:
        raise DataError(
            f"no images found in {test_dir} (expected test/good/*.png and test/<defect_type>/*.png, "
            f"or no test folder at all)"
        )
    samples.sort(key=lambda s: (s.defect_type, s.path.name))
    return samples


def load_images(paths: Sequence[Union[str, Path]], height: int, width: int, geometry=None) -> np.ndarray:
    """Read and resize images into a ``uint8`` N x height x width x 3 array (``geometry``, an
    adrt.contract.Geometry: letterbox instead of resize; default resize).

    Errors from :func:`~adrt.runtime.image.read_image` propagate and name the file.
    """
    out = np.empty((len(paths), int(height), int(width), 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        out[i] = _prepare(read_image(p), height, width, geometry)
    return out


def _prepare(image, height, width, geometry):
    if geometry is None:
        return resize(image, height, width)
    from adrt.runtime.geometry import prepare

    return prepare(image, height, width, geometry)


def load_masks(samples: Sequence[Sample], height: int, width: int, geometry=None) -> Optional[np.ndarray]:
    """Ground-truth masks as a ``bool`` N x height x width array, or None when a defect sample has
    no mask file (callers then skip pixel metrics). Good samples get all-False masks. ``geometry``
    places them as :func:`load_images` places their images.

    Each mask must have the size of its image before resizing (else :class:`DataError`).
    """
    if any(s.label == 1 and s.mask_path is None for s in samples):
        return None
    out = np.zeros((len(samples), int(height), int(width)), dtype=bool)
    for i, s in enumerate(samples):
        if s.label == 0 or s.mask_path is None:
            continue
        size = read_image_size(s.path)
        if geometry is not None and geometry.mode == "letterbox":
            from adrt.runtime.geometry import prepare_mask

            out[i] = prepare_mask(read_mask(s.mask_path, expect_size=size), height, width, geometry)
        else:
            out[i] = read_mask(s.mask_path, height, width, expect_size=size)
    return out


def _split_key(seed: int, p: Union[str, Path]) -> Tuple[str, str]:
    path = Path(p)
    digest = hashlib.sha256(f"{seed}\0{path.name}".encode("utf-8")).hexdigest()
    return digest, path.as_posix()


def split_holdout(
    paths: Sequence[Union[str, Path]], fraction: float, min_holdout: int, seed: int
) -> Tuple[List[Path], List[Path]]:
    """Split good images into ``(fit, holdout)`` for calibration.

    The holdout gets ``round(fraction * n)`` images, at least ``min_holdout`` and at most ``n - 1``.
    The choice depends only on ``seed`` and the file names (a hash order, identical across numpy
    versions and machines); both lists keep the input order. Raises :class:`DataError` when there
    are fewer than ``min_holdout + 1`` images.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= float(fraction) < 1.0:
        raise InputError(f"holdout fraction={fraction!r}: expected a number in [0, 1)")
    if isinstance(min_holdout, bool) or not isinstance(min_holdout, (int, np.integer)) or min_holdout < 0:
        raise InputError(f"min_holdout={min_holdout!r}: expected a non-negative integer")
    items = [Path(p) for p in paths]
    n = len(items)
    need = int(min_holdout) + 1
    if n < need:
        raise DataError(
            f"too few training images for a calibration holdout: found {n}, need at least {need} "
            f"({min_holdout} held out for calibration + 1 to fit)"
        )
    n_hold = min(max(int(round(float(fraction) * n)), int(min_holdout)), n - 1)
    order = sorted(range(n), key=lambda i: _split_key(int(seed), items[i]))
    hold_idx = set(order[:n_hold])
    fit = [p for i, p in enumerate(items) if i not in hold_idx]
    holdout = [p for i, p in enumerate(items) if i in hold_idx]
    return fit, holdout
