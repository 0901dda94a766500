"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

Locally aware patch features from two backbone taps, projected on their leading principal axes, a
greedy-coreset memory bank (with the paper's random-projection speed-up), nearest-neighbour patch
scores and the paper's image-score reweighting. All scoring is in the module's forward, so it is in
the exported graph.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from adrt.train.features import BORDERS, TapFeatures
from adrt.train.options import backbone_channels, choice_opt, dims_opt, float_opt, int_opt


@dataclass(frozen=True)
class PatchCoreConfig:
    backbone: str = "lite0"
    tap_strides: tuple[int, ...] = (8, 16)
    grid_stride: int = 8
    patch_size: int = 3          # neighbourhood of the locally aware features
    embed_dim: int = 96          # patch features projected onto their top principal axes (PCA of the
                                 # training patches) before the bank; 0 keeps all (lite0: 152). The paper's
                                 # code reduces dims by pooling channels: -7.6 points of image AUROC on magnetic
                                 # tile here (benchmarks/results/patchcore_dims.md)
    coreset_ratio: float = 0.01  # bank size as a fraction of ALL training patches (paper: 1–25 %; 1 % loses
                                 # nothing on bottle, 5× faster), whatever the candidates below
    projection_dim: int = 128    # random projection used only while selecting the coreset
    coreset_max_patches: int = 250_000  # candidates: a uniform random subsample of at most this many patches
                                        # is what the greedy search picks the bank from (0: all); each greedy
                                        # step reads every candidate once, so this bounds CPU time
    num_neighbors: int = 9       # b in the paper's reweighting
    bank_chunk: int = 4096       # bank rows per matmul tile in the graph: bounds memory for large banks
    sigma: float = 4.0           # Gaussian smoothing of the upsampled map
    border: str = "reflect"      # what border features see (adrt.train.features.TapFeatures): "zero" (the
                                 # backbone's zero padding; border maxima on textures), "reflect_local", "reflect"
    coreset_cap: int = 0         # bank size cap: at most this many rows whatever coreset_ratio gives (0: none);
                                 # what was kept is in the run's training.bank record

    def __post_init__(self):
        m = "patchcore"
        dims = backbone_channels(m, self)
        int_opt(m, self, "grid_stride", 1, 64)
        int_opt(m, self, "patch_size", 1, 63)
        # More axes than the features have would be recorded but never used: refused.
        dims_opt(m, self, "embed_dim", 0, dims, " (all)")
        float_opt(m, self, "coreset_ratio", 0.0, 1.0, lo_open=True)
        for name in ("projection_dim", "coreset_max_patches"):
            int_opt(m, self, name, 0)
        int_opt(m, self, "num_neighbors", 1)
        int_opt(m, self, "bank_chunk", 1)
        float_opt(m, self, "sigma", 0.0)
        choice_opt(m, self, "border", BORDERS)
        int_opt(m, self, "coreset_cap", 0)


def _sq_dists(q: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor) -> torch.Tensor:
    # matmul, not cdist: |q|² - 2 q·b + |b|² exports to ONNX/TensorRT as a GEMM.
    q_sq = (q * q).sum(-1, keepdim=True)
    return (q_sq - 2.0 * (q @ bank.t()) + bank_sq).clamp_min(0.0)


def _nn_sq_dist(q: torch.Tensor, bank_aug: torch.Tensor, chunk: int) -> torch.Tensor:
    """min_b |q - b|² for each row of q (N×P×D); bank_aug is (D+1)×M = [-2·bankᵀ; |b|²].

    One GEMM per bank tile gives |b|² - 2 q·b directly ([q, 1] @ bank_aug); |q|² is added after
    the minimum, so no full-size elementwise pass is needed. Tiles bound memory for large banks.
    """
    q1 = torch.cat([q, torch.ones_like(q[..., :1])], dim=-1)
    mins = [(q1 @ bank_aug[:, s : s + chunk]).amin(-1) for s in range(0, bank_aug.shape[1], chunk)]
    m = mins[0] if len(mins) == 1 else torch.stack(mins, -1).amin(-1)
    return (m + (q * q).sum(-1)).clamp_min(0.0)


class PatchCoreScorer(nn.Module):
    def __init__(self, cfg: PatchCoreConfig, pretrained: bool = True):
        super().__init__()
        self.cfg = cfg
        self.features = TapFeatures(cfg.backbone, cfg.tap_strides, cfg.grid_stride, local=cfg.patch_size,
                                    pretrained=pretrained, border=cfg.border)
        d = self.features.channels
        # proj (D×k): principal axes of the training patch features, set by fit; distances are
        # taken between projected features. None when all D dimensions are kept.
        k = cfg.embed_dim if 0 < cfg.embed_dim < d else d
        self.register_buffer("proj", torch.zeros(d, k) if k < d else None)
        # The memory bank M×k is stored as bank_aug = [-2·bankᵀ; |b|²] ((k+1)×M), the form the
        # distance GEMM uses; bank_knn holds each bank row's b nearest rows (for reweighting).
        self.register_buffer("bank_aug", torch.zeros(k + 1, 0))
        self.register_buffer("bank_knn", torch.zeros(0, cfg.num_neighbors, dtype=torch.int64))

    @property
    def bank_size(self) -> int:
        return self.bank_aug.shape[1]

    @property
    def embed_dim(self) -> int:
        return self.bank_aug.shape[0] - 1

    def set_projection(self, patches: torch.Tensor) -> None:
        """Set ``proj`` to the top principal axes of ``patches`` (M×D training patch features)."""
        if self.proj is not None:
            self.proj = principal_axes(patches, self.proj.shape[1])

    def project(self, patches: torch.Tensor) -> torch.Tensor:
        """…×D patch features → …×k, the space the bank lives in."""
        return patches if self.proj is None else patches @ self.proj

    def set_bank(self, bank: torch.Tensor) -> None:
        """bank: M×k projected patch features."""
        bank = bank.contiguous().float()
        self.bank_knn = bank_neighbours(bank, self.cfg.num_neighbors, self.cfg.bank_chunk)
        self.bank_aug = torch.cat([-2.0 * bank.t(), (bank * bank).sum(1)[None]], 0).contiguous()

    def forward(self, x: torch.Tensor):
        f = self.features(x)                                  # N×D×h×w
        n, _, h, w = f.shape
        q = self.project(f.flatten(2).transpose(1, 2))         # N×P×k
        d = q.shape[-1]
        patch = _nn_sq_dist(q, self.bank_aug, self.cfg.bank_chunk).sqrt()    # N×P nearest-neighbour distance
        # Image score (paper eq. 7): s* = max patch score, reweighted by how isolated the
        # nearest bank element m* of that patch is among its own b neighbours in the bank.
        s_star, idx = patch.max(dim=1)                         # N
        q_star = torch.gather(q, 1, idx.view(n, 1, 1).expand(n, 1, d)).squeeze(1)            # N×k
        q1 = torch.cat([q_star, torch.ones_like(q_star[:, :1])], dim=1)
        d_all = (q1 @ self.bank_aug + (q_star * q_star).sum(1, keepdim=True)).clamp_min(0.0)   # N×M, one query per image
        m_star = d_all.argmin(dim=1)                           # N
        nb = self.bank_knn[m_star]                             # N×b (m* itself first)
        d_nb = torch.gather(d_all, 1, nb).sqrt()               # N×b
        weight = 1.0 - torch.softmax(d_nb, dim=1)[:, 0]
        return patch.view(n, h, w), weight * s_star


@torch.no_grad()
def principal_axes(x: torch.Tensor, k: int) -> torch.Tensor:
    """D×k matrix of the k leading principal axes of the rows of x (M×D), each signed so that its
    largest-magnitude entry is positive (deterministic). Distances between rows projected on them
    lose only the variance of the discarded axes."""
    x = x.double()
    xc = x - x.mean(0)
    cov = xc.t() @ xc / max(1, x.shape[0] - 1)
    _, vecs = torch.linalg.eigh(cov)                       # ascending eigenvalues
    axes = vecs[:, -k:].flip(1)
    sign = torch.sign(axes.gather(0, axes.abs().argmax(0, keepdim=True)))
    return (axes * sign).float().contiguous()


@torch.no_grad()
def bank_neighbours(bank: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """Indices M×k of each bank row's k nearest rows (itself first)."""
    k = min(k, bank.shape[0])
    sq = (bank * bank).sum(1)
    out = []
    for s in range(0, bank.shape[0], chunk):
        d = _sq_dists(bank[s : s + chunk], bank, sq)
        d[torch.arange(d.shape[0]), torch.arange(s, s + d.shape[0])] = -1.0   # self first
        out.append(d.topk(k, dim=1, largest=False).indices)
    return torch.cat(out)


@torch.no_grad()
def greedy_coreset(features: torch.Tensor, n_select: int, projection_dim: int = 128, seed: int = 0,
                   chunk: int = 65536, progress=None) -> torch.Tensor:
    """Greedy k-center coreset (paper Alg. 1) on a Johnson–Lindenstrauss random projection.

    features: M×D. Returns the indices (n_select,) of the selected rows.
    """
    m, d = features.shape
    n_select = max(1, min(n_select, m))
    g = torch.Generator().manual_seed(seed)
    if projection_dim and projection_dim < d:
        proj = torch.randn(d, projection_dim, generator=g) / projection_dim ** 0.5
        z = features @ proj
    else:
        z = features
    z_sq = (z * z).sum(1)
    sel = torch.empty(n_select, dtype=torch.int64)
    sel[0] = torch.randint(m, (1,), generator=g)
    min_d = torch.full((m,), float("inf"))
    for i in range(n_select):
        c = z[sel[i]]
        dist = (z_sq - 2.0 * (z @ c) + c @ c).clamp_min(0.0)
        torch.minimum(min_d, dist, out=min_d)
        if i + 1 < n_select:
            sel[i + 1] = torch.argmax(min_d)
        if progress is not None and (i % 256 == 0 or i + 1 == n_select):
            progress(i + 1, n_select)
    return sel
