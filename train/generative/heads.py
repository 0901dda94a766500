"""Scoring heads shared by the generative detectors (MemAE, VAE): per-pixel reconstruction errors,
the image score from a map, the MMD score on latent samples, and the non-finite guard.

Every function here is part of the exported graph, so only export-safe ops are used (convs,
matmuls, reductions, ``where``); images are normalised to [-1, 1] (mean/std 0.5).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from adrt.errors import AdrtError
from adrt.train.detector import gaussian_kernel1d

ERRORS = ("l1", "se", "ssim")
KERNELS = ("imq", "rbf")

# SSIM constants for data range L = 2 ([-1, 1]): C1 = (0.01 L)², C2 = (0.03 L)² (Wang et al. 2004),
# Gaussian window 11×11 with σ = 1.5.
SSIM_C1, SSIM_C2 = (0.01 * 2.0) ** 2, (0.03 * 2.0) ** 2
SSIM_SIGMA, SSIM_RADIUS = 1.5, 5


def _separable_blur(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Depthwise Gaussian blur of B×C×H×W with the 1-D kernel ``k`` (odd length), reflect padding."""
    r = k.numel() // 2
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ssim_error(a: torch.Tensor, b: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """1 − SSIM per pixel, averaged over channels: a, b B×C×H×W in [-1, 1] → B×H×W (0 = identical)."""
    mu_a, mu_b = _separable_blur(a, window), _separable_blur(b, window)
    var_a = _separable_blur(a * a, window) - mu_a * mu_a
    var_b = _separable_blur(b * b, window) - mu_b * mu_b
    cov = _separable_blur(a * b, window) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mu_a * mu_a + mu_b * mu_b + SSIM_C1) * (var_a + var_b + SSIM_C2))
    return 1.0 - s.mean(1)


class ReconError(nn.Module):
    """Per-pixel error map B×H×W between images and their reconstructions/projections (B×C×H×W).

    ``l1``: Σ_c |a − b| (Dehaene et al.'s map |x₀ − x_K| summed over channels); ``se``: mean_c (a − b)²
    (MemAE's reconstruction error); ``ssim``: 1 − SSIM, the structural error (Bergmann et al. 2019).
    """

    def __init__(self, kind: str):
        super().__init__()
        if kind not in ERRORS:
            raise AdrtError(f"error {kind!r}: expected one of {', '.join(ERRORS)}")
        self.kind = kind
        self.register_buffer("window", _ssim_window(), persistent=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.kind == "l1":
            return (a - b).abs().sum(1)
        if self.kind == "se":
            return (a - b).pow(2).mean(1)
        return ssim_error(a, b, self.window)


def _ssim_window() -> torch.Tensor:
    x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return k / k.sum()


class MapScore(nn.Module):
    """Image score = max of the Gaussian-smoothed map, the rule the Detector applies when a scorer has
    no score of its own (same kernel, reflect padding), computed here so that the non-finite guard
    can act on the score too. A 1-channel conv is slow on big maps; on the N×H×W map it is cheap
    next to the network it follows."""

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = float(sigma)
        self.register_buffer("kernel", gaussian_kernel1d(sigma) if sigma > 0 else torch.ones(1), persistent=False)

    def forward(self, amap: torch.Tensor) -> torch.Tensor:
        m = amap.unsqueeze(1)
        if self.sigma > 0:
            m = _separable_blur(m, self.kernel)
        return m.flatten(1).amax(1)


def blur_radius(sigma: float) -> int:
    return max(1, math.ceil(4.0 * sigma)) if sigma > 0 else 0


# --- MMD --------------------------------------------------------------------------------------------

def sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ...×P×d, ...×Q×d → ...×P×Q.

    # matmul form, not cdist: exports to plain MatMul/ReduceSum (clamped at 0 against rounding).
    """
    aa = a.pow(2).sum(-1, keepdim=True)
    bb = b.pow(2).sum(-1).unsqueeze(-2)
    return (aa + bb - 2.0 * (a @ b.transpose(-1, -2))).clamp_min(0.0)


def kernel(d2: torch.Tensor, kind: str, c: torch.Tensor | float) -> torch.Tensor:
    """k from squared distances: ``imq`` C/(C + ‖a−b‖²) (inverse multiquadratic, as in WAE-MMD);
    ``rbf`` exp(−‖a−b‖²/C)."""
    if kind == "imq":
        return c / (c + d2)
    if kind == "rbf":
        return torch.exp(-d2 / c)
    raise AdrtError(f"mmd kernel {kind!r}: expected one of {', '.join(KERNELS)}")


def mmd2(samples: torch.Tensor, ref: torch.Tensor, kind: str, c: torch.Tensor | float,
         ref_term: torch.Tensor | float | None = None) -> torch.Tensor:
    """Squared MMD (biased V-statistic) between each row's sample set and one reference set.

    samples N×S×d (S latent samples of one input), ref M×d → N:
    mean k(s, s') + mean k(r, r') − 2 mean k(s, r). ``ref_term`` (the input-independent
    mean k(r, r')) may be precomputed.
    """
    k_ss = kernel(sq_dists(samples, samples), kind, c).mean((1, 2))
    k_sr = kernel(sq_dists(samples, ref.unsqueeze(0)), kind, c).mean((1, 2))
    if ref_term is None:
        ref_term = kernel(sq_dists(ref, ref), kind, c).mean()
    return k_ss + ref_term - 2.0 * k_sr


def kernel_scale(ref: torch.Tensor, scale: float) -> float:
    """Kernel constant C = 2·d·σ²·scale² with σ² the mean per-dimension variance of the reference set
    (WAE's C = 2·d·σ² for a N(0, σ²I) prior; for the prior σ² ≈ 1)."""
    d = ref.shape[-1]
    var = float(ref.var(0).mean())
    return 2.0 * d * max(var, 1e-12) * scale * scale


# --- non-finite guard ---------------------------------------------------------------------------------

def _tracing() -> bool:
    # torch.export / dynamo (the ONNX exporter) or TorchScript tracing: no data-dependent Python here.
    is_compiling = getattr(torch.compiler, "is_compiling", None)      # torch >= 2.3
    if is_compiling is None:
        from torch._dynamo import is_compiling
    return bool(is_compiling()) or torch.jit.is_tracing()


def guard_finite(check: torch.Tensor, amap: torch.Tensor, score: torch.Tensor, what: str):
    """Poison the map and score of every image whose ``check`` tensor (N×…) has a NaN/Inf.

    In the exported graph a bad image gets an all-NaN map and a NaN score (IsNaN/IsInf + Where),
    never a plausible-looking map. In eager torch (training, calibration, torch-eager runs) a bad
    image raises AdrtError naming ``what`` went wrong.
    """
    # Float reductions only (TensorRT 8.6 reduces no bool/int64 tensor): x − x is 0 where x is
    # finite and NaN where it is ±Inf or NaN, so a row's sum is NaN exactly when it holds one.
    bad = torch.isnan((check - check).flatten(1).sum(1) + (score - score))
    if not _tracing() and bool(bad.any()):
        idx = torch.nonzero(bad).flatten().tolist()
        raise AdrtError(f"non-finite values (NaN/Inf) for image(s) {idx} of the batch: {what}")
    nan = torch.full_like(score, float("nan"))
    amap = torch.where(bad.view(-1, 1, 1), nan.view(-1, 1, 1), amap)
    return amap, torch.where(bad, nan, score)
