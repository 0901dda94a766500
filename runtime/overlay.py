"""Anomaly-map overlays as PNG (numpy + Pillow; no matplotlib)."""
from __future__ import annotations

import numpy as np
from PIL import Image

# A compact "turbo"-like ramp: blue → cyan → green → yellow → red, interpolated.
_RAMP = np.array([[48, 18, 59], [40, 120, 242], [31, 201, 175], [163, 253, 61], [250, 186, 57], [222, 61, 14], [122, 4, 3]],
                 dtype=np.float32)


def colorize(m: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (H×W) to uint8 RGB H×W×3."""
    x = np.clip(m, 0.0, 1.0) * (len(_RAMP) - 1)
    i = np.minimum(x.astype(np.int64), len(_RAMP) - 2)
    f = (x - i)[..., None]
    return (_RAMP[i] * (1 - f) + _RAMP[i + 1] * f).astype(np.uint8)


def overlay(image: np.ndarray, amap: np.ndarray, threshold: float = 0.5, alpha: float = 0.45) -> np.ndarray:
    """Blend the calibrated map (H×W, any size; resized to the image) over ``image`` (H×W×3 uint8)
    and outline the region above ``threshold`` in white. Returns uint8 H×W×3."""
    h, w = image.shape[:2]
    if amap.shape != (h, w):
        amap = np.asarray(Image.fromarray(amap.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))
    heat = colorize(amap).astype(np.float32)
    out = image.astype(np.float32) * (1 - alpha) + heat * alpha
    above = amap >= threshold
    edge = above & ~(np.roll(above, 1, 0) & np.roll(above, -1, 0) & np.roll(above, 1, 1) & np.roll(above, -1, 1))
    out[edge] = 255.0
    return out.astype(np.uint8)


def save_panel(path, image: np.ndarray, amap: np.ndarray, score: float, threshold: float = 0.5,
               mask: np.ndarray | None = None) -> None:
    """Save image | overlay [| ground truth] side by side as PNG."""
    parts = [image, overlay(image, amap, threshold)]
    if mask is not None:
        parts.append(np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2))
    panel = np.concatenate(parts, axis=1)
    # A score bar along the bottom: filled to the score, red above the threshold.
    bar = np.full((6, panel.shape[1], 3), 40, np.uint8)
    bar[:, : int(round(min(max(score, 0.0), 1.0) * panel.shape[1]))] = (220, 50, 40) if score >= threshold else (60, 180, 75)
    Image.fromarray(np.concatenate([panel, bar], axis=0)).save(path)
