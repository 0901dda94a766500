"""A small procedural dataset in MVTec AD layout, with painted defects and exact masks.

Good images are a texture (``gravel``: stochastic, pebbles of random size, tone and place, no
period; the regular ``weave``: an over/under woven cloth; ``grain``: wavy wood-like
stripes) with per-image random phase, thread/stripe irregularities, slight colour jitter and pixel
noise, so a detector has to learn the pattern rather than a constant colour. Defects are painted on
top of a good image:

* ``scratch``: a thin straight line segment, light or dark, random angle and length;
* ``spot``: a wobbly ellipse (stain) of a clearly different colour.

Each mask is exactly the set of painted pixels (every masked pixel differs from the clean texture,
no pixel outside the mask is touched), saved as 0/255 8-bit PNG. Everything is deterministic for a
given ``seed`` (numpy + Pillow only).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Tuple, Union

import numpy as np
from PIL import Image

from adrt.errors import InputError
from adrt.outputs import SYNTH_MARKER, Kind, staged_folder

__all__ = ["TEXTURES", "DEFECT_TYPES", "make_dataset", "make_image", "paint_defect"]

TEXTURES = ("weave", "grain", "gravel")
DEFECT_TYPES = ("scratch", "spot")

# Stream ids mixed into the seed so that every image has its own independent generator.
_STREAMS = {"train": 1, "test_good": 2, "scratch": 3, "spot": 4}


def _grid(size: int) -> Tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy + 0.5, xx + 0.5


def _weave(rng: np.random.Generator, size: int) -> np.ndarray:
    pitch = max(4.0, size / 8.0) * rng.uniform(0.95, 1.05)
    oy, ox = rng.uniform(0.0, 2.0 * pitch, 2)
    yy, xx = _grid(size)
    u = (xx + ox) / pitch
    v = (yy + oy) / pitch
    cu = np.floor(u).astype(np.int64)
    cv = np.floor(v).astype(np.int64)
    fu = u - cu
    fv = v - cv
    warp_on_top = (cu + cv) % 2 == 0
    # Each thread is a little brighter or darker than its neighbours.
    warp_gain = 1.0 + rng.normal(0.0, 0.05, int(cu.max() - cu.min()) + 1)[cu - cu.min()]
    weft_gain = 1.0 + rng.normal(0.0, 0.05, int(cv.max() - cv.min()) + 1)[cv - cv.min()]
    # Rounded thread profile across the thread, and a dip where it goes under the crossing one.
    warp = np.sqrt(np.sin(np.pi * fu)) * (0.75 + 0.25 * np.sin(np.pi * fv)) * warp_gain
    weft = np.sqrt(np.sin(np.pi * fv)) * (0.75 + 0.25 * np.sin(np.pi * fu)) * weft_gain
    shade = np.where(warp_on_top, warp, weft)
    warp_col = np.array([176.0, 146.0, 104.0]) * (1.0 + rng.normal(0.0, 0.025, 3))
    weft_col = np.array([152.0, 128.0, 96.0]) * (1.0 + rng.normal(0.0, 0.025, 3))
    col = np.where(warp_on_top[:, :, None], warp_col, weft_col)
    return col * (0.45 + 0.55 * shade)[:, :, None]


def _grain(rng: np.random.Generator, size: int) -> np.ndarray:
    pitch = size / 6.0 * rng.uniform(0.9, 1.1)
    amp = pitch * rng.uniform(0.25, 0.6)
    wave = size * rng.uniform(0.6, 1.0)
    ph1, ph2 = rng.uniform(0.0, 2.0 * np.pi, 2)
    yy, xx = _grid(size)
    t = 0.5 + 0.5 * np.sin(2.0 * np.pi * (yy + amp * np.sin(2.0 * np.pi * xx / wave + ph1)) / pitch + ph2)
    t = t ** 1.5
    # Fine fibres: row-wise streaks that follow the rows, slightly smoothed.
    streak = np.convolve(rng.normal(0.0, 0.04, size + 2), np.ones(3) / 3.0, mode="valid")[:, None]
    light = np.array([196.0, 160.0, 112.0]) * (1.0 + rng.normal(0.0, 0.025, 3))
    dark = np.array([132.0, 94.0, 60.0]) * (1.0 + rng.normal(0.0, 0.025, 3))
    img = dark + t[:, :, None] * (light - dark)
    return img * (1.0 + streak)[:, :, None]


def _gravel(rng: np.random.Generator, size: int) -> np.ndarray:
    # Pebbles: the Voronoi cells of random seeds (about 12 px apart at any size), each its own tone,
    # darker towards the gaps between cells; per-pixel grit on top. Nothing repeats, so a detector
    # cannot learn a period, only the statistics.
    n = max(4, int(size * size / 140.0))
    pts = rng.uniform(0.0, size, (n, 2)).astype(np.float32)
    yy, xx = _grid(size)
    best = np.full((size, size), np.inf, np.float32)
    second = np.full((size, size), np.inf, np.float32)
    owner = np.zeros((size, size), np.int64)
    for i, (py, px) in enumerate(pts):
        d = (yy - py) ** 2 + (xx - px) ** 2
        closer = d < best
        second = np.where(closer, best, np.minimum(second, d))
        owner = np.where(closer, i, owner)
        best = np.where(closer, d, best)
    gap = np.clip((np.sqrt(second) - np.sqrt(best)) / 3.0, 0.0, 1.0)          # 0 on a cell border
    tone = rng.uniform(0.55, 1.0, n)[owner] * (0.45 + 0.55 * gap)
    base = np.array([150.0, 140.0, 125.0]) * (1.0 + rng.normal(0.0, 0.03, 3))
    return tone[..., None] * base + rng.normal(0.0, 6.0, (size, size, 1))


_TEXTURE_FUNCS = {"weave": _weave, "grain": _grain, "gravel": _gravel}


def make_image(texture: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One good ``uint8`` size x size x 3 image of ``texture`` (one of :data:`TEXTURES`)."""
    if texture not in _TEXTURE_FUNCS:
        raise InputError(f"texture={texture!r}: expected one of {', '.join(TEXTURES)}")
    img = _TEXTURE_FUNCS[texture](rng, size)
    img = img + rng.normal(0.0, 3.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _scratch_mask(rng: np.random.Generator, size: int, fine: float = 0.0) -> np.ndarray:
    half_width = max(1.0, size * 0.028)
    length = size * rng.uniform(0.45, 0.8)
    if fine:
        # At most ``fine`` pixels wide whatever the image size, 24-64 px long.
        half_width = rng.uniform(0.75, fine / 2.0)
        length = min(size * 0.8, rng.uniform(24.0, 64.0))
    angle = rng.uniform(0.0, np.pi)
    dy, dx = np.sin(angle), np.cos(angle)
    margin = half_width + 1.0
    ext_y = abs(dy) * length / 2.0 + margin
    ext_x = abs(dx) * length / 2.0 + margin
    cy = rng.uniform(ext_y, size - ext_y)
    cx = rng.uniform(ext_x, size - ext_x)
    yy, xx = _grid(size)
    # Distance from each pixel centre to the segment centre +- length/2 along (dy, dx).
    ry, rx = yy - cy, xx - cx
    along = np.clip(ry * dy + rx * dx, -length / 2.0, length / 2.0)
    dist = np.hypot(ry - along * dy, rx - along * dx)
    return dist <= half_width


def _spot_mask(rng: np.random.Generator, size: int, fine: float = 0.0) -> np.ndarray:
    a = size * rng.uniform(0.09, 0.15)
    b = size * rng.uniform(0.09, 0.15)
    if fine:
        # A dot or short dash at most ``fine`` pixels wide (its reach, wobble included, ≤ fine / 2).
        a, b = rng.uniform(1.5, fine / 2.0, 2) / 1.15
    theta = rng.uniform(0.0, np.pi)
    wobble = rng.uniform(0.05, 0.15)
    lobes = int(rng.integers(3, 6))
    phase = rng.uniform(0.0, 2.0 * np.pi)
    reach = max(a, b) * (1.0 + wobble) + 1.0
    cy, cx = rng.uniform(reach, size - reach, 2)
    yy, xx = _grid(size)
    ry, rx = yy - cy, xx - cx
    c, s = np.cos(theta), np.sin(theta)
    p = (rx * c + ry * s) / a
    q = (-rx * s + ry * c) / b
    r = np.hypot(p, q)
    limit = 1.0 + wobble * np.sin(lobes * np.arctan2(q, p) + phase)
    return r <= limit


def paint_defect(image: np.ndarray, kind: str, rng: np.random.Generator,
                 fine: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """Paint a ``scratch`` or ``spot`` on a copy of a square ``uint8`` RGB image. ``fine`` > 0:
    defects at most that many pixels wide (thin scratches, dots), whatever the image size.

    Returns ``(defect_image, mask)``; ``mask`` (bool) is True exactly where pixels were changed.
    """
    if (
        not isinstance(image, np.ndarray)
        or image.dtype != np.uint8
        or image.ndim != 3
        or image.shape[2] != 3
        or image.shape[0] != image.shape[1]
        or image.shape[0] < 16
    ):
        desc = f"shape {image.shape}, dtype {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InputError(f"paint_defect image ({desc}): expected a square uint8 S x S x 3 array, S >= 16")
    size = image.shape[0]
    if kind == "scratch":
        mask = _scratch_mask(rng, size, fine)
        light = rng.random() < 0.5
        colour = np.array([238.0, 236.0, 230.0] if light else [34.0, 30.0, 28.0])
    elif kind == "spot":
        mask = _spot_mask(rng, size, fine)
        colour = np.array([40.0, 72.0, 140.0] if rng.random() < 0.5 else [38.0, 110.0, 60.0])
    else:
        raise InputError(f"defect kind={kind!r}: expected one of {', '.join(DEFECT_TYPES)}")
    n = int(mask.sum())
    paint = np.clip(np.rint(colour + rng.normal(0.0, 3.0, (n, 3))), 0, 255).astype(np.uint8)
    out = image.copy()
    # Guarantee that every painted pixel really changed (so the mask is exactly the changed set).
    same = (paint == image[mask]).all(axis=1)
    paint[same, 0] = paint[same, 0] ^ np.uint8(0x40)
    out[mask] = paint
    return out, mask


def _rng(seed: int, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[stream], index])


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG", compress_level=1)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise InputError(f"{name}={value!r}: expected an integer >= {minimum}")
    return int(value)


def make_dataset(
    root: Union[str, Path],
    *,
    size: int = 64,
    n_train: int = 24,
    n_test_good: int = 6,
    n_test_defect: int = 6,
    seed: int = 0,
    texture: str = "weave",
    overwrite: bool = False,
    fine: float = 0.0,
) -> Path:
    """Write a synthetic MVTec AD category under ``root`` and return ``root`` as a Path.

    Layout: ``train/good/000.png ...``, ``test/good/*``, ``test/scratch/*``, ``test/spot/*``,
    ``ground_truth/{scratch,spot}/NNN_mask.png`` (0/255) and a marker file ``.adrt-synth.json``.
    ``n_test_defect`` is the total number of defect images, split between scratch and spot (scratch
    gets the odd one). ``fine`` > 0 (pixels, at least 3): every defect at most that wide (the
    tiling check: defects that vanish when a large image is squashed). ``root`` must be new or empty, or (with ``overwrite=True``) a synthetic
    dataset written here before; any other folder is refused (OutputError).
    """
    size = _check_int("size", size, 16)
    n_train = _check_int("n_train", n_train, 1)
    n_test_good = _check_int("n_test_good", n_test_good, 0)
    n_test_defect = _check_int("n_test_defect", n_test_defect, 0)
    seed = _check_int("seed", seed, 0)
    if texture not in _TEXTURE_FUNCS:
        raise InputError(f"texture={texture!r}: expected one of {', '.join(TEXTURES)}")
    if isinstance(fine, bool) or not isinstance(fine, (int, float)) or not (fine == 0 or 3 <= fine <= size / 4):
        raise InputError(f"fine={fine!r}: expected 0 (defects scaled with the image) or a width in pixels from 3 "
                         f"to size/4")
    root = Path(root)
    # Written beside ROOT and moved into place once complete; an existing folder is replaced only
    # when it is a synthetic dataset made here (its marker file) and overwrite=True (adrt.outputs):
    # a real dataset is never deleted.
    with staged_folder(root, Kind.DATASET, overwrite=overwrite, option="dataset folder") as tmp:
        _write(tmp, texture, size, n_train, n_test_good, n_test_defect, seed, float(fine))
        (tmp / SYNTH_MARKER).write_text(json.dumps({
            "texture": texture, "size": size, "n_train": n_train, "n_test_good": n_test_good,
            "n_test_defect": n_test_defect, "seed": seed, **({"fine": fine} if fine else {})}))
    return root


def _write(root: Path, texture: str, size: int, n_train: int, n_test_good: int, n_test_defect: int,
           seed: int, fine: float = 0.0) -> None:
    total = max(n_train, n_test_good, n_test_defect)
    width = max(3, len(str(total - 1)))

    def name(i: int) -> str:
        return f"{i:0{width}d}"

    for i in range(n_train):
        _save(make_image(texture, size, _rng(seed, "train", i)), root / "train" / "good" / f"{name(i)}.png")
    for i in range(n_test_good):
        _save(make_image(texture, size, _rng(seed, "test_good", i)), root / "test" / "good" / f"{name(i)}.png")
    counts = {"scratch": (n_test_defect + 1) // 2, "spot": n_test_defect // 2}
    for kind, count in counts.items():
        for i in range(count):
            rng = _rng(seed, kind, i)
            img, mask = paint_defect(make_image(texture, size, rng), kind, rng, fine)
            _save(img, root / "test" / kind / f"{name(i)}.png")
            _save(mask.astype(np.uint8) * np.uint8(255), root / "ground_truth" / kind / f"{name(i)}_mask.png")
