"""Image and mask decoding for the torch-free runtime (numpy + Pillow only).

Every image that enters adrt, at training, calibration, export checks and inference, goes through
:func:`read_image` (files) or :func:`to_rgb` (arrays from callers), then :func:`resize`. Keeping one
decoder and one resize rule is what makes scores reproducible between the training machine and an
edge device.

Decoding rules of :func:`read_image` (the result is always ``uint8`` of shape H x W x 3, RGB):

* ``RGB``: as stored.
* ``L`` (8-bit gray): the gray value is copied into R, G and B.
* ``1`` (1-bit): 0 -> 0 and 1 -> 255, copied into the three channels.
* ``I;16``, ``I;16L``, ``I;16B``, ``I;16N`` (16-bit unsigned gray): ``value >> 8`` (the high byte;
  a fixed scale, never a per-image min-max stretch), copied into the three channels.
* ``I`` (32-bit integer): accepted only where Pillow uses it to hold 16-bit samples, i.e. files
  whose format is PNG or PPM/PGM (older Pillow versions open 16-bit gray PNGs as ``I``; PGM with a
  maxval above 255 is scaled by Pillow to 0..65535). Those get ``value >> 8`` after checking the
  values lie in 0..65535. Any other ``I`` image (e.g. a 32-bit integer TIFF) raises
  :class:`~adrt.errors.DataError`: there is no fixed scale from its range to 8 bits.
* ``F`` (32-bit float), ``I;16S`` and other signed or float modes: :class:`DataError`, for the same
  reason (a min-max stretch would change with the image content). Convert such files to 8- or
  16-bit PNG first.
* ``RGBA``, ``RGBX``, ``LA``, ``PA`` and premultiplied ``RGBa``/``La``: the alpha (or padding)
  channel is dropped; colours are *not* composited onto any background.
* ``P`` (palette, with or without transparency): palette lookup, then alpha dropped.
* ``CMYK``, ``YCbCr``, ``HSV``: converted to RGB by Pillow.
* ``LAB`` and any mode Pillow cannot convert faithfully: :class:`DataError`.
* Multi-frame files (GIF, TIFF): the first frame. EXIF orientation is *not* applied (pixels are
  used in stored order, so images stay aligned with their masks).

Truncated or corrupt files are always an error: the image is fully decoded with ``img.load()`` and
this module never sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``.

Bounds: only regular files are opened (a FIFO or a device named ``*.png`` would block or never
end), and an image whose header announces more than ``max_pixels`` pixels (default
:data:`adrt.runtime.limits.DEFAULT_MAX_PIXELS`, or ``$ADRT_MAX_PIXELS``) is refused before it is
decoded. :func:`scan_images` lists a folder's images, skipping (with a notice) entries that are
not regular files.
"""
from __future__ import annotations

import functools
import os
import stat
import sys
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

import numpy as np

from adrt.errors import AdrtError, DataError, InputError
from adrt.runtime.limits import max_pixels as _max_pixels

__all__ = [
    "RESIZE_RULE",
    "IMAGE_SUFFIXES",
    "is_image_file",
    "read_image",
    "read_image_size",
    "read_mask",
    "resize",
    "scan_images",
    "to_rgb",
]

PathLike = Union[str, "os.PathLike[str]"]

#: How :func:`resize` resamples images; recorded as ``resize`` in bundle manifests. It is Pillow's
#: ``Image.BILINEAR`` filter on uint8 RGB, which (like all Pillow filters) widens its support when
#: downscaling, i.e. it is an antialiased bilinear resize, not a 2x2-tap one.
RESIZE_RULE = "bilinear"

#: File suffixes treated as images (lower case, with the dot, as ``Path.suffix`` gives them);
#: compare with ``path.suffix.lower()`` or use :func:`is_image_file`.
IMAGE_SUFFIXES: Tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@functools.lru_cache(maxsize=None)
def _pil():
    """Pillow's Image module, imported on first use: ``import adrt.runtime`` needs only numpy, and a
    caller that passes arrays of the bundle's size (C API, camera frames) never needs Pillow."""
    try:
        from PIL import Image
    except ImportError as e:
        raise AdrtError("reading, writing or resizing images needs Pillow: pip install pillow "
                        "(or pass uint8 arrays of the bundle's input size)") from e
    return Image


