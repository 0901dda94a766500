"""Input geometry, torch-free: letterboxing (done by the runtime, like resizing) and the tiling
rule (done inside the fused graph; the numpy forms here are what training cuts tiles with and
what the tests check the graph against).

The record itself (:class:`adrt.contract.Geometry`) lives in the contract. Here:

* :func:`prepare` brings any uint8 image to a bundle's input by its geometry: ``resize`` and
  ``tile`` resize it to the input size (a tiled bundle's input is the full frame), ``letterbox``
  scales it to fit keeping its aspect ratio and pads the rest with the recorded value;
  :func:`prepare_mask` does the same to a ground-truth mask (nearest neighbour, padding False).
* :func:`blend_weights` / :func:`cut_tiles` / :func:`stitch`: the tiling rule. Along each axis a
  tile's weight is a linear ramp ``(u + 0.5) / overlap`` rising over its first ``overlap`` pixels and
  falling likewise over its last ones (1 elsewhere), divided by the sum
  of the weights of all tiles covering that pixel; a tile's 2-D weight is the product of its row and
  column weights, so the weights of all tiles sum to 1 at every pixel.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

from adrt.contract import Geometry, tile_starts
from adrt.errors import InputError
from adrt.runtime.image import _pil, _resampling, resize, to_rgb

__all__ = ["letterbox_box", "letterbox", "unletterbox", "prepare", "prepare_mask", "blend_weights", "cut_tiles", "stitch",
           "tile_starts"]


def letterbox_box(src_h: int, src_w: int, height: int, width: int) -> Tuple[int, int, int, int]:
    """Where a ``src_h`` × ``src_w`` frame lands in a ``height`` × ``width`` letterbox:
    ``(top, left, h, w)`` of the scaled frame (aspect ratio kept, centred)."""
    scale = min(height / src_h, width / src_w)
    h = min(height, max(1, int(round(src_h * scale))))
    w = min(width, max(1, int(round(src_w * scale))))
    return (height - h) // 2, (width - w) // 2, h, w


def letterbox(image: np.ndarray, height: int, width: int, pad_value=(0, 0, 0)) -> np.ndarray:
    """uint8 H×W×3 → ``height`` × ``width`` × 3: scaled to fit (bilinear, as :func:`resize`), centred,
    the rest filled with ``pad_value``."""
    top, left, h, w = letterbox_box(image.shape[0], image.shape[1], height, width)
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[...] = np.asarray(pad_value, dtype=np.uint8)
    out[top : top + h, left : left + w] = resize(image, h, w)
    return out


def prepare(image: np.ndarray, height: int, width: int, geometry: Geometry) -> np.ndarray:
    """Any uint8 gray/RGB/RGBA image → uint8 ``height`` × ``width`` × 3 by ``geometry``."""
    rgb = to_rgb(image)
    if geometry.mode == "letterbox":
        return letterbox(rgb, height, width, geometry.pad_value)
    return resize(rgb, height, width)


def prepare_mask(mask: np.ndarray, height: int, width: int, geometry: Geometry) -> np.ndarray:
    """A bool H×W mask → ``height`` × ``width``, placed as :func:`prepare` places its image
    (nearest neighbour; a letterbox's padding is False)."""
    def nearest(m, h, w):
        if m.shape == (h, w):
            return m
        pil = _pil().fromarray(m.astype(np.uint8) * np.uint8(255))
        return np.asarray(pil.resize((w, h), _resampling("NEAREST"))) != 0

    if geometry.mode != "letterbox":
        return nearest(mask, height, width)
    top, left, h, w = letterbox_box(mask.shape[0], mask.shape[1], height, width)
    out = np.zeros((height, width), dtype=bool)
    out[top : top + h, left : left + w] = nearest(mask, h, w)
    return out


def blend_weights(size: int, tile: int, overlap: int) -> np.ndarray:
    """float32 (n_tiles, tile): each tile's normalised blending weight along one axis of ``size``."""
    starts = tile_starts(size, tile, overlap)
    u = np.arange(tile, dtype=np.float64)
    raw = np.ones((len(starts), tile))
    if overlap > 0:
        ramp = np.minimum(1.0, np.minimum(u + 0.5, tile - u - 0.5) / overlap)
        raw[:] = ramp          # at the frame's edges one tile covers alone: normalised to 1 below
    total = np.zeros(size)
    for s, w in zip(starts, raw):
        total[s : s + tile] += w
    return np.stack([w / total[s : s + tile] for s, w in zip(starts, raw)]).astype(np.float32)


def _grid(geometry: Geometry, height: int, width: int) -> Tuple[List[int], List[int]]:
    if not geometry.tiled:
        raise InputError(f"geometry mode {geometry.mode!r}: not a tiled geometry")
    geometry.check_frame(height, width)
    return geometry.grid(height, width)


def cut_tiles(frames: np.ndarray, geometry: Geometry) -> np.ndarray:
    """N×H×W×C frames → (N·T)×th×tw×C tiles, row-major per frame (the graph's order)."""
    n, height, width = frames.shape[:3]
    ys, xs = _grid(geometry, height, width)
    th, tw = geometry.tile
    tiles = [frames[:, y : y + th, x : x + tw] for y in ys for x in xs]
    return np.stack(tiles, axis=1).reshape(n * len(tiles), th, tw, *frames.shape[3:])


def stitch(tile_maps: np.ndarray, geometry: Geometry, height: int, width: int) -> np.ndarray:
    """(N·T)×th×tw tile maps → N×height×width, blended by :func:`blend_weights` (reference form)."""
    ys, xs = _grid(geometry, height, width)
    th, tw = geometry.tile
    wy = blend_weights(height, th, geometry.overlap).astype(np.float64)
    wx = blend_weights(width, tw, geometry.overlap).astype(np.float64)
    maps = tile_maps.reshape(-1, len(ys), len(xs), th, tw).astype(np.float64)
    out = np.zeros((maps.shape[0], height, width))
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            out[:, y : y + th, x : x + tw] += maps[:, i, j] * wy[i][:, None] * wx[j][None, :]
    return out.astype(np.float32)


def parse_size(text: str, what: str = "--input-size") -> Tuple[int, int]:
    """``"2048x2448"`` (height × width) or ``"256"`` (square) → (height, width)."""
    parts = str(text).lower().replace("×", "x").split("x")
    try:
        hw = [int(p) for p in parts]
    except ValueError:
        hw = []
    if len(hw) not in (1, 2) or min(hw) < 1:
        raise InputError(f"{what} {text!r}: expected HEIGHTxWIDTH in pixels (e.g. 2048x2448) or one side")
    return (hw[0], hw[-1])


def geometry_from_options(tile=None, overlap=None, letterbox: bool = False, pad_value=None) -> Geometry:
    """The geometry the CLI options ask for (``--tile``, ``--overlap``, ``--letterbox``,
    ``--pad-value``); resize when none is given. Contradictions are errors, not ignored."""
    if tile is not None and letterbox:
        raise InputError("--tile and --letterbox: choose one geometry (a tiled bundle takes the full frame)")
    if tile is None and overlap is not None:
        raise InputError("--overlap goes with --tile")
    if not letterbox and pad_value is not None:
        raise InputError("--pad-value goes with --letterbox")
    if tile is not None:
        return Geometry("tile", tile=parse_size(tile, "--tile"), overlap=overlap or 0)
    if letterbox:
        if pad_value is None:
            return Geometry("letterbox")
        try:
            values = [int(v) for v in str(pad_value).split(",")]
        except ValueError:
            values = []
        if len(values) not in (1, 3):
            raise InputError(f"--pad-value {pad_value!r}: expected one value 0..255 or R,G,B")
        return Geometry("letterbox", pad_value=tuple(values * 3 if len(values) == 1 else values))
    return Geometry()


def unletterbox(maps: np.ndarray, src_h: int, src_w: int, height: int, width: int) -> np.ndarray:
    """The inverse placement for N×H×W float maps of one letterboxed ``src_h`` × ``src_w`` frame:
    the part covering the frame (padding dropped), resized bilinearly to ``height`` × ``width``
    (e.g. the frame's own size)."""
    top, left, h, w = letterbox_box(src_h, src_w, maps.shape[1], maps.shape[2])
    image = _pil()
    out = np.empty((len(maps), height, width), dtype=np.float32)
    for i, m in enumerate(maps):
        crop = np.ascontiguousarray(m[top : top + h, left : left + w], dtype=np.float32)
        out[i] = np.asarray(image.fromarray(crop).resize((width, height), _resampling("BILINEAR")))
    return out
