"""Inpainting detector: partial-convolution U-Net, scored by inpainting every pixel from its context.

The network (Liu et al., "Image Inpainting for Irregular Holes Using Partial Convolutions", ECCV
2018) fills the holes of a masked image. At test time the image is hidden behind a fixed *mask set*
(RIAD, Zavrtanik et al., "Reconstruction by inpainting for visual anomaly detection", Pattern
Recognition 2021): for each cell size k the image is cut into k×k cells and the cells are dealt
out to ``n_masks`` disjoint masks, so that for each k the holes of the masks cover every pixel
exactly once. Each masked copy is inpainted, the hole pixels of the copies are pasted into one
reconstruction per cell size, the reconstruction error (MSGMS or squared error) is computed per
cell size and averaged over cell sizes. Anomalies are regions the normal context cannot predict.

In the exported graph all of this is one batch: N images × M = len(cells)·n_masks masked copies
go through the network at once; the masks are constant buffers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce

import torch
import torch.nn.functional as F
from torch import nn

from adrt.errors import AdrtError
from adrt.train.trainer import check_checkpoint_options
from adrt.train.options import float_opt, int_opt

ERRORS = ("msgms", "se")
ASSIGNMENTS = ("random", "regular")
DEVICES = ("cpu", "cuda", "auto")


@dataclass(frozen=True)
class InpaintConfig:
    # Test-time mask set (the cost driver: the network runs len(cells) * n_masks times per image).
    # Default 9 masks: on bottle as accurate as RIAD's 12 (cells 2, 4, 8, 16) for 3/4 of the cost;
    # n_masks = 3 matches the training hole fraction and beat 2 (benchmarks/results/inpaint.md).
    cells: tuple[int, ...] = (2, 4, 8)        # cell sizes in pixels (RIAD: 2, 4, 8, 16)
    n_masks: int = 3                          # disjoint masks per cell size (RIAD: 3)
    # Cells dealt to masks at random (RIAD) or "regular" (every hole cell has 4 visible neighbours;
    # not measured on real data).
    assignment: str = "random"
    # "msgms": 1 - multi-scale gradient magnitude similarity (RIAD); "se": squared error. MSGMS
    # was better on bottle for every mask set (benchmarks/results/inpaint.md).
    error: str = "msgms"
    gms_scales: int = 4                       # scales of the MSGMS (1, 1/2, 1/4, 1/8)
    # Network: one partial-conv level per entry, stride 2 each; input size must be a multiple of 2**len(channels).
    channels: tuple[int, ...] = (16, 32, 64, 64, 64)
    # Training: whole images with random masks of the same kind (cell size drawn from train_cells,
    # each cell a hole with probability 1/train_n_masks). Random 64-px crops were tried and dropped:
    # on bottle at 128 px, 1200 steps on crops gave image AUROC 0.58, 540 steps on whole images
    # 0.88 (the deep levels learn crop borders that the test image does not have).
    # Steps = min(iterations, epochs × batches per epoch): small data sets train briefly, real
    # ones reach `iterations`; raise both to train longer (e.g. with device=cuda).
    train_cells: tuple[int, ...] = (2, 4, 8, 16)
    train_n_masks: int = 3
    iterations: int = 600
    epochs: int = 20
    batch_size: int = 8
    lr: float = 2e-3
    device: str = "cpu"                       # training only: "cpu", "cuda" or "auto" (cuda when available)
    sigma: float = 4.0                        # Gaussian smoothing of the map (Detector)
    checkpoint: str = ""                      # training-state file: saved as training goes; a rerun resumes from it
    checkpoint_every: int = 100               # steps between checkpoint saves (0: only at the end of training)

    def __post_init__(self):
        check_config(self)


def check_config(cfg: InpaintConfig) -> None:
    """Raise AdrtError naming the option when a value cannot work."""
    check_checkpoint_options("inpaint", cfg)
    def ints(name, v, lo):
        if not v or any(not isinstance(c, int) or isinstance(c, bool) or c < lo for c in v):
            raise AdrtError(f"inpaint option {name}={v!r}: expected a non-empty list of integers >= {lo}")

    ints("cells", cfg.cells, 1)
    ints("train_cells", cfg.train_cells, 1)
    ints("channels", cfg.channels, 1)
    for name in ("n_masks", "train_n_masks"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 2:
            raise AdrtError(f"inpaint option {name}={v!r}: expected an integer >= 2 "
                            "(one mask would hide the whole image)")
    for name, v, allowed in (("error", cfg.error, ERRORS), ("assignment", cfg.assignment, ASSIGNMENTS),
                             ("device", cfg.device, DEVICES)):
        if v not in allowed:
            raise AdrtError(f"inpaint option {name}={v!r}: expected one of {', '.join(allowed)}")
    for name in ("gms_scales", "iterations", "epochs", "batch_size"):
        int_opt("inpaint", cfg, name, 1)
    float_opt("inpaint", cfg, "lr", 0.0, lo_open=True)
    float_opt("inpaint", cfg, "sigma", 0.0)


def size_multiple(cfg: InpaintConfig) -> int:
    """Input height and width must be multiples of this (mask cells and the U-Net's stride-2 levels)."""
    return reduce(math.lcm, (*cfg.cells, *cfg.train_cells, 2 ** len(cfg.channels)))


def check_size(cfg: InpaintConfig, height: int, width: int) -> None:
    """Raise AdrtError when the mask set or the network cannot tile height×width, listing sizes that do."""
    q = size_multiple(cfg)
    if height % q or width % q:
        works = ", ".join(str(q * i) for i in range(1, 9) if q * i <= 1024)
        raise AdrtError(
            f"inpaint: input size {height}×{width} is not tiled by the mask cells {cfg.cells} "
            f"(training cells {cfg.train_cells}) and the network's {len(cfg.channels)} stride-2 levels: "
            f"height and width must be multiples of {q}; sizes that work: {works}, ...")
    for k in cfg.cells:
        if (height // k) * (width // k) < cfg.n_masks:
            raise AdrtError(f"inpaint: {height}×{width} has only {(height // k) * (width // k)} cells of {k} px, "
                            f"fewer than n_masks={cfg.n_masks}")


# --- mask sets -----------------------------------------------------------------------------------

def mask_set(cells, n_masks: int, height: int, width: int, assignment: str = "random", seed: int = 0) -> torch.Tensor:
    """Visibility masks (1 = visible, 0 = hole), float (len(cells)·n_masks)×1×H×W.

    For each cell size k (H and W multiples of k) the k×k cells are dealt to ``n_masks`` masks:
    ``random`` deals a random permutation round-robin (equal shares, RIAD's random assignment);
    ``regular`` gives cell (r, c) to mask (r + s·c) mod n with s = 1 for n = 2 (checkerboard),
    else 2, so that no two edge-adjacent cells share a mask. Within one k the holes of the
    masks partition the image.
    """
    out = []
    for k in cells:
        # One generator per cell size: the masks of a cell size do not depend on the other cells
        # in the set, so smaller sets are subsets of larger ones (same seed).
        g = torch.Generator().manual_seed(seed * 100_003 + k)
        if height % k or width % k:
            raise AdrtError(f"mask cells of {k} px do not tile {height}×{width}")
        gh, gw = height // k, width // k
        if assignment == "random":
            owner = (torch.randperm(gh * gw, generator=g) % n_masks).view(gh, gw)
        elif assignment == "regular":
            s = 1 if n_masks == 2 else 2
            r, c = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
            owner = (r + s * c) % n_masks
        else:
            raise AdrtError(f"mask assignment {assignment!r}: expected one of {', '.join(ASSIGNMENTS)}")
        owner = owner.repeat_interleave(k, 0).repeat_interleave(k, 1)
        for j in range(n_masks):
            out.append((owner != j).float())
    return torch.stack(out).unsqueeze(1)


def random_masks(n: int, height: int, width: int, cells, n_masks: int, g: torch.Generator) -> torch.Tensor:
    """Training masks n×1×H×W: per sample a cell size from ``cells``, each cell a hole with prob 1/n_masks."""
    out = torch.empty(n, 1, height, width)
    ks = torch.tensor(cells)[torch.randint(len(cells), (n,), generator=g)]
    for i, k in enumerate(ks.tolist()):
        hole = torch.rand(height // k, width // k, generator=g) < 1.0 / n_masks
        out[i, 0] = (~hole).float().repeat_interleave(k, 0).repeat_interleave(k, 1)
    return out


# --- partial convolutions ------------------------------------------------------------------------

class PartialConv2d(nn.Module):
    """Partial convolution (Liu et al. 2018) with one mask channel per group of input channels.

    out = W·(X⊙M) · sum(1)/sum(M) + b where the window has any valid input, else 0; the updated
    mask is 1 where the window had any valid input. ``parts`` are the channel counts of the
    concatenated inputs (the U-Net's decoder concatenates two feature maps with different masks);
    ``m`` has one channel per part, so sum(M) counts channels × positions exactly as the
    per-channel formulation does, at the cost of a len(parts)-channel mask convolution.

    Inputs must already be zero where their mask is zero (the network keeps that invariant: every
    output is multiplied by its updated mask, and LeakyReLU(0) = 0), so W·(X⊙M) = W·X and no
    feature-sized multiplication is needed.
    """

    def __init__(self, parts: tuple[int, ...], out_channels: int, kernel: int, stride: int = 1):
        super().__init__()
        self.stride, self.pad = stride, kernel // 2
        self.conv = nn.Conv2d(sum(parts), out_channels, kernel, stride, self.pad, bias=False)
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        w = torch.tensor(parts, dtype=torch.float32).view(1, -1, 1, 1).expand(1, len(parts), kernel, kernel)
        self.register_buffer("mask_kernel", w.contiguous(), persistent=False)
        self.window = float(sum(parts) * kernel * kernel)

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        valid = F.conv2d(m, self.mask_kernel, stride=self.stride, padding=self.pad)   # N×1×h×w
        new_m = (valid > 0.5).to(x.dtype)
        # Renormalise by the valid-input ratio; clamp keeps 0/0 out (those positions get new_m = 0).
        ratio = new_m * (self.window / valid.clamp_min(1.0))
        return (self.conv(x) * ratio + self.bias) * new_m, new_m


class PartialUNet(nn.Module):
    """Encoder of stride-2 partial convs, decoder of nearest upsampling + skip concat + partial conv.

    ``forward(x, m)``: x N×3×H×W already zero in the holes, m N×1×H×W (1 = visible) → N×3×H×W,
    the inpainted image (all pixels; callers use the hole pixels).
    """

    def __init__(self, channels=(16, 32, 64, 64, 64), in_channels: int = 3):
        super().__init__()
        chans = (in_channels, *channels)
        self.enc = nn.ModuleList(
            PartialConv2d((chans[i],), chans[i + 1], 5 if i == 0 else 3, stride=2) for i in range(len(channels)))
        # Decoder level i (resolution of encoder level i, the input for i = 0): nearest-upsampled
        # level i+1 concatenated with the skip of level i, out with the skip's channel count.
        self.dec = nn.ModuleList(PartialConv2d((chans[i + 1], chans[i]), chans[i], 3) for i in range(len(channels)))
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        skips = [(x, m)]
        h, hm = x, m
        for layer in self.enc:
            h, hm = layer(h, hm)
            h = self.act(h)
            skips.append((h, hm))
        skips.pop()
        for i in reversed(range(len(self.dec))):
            s, sm = skips[i]
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            hm = F.interpolate(hm, scale_factor=2.0, mode="nearest")
            h, hm = self.dec[i](torch.cat([h, s], 1), torch.cat([hm, sm], 1))
            if i > 0:
                h = self.act(h)
        return h


# --- reconstruction errors -----------------------------------------------------------------------

def _prewitt() -> torch.Tensor:
    gx = torch.tensor([[1.0, 0.0, -1.0]] * 3) / 3.0
    return torch.stack([gx, gx.t()]).unsqueeze(1)       # 2×1×3×3


# c of the gradient magnitude similarity for intensities in [0, 1]: GMSD's c = 170 for 8-bit
# values, i.e. 170 / 255² ≈ 0.0026.
GMS_C = 0.0026
GRAD_EPS = 1e-12


def gms(a: torch.Tensor, b: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude similarity per pixel, (2·g_a·g_b + c) / (g_a² + g_b² + c); a, b: B×1×H×W in [0, 1]."""
    # + GRAD_EPS inside the root: d sqrt/dx is infinite at 0 (flat regions), which turns training
    # gradients into NaN; 1e-12 changes no value that matters next to c.
    ga = (F.conv2d(a, kernel, padding=1).pow(2).sum(1, keepdim=True) + GRAD_EPS).sqrt()
    gb = (F.conv2d(b, kernel, padding=1).pow(2).sum(1, keepdim=True) + GRAD_EPS).sqrt()
    return (2.0 * ga * gb + GMS_C) / (ga * ga + gb * gb + GMS_C)


def msgms_map(a: torch.Tensor, b: torch.Tensor, scales: int, kernel: torch.Tensor) -> torch.Tensor:
    """1 − multi-scale GMS (RIAD): mean over ``scales`` dyadic scales (2×2 average pooling), each
    upsampled bilinearly to full size, and over colour channels. a, b: B×C×H×W in [-1, 1] → B×H×W."""
    n, c, h, w = a.shape
    # Channels into the batch: one 2-filter Prewitt conv for all of them; [-1, 1] → [0, 1].
    a = (a.reshape(n * c, 1, h, w) + 1.0) * 0.5
    b = (b.reshape(n * c, 1, h, w) + 1.0) * 0.5
    total = torch.zeros(n * c, 1, h, w, dtype=a.dtype, device=a.device)
    for s in range(scales):
        if s:
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
        g = gms(a, b, kernel)
        total = total + (g if s == 0 else F.interpolate(g, size=(h, w), mode="bilinear", align_corners=False))
    return 1.0 - (total / scales).view(n, c, h, w).mean(1)


class ReconstructionError(nn.Module):
    """Per-pixel error map B×H×W between images and reconstructions (B×C×H×W, normalised to [-1, 1])."""

    def __init__(self, kind: str = "msgms", scales: int = 4):
        super().__init__()
        if kind not in ERRORS:
            raise AdrtError(f"error {kind!r}: expected one of {', '.join(ERRORS)}")
        self.kind, self.scales = kind, scales
        self.register_buffer("kernel", _prewitt(), persistent=False)

    def forward(self, x: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
        if self.kind == "se":
            return (x - rec).pow(2).mean(1)
        return msgms_map(x, rec, self.scales, self.kernel)


# --- the scorer: the exported graph --------------------------------------------------------------

class InpaintScorer(nn.Module):
    """x N×3×H×W (normalised) → (anomaly map N×H×W, None): every masked copy inpainted in one batch.

    ``masks`` (M×1×H×W, M = len(cells)·n_masks, visible = 1) is a buffer filled by
    ``set_masks``; it is saved with the weights and starts empty in ``build``.
    """

    def __init__(self, cfg: InpaintConfig):
        super().__init__()
        check_config(cfg)
        self.cfg = cfg
        self.net = PartialUNet(cfg.channels)
        self.error = ReconstructionError(cfg.error, cfg.gms_scales)
        self.register_buffer("masks", torch.zeros(0, 1, 0, 0))

    @property
    def n_scales(self) -> int:
        return len(self.cfg.cells)

    def set_masks(self, height: int, width: int, seed: int = 0) -> None:
        check_size(self.cfg, height, width)
        self.masks = mask_set(self.cfg.cells, self.cfg.n_masks, height, width, self.cfg.assignment, seed)

    def _check_input(self, x: torch.Tensor) -> None:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if self.masks.shape[0] == 0:
            raise AdrtError("inpaint scorer has no mask set: call set_masks(height, width) or load a trained run")
        mh, mw = int(self.masks.shape[-2]), int(self.masks.shape[-1])
        if (h, w) != (mh, mw):
            raise AdrtError(f"inpaint: input is {h}×{w} but the mask set was made for {mh}×{mw}")

    def reconstructions(self, x: torch.Tensor) -> torch.Tensor:
        """N×C×H×W → N×S×C×H×W: per cell size, every pixel inpainted from the mask that hides it."""
        self._check_input(x)
        n, c, h, w = x.shape
        m = self.masks                                        # M×1×H×W
        n_masks = m.shape[0]
        # N images × M masks → one batch of N·M masked copies (broadcast, no loop).
        xm = (x.unsqueeze(1) * m.unsqueeze(0)).reshape(n * n_masks, c, h, w)
        mm = m.unsqueeze(0).expand(n, -1, -1, -1, -1).reshape(n * n_masks, 1, h, w)
        y = self.net(xm, mm).reshape(n, self.n_scales, self.cfg.n_masks, c, h, w)
        # Per cell size the holes of its masks partition the image: summing the hole pixels of the
        # copies assembles one full reconstruction per cell size.
        hole = (1.0 - m).reshape(1, self.n_scales, self.cfg.n_masks, 1, h, w)
        return (y * hole).sum(2)

    def per_scale_errors(self, x: torch.Tensor, rec: torch.Tensor, error: nn.Module | None = None) -> torch.Tensor:
        """Error maps N×S×H×W of the reconstructions ``rec`` (N×S×C×H×W) of ``x``."""
        n, s, c, h, w = rec.shape
        target = x.unsqueeze(1).expand(-1, s, -1, -1, -1).reshape(n * s, c, h, w)
        return (error or self.error)(target, rec.reshape(n * s, c, h, w)).reshape(n, s, h, w)

    def forward(self, x: torch.Tensor):
        return self.per_scale_errors(x, self.reconstructions(x)).mean(1), None


@torch.no_grad()
def sliding_mask_map(scorer: InpaintScorer, x: torch.Tensor) -> torch.Tensor:
    """Reference for the batched forward: an eager loop over images, cell sizes and masks, one
    masked copy through the network at a time, hole pixels pasted into the reconstruction."""
    scorer._check_input(x)
    maps = []
    for i in range(x.shape[0]):
        img = x[i : i + 1]
        per_scale = []
        for s in range(scorer.n_scales):
            rec = torch.zeros_like(img)
            for j in range(scorer.cfg.n_masks):
                m = scorer.masks[s * scorer.cfg.n_masks + j].unsqueeze(0)
                out = scorer.net(img * m, m)
                rec = torch.where(m > 0.5, rec, out)
            per_scale.append(scorer.error(img, rec))
        maps.append(torch.stack(per_scale).mean(0))
    return torch.cat(maps)
