"""MemAE: a convolutional autoencoder whose decoder reads from a memory of normal prototypes.

Gong et al., "Memorizing Normality to Detect Anomaly: Memory-augmented Deep Autoencoder for
Unsupervised Anomaly Detection", ICCV 2019. The encoder maps an image to a C×h×w feature map;
every position's C-vector is a *query* that addresses the N memory items by attention over cosine
similarities, w = softmax_i(cos(z, m_i)); hard shrinkage keeps only the weights above λ with the
paper's continuous form ŵ_i = relu(w_i − λ)·w_i / (|w_i − λ| + ε), then ŵ ← ŵ / ‖ŵ‖₁; the decoder
reconstructs from ẑ = ŵ·M. Training loss: MSE reconstruction + α·entropy(ŵ). At test time the
memory is a fixed parameter, so anomalies are reconstructed from normal prototypes and stand out
in the reconstruction error map. ``mem_size=0`` removes the memory: the plain autoencoder baseline.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from adrt.errors import AdrtError
from adrt.train.trainer import check_checkpoint_options
from adrt.train.options import float_opt
from adrt.train.generative.heads import (ERRORS, KERNELS, MapScore, ReconError, guard_finite, kernel, kernel_scale,
                                         mmd2, sq_dists)

SCORES = ("recon", "mmd")
SHRINK_EPS = 1e-12


@dataclass(frozen=True)
class MemAEConfig:
    # Network: one conv (k4, stride 2) + BN + LeakyReLU per entry; decoder mirrors it with
    # transposed convs. Input sides must be multiples of 2**len(channels); the memory items have
    # the last entry's dimension (queries on a (size/16)² grid at the default depth).
    channels: tuple[int, ...] = (16, 32, 64, 64)
    mem_size: int = 500                 # N memory items (paper: 100 MNIST, 500 CIFAR-10, 2000 video); 0 = plain AE
    shrink: float = 0.0025              # λ of the hard shrinkage (paper: λ ∈ [1/N, 3/N]; 1.25/N at N = 500)
    entropy_weight: float = 0.0002      # α of the entropy loss on ŵ (paper: 0.0002)
    # Test time (changeable without retraining: MemAE.TEST_TIME_OPTIONS, adrt.train.derive).
    error: str = "se"                   # map: "se" squared error (paper), "ssim" 1 − SSIM, "l1" Σ_c |x − x̂|
    score: str = "recon"                # image score: "recon" max of the smoothed map; "mmd" MMD² of the latent vs the training latents
    mmd_kernel: str = "imq"             # "imq" C/(C + d²) or "rbf" exp(−d²/C), C = 2·dim·σ²·mmd_scale², σ² of the training latents
    mmd_scale: float = 1.0
    mmd_ref_images: int = 256           # training images whose latents are the MMD reference sample
    # Training: Adam on MSE + α·entropy. Steps = min(iterations, epochs × batches per pass): CPU defaults,
    # 400 steps of 8 images at 128 px ≈ 17 passes over MVTec bottle (the paper trains to convergence on a GPU).
    iterations: int = 400
    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    sigma: float = 4.0                  # Gaussian smoothing of the map (Detector; also the image score)
    checkpoint: str = ""                # training-state file: saved as training goes; a rerun resumes from it
    checkpoint_every: int = 100         # steps between checkpoint saves (0: only at the end of training)

    def __post_init__(self):
        check_config(self)


def check_config(cfg: MemAEConfig) -> None:
    """Raise AdrtError naming the option when a value cannot work."""
    check_checkpoint_options("memae", cfg)
    if not cfg.channels or any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in cfg.channels):
        raise AdrtError(f"memae option channels={cfg.channels!r}: expected a non-empty list of integers >= 1")
    for name, lo in (("mem_size", 0), ("mmd_ref_images", 1), ("iterations", 1), ("epochs", 1), ("batch_size", 1)):
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise AdrtError(f"memae option {name}={v!r}: expected an integer >= {lo}")
    for name, v, allowed in (("error", cfg.error, ERRORS), ("score", cfg.score, SCORES),
                             ("mmd_kernel", cfg.mmd_kernel, KERNELS)):
        if v not in allowed:
            raise AdrtError(f"memae option {name}={v!r}: expected one of {', '.join(allowed)}")
    float_opt("memae", cfg, "shrink", 0.0)
    if cfg.mem_size and not 0.0 <= cfg.shrink < 1.0:
        raise AdrtError(f"memae option shrink={cfg.shrink!r}: expected a number in [0, 1) "
                        f"(the paper uses 1/N to 3/N = {1 / cfg.mem_size:.4g} to {3 / cfg.mem_size:.4g})")
    for name in ("entropy_weight", "sigma"):
        float_opt("memae", cfg, name, 0.0)
    for name in ("lr", "mmd_scale"):
        float_opt("memae", cfg, name, 0.0, lo_open=True)


class Memory(nn.Module):
    """N items of dimension C; ``forward(z)`` (B×C×h×w queries) → (ẑ B×C×h×w, ŵ B·h·w×N)."""

    def __init__(self, size: int, dim: int, shrink: float):
        super().__init__()
        self.shrink = float(shrink)
        self.items = nn.Parameter(torch.empty(size, dim))
        nn.init.kaiming_uniform_(self.items)   # uniform(±sqrt(6/dim)), random directions

    def address(self, q: torch.Tensor) -> torch.Tensor:
        """Queries Q×C → shrunk, renormalised addressing weights Q×N."""
        # matmul of unit vectors = cosine similarity (no cdist/CosineSimilarity op in the graph)
        qn = F.normalize(q, dim=1)
        mn = F.normalize(self.items, dim=1)
        w = torch.softmax(qn @ mn.t(), dim=1)
        if self.shrink > 0:
            shifted = w - self.shrink
            w = F.relu(shifted) * w / (shifted.abs() + SHRINK_EPS)
            w = w / w.sum(1, keepdim=True).clamp_min(SHRINK_EPS)
        return w

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = z.shape
        q = z.permute(0, 2, 3, 1).reshape(b * h * w, c)
        wt = self.address(q)
        zh = (wt @ self.items).view(b, h, w, c).permute(0, 3, 1, 2)
        return zh, wt


def entropy(w: torch.Tensor) -> torch.Tensor:
    """Mean over queries of −Σ ŵ log ŵ (0·log 0 = 0)."""
    return -(w * torch.log(w.clamp_min(SHRINK_EPS))).sum(1).mean()


class MemAENet(nn.Module):
    def __init__(self, cfg: MemAEConfig, in_channels: int = 3):
        super().__init__()
        chans = (in_channels, *cfg.channels)
        enc = []
        for i in range(len(cfg.channels)):
            enc += [nn.Conv2d(chans[i], chans[i + 1], 4, 2, 1, bias=False), nn.BatchNorm2d(chans[i + 1]),
                    nn.LeakyReLU(0.2)]
        self.encoder = nn.Sequential(*enc)
        self.memory = Memory(cfg.mem_size, cfg.channels[-1], cfg.shrink) if cfg.mem_size else None
        dec = []
        for i in reversed(range(1, len(cfg.channels))):
            dec += [nn.ConvTranspose2d(chans[i + 1], chans[i], 4, 2, 1, bias=False), nn.BatchNorm2d(chans[i]),
                    nn.LeakyReLU(0.2)]
        dec.append(nn.ConvTranspose2d(chans[1], in_channels, 4, 2, 1))
        self.decoder = nn.Sequential(*dec)
        self.stride = 2 ** len(cfg.channels)

    def forward(self, x: torch.Tensor):
        """x B×3×H×W → (reconstruction, queries z B×C×h×w, addressing weights ŵ or None)."""
        z = self.encoder(x)
        if self.memory is None:
            return self.decoder(z), z, None
        zh, w = self.memory(z)
        return self.decoder(zh), z, w


class MemAEScorer(nn.Module):
    """x N×3×H×W (normalised) → (error map N×H×W, image score N): reconstruction through the memory.

    MMD score (``score="mmd"``): MemAE's encoder is deterministic, so q(z|x) is a point mass at the
    whole latent z(x) (C·h·w values), and the reference is the aggregated latent distribution of
    the normal training images (``mmd_ref_images`` of them): MMD² = k(z, z) + mean k(r, r') −
    2·mean k(z, r), a kernel density of z(x) under the normal latents up to sign and constants.
    (Treating an image's h·w queries as its sample and pooling all training queries as the
    reference was tried first: one image's queries are much more concentrated than the pool, the
    MMD² then mostly measures that concentration, and it ranked the synthetic defects *below* the
    good images.) ``mmd_ref`` (R×C·h·w), ``mmd_c`` (kernel constant) and ``mmd_ref_term`` (mean
    k(r, r') for the configured kernel) are filled by ``fit``; the latent-sized buffer starts empty
    and takes its saved shape on loading.
    """

    def __init__(self, cfg: MemAEConfig):
        super().__init__()
        check_config(cfg)
        self.cfg = cfg
        self.net = MemAENet(cfg)
        self.error = ReconError(cfg.error)
        self.map_score = MapScore(cfg.sigma)
        self.register_buffer("mmd_ref", torch.zeros(0, 0))
        self.register_buffer("mmd_ref_term", torch.tensor(0.0))
        self.register_buffer("mmd_c", torch.tensor(1.0))

    def set_reference(self, latents: torch.Tensor, seed: int = 0) -> None:
        """Keep ``mmd_ref_images`` of the training latents (N×C×h×w) as the reference sample."""
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(latents.shape[0], generator=g)[: self.cfg.mmd_ref_images]
        self.mmd_ref = latents[idx].flatten(1).clone()
        self.mmd_c.fill_(kernel_scale(latents.flatten(1), 1.0))
        self.refresh()

    def _c(self):
        return self.mmd_c * self.cfg.mmd_scale ** 2

    def refresh(self) -> None:
        """Recompute the reference's own MMD term for the configured kernel and scale."""
        if self.mmd_ref.numel():
            self.mmd_ref_term.fill_(float(kernel(sq_dists(self.mmd_ref, self.mmd_ref), self.cfg.mmd_kernel,
                                                 self._c()).mean()))

    def mmd_score(self, z: torch.Tensor) -> torch.Tensor:
        """MMD² between the point mass at the latent z(x) and the normal latents, per image."""
        zf = z.flatten(1)
        if self.mmd_ref.shape[1] != zf.shape[1]:
            raise AdrtError(f"memae: the MMD reference holds latents of {self.mmd_ref.shape[1]} values, this input "
                            f"gives {zf.shape[1]} (another input size?)")
        return mmd2(zf.unsqueeze(1), self.mmd_ref, self.cfg.mmd_kernel, self._c(), self.mmd_ref_term)

    def forward(self, x: torch.Tensor):
        if x.shape[-1] % self.net.stride or x.shape[-2] % self.net.stride:
            raise AdrtError(f"memae: input {x.shape[-2]}×{x.shape[-1]} is not a multiple of {self.net.stride}")
        rec, z, _ = self.net(x)
        amap = self.error(x, rec)
        score = self.mmd_score(z) if self.cfg.score == "mmd" else self.map_score(amap)
        return guard_finite(rec, amap, score, "memae reconstruction")
