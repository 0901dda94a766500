"""PaDiM (Defard et al., "PaDiM: a Patch Distribution Modeling Framework", ICPR 2021).

Random subset of backbone channels from three taps, one Gaussian per grid position with
Ledoit–Wolf shrinkage (+ eps·I as in the paper), Mahalanobis distance map in the graph.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from adrt.train.features import TapFeatures
from adrt.train.options import backbone_channels, dims_opt, float_opt, int_opt


@dataclass(frozen=True)
class PaDiMConfig:
    backbone: str = "lite0"
    tap_strides: tuple[int, ...] = (4, 8, 16)
    grid_stride: int = 8     # the paper uses the first tap's stride (4); 8 keeps bundles 4x smaller
    n_features: int = 100    # random channel subset (paper: 100 for ResNet-18)
    eps: float = 0.01        # regulariser added to each covariance (paper: 0.01·I)
    sigma: float = 4.0

    def __post_init__(self):
        m = "padim"
        dims = backbone_channels(m, self)
        int_opt(m, self, "grid_stride", 1, 64)
        # More channels than the taps have would be recorded but never used: refused.
        dims_opt(m, self, "n_features", 1, dims)
        float_opt(m, self, "eps", 0.0)
        float_opt(m, self, "sigma", 0.0)


class PaDiMScorer(nn.Module):
    def __init__(self, cfg: PaDiMConfig, pretrained: bool = True, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.features = TapFeatures(cfg.backbone, cfg.tap_strides, cfg.grid_stride, pretrained=pretrained)
        c = self.features.channels
        d = min(cfg.n_features, c)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("channel_idx", torch.randperm(c, generator=g)[:d].sort().values)
        self.register_buffer("mean", torch.zeros(0, d))          # P×d
        self.register_buffer("inv_cov", torch.zeros(0, d, d))    # P×d×d

    def set_gaussians(self, mean: torch.Tensor, inv_cov: torch.Tensor) -> None:
        self.mean = mean.float().contiguous()
        self.inv_cov = inv_cov.float().contiguous()

    def forward(self, x: torch.Tensor):
        f = self.features(x)[:, self.channel_idx]              # N×d×h×w
        n, d, h, w = f.shape
        diff = f.flatten(2).permute(2, 0, 1) - self.mean.unsqueeze(1)   # P×N×d
        # Batched matmul per position (not einsum): maps to MatMul in ONNX/TensorRT.
        m2 = ((diff @ self.inv_cov) * diff).sum(-1).clamp_min(0.0)       # P×N
        return m2.sqrt().t().reshape(n, h, w), None


class GaussianMoments:
    """Streamed per-position moments of N×d×h×w feature batches: what :func:`fit_gaussians` needs
    (mean, covariance and Ledoit–Wolf's fourth-moment term), accumulated in float64 batch by batch,
    so memory is P·d² whatever the number of images or tiles. Values are shifted by the first
    batch's mean (the centred moments do not change; the sums stay well conditioned)."""

    def __init__(self):
        self.n = 0
        self.shift = self.s1 = self.s2 = self.q2 = self.q2x = self.q4 = None

    @torch.no_grad()
    def update(self, feats: torch.Tensor) -> None:
        x = feats.flatten(2).permute(2, 0, 1).double()         # P×N×d
        if self.shift is None:
            self.shift = x.mean(1, keepdim=True)
            p, _, d = x.shape
            z = x.new_zeros
            self.s1, self.s2, self.q2, self.q2x, self.q4 = z(p, d), z(p, d, d), z(p), z(p, d), z(p)
        x = x - self.shift
        sq = (x * x).sum(-1)                                   # P×N: ‖x‖²
        self.n += x.shape[1]
        self.s1 += x.sum(1)
        self.s2 += x.transpose(1, 2) @ x
        self.q2 += sq.sum(1)
        self.q2x += (sq.unsqueeze(-1) * x).sum(1)
        self.q4 += (sq * sq).sum(1)

    def finish(self, eps: float = 0.01):
        """Mean P×d, inverse shrunk covariance P×d×d and the shrinkage per position."""
        n = self.n
        m = self.s1 / n                                        # P×d (shifted mean)
        s = self.s2 / n - m.unsqueeze(2) * m.unsqueeze(1)      # P×d×d (ML estimate)
        # Σ_k ‖x_k − m‖⁴ from the streamed sums: with a = ‖x‖², b = x·m, c = ‖m‖²,
        # (a − 2b + c)² = a² + 4b² + c² − 4ab + 2ac − 4bc, summed over k.
        c = (m * m).sum(-1)
        sum_b = (self.s1 * m).sum(-1)
        sum_b2 = (m.unsqueeze(1) @ self.s2 @ m.unsqueeze(2)).view(-1)
        sum_ab = (self.q2x * m).sum(-1)
        q4c = (self.q4 + 4 * sum_b2 + n * c * c - 4 * sum_ab + 2 * c * self.q2 - 4 * c * sum_b)
        return _shrunk_inverse(m + self.shift.squeeze(1), s, q4c, n, eps)


@torch.no_grad()
def fit_gaussians(feats: torch.Tensor, eps: float = 0.01):
    """Per-position mean and inverse shrunk covariance. feats: N×d×h×w.

    Ledoit–Wolf: S* = (1-a)·S + a·(tr S / d)·I with a estimated from the data, then + eps·I.
    Returns mean P×d, inverse covariance P×d×d and the shrinkage a per position.
    """
    n = feats.shape[0]
    x = feats.flatten(2).permute(2, 0, 1).double()             # P×N×d
    mean = x.mean(1)                                           # P×d
    xc = x - mean.unsqueeze(1)
    s = xc.transpose(1, 2) @ xc / n                            # P×d×d (ML estimate)
    return _shrunk_inverse(mean, s, ((xc * xc).sum(-1) ** 2).sum(1), n, eps)


def _shrunk_inverse(mean, s, q4c, n, eps):
    """Ledoit–Wolf from the ML covariance ``s`` and ``q4c`` = Σ_k ‖x_k − mean‖⁴ (per position)."""
    d = s.shape[-1]
    mu = torch.diagonal(s, dim1=1, dim2=2).sum(-1) / d         # P
    eye = torch.eye(d, dtype=s.dtype)
    d2 = ((s - mu.view(-1, 1, 1) * eye) ** 2).sum((1, 2))     # ‖S − μI‖²
    # b̄² = (1/n²) Σ_k ‖x_k x_kᵀ − S‖² = (Σ_k ‖x_k‖⁴ − n‖S‖²) / n²
    b2 = q4c / n**2 - (s * s).sum((1, 2)) / n
    a = (b2.clamp_min(0) / d2.clamp_min(1e-12)).clamp(0.0, 1.0)
    cov = (1 - a).view(-1, 1, 1) * s + (a * mu).view(-1, 1, 1) * eye
    # Unbiased scaling, then the paper's regulariser.
    cov = cov * (n / max(n - 1, 1)) + eps * eye
    return mean.float(), torch.linalg.inv(cov).float(), a.float()
