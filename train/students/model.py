"""Uninformed Students (Bergmann et al., CVPR 2020): patch-descriptor networks and the fused scorer.

A :class:`PatchNet` maps a p×p patch to one d-dimensional descriptor (valid convolutions,
LeakyReLU(5e-3), 2×2 max-pooling; extent exactly p). The same weights evaluate densely — one
descriptor per input pixel — by the à-trous form of the paper's multi-pool dense evaluation:
every stride-2 pooling becomes a stride-1 pooling and all later layers are dilated by the
accumulated stride (Bailer et al.'s multi-pooling computes the same numbers, as interleaved
sub-images; the dilated form needs no unwarping and exports as plain Conv/Max; the dilated
max-pools as convs too, :func:`max_pool2_dilated`, since TensorRT takes no dilated pooling). The input is
reflect-padded by p//2, so the dense map has the input's size and pixel (r, c) holds the
descriptor of the patch centred on it. Tested: dense output == patch output at every pixel.

:class:`StudentsScorer` is the whole scoring graph: input resized to ``dense_size``, per receptive
field a teacher and M students, the regression error ``e = ||mean_i S_i − (T − μ)/σ||²`` and the
predictive variance ``v = mean_i ||S_i − mean_j S_j||²`` per pixel, each standardised by its
mean/std on normal validation images, ``e + v`` averaged over the receptive fields.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from adrt.errors import AdrtError
from adrt.train.detector import resize_to
from adrt.train.options import choice_opt, float_opt, int_opt, ints_opt

# Layer tables per patch size. ("c", k): k×k conv to `width` channels, then LeakyReLU; ("p",): 2×2
# max-pool (stride 2 on patches, stride 1 + dilation densely). A final 1×1 conv gives the descriptor.
# Extents (1 + Σ (k−1)·stride so far) are exactly 17, 33 and 65; a p×p patch gives a 1×1 output.
# The paper's tables (128–256 channels, 5×5 kernels, 3 poolings for p = 65) have the same pattern;
# 3×3 kernels after an early pooling reach the same extent for ~10× fewer operations per pixel.
ARCHITECTURES = {
    17: (("c", 4), ("p",), ("c", 3), ("c", 3), ("c", 3)),
    33: (("c", 6), ("p",), ("c", 3), ("c", 3), ("p",), ("c", 3), ("c", 3)),
    65: (("c", 6), ("p",), ("c", 3), ("p",), ("c", 3), ("c", 3), ("p",), ("c", 3), ("c", 3)),
}
LEAK = 5e-3  # LeakyReLU slope of the paper


@dataclass(frozen=True)
class StudentsConfig:
    """Uninformed Students options. Paper values in comments; defaults are sized for a 2-core CPU."""

    scales: tuple[int, ...] = (17, 33, 65)   # receptive fields p (paper: 17, 33, 65; multi-scale = all)
    n_students: int = 3                      # M (paper: 3)
    descriptor_dim: int = 128                # d (paper: 128)
    width: int = 32                          # channels of the hidden layers (paper: 128–256)
    dense_size: int = 128                    # side of the dense maps: input resized to min(this, input side) (paper: input, 256; 0 = input)
    # Teacher: knowledge distillation from EfficientNet-Lite + triplet + compactness losses.
    backbone: str = "lite0"
    distill_size: int = 64                   # patches resized to this for the pretrained net (paper: ResNet-18 input)
    distill_data: str = "deadleaves"         # besides the fit images, distil on: ','-separated folders and/or
                                             # deadleaves[:N] (procedural; N defaults to 2× the training images); "" = none
    bank_size: int = 2048                    # at most this many patches (8 per image) per p with a cached pretrained descriptor
    teacher_epochs: float = 20.0             # passes over the bank ...
    teacher_steps: int = 1200                # ... capped at this many steps (paper: 50 000 iterations on ImageNet patches)
    teacher_batch: int = 32                  # anchors per step (paper: 64)
    teacher_lr: float = 3e-3                 # paper: 2e-4
    lambda_k: float = 1.0                    # knowledge distillation
    lambda_m: float = 0.1                    # metric learning (triplet); at 1.0 it stalls the distillation here
    lambda_c: float = 0.1                    # descriptor compactness; likewise
    margin: float = 1.0                      # triplet margin δ (squared distances / d of batch-standardised descriptors)
    pos_shift: int = 4                       # positives: anchor translated by up to this many pixels, plus noise
    # Students: regress the teacher's normalised descriptors on normal images.
    student_epochs: float = 1.25             # passes over the training pixels (input resolution; see loop.n_steps) ...
    student_steps: int = 800                 # ... capped at this many steps (paper: 100 epochs). Bottle, 256 px: 256
    # teacher + 169 student steps gave image / pixel AUROC / AUPRO 0.808 / 0.775 / 0.524 (428 s); 1200 + 800
    # gave 0.973 / 0.938 / 0.761 (637 s, 2 threads) and 0.987 / 0.942 / 0.786 (1087 s, 1 thread: another
    # summation order, another trajectory; benchmarks/results/students.md)
    student_batch: int = 1                   # whole images per step
    student_lr: float = 3e-3                 # paper: 1e-4
    weight_decay: float = 1e-5               # paper: 1e-5
    stats_images: int = 32                   # images for the teacher's descriptor mean/std
    val_fraction: float = 0.1                # normal images kept out for the e/v statistics
    min_val: int = 2
    sigma: float = 4.0                       # Gaussian smoothing of the upsampled map
    checkpoint: str = ""                     # training-state file: saved as training goes; a rerun resumes from it (skips what is done)
    checkpoint_every: int = 100              # steps between checkpoint saves (0: only at stage ends)

    def __post_init__(self):
        check_config(self)


def check_config(cfg: StudentsConfig) -> None:
    m = "students"
    ints_opt(m, cfg, "scales", 1)
    for name in ("n_students", "descriptor_dim", "width", "distill_size", "bank_size", "teacher_steps",
                 "teacher_batch", "student_steps", "student_batch", "stats_images", "min_val"):
        int_opt(m, cfg, name, 1)
    for name in ("dense_size", "pos_shift", "checkpoint_every"):
        int_opt(m, cfg, name, 0)
    for name in ("teacher_epochs", "student_epochs", "teacher_lr", "student_lr", "margin"):
        float_opt(m, cfg, name, 0.0, lo_open=True)
    for name in ("lambda_k", "lambda_m", "lambda_c", "weight_decay", "sigma"):
        float_opt(m, cfg, name, 0.0)
    float_opt(m, cfg, "val_fraction", 0.0, 1.0, hi_open=True)
    choice_opt(m, cfg, "backbone", ("lite0", "lite1", "lite2"))
    for name in ("distill_data", "checkpoint"):
        if not isinstance(getattr(cfg, name), str):
            raise AdrtError(f"students option {name}={getattr(cfg, name)!r}: expected a string")
    bad = [p for p in cfg.scales if p not in ARCHITECTURES]
    if not cfg.scales or bad:
        raise AdrtError(f"students option scales={cfg.scales!r}: each must be one of {sorted(ARCHITECTURES)}")
    if len(set(cfg.scales)) != len(cfg.scales):
        raise AdrtError(f"students option scales={cfg.scales!r}: repeated receptive field")
    if cfg.n_students < 2:
        raise AdrtError(f"students option n_students={cfg.n_students}: the predictive variance needs at least 2")
    for name in ("descriptor_dim", "width", "distill_size", "bank_size", "teacher_batch", "student_batch",
                 "stats_images", "teacher_steps", "student_steps"):
        if getattr(cfg, name) < 1:
            raise AdrtError(f"students option {name}={getattr(cfg, name)}: expected a positive integer")
    if cfg.teacher_epochs <= 0 or cfg.student_epochs <= 0:
        raise AdrtError("students options teacher_epochs/student_epochs: expected positive numbers")
    if cfg.dense_size < 0:
        raise AdrtError(f"students option dense_size={cfg.dense_size}: expected 0 (input size) or a size in pixels")


def max_pool2_dilated(x: torch.Tensor, j: int) -> torch.Tensor:
    """2×2 max-pool with stride 1 and dilation ``j``: N×C×H×W → N×C×(H−j)×(W−j).

    # Convs, not a dilated MaxPool: TensorRT's ONNX parser rejects pooling dilations other than 1
    # (every version). Per axis, max(a, b) = a + relu(b − a), with a = x[h] and b − a = x[h+j] − x[h]
    # as depthwise 2-tap convs dilated by j (weights [1, 0] and [−1, 1]; dilated convs are fine).
    # On ONNX Runtime CPU this stays in its blocked conv layout: +1.3 % CPU time for the students'
    # graph at 128 px, where max over shifted slices (Slice + Max) cost +12 % and pixel-unshuffle
    # + MaxPool + pixel-shuffle +30 %. It equals the max-pool up to one float rounding of b − a.
    # j = 1 stays a MaxPool node (no dilation).
    """
    if j == 1:
        return F.max_pool2d(x, 2, stride=1)
    c = x.shape[1]
    first = x.new_tensor([1.0, 0.0]).repeat(c, 1)      # a: the first of the pair (exact)
    step = x.new_tensor([-1.0, 1.0]).repeat(c, 1)      # b − a
    for shape, dil in (((c, 1, 2, 1), (j, 1)), ((c, 1, 1, 2), (1, j))):
        a = F.conv2d(x, first.view(shape), dilation=dil, groups=c)
        x = a + F.relu(F.conv2d(x, step.view(shape), dilation=dil, groups=c))
    return x


class PatchNet(nn.Module):
    """p×p patch → d-dim descriptor; ``dense=True`` evaluates it at every valid position.

    ``copies`` > 1 holds that many independent networks as one (the first convolution's output
    channels split into groups, later convolutions grouped): block-diagonal weights, so the copies
    share nothing, but each layer is one operation for all of them. Output: copies·d channels,
    copy-major.
    """

    def __init__(self, p: int, width: int, dim: int, copies: int = 1):
        super().__init__()
        self.p = p
        self.copies = copies
        self.layers = tuple(ARCHITECTURES[p])
        convs, cin = [], 3
        for spec in self.layers:
            if spec[0] == "c":
                # The first layer (on pixels, at full resolution) has half the width: most of a
                # patch's cost is there, and 3-channel input needs fewer features.
                cout = copies * (max(1, width // 2) if cin == 3 else width)
                convs.append(nn.Conv2d(cin, cout, spec[1], groups=1 if cin == 3 else copies))
                cin = cout
        self.convs = nn.ModuleList(convs)
        self.head = nn.Conv2d(cin, copies * dim, 1, groups=copies)

    def forward(self, x: torch.Tensor, dense: bool = False) -> torch.Tensor:
        """Patches N×3×p×p → N×(copies·d)×1×1; dense: N×3×H×W → N×(copies·d)×(H−p+1)×(W−p+1)."""
        j, i = 1, 0
        for spec in self.layers:
            if spec[0] == "c":
                conv = self.convs[i]
                i += 1
                x = F.leaky_relu(F.conv2d(x, conv.weight, conv.bias, dilation=j, groups=conv.groups), LEAK)
            elif dense:
                # The multi-pool step. Training keeps torch's dilated max-pool (the conv form made an
                # eager forward + backward step about 1.5x slower); eval mode (the exported graph,
                # calibration, evaluation) runs the TensorRT-ready conv form, equal up to one rounding.
                x = F.max_pool2d(x, 2, stride=1, dilation=j) if self.training else max_pool2_dilated(x, j)
                j *= 2
            else:
                x = F.max_pool2d(x, 2, 2)
        return self.head(x)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """One descriptor per pixel: N×3×H×W → N×(copies·d)×H×W (reflect padding by p//2)."""
        r = self.p // 2
        return self(F.pad(x, (r, r, r, r), mode="reflect"), dense=True)


class StudentsScorer(nn.Module):
    """Normalised images N×3×H×W → (anomaly map N×s×s at ``dense_size`` s, None)."""

    def __init__(self, cfg: StudentsConfig):
        super().__init__()
        check_config(cfg)
        self.cfg = cfg
        self.scales = tuple(cfg.scales)
        s, d = len(self.scales), cfg.descriptor_dim
        self.teachers = nn.ModuleList(PatchNet(p, cfg.width, d) for p in self.scales)
        # The M students of a receptive field: M independent networks held as one grouped network.
        self.students = nn.ModuleList(PatchNet(p, cfg.width, d, copies=cfg.n_students) for p in self.scales)
        # Per receptive field: the teacher's descriptor mean/std on training images; mean/std of the
        # regression error and of the predictive variance on normal validation images.
        self.register_buffer("t_mean", torch.zeros(s, d))
        self.register_buffer("t_std", torch.ones(s, d))
        self.register_buffer("err_stats", torch.tensor([[0.0, 1.0]] * s))
        self.register_buffer("var_stats", torch.tensor([[0.0, 1.0]] * s))

    def dense_side(self, side: int) -> int:
        """Side of the dense maps for inputs of side ``side`` (never upsampled)."""
        return min(self.cfg.dense_size, side) if self.cfg.dense_size > 0 else side

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return resize_to(x, self.dense_side(int(x.shape[-1])))

    def teacher_target(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Normalised teacher descriptors N×d×H×W of scale index k (x already at dense size)."""
        t = self.teachers[k].dense(x)
        return (t - self.t_mean[k].view(1, -1, 1, 1)) / self.t_std[k].view(1, -1, 1, 1)

    def error_variance(self, k: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw regression error and predictive variance N×H×W of scale index k."""
        target = self.teacher_target(k, x)
        preds = self.student_predictions(k, x)                              # N×M×d×H×W
        mean = preds.mean(1)
        err = ((mean - target) ** 2).sum(1)
        # Σ_i ||S_i − S̄||² / M equals mean_i ||S_i||² − ||S̄||² without the cancellation in float32.
        var = ((preds - mean.unsqueeze(1)) ** 2).sum(2).mean(1)
        return err, var

    def student_predictions(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """The M students' descriptors N×M×d×H×W of scale index k."""
        y = self.students[k].dense(x)
        n, _, h, w = y.shape
        return y.view(n, self.cfg.n_students, self.cfg.descriptor_dim, h, w)

    def scale_map(self, k: int, x: torch.Tensor) -> torch.Tensor:
        err, var = self.error_variance(k, x)
        e = (err - self.err_stats[k, 0]) / self.err_stats[k, 1]
        v = (var - self.var_stats[k, 0]) / self.var_stats[k, 1]
        return e + v

    def forward(self, x: torch.Tensor):
        x = self.prepare(x)
        maps = [self.scale_map(k, x) for k in range(len(self.scales))]
        m = maps[0] if len(maps) == 1 else torch.stack(maps).mean(0)
        return m, None