def _resampling(name: str):
    image = _pil()
    # Pillow >= 9.1 has the Resampling enum; the bare constants remain for older versions.
    return getattr(getattr(image, "Resampling", image), name)

_GRAY16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# Formats for which Pillow's "I" mode holds unsigned 16-bit samples (0..65535).
_I_AS_16BIT_FORMATS = frozenset({"PNG", "PPM"})
_CONVERT_TO_RGB_MODES = frozenset({"CMYK", "YCbCr", "HSV"})


def is_image_file(path: PathLike) -> bool:
    """True for a non-hidden path whose suffix is one of :data:`IMAGE_SUFFIXES` (any case)."""
    p = Path(path)
    return not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _check_regular(p: Path) -> None:
    try:
        st = p.stat()
    except FileNotFoundError:
        raise DataError(f"{p}: no such file (expected an image file)") from None
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{p}: is {_kind(st.st_mode)} (expected an image file)")


def _open(path: PathLike, max_pixels: Optional[int] = None) -> "Image.Image":
    """Open (header only) with errors turned into DataError naming the file; refuse non-regular
    files and images of more than ``max_pixels`` pixels before anything is decoded."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"image path {path!r}: expected a str or os.PathLike")
    p = Path(path)
    _check_regular(p)
    limit = _max_pixels(max_pixels)
    image = _pil()
    try:
        with warnings.catch_warnings():
            # adrt's own limit (below) decides; Pillow's warning would only repeat it.
            warnings.simplefilter("ignore", image.DecompressionBombWarning)
            img = image.open(p)
    except image.UnidentifiedImageError as e:
        raise DataError(
            f"{p}: not a readable image (expected a file Pillow can decode, e.g. PNG or JPEG)"
        ) from e
    except MemoryError:
        raise
    except Exception as e:  # OSError, DecompressionBombError, plugin errors on corrupt headers
        raise DataError(f"{p}: cannot open image ({e})") from e
    w, h = img.size
    if w * h > limit:
        img.close()
        raise DataError(f"{p}: {w}×{h} = {w * h / 1e6:.1f} MP, more than the limit of {limit / 1e6:g} MP "
                        f"(decoding it would take ~{w * h * 12 / 2**30:.1f} GiB); pass max_pixels= or set "
                        f"$ADRT_MAX_PIXELS to allow larger images")
    return img


def _load(img: "Image.Image", path: PathLike) -> None:
    """Force a full decode so that truncated or corrupt data raises here, naming the file."""
    try:
        img.load()
    except MemoryError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, ... here
        raise DataError(f"{Path(path)}: corrupt or truncated image ({e})") from e


def _gray16_to_uint8(a: np.ndarray) -> np.ndarray:
    return (a.astype(np.uint32) >> 8).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def _image_to_rgb(img: "Image.Image", path: PathLike) -> np.ndarray:
    """Apply the decoding rules in the module docstring to a loaded Pillow image."""
    mode = img.mode
    p = Path(path)
    if mode == "RGB":
        return np.array(img, dtype=np.uint8)
    if mode == "L":
        return _gray_to_rgb(np.asarray(img, dtype=np.uint8))
    if mode == "1":
        return _gray_to_rgb(np.asarray(img.convert("L"), dtype=np.uint8))
    if mode in _GRAY16_MODES:
        return _gray_to_rgb(_gray16_to_uint8(np.asarray(img)))
    if mode == "I":
        fmt = img.format or "unknown"
        a = np.asarray(img)
        if fmt in _I_AS_16BIT_FORMATS and a.size and (a.min() < 0 or a.max() > 65535):
            raise DataError(
                f"{p}: {fmt} image in mode I has values {int(a.min())}..{int(a.max())} outside "
                f"0..65535 (expected 16-bit gray samples)"
            )
        if fmt in _I_AS_16BIT_FORMATS:
            return _gray_to_rgb(_gray16_to_uint8(a))
        raise DataError(
            f"{p}: 32-bit integer image (Pillow mode I, format {fmt}) has no fixed scale to 8 bits "
            f"(expected 8-bit or 16-bit gray, RGB, RGBA, palette or CMYK; save it as 8/16-bit PNG)"
        )
    if mode in ("RGBA", "RGBX"):
        return np.array(np.asarray(img, dtype=np.uint8)[:, :, :3])
    if mode == "RGBa":
        return np.array(np.asarray(img.convert("RGBA"), dtype=np.uint8)[:, :, :3])
    if mode in ("LA", "La"):
        la = img if mode == "LA" else img.convert("LA")
        return _gray_to_rgb(np.array(np.asarray(la, dtype=np.uint8)[:, :, 0]))
    if mode in ("P", "PA"):
        # Through RGBA so that Pillow does the palette lookup whatever the transparency form;
        # the alpha is then simply dropped (no compositing).
        return np.array(np.asarray(img.convert("RGBA"), dtype=np.uint8)[:, :, :3])
    if mode in _CONVERT_TO_RGB_MODES:
        try:
            return np.array(img.convert("RGB"), dtype=np.uint8)
        except (ValueError, OSError) as e:
            raise DataError(f"{p}: cannot convert mode {mode} to RGB ({e})") from e
    raise DataError(
        f"{p}: unsupported image mode {mode!r} (expected 1, L, LA, P, RGB, RGBA, CMYK, YCbCr, "
        f"HSV or 16-bit gray; float, signed and LAB images have no faithful 8-bit RGB conversion)"
    )


def read_image(path: PathLike, max_pixels: Optional[int] = None) -> np.ndarray:
    """Decode an image file into a ``uint8`` H x W x 3 RGB array (rules: module docstring).

    Raises :class:`~adrt.errors.DataError` naming the file when it is missing, not a regular
    file, not an image, larger than ``max_pixels``, truncated or corrupt, or in a mode without a
    faithful 8-bit RGB conversion.
    """
    img = _open(path, max_pixels)
    with img:
        _load(img, path)
        out = _image_to_rgb(img, path)
    if out.ndim != 3 or out.shape[2] != 3 or out.shape[0] == 0 or out.shape[1] == 0:
        raise DataError(f"{Path(path)}: decoded to shape {out.shape} (expected H x W x 3, H, W > 0)")
    return np.ascontiguousarray(out)


def read_image_size(path: PathLike, max_pixels: Optional[int] = None) -> Tuple[int, int]:
    """``(height, width)`` of an image file from its header, without decoding the pixels."""
    img = _open(path, max_pixels)
    with img:
        w, h = img.size
    return int(h), int(w)


def to_rgb(array: np.ndarray) -> np.ndarray:
    """Bring a caller's ``uint8`` array to H x W x 3 RGB.

    Accepted: H x W (gray, copied into 3 channels), H x W x 1 (likewise), H x W x 3 (returned
    as-is when already C-contiguous), H x W x 4 (alpha dropped). Anything else, including other
    dtypes, raises :class:`~adrt.errors.InputError`.
    """
    allowed = "uint8 H x W, H x W x 1, H x W x 3 or H x W x 4 (RGBA, alpha dropped)"
    if not isinstance(array, np.ndarray):
        raise InputError(f"image of type {type(array).__name__}: expected a numpy array, {allowed}")
    if array.dtype != np.uint8:
        raise InputError(f"image array of dtype {array.dtype} and shape {array.shape}: expected {allowed}")
    if array.ndim == 2:
        out = _gray_to_rgb(array)
    elif array.ndim == 3 and array.shape[2] == 1:
        out = _gray_to_rgb(array[:, :, 0])
    elif array.ndim == 3 and array.shape[2] == 3:
        out = array
    elif array.ndim == 3 and array.shape[2] == 4:
        out = array[:, :, :3]
    else:
        raise InputError(f"image array of shape {array.shape} (uint8): expected {allowed}")
    if out.shape[0] == 0 or out.shape[1] == 0:
        raise InputError(f"image array of shape {array.shape} is empty: expected height and width > 0")
    return np.ascontiguousarray(out)


def _check_size(height: object, width: object, what: str) -> Tuple[int, int]:
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) <= 0:
            raise InputError(f"{what} {name}={v!r}: expected a positive integer")
    return int(height), int(width)  # type: ignore[arg-type]


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a ``uint8`` H x W x 3 image to ``height`` x ``width`` x 3 (rule :data:`RESIZE_RULE`).

    Uses Pillow's ``Image.BILINEAR``. When the image already has that size it is returned
    unchanged (the same object, no copy).
    """
    h, w = _check_size(height, width, "resize")
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"shape {image.shape}, dtype {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InputError(f"resize input ({desc}): expected a uint8 H x W x 3 array (see to_rgb)")
    if image.shape[0] == h and image.shape[1] == w:
        return image
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"resize input of shape {image.shape} is empty: expected height and width > 0")
    pil = _pil().fromarray(np.ascontiguousarray(image))
    return np.asarray(pil.resize((w, h), _resampling("BILINEAR")), dtype=np.uint8).copy()


