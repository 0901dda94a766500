"""Images for distillation and penalties besides the fit images (``students``, ``efficientad``): extra
folders and procedural "dead leaves" images (a data-free stand-in for natural images where the papers
use ImageNet)."""
from __future__ import annotations

import numpy as np

from adrt.data import Dataset, load_images
from adrt.errors import AdrtError

DEADLEAVES = "deadleaves"


def dead_leaves(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """``count`` dead-leaves images, uint8 N×H×W×3: opaque discs of random colour, radii with density
    ∝ r⁻³ between 1/64 and 1/4 of the shorter side, painted back to front in the number that covers
    the canvas ~99 % on average, plus mild pixel noise. Such images share the scale-invariant edge
    and occlusion statistics of natural images (Lee, Mumford & Huang 2001; Baradad et al. 2021
    pretrain on them)."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, height, width, 3), dtype=np.uint8)
    side = min(height, width)
    r_min, r_max = max(1.0, side / 64), max(2.0, side / 4)
    mean_area = np.pi * np.log(r_max / r_min) / (0.5 * (r_min**-2 - r_max**-2))   # π·E[r²]
    n_discs = int(np.ceil(np.log(100) * height * width / mean_area))              # 1 − e^(−k) ≈ 0.99
    for k in range(count):
        img = np.empty((height, width, 3), dtype=np.float32)
        img[:] = rng.uniform(0, 255, 3)
        u = rng.uniform(size=n_discs)
        radii = 1.0 / np.sqrt(u / r_min**2 + (1 - u) / r_max**2)       # inverse CDF of a density ∝ r⁻³
        cys = rng.uniform(-radii, height + radii)
        cxs = rng.uniform(-radii, width + radii)
        colours = rng.uniform(0, 255, (n_discs, 3)).astype(np.float32)
        for r, cy, cx, colour in zip(radii, cys, cxs, colours):
            y0, y1 = max(0, int(cy - r)), min(height, int(cy + r) + 1)
            x0, x1 = max(0, int(cx - r)), min(width, int(cx + r) + 1)
            if y0 >= y1 or x0 >= x1:
                continue
            yy, xx = np.ogrid[y0:y1, x0:x1]
            img[y0:y1, x0:x1][(yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 < r * r] = colour
        out[k] = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    return out


def load_extra(spec: str, height: int, width: int, seed: int, n_default: int) -> tuple[np.ndarray | None, str]:
    """Images named by ``spec``: ','-separated entries, each a dataset folder (MVTec category →
    train/good, or a folder of images) or ``deadleaves[:N]`` (N procedural images, default
    ``n_default``). Returns (uint8 N×H×W×3 or None, a description)."""
    parts, what = [], []
    for entry in [s.strip() for s in spec.split(",") if s.strip()]:
        name, _, count = entry.partition(":")
        if name == DEADLEAVES:
            try:
                n = int(count) if count else n_default
            except ValueError:
                raise AdrtError(f"{entry!r}: expected deadleaves or deadleaves:N with N a number") from None
            parts.append(dead_leaves(n, height, width, seed + len(parts)))
            what.append(f"{n} dead-leaves images")
        else:
            paths = Dataset.open(entry).train
            parts.append(load_images(paths, height, width))
            what.append(f"{len(paths)} images of {entry}")
    if not parts:
        return None, "none"
    return np.concatenate(parts), ", ".join(what)

