"""Tiling inside the fused graph: cut a frame into tiles, stitch the tiles' maps back.

The rule is adrt.runtime.geometry's (tile offsets, normalised linear-ramp weights); this is its
torch form, written with slices, concatenations, element-wise products and sums only (Slice,
Concat, Mul, Add, Reshape in ONNX: what TensorRT's parser takes at every version), and with the
weights as constants.
"""
from __future__ import annotations

import torch
from torch import nn

from adrt.contract import Geometry
from adrt.runtime.geometry import blend_weights


def _segments(starts: list[int], tile: int, size: int) -> list[tuple[int, int, list[int]]]:
    """Split [0, size) at every tile edge: (a, b, indices of the tiles covering [a, b))."""
    cuts = sorted({0, size, *starts, *(s + tile for s in starts)})
    return [(a, b, [i for i, s in enumerate(starts) if s <= a and b <= s + tile]) for a, b in zip(cuts, cuts[1:])]


class Tiling(nn.Module):
    """Cut N×C×H×W frames into (N·T)×C×th×tw tiles (row-major per frame) and stitch (N·T)×th×tw
    tile maps into N×H×W maps blended by the normalised ramp weights."""

    def __init__(self, geometry: Geometry, height: int, width: int):
        super().__init__()
        geometry.check_frame(height, width)
        self.height, self.width = height, width
        self.tile = geometry.tile
        self.ys, self.xs = geometry.grid(height, width)
        th, tw = self.tile
        wy = torch.from_numpy(blend_weights(height, th, geometry.overlap))      # ny×th
        wx = torch.from_numpy(blend_weights(width, tw, geometry.overlap))       # nx×tw
        # Shaped to broadcast over N×ny×nx×th×tw.
        self.register_buffer("wy", wy.view(1, len(self.ys), 1, th, 1), persistent=False)
        self.register_buffer("wx", wx.view(1, 1, len(self.xs), 1, tw), persistent=False)
        self.seg_y = _segments(self.ys, th, height)
        self.seg_x = _segments(self.xs, tw, width)

    @property
    def n_tiles(self) -> int:
        return len(self.ys) * len(self.xs)

    def cut(self, x: torch.Tensor) -> torch.Tensor:
        """N×C×H×W → (N·T)×C×th×tw."""
        th, tw = self.tile
        c = x.shape[1]
        # Slices, then one Concat along a new tile axis (kept as a size-1 axis per tile).
        tiles = [x[:, None, :, y : y + th, x0 : x0 + tw] for y in self.ys for x0 in self.xs]
        return torch.cat(tiles, dim=1).reshape(-1, c, th, tw)

    def stitch(self, m: torch.Tensor) -> torch.Tensor:
        """(N·T)×th×tw → N×H×W: weighted tiles summed where they overlap."""
        th, tw = self.tile
        ny, nx = len(self.ys), len(self.xs)
        m = m.reshape(-1, ny, nx, th, tw) * self.wy * self.wx
        # Along x: per segment, the sum of the covering tiles' columns → N×ny×th×W.
        cols = []
        for a, b, idx in self.seg_x:
            parts = [m[:, :, j : j + 1, :, a - self.xs[j] : b - self.xs[j]] for j in idx]
            cols.append(parts[0] if len(parts) == 1 else sum(parts[1:], parts[0]))
        rows_ = torch.cat(cols, dim=4)                           # N×ny×1×th×W
        # Along y likewise → N×H×W.
        rows = []
        for a, b, idx in self.seg_y:
            parts = [rows_[:, i : i + 1, :, a - self.ys[i] : b - self.ys[i], :] for i in idx]
            rows.append(parts[0] if len(parts) == 1 else sum(parts[1:], parts[0]))
        return torch.cat(rows, dim=3).reshape(-1, self.height, self.width)