def _mask_to_bool(img: "Image.Image", path: PathLike) -> np.ndarray:
    """Nonzero -> True. Colour masks: any colour channel nonzero (alpha ignored, as for images);
    palette masks: the looked-up colour is not black."""
    mode = img.mode
    if mode in ("1", "L", "I", "F") or mode in _GRAY16_MODES or mode.startswith("I;"):
        return np.asarray(img) != 0
    if mode in ("LA", "La"):
        return np.asarray(img.convert("LA"))[:, :, 0] != 0
    if mode in ("P", "PA"):
        return np.asarray(img.convert("RGBA"))[:, :, :3].any(axis=2)
    if mode in ("RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "HSV"):
        return np.asarray(img.convert("RGB")).any(axis=2)
    raise DataError(
        f"{Path(path)}: unsupported mask mode {mode!r} (expected a gray, 1-bit, palette or RGB mask)"
    )


def read_mask(
    path: PathLike,
    height: Optional[int] = None,
    width: Optional[int] = None,
    expect_size: Optional[Tuple[int, int]] = None,
    max_pixels: Optional[int] = None,
) -> np.ndarray:
    """Read a ground-truth mask as a ``bool`` H x W array (nonzero pixels -> True).

    ``expect_size=(h, w)`` is the size of the mask's image *before* resizing; a mask of another size
    raises :class:`~adrt.errors.DataError` naming the mask and both sizes. With ``height`` and
    ``width`` the mask is resized with nearest-neighbour sampling (values stay binary).
    """
    if (height is None) != (width is None):
        raise InputError(f"read_mask height={height!r}, width={width!r}: expected both or neither")
    if height is not None:
        height, width = _check_size(height, width, "read_mask")
    img = _open(path, max_pixels)
    with img:
        _load(img, path)
        mask = _mask_to_bool(img, path)
    mh, mw = mask.shape
    if expect_size is not None:
        eh, ew = (int(v) for v in expect_size)
        if (mh, mw) != (eh, ew):
            raise DataError(
                f"{Path(path)}: mask is {mh}x{mw} (HxW) but its image is {eh}x{ew}; "
                f"expected a mask of the same size as its image"
            )
    if height is not None and (mh, mw) != (height, width):
        pil = _pil().fromarray(mask.astype(np.uint8) * np.uint8(255))
        mask = np.asarray(pil.resize((width, height), _resampling("NEAREST"))) != 0
    return np.ascontiguousarray(mask, dtype=bool)


def _notice(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def scan_images(folder: PathLike, recursive: bool = False,
                notice: Optional[Callable[[str], None]] = _notice) -> List[Path]:
    """Image files in ``folder`` (its subfolders too with ``recursive``), sorted by path.

    Hidden entries and names without an image suffix are ignored. Entries with an image suffix
    that are not regular files (a folder named ``x.png``, a FIFO, a device, a socket, a broken
    link) are skipped and reported through ``notice`` (stderr by default): opening a FIFO would
    block for ever.
    """
    root = Path(folder)
    found: List[Path] = []
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = sorted(d.iterdir(), key=lambda p: p.name)
        except OSError as e:
            raise DataError(f"{d}: cannot list folder ({e.strerror or e})") from None
        for p in entries:
            if p.name.startswith("."):
                continue
            try:
                mode = p.stat().st_mode
            except OSError:
                if is_image_file(p) and notice is not None:
                    notice(f"skipped {p}: a broken link or unreadable entry")
                continue
            if recursive and stat.S_ISDIR(mode) and not p.is_symlink():
                stack.append(p)
                continue
            if not is_image_file(p):
                continue
            if stat.S_ISREG(mode):
                found.append(p)
            elif notice is not None:
                notice(f"skipped {p}: {_kind(mode)}, not an image file")
    return sorted(found)
