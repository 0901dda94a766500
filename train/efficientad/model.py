"""EfficientAD (Batzner et al., WACV 2024, arXiv 2303.14535): PDN teacher and student, autoencoder,
quantile-normalised maps; the fused scorer.

Architectures follow the paper's tables (channel counts scaled by ``width``; ``width=1`` is the
paper): PDN-S = conv4×4 128 · ReLU · avgpool 2×2/2 · conv4×4 256 · ReLU · avgpool · conv3×3 256 ·
ReLU · conv4×4 C; PDN-M = conv4×4 256 · ReLU · avgpool · conv4×4 512 · ReLU · avgpool · conv1×1
512 · ReLU · conv3×3 512 · ReLU · conv4×4 C · ReLU · conv1×1 C; no padding, so a 256-px image
gives a 56×56 map whose cells see 33×33 px. The student is the same network with 2C outputs (C
regress the teacher, C the autoencoder). Autoencoder: six strided 4×4 convolutions down to a 1×1
latent (the last one 8×8), then bilinear upsampling + 4×4 convolutions (dropout 0.2) back up, and
two 3×3 convolutions to C channels at the PDN's map size. The images are resized inside the graph
to ``image_size`` (paper: 256); sizes of the autoencoder's upsampling steps scale with it.

Map: ``0.5·0.1·(M_ST − q_a)/(q_b − q_a) + 0.5·0.1·(M_AE − q_a')/(q_b' − q_a')``, M_ST the mean
squared teacher–student difference over channels, M_AE likewise between autoencoder and student;
q_a, q_b the 0.9 and 0.995 quantiles on validation images (buffers). The map is padded by the
PDN's border (4 cells at 256 px) so that it covers the image before upsampling.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from adrt.errors import AdrtError
from adrt.train.options import choice_opt, float_opt, int_opt
from adrt.train.detector import resize_to

SIZES = ("s", "m")
DEC_SIZES_256 = (3, 8, 15, 32, 63, 127)   # the paper's upsampling sizes for 256-px inputs


@dataclass(frozen=True)
class EfficientADConfig:
    """EfficientAD options. Paper values in comments; defaults are sized for a 2-core CPU."""

    size: str = "s"                      # s (PDN-S) or m (PDN-M)
    width: float = 0.25                  # channel multiplier of PDNs and autoencoder (paper: 1.0)
    out_channels: int = 64               # C, teacher feature channels (paper: 384)
    image_size: int = 128                # inputs resized to this inside the graph (paper: 256); power of 2, ≥ 64
    backbone: str = "lite0"              # distillation source (paper: WideResNet-101)
    distill_data: str = ""               # besides the fit images, distil on: ","-separated folders and/or deadleaves[:N]
    teacher_epochs: float = 2.5          # passes over the distillation pixels (input resolution; see loop.n_steps) ...
    teacher_steps: int = 400             # ... capped (paper: 60 000 iterations on ImageNet)
    teacher_batch: int = 4               # paper: 16
    teacher_lr: float = 1e-3             # paper: 1e-4
    epochs: float = 2.5                  # student + autoencoder: passes over the training pixels ...
    steps: int = 1500                    # ... capped (paper: 70 000 iterations of batch 1)
    lr: float = 2e-3                     # paper: 1e-4; ×0.1 after 95 % of the steps as in the paper
    weight_decay: float = 1e-5           # paper: 1e-5
    q_hard: float = 0.999                # hard feature loss quantile (paper: 0.999)
    penalty: str = "deadleaves"          # penalty images (paper: ImageNet): deadleaves[:N], folders, or 'none'
    penalty_images: int = 32             # N for a bare "deadleaves" penalty
    val_fraction: float = 0.1            # normal images kept out for the map quantiles
    min_val: int = 2
    q_a: float = 0.9                     # paper: 0.9
    q_b: float = 0.995                   # paper: 0.995
    sigma: float = 4.0                   # Gaussian smoothing of the upsampled map (paper: none)
    checkpoint: str = ""                 # training-state file: saved as training goes; a rerun resumes from it (skips what is done)
    checkpoint_every: int = 200          # steps between checkpoint saves (0: only at stage ends)

    def __post_init__(self):
        check_config(self)


def check_config(cfg: EfficientADConfig) -> None:
    m = "efficientad"
    for name in ("out_channels", "image_size", "teacher_steps", "teacher_batch", "steps", "penalty_images", "min_val"):
        int_opt(m, cfg, name, 1)
    int_opt(m, cfg, "checkpoint_every", 0)
    for name in ("width", "teacher_epochs", "epochs", "teacher_lr", "lr"):
        float_opt(m, cfg, name, 0.0, lo_open=True)
    for name in ("weight_decay", "sigma"):
        float_opt(m, cfg, name, 0.0)
    for name in ("q_hard", "q_a", "q_b"):
        float_opt(m, cfg, name, 0.0, 1.0, lo_open=True, hi_open=True)
    float_opt(m, cfg, "val_fraction", 0.0, 1.0, hi_open=True)
    choice_opt(m, cfg, "backbone", ("lite0", "lite1", "lite2"))
    for name in ("distill_data", "penalty", "checkpoint"):
        if not isinstance(getattr(cfg, name), str):
            raise AdrtError(f"efficientad option {name}={getattr(cfg, name)!r}: expected a string")
    if cfg.size not in SIZES:
        raise AdrtError(f"efficientad option size={cfg.size!r}: expected one of {', '.join(SIZES)}")
    s = cfg.image_size
    if s < 64 or s & (s - 1):
        raise AdrtError(f"efficientad option image_size={s}: expected a power of two ≥ 64 (64, 128, 256, ...)")
    if not 0 < cfg.width <= 4:
        raise AdrtError(f"efficientad option width={cfg.width}: expected a multiplier in (0, 4]")
    if min(cfg.teacher_steps, cfg.steps, cfg.teacher_batch) < 1 or min(cfg.teacher_epochs, cfg.epochs) <= 0:
        raise AdrtError("efficientad options teacher_steps/steps/teacher_batch/epochs/teacher_epochs: expected positive values")
    if cfg.out_channels < 1:
        raise AdrtError(f"efficientad option out_channels={cfg.out_channels}: expected a positive integer")
    if not 0 < cfg.q_a < cfg.q_b < 1:
        raise AdrtError(f"efficientad options q_a={cfg.q_a}, q_b={cfg.q_b}: expected 0 < q_a < q_b < 1")
    if not 0 < cfg.q_hard < 1:
        raise AdrtError(f"efficientad option q_hard={cfg.q_hard}: expected a quantile in (0, 1)")


def _ch(c: int, width: float) -> int:
    return max(8, int(round(c * width)))


def pdn(size: str, out: int, width: float) -> nn.Sequential:
    """Patch description network (no padding): 256 px → 56×56, receptive field 33 px."""
    a, b = _ch(128 if size == "s" else 256, width), _ch(256 if size == "s" else 512, width)
    if size == "s":
        return nn.Sequential(
            nn.Conv2d(3, a, 4), nn.ReLU(), nn.AvgPool2d(2, 2),
            nn.Conv2d(a, b, 4), nn.ReLU(), nn.AvgPool2d(2, 2),
            nn.Conv2d(b, b, 3), nn.ReLU(),
            nn.Conv2d(b, out, 4))
    return nn.Sequential(
        nn.Conv2d(3, a, 4), nn.ReLU(), nn.AvgPool2d(2, 2),
        nn.Conv2d(a, b, 4), nn.ReLU(), nn.AvgPool2d(2, 2),
        nn.Conv2d(b, b, 1), nn.ReLU(),
        nn.Conv2d(b, b, 3), nn.ReLU(),
        nn.Conv2d(b, out, 4), nn.ReLU(),
        nn.Conv2d(out, out, 1))


def map_size(image_size: int) -> int:
    """Side of the PDN output for a square input (no padding): 256 → 56."""
    s = image_size - 3          # conv 4
    s = s // 2 - 3              # pool, conv 4
    return s // 2 - 2 - 3       # pool, conv 3, conv 4


class AutoEncoder(nn.Module):
    """Image → C×n×n through a 1×1 latent (the paper's encoder/decoder, sizes scaled to the input)."""

    def __init__(self, image_size: int, out: int, width: float):
        super().__init__()
        a, b = _ch(32, width), _ch(64, width)
        n_down = image_size.bit_length() - 1 - 3        # strided convs down to 8×8 (256: 5)
        chans = [3] + [a, a] + [b] * (n_down - 2)
        enc = []
        for i in range(n_down):
            enc += [nn.Conv2d(chans[i], chans[i + 1], 4, 2, 1), nn.ReLU()]
        enc.append(nn.Conv2d(chans[n_down], b, 8))
        self.encoder = nn.Sequential(*enc)
        self.sizes = tuple(max(1, round(v * image_size / 256)) for v in DEC_SIZES_256)
        self.out_size = map_size(image_size)
        self.dec = nn.ModuleList(nn.Conv2d(b, b, 4, 1, 2) for _ in self.sizes)
        self.drop = nn.Dropout(0.2)
        self.tail = nn.Sequential(nn.Conv2d(b, b, 3, 1, 1), nn.ReLU(), nn.Conv2d(b, out, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        for size, conv in zip(self.sizes, self.dec):
            z = F.interpolate(z, size=(size, size), mode="bilinear", align_corners=False)
            z = self.drop(F.relu(conv(z)))
        z = F.interpolate(z, size=(self.out_size, self.out_size), mode="bilinear", align_corners=False)
        return self.tail(z)


class EfficientADScorer(nn.Module):
    """Normalised images N×3×H×W → (map N×g×g on the image_size/4 grid, None)."""

    def __init__(self, cfg: EfficientADConfig):
        super().__init__()
        check_config(cfg)
        self.cfg = cfg
        c = cfg.out_channels
        self.teacher = pdn(cfg.size, c, cfg.width)
        self.student = pdn(cfg.size, 2 * c, cfg.width)
        self.autoencoder = AutoEncoder(cfg.image_size, c, cfg.width)
        self.n = map_size(cfg.image_size)
        self.pad = (cfg.image_size // 4 - self.n) // 2
        self.register_buffer("t_mean", torch.zeros(1, c, 1, 1))
        self.register_buffer("t_std", torch.ones(1, c, 1, 1))
        # [q_a, q_b] of the student–teacher and autoencoder–student maps on validation images.
        self.register_buffer("q_st", torch.tensor([0.0, 1.0]))
        self.register_buffer("q_ae", torch.tensor([0.0, 1.0]))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return resize_to(x, self.cfg.image_size)

    def teacher_features(self, x: torch.Tensor) -> torch.Tensor:
        return (self.teacher(x) - self.t_mean) / self.t_std

    def raw_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised M_ST and M_AE, N×n×n (x already at image_size)."""
        c = self.cfg.out_channels
        t = self.teacher_features(x)
        s = self.student(x)
        a = self.autoencoder(x)
        m_st = ((t - s[:, :c]) ** 2).mean(1)
        m_ae = ((a - s[:, c:]) ** 2).mean(1)
        return m_st, m_ae

    def forward(self, x: torch.Tensor):
        m_st, m_ae = self.raw_maps(self.prepare(x))
        m = (0.05 * (m_st - self.q_st[0]) / (self.q_st[1] - self.q_st[0])
             + 0.05 * (m_ae - self.q_ae[0]) / (self.q_ae[1] - self.q_ae[0]))
        if self.pad > 0:   # the unpadded PDN loses a border; repeat the edge cells so the map covers the image
            m = F.pad(m.unsqueeze(1), (self.pad,) * 4, mode="replicate").squeeze(1)
        return m, None
