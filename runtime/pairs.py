"""Reference images for change detection: which file is the reference of which image (torch-free).

Two layouts, tried in this order for an image ``.../A/rel/x.png``:

* a ``reference/`` folder mirroring the images: ``A/reference/rel/x.png`` for the nearest folder
  ``A`` above the image that has one (so ``DATA/reference/train/good/x.png`` for
  ``DATA/train/good/x.png``, ``DATA/reference/test/crack/y.png`` for ``DATA/test/crack/y.png``);
  the reference may have any image suffix;
* ``<stem>_ref.<suffix>`` next to the image.

Files named ``*_ref.*`` and everything under a ``reference/`` folder are references, never
images to score (:func:`is_reference`).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Union

from adrt.errors import DataError
from adrt.runtime.image import IMAGE_SUFFIXES

REFERENCE_DIR = "reference"
REFERENCE_SUFFIX = "_ref"
LAYOUT = (f"a {REFERENCE_DIR}/ folder mirroring the images (DATA/{REFERENCE_DIR}/train/good/x.png for "
          f"DATA/train/good/x.png) or <stem>{REFERENCE_SUFFIX}.png next to each image")


def is_reference(path: Union[str, Path], root: Union[str, Path, None] = None) -> bool:
    """True for a reference file: ``*_ref.*``, or under a ``reference/`` folder (below ``root``
    when given, so a dataset that itself lives in a folder named ``reference`` still works)."""
    p = Path(path)
    if p.stem.endswith(REFERENCE_SUFFIX):
        return True
    parts = p.parent.parts
    if root is not None:
        try:
            parts = p.parent.relative_to(Path(root)).parts
        except ValueError:
            pass
    return REFERENCE_DIR in parts


def _with_any_suffix(base: Path) -> Path | None:
    for suffix in (base.suffix,) + tuple(s for s in IMAGE_SUFFIXES if s != base.suffix.lower()):
        for cand in (base.with_suffix(suffix), base.with_suffix(suffix.upper())):
            if cand.is_file():
                return cand
    return None


def reference_for(path: Union[str, Path]) -> Path | None:
    """The reference file of image ``path``, or None."""
    p = Path(path)
    absolute = p.absolute()
    for above in absolute.parents:
        if (above / REFERENCE_DIR).is_dir():
            found = _with_any_suffix(above / REFERENCE_DIR / absolute.relative_to(above))
            if found is not None:
                return found if p.is_absolute() else Path(_relative(found))
    return _with_any_suffix(p.with_name(p.stem + REFERENCE_SUFFIX + p.suffix))


def _relative(found: Path) -> str:
    import os

    try:
        return os.path.relpath(found)
    except ValueError:          # another drive (Windows)
        return str(found)


def find_references(paths: Sequence[Union[str, Path]]) -> List[Path]:
    """The reference of each image; a :class:`DataError` naming every image without one."""
    refs = [reference_for(p) for p in paths]
    missing = [str(p) for p, r in zip(paths, refs) if r is None]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise DataError(f"{len(missing)} image(s) without a reference image: {shown} (expected {LAYOUT})")
    return refs
