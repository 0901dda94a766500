"""Random crops of scikit-image's sample photos: a small natural-image folder for distillation experiments.

Writes N 256×256 PNGs (squares of 25–100 % of a photo's short side, half of them mirrored) to a
folder that `--set distill_data=FOLDER` accepts. Used for the "scikit-image crops" row of
results/students.md; nothing is downloaded (the photos ship with scikit-image).

    python benchmarks/photo_crops.py /tmp/photo_crops --n 340
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

COLOUR = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "cat", "colorwheel")
GREY = ("camera", "brick", "grass", "gravel", "text", "coins", "moon", "page", "horse", "clock")


def photos() -> list[np.ndarray]:
    import skimage.data as data

    out = [getattr(data, n)()[..., :3] for n in COLOUR]
    for n in GREY:
        a = getattr(data, n)()
        a = (a * 255).astype(np.uint8) if a.dtype == bool else a.astype(np.uint8)
        out.append(np.stack([a] * 3, -1))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=340)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from PIL import Image

    args.out.mkdir(parents=True, exist_ok=True)
    imgs, rng = photos(), np.random.default_rng(args.seed)
    for i in range(args.n):
        a = imgs[rng.integers(len(imgs))]
        h, w = a.shape[:2]
        s = int(min(h, w) * rng.uniform(0.25, 1.0))
        y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
        crop = Image.fromarray(np.ascontiguousarray(a[y : y + s, x : x + s])).resize((256, 256), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        crop.save(args.out / f"{i:03d}.png")
    print(f"{args.n} crops of {len(imgs)} photos in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
