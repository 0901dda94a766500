"""Anomaly-map overlays as PNG a person reads at a glance (numpy + Pillow; no matplotlib, no torch).

A panel is: a header line with the verdict (ANOMALOUS / normal), the calibrated score against
the threshold and the raw score; then image | heat-map overlay with the contour of the pixels at
or above the pixel threshold [| ground truth]; and at the right a colour bar of the calibrated
map scale (0 to 1) with the pixel threshold marked.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# A compact "turbo"-like ramp: blue → cyan → green → yellow → red, interpolated.
_RAMP = np.array([[48, 18, 59], [40, 120, 242], [31, 201, 175], [163, 253, 61], [250, 186, 57], [222, 61, 14], [122, 4, 3]],
                 dtype=np.float32)
BAD, GOOD = (220, 40, 40), (40, 170, 70)      # verdict colours
CONTOUR = (255, 255, 255)


def colorize(m: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (H×W) to uint8 RGB H×W×3."""
    x = np.clip(m, 0.0, 1.0) * (len(_RAMP) - 1)
    i = np.minimum(x.astype(np.int64), len(_RAMP) - 2)
    f = (x - i)[..., None]
    return (_RAMP[i] * (1 - f) + _RAMP[i + 1] * f).astype(np.uint8)


def contour(region: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of the boolean ``region`` (H×W) within ``width`` pixels of its outline (inside it).
    The image border is not an outline: a region touching it is closed by the border itself."""
    edge = np.zeros_like(region)
    inner = region.copy()
    for _ in range(max(1, width)):
        p = np.pad(inner, 1, mode="edge")
        eroded = inner & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
        edge |= inner & ~eroded
        inner = eroded
    return edge


def _resize_map(amap: np.ndarray, h: int, w: int) -> np.ndarray:
    if amap.shape == (h, w):
        return amap
    return np.asarray(Image.fromarray(amap.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))


def overlay(image: np.ndarray, amap: np.ndarray, threshold: float = 0.5, alpha: float = 0.45) -> np.ndarray:
    """Blend the calibrated map (H×W, any size; resized to the image) over ``image`` (H×W×3 uint8)
    and outline the region at or above ``threshold`` in white. Returns uint8 H×W×3."""
    h, w = image.shape[:2]
    amap = _resize_map(amap, h, w)
    heat = colorize(amap).astype(np.float32)
    out = image.astype(np.float32) * (1 - alpha) + heat * alpha
    out[contour(amap >= threshold, width=max(1, min(h, w) // 200))] = CONTOUR
    return out.astype(np.uint8)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)      # Pillow >= 10.1 with FreeType
    except (TypeError, OSError, ImportError, AttributeError):
        return ImageFont.load_default()


def colour_bar(height: int, threshold: float, width: int = 14) -> np.ndarray:
    """A vertical bar of the calibrated map scale, 1 at the top and 0 at the bottom, uint8
    height×width×3, with a white-and-black line at ``threshold``."""
    v = np.linspace(1.0, 0.0, height, dtype=np.float32)
    bar = np.repeat(colorize(v[:, None]), width, axis=1)
    y = int(round((1.0 - threshold) * (height - 1)))
    bar[max(0, y - 1) : y + 2] = 0
    bar[y] = 255
    return bar


def panel(image: np.ndarray, amap: np.ndarray, score: float, threshold: float = 0.5,
          mask: np.ndarray | None = None, pixel_threshold: float | None = None,
          raw_score: float | None = None) -> np.ndarray:
    """The overlay panel as uint8 RGB (see the module docstring). ``amap`` and ``score`` are
    calibrated; ``threshold`` decides the verdict, ``pixel_threshold`` (default: ``threshold``)
    draws the contour and is marked on the colour bar."""
    pixel_threshold = threshold if pixel_threshold is None else pixel_threshold
    h, w = image.shape[:2]
    parts = [image, overlay(image, amap, pixel_threshold)]
    if mask is not None:
        parts.append(np.repeat((np.asarray(mask, bool).astype(np.uint8) * 255)[..., None], 3, axis=2))
    row = np.concatenate(parts, axis=1)
    size = max(11, min(28, h // 16))
    font = _font(size)
    bar_w = max(10, size)
    label_w = int(size * 2.6)
    gap = 6
    total_w = row.shape[1] + gap + bar_w + label_w
    anomalous = score >= threshold
    words = ["ANOMALOUS" if anomalous else "normal", f"score {score:.3f}", f"threshold {threshold:.2f}"]
    if raw_score is not None:
        words.append(f"raw {raw_score:.4g}")
    lines = _wrap(words, font, total_w - 12)
    head = len(lines) * (size + 4) + 6
    canvas = Image.new("RGB", (total_w, h + head), (24, 24, 24))
    canvas.paste(Image.fromarray(row), (0, head))
    canvas.paste(Image.fromarray(colour_bar(h, pixel_threshold, bar_w)), (row.shape[1] + gap, head))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, 0, canvas.width, head - 1], fill=BAD if anomalous else GOOD)
    for j, line in enumerate(lines):
        draw.text((6, 3 + j * (size + 4)), line, fill=(255, 255, 255), font=font)
    x = row.shape[1] + gap + bar_w + 3
    y_thr = head + int(round((1.0 - pixel_threshold) * (h - 1)))
    for value, y in ((1.0, head), (0.0, head + h - size)):
        if abs(y - y_thr) > size:           # keep the threshold's label readable
            draw.text((x, y), f"{value:.0f}", fill=(230, 230, 230), font=font)
    draw.text((x, min(max(head, y_thr - size // 2), head + h - size)), f"{pixel_threshold:.2f}",
              fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def _wrap(words: list, font, width: int) -> list:
    """Words joined into as few lines as fit ``width`` pixels (a word longer than a line gets its own)."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = [words[0]]
    for word in words[1:]:
        if probe.textlength(lines[-1] + "   " + word, font=font) <= width:
            lines[-1] += "   " + word
        else:
            lines.append(word)
    return lines


def save_panel(path, image: np.ndarray, amap: np.ndarray, score: float, threshold: float = 0.5,
               mask: np.ndarray | None = None, pixel_threshold: float | None = None,
               raw_score: float | None = None) -> None:
    """Save :func:`panel` as PNG."""
    Image.fromarray(panel(image, amap, score, threshold, mask, pixel_threshold, raw_score)).save(path)
