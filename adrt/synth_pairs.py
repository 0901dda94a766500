"""Procedural reference/test pairs for change detection (printed-circuit-like designs).

A *design* is a set of strokes on a board: traces (straight and right-angled polylines, 2–5 px
wide at 512 px, scaled with the size) and pads (filled discs and squares). Each image is a
*capture* of a design: the design rendered with a small random translation (up to ``shift`` px),
a brightness/contrast change and sensor noise. Its reference is the clean capture of the same
design (no shift, no gain, no noise): the golden image of that design.

Changes (the defects) are made to the design before capture, so they move with it:

* ``missing``: a piece of a trace or a pad erased (board colour painted over it);
* ``extra``: a new stroke a few px wide where the board was empty (a short circuit, a splash).

The mask is exactly the set of pixels where the changed capture differs from the unchanged one
(both rendered with the same shift). Layout (MVTec AD + adrt.runtime.pairs)::

    ROOT/train/good/NNN.png              ROOT/reference/train/good/NNN.png
    ROOT/test/{good,missing,extra}/NNN.png   ROOT/reference/test/.../NNN.png
    ROOT/ground_truth/{missing,extra}/NNN_mask.png
    ROOT/golden.png                      (with one design: the reference of every image)

Deterministic for a given ``seed`` (numpy + Pillow only).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageDraw

from adrt.errors import InputError
from adrt.outputs import SYNTH_MARKER, Kind, staged_folder
from adrt.synth import _check_int, _save

__all__ = ["CHANGE_TYPES", "make_pairs", "make_design"]

CHANGE_TYPES = ("missing", "extra")
GOLDEN = "golden.png"
_BOARD = (34, 96, 52)
_COPPER = (200, 170, 90)
_PAD = (214, 214, 200)


def make_design(rng: np.random.Generator, size: int) -> list:
    """Strokes of one design: ``("line", points, width, colour)`` and ``("disc"|"square", centre, radius, colour)``."""
    s = size / 512.0
    items = []
    for _ in range(int(rng.integers(14, 22))):
        x, y = rng.uniform(0.08, 0.92, 2) * size
        pts = [(x, y)]
        for _ in range(int(rng.integers(1, 4))):
            horizontal = rng.random() < 0.5
            step = rng.uniform(0.08, 0.35) * size * rng.choice([-1, 1])
            x, y = (np.clip(x + step, 0.04 * size, 0.96 * size), y) if horizontal else \
                (x, np.clip(y + step, 0.04 * size, 0.96 * size))
            pts.append((x, y))
        width = max(1, int(round(rng.uniform(2.0, 5.0) * s)))
        items.append(("line", pts, width, _COPPER))
        for px, py in (pts[0], pts[-1]):
            kind = "disc" if rng.random() < 0.6 else "square"
            items.append((kind, (px, py), max(2.0, rng.uniform(4.0, 8.0) * s), _PAD))
    return items


def _render(items, size: int, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    img = Image.new("RGB", (size, size), _BOARD)
    draw = ImageDraw.Draw(img)
    for kind, a, b, colour in items:
        if kind == "line":
            draw.line([(x + dx, y + dy) for x, y in a], fill=colour, width=b, joint="curve")
        elif kind == "erase":
            draw.line([(x + dx, y + dy) for x, y in a], fill=_BOARD, width=b)
        else:
            (x, y), r = a, b
            box = [x + dx - r, y + dy - r, x + dx + r, y + dy + r]
            (draw.ellipse if kind == "disc" else draw.rectangle)(box, fill=colour)
    return np.asarray(img)


def _change(items, kind: str, rng: np.random.Generator, size: int) -> list:
    s = size / 512.0
    if kind == "missing":
        lines = [it for it in items if it[0] == "line"]
        _, pts, width, _ = lines[int(rng.integers(len(lines)))]
        i = int(rng.integers(len(pts) - 1))
        (x0, y0), (x1, y1) = pts[i], pts[i + 1]
        t0 = rng.uniform(0.1, 0.6)
        t1 = min(1.0, t0 + max(rng.uniform(0.1, 0.3), 12 * s / max(1.0, np.hypot(x1 - x0, y1 - y0))))
        seg = [(x0 + t0 * (x1 - x0), y0 + t0 * (y1 - y0)), (x0 + t1 * (x1 - x0), y0 + t1 * (y1 - y0))]
        return items + [("erase", seg, width + max(2, int(round(2 * s))), None)]
    x, y = rng.uniform(0.1, 0.9, 2) * size
    ang = rng.uniform(0, np.pi)
    length = rng.uniform(12, 40) * s
    seg = [(x, y), (x + length * np.cos(ang), y + length * np.sin(ang))]
    return items + [("line", seg, max(2, int(round(rng.uniform(2.0, 5.0) * s))), _COPPER)]


def _photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gain, offset = rng.uniform(0.85, 1.15), rng.uniform(-12, 12)
    out = img.astype(np.float32) * gain + offset + rng.normal(0.0, 2.0, img.shape)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def make_pairs(root: Union[str, Path], *, size: int = 512, n_train: int = 40, n_test_good: int = 10,
               n_test_change: int = 10, designs: int = 1, shift: float = 4.0, seed: int = 0,
               overwrite: bool = False) -> Path:
    """Write a reference/test pair dataset under ``root`` (layout in the module docstring).

    ``designs``: the number of distinct designs (1: a fixed line with one golden image; more: the
    reference differs per image). ``shift``: the largest translation of a capture, in px at
    ``size``. ``n_test_change``: changed images in all, split between missing and extra.
    """
    size = _check_int("size", size, 32)
    n_train = _check_int("n_train", n_train, 1)
    n_test_good = _check_int("n_test_good", n_test_good, 0)
    n_test_change = _check_int("n_test_change", n_test_change, 0)
    designs = _check_int("designs", designs, 1)
    seed = _check_int("seed", seed, 0)
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not 0 <= shift <= size / 8:
        raise InputError(f"shift={shift!r}: expected a number of pixels from 0 to {size / 8:g} (size/8)")
    root = Path(root)
    with staged_folder(root, Kind.DATASET, overwrite=overwrite, option="dataset folder") as tmp:
        _write(tmp, size, n_train, n_test_good, n_test_change, designs, float(shift), seed)
        (tmp / SYNTH_MARKER).write_text(json.dumps({
            "kind": "pairs", "size": size, "n_train": n_train, "n_test_good": n_test_good,
            "n_test_change": n_test_change, "designs": designs, "shift": shift, "seed": seed}))
    return root


def _write(root: Path, size, n_train, n_test_good, n_test_change, designs, shift, seed) -> None:
    layouts = [make_design(np.random.default_rng([seed, 10, d]), size) for d in range(designs)]
    goldens = [_render(items, size) for items in layouts]
    if designs == 1:
        _save(goldens[0], root / GOLDEN)
    width = max(3, len(str(max(n_train, n_test_good, n_test_change) - 1)))
    counts = {"missing": (n_test_change + 1) // 2, "extra": n_test_change // 2}
    jobs = [("train/good", i, None) for i in range(n_train)] + [("test/good", i, None) for i in range(n_test_good)]
    jobs += [(f"test/{kind}", i, kind) for kind, n in counts.items() for i in range(n)]
    for stream, (folder, i, kind) in enumerate(jobs):
        rng = np.random.default_rng([seed, 20 + stream, i])
        d = int(rng.integers(designs))
        name = f"{i:0{width}d}.png"
        items, dx, dy = layouts[d], *rng.uniform(-shift, shift, 2).round()
        if kind is not None:
            for _ in range(20):     # a change that happens to repeat the design is drawn again
                items = _change(layouts[d], kind, rng, size)
                mask = (_render(items, size, dx, dy) != _render(layouts[d], size, dx, dy)).any(-1)
                if mask.sum() >= 4:
                    break
            _save(mask.astype(np.uint8) * np.uint8(255), root / "ground_truth" / kind / f"{i:0{width}d}_mask.png")
        _save(_photometric(_render(items, size, dx, dy), rng), root / folder / name)
        _save(goldens[d], root / "reference" / folder / name)
