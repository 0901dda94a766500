"""Change detection against a reference: backbone features of the image and of its (golden)
reference, compared position by position within a small neighbourhood.

For each grid position p the raw score is the smallest feature distance between the image at p
and the reference at any position within ``radius`` cells of p (tolerating misregistration of a
few pixels), optionally after a global translation of the reference chosen in the graph by an
exhaustive search over ±``align`` cells. It is normalised by the distances seen between normal
images and their references in training: per position (a fixed line, one golden reference) or
one global mean and spread (references that differ per image).

Everything is in the scorer's forward, so it is in the exported graph, written for TensorRT's
parser: shifts are one edge Pad and static Slices, minima are elementwise Min, the alignment's
choice is a comparison with the minimum (no ArgMax/Gather), no uint8 intermediate.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from adrt.errors import AdrtError
from adrt.train.features import TapFeatures
from adrt.train.options import backbone_channels, choice_opt, float_opt, int_opt

STATS = ("auto", "position", "global")


@dataclass(frozen=True)
class ReferenceConfig:
    backbone: str = "lite0"
    # Fine taps on a stride-4 grid, no local averaging: a missing stroke 2 px wide changes a 4 px
    # cell's features, while (8, 16) on a stride-8 grid with 3×3 averaging saw it at image AUROC
    # 0.45 (procedural pairs, 256 px; benchmarks/results/reference.md)
    tap_strides: tuple[int, ...] = (4, 8)
    grid_stride: int = 4
    patch_size: int = 1          # local averaging of the taps (PatchCore's locally aware features)
    radius: int = 1              # neighbourhood: (2r+1)² grid cells of grid_stride px around each position
    align: int = 0               # global translation search of the reference over ±align cells (0: off)
    stats: str = "auto"          # normalisation: per position, global, or auto (position with golden)
    golden: str = ""             # a golden image file: baked into the graph, which then takes one input
    finetune_steps: int = 0      # self-supervised fine-tune of the backbone on the normal pairs (0: frozen)
    finetune_lr: float = 1e-4
    sigma: float = 4.0

    def __post_init__(self):
        m = "reference"
        backbone_channels(m, self)
        int_opt(m, self, "grid_stride", 1, 64)
        int_opt(m, self, "patch_size", 1, 63)
        int_opt(m, self, "radius", 0, 8)
        int_opt(m, self, "align", 0, 8)
        choice_opt(m, self, "stats", STATS)
        if not isinstance(self.golden, str):
            raise AdrtError(f"reference option golden={self.golden!r}: expected the path of an image file, or ''")
        int_opt(m, self, "finetune_steps", 0, 100_000)
        float_opt(m, self, "finetune_lr", 0.0, 1.0, lo_open=True)
        float_opt(m, self, "sigma", 0.0)

    @property
    def per_position(self) -> bool:
        return self.stats == "position" or (self.stats == "auto" and bool(self.golden))


class ReferenceScorer(nn.Module):
    """``forward(x, r)`` → (raw map N×h×w, None); ``r`` omitted when a golden reference is baked in."""

    def __init__(self, cfg: ReferenceConfig, pretrained: bool = True):
        super().__init__()
        self.cfg = cfg
        self.paired = not cfg.golden
        self.features = TapFeatures(cfg.backbone, cfg.tap_strides, cfg.grid_stride, local=cfg.patch_size,
                                    pretrained=pretrained)
        c = self.features.channels
        self.register_buffer("chan_scale", torch.ones(1, c, 1, 1))     # 1 / std of each channel in training
        self.register_buffer("mu", torch.zeros(1, 1, 1))               # 1×h×w (per position) or 1×1×1
        self.register_buffer("inv_sigma", torch.ones(1, 1, 1))
        self.register_buffer("golden_feats", torch.zeros(0))           # 1×C×h×w, scaled (golden mode)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x) * self.chan_scale

    def distance(self, f: torch.Tensor, g: torch.Tensor, squared: bool = False) -> torch.Tensor:
        """Min feature distance N×h×w of ``f`` (N×C×h×w) to ``g`` (N or 1 ×C×h×w) within the
        neighbourhood, after the global shift (±align cells) that makes it smallest on average
        (``squared``: its square, differentiable everywhere)."""
        r, a = self.cfg.radius, self.cfg.align
        p = r + a
        h, w = f.shape[-2:]
        # Edge padding, then one static slice per shift: Pad(edge) + Slice in ONNX.
        gp = F.pad(g, (p, p, p, p), mode="replicate") if p else g
        dist = {}

        def d(dy: int, dx: int) -> torch.Tensor:
            if (dy, dx) not in dist:
                diff = f - gp[:, :, p + dy : p + dy + h, p + dx : p + dx + w]
                dist[(dy, dx)] = (diff * diff).mean(1)
            return dist[(dy, dx)]

        def local(cy: int, cx: int) -> torch.Tensor:
            out = None
            for dy in range(cy - r, cy + r + 1):
                for dx in range(cx - r, cx + r + 1):
                    out = d(dy, dx) if out is None else torch.minimum(out, d(dy, dx))
            return out

        if a == 0:
            m2 = local(0, 0)
        else:
            cands = [local(cy, cx) for cy in range(-a, a + 1) for cx in range(-a, a + 1)]
            means = torch.stack([c.mean((1, 2)) for c in cands], 1)                      # N×K
            best = (means <= means.amin(1, keepdim=True)).to(f.dtype)                     # one-hot (ties shared)
            best = best / best.sum(1, keepdim=True)
            m2 = sum(best[:, k : k + 1, None] * c for k, c in enumerate(cands))
        return m2 if squared else m2.clamp_min(0.0).sqrt()

    def forward(self, x: torch.Tensor, r: torch.Tensor | None = None):
        f = self.embed(x)
        if r is None:
            if self.paired:
                raise AdrtError("this reference detector compares each image with a reference image; pass one")
            g = self.golden_feats
        else:
            g = self.embed(r)
        return (self.distance(f, g) - self.mu) * self.inv_sigma, None

    # --- fitting -----------------------------------------------------------------------------

    def set_stats(self, d: torch.Tensor) -> None:
        """Normalisation from the raw distances ``d`` (N×h×w) of normal training pairs."""
        g_mu, g_sd = float(d.mean()), float(d.std())
        g_sd = max(g_sd, 1e-6)
        if self.cfg.per_position and len(d) > 1:
            mu = d.mean(0, keepdim=True)
            # Few images per position: the spread is floored by a tenth of the global one.
            sd = (d.var(0, keepdim=True) + (0.1 * g_sd) ** 2).sqrt()
        else:
            mu, sd = torch.full((1, 1, 1), g_mu), torch.full((1, 1, 1), g_sd)
        self.mu = mu.float().contiguous()
        self.inv_sigma = (1.0 / sd).float().contiguous()
