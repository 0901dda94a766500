"""Training of Uninformed Students (kept beside the model, not in it).

Per receptive field p, in this order (each a resumable stage, see ``adrt.train.trainer.Session``):

1. *bank*: up to ``bank_size`` random p×p patches (8 per image) of the distillation images — the
   training images plus ``distill_data`` (default: procedural dead-leaves images, twice as many as
   the training images, standing in for the paper's ImageNet patches: a teacher distilled on the
   training images alone describes little beyond them, and the students then follow it on
   anomalies too) — each resized to ``distill_size`` and described by the pretrained
   EfficientNet-Lite (taps at strides 8, 16 and 32, globally averaged and concatenated: 472 dims
   for lite0), standardised per dimension. Deterministic for a seed, recomputed, not stored.
2. *teacher p*: λ_k·L_k + λ_m·L_m + λ_c·L_c on patches (Bergmann et al. §3.1):
   L_k = ||D(T(a)) − P(a)||² with a linear decoder D (knowledge distillation);
   L_m = max(0, δ + δ⁺ − δ⁻), δ⁺ = ||T(a) − T(a⁺)||², δ⁻ = min(||T(a) − T(n)||², ||T(a⁺) − T(n)||²),
   a⁺ = a translated by up to ``pos_shift`` px with luminance change and Gaussian noise, n = a
   patch of another image (descriptors standardised over the batch and distances divided by d,
   so that δ does not depend on the descriptors' scale, which L_k leaves free);
   L_c = mean |off-diagonal entries| of the descriptors' correlation matrix in the batch.
   Defaults λ_k = 1, λ_m = λ_c = 0.1: at λ_m = λ_c = 1 the distillation stalls (held-out L_k
   0.998 against 0.53 after 150 steps on bottle patches, p = 33).
3. *stats p*: the teacher's per-dimension descriptor mean/std over training images (dense).
4. *students p*: M students regress (T − μ)/σ densely on whole training images (squared error).

Finally *validation*: mean/std of the regression error and of the predictive variance over every
pixel of the validation images, per p.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from adrt.errors import AdrtError
from adrt.train.backbone import load_pretrained, taps_for_strides
from adrt.train.pretrain_data import load_extra
from adrt.train.trainer import Session, n_steps, split_validation, sub_seed, to_tensor
from adrt.train.students.model import StudentsConfig, StudentsScorer, check_config

MIN_TRAIN = 2          # images to train on besides the validation split
BANK_PER_IMAGE = 8     # bank patches per distillation image (up to bank_size)
NOISE_STD = 0.02       # positives: Gaussian noise (in [0, 1] pixel units)
LUMA = 0.1             # positives: luminance gain in [1 − LUMA, 1 + LUMA] and offset in ±LUMA/2


DESCRIPTOR_STRIDES = (8, 16, 32)


def pretrained_dim(variant: str) -> int:
    from adrt.train.backbone import tap_info

    info = tap_info(variant)
    return sum(info[t]["channels"] for t in taps_for_strides(variant, DESCRIPTOR_STRIDES))


class PretrainedDescriptor(torch.nn.Module):
    """Patch N×3×p×p → pretrained descriptor N×D: resized to ``size``, EfficientNet-Lite taps at
    strides 8/16/32 globally averaged and concatenated."""

    def __init__(self, variant: str, size: int):
        super().__init__()
        self.net = load_pretrained(variant)
        self.taps = taps_for_strides(variant, DESCRIPTOR_STRIDES)
        self.size = size

    @torch.no_grad()
    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(patches, size=(self.size, self.size), mode="bilinear", align_corners=False,
                          antialias=patches.shape[-1] > self.size)
        return torch.cat([f.mean((2, 3)) for f in self.net.features(x, self.taps)], 1)


def make_bank(x: torch.Tensor, p: int, n: int, extractor: PretrainedDescriptor, gen: torch.Generator, log):
    """``n`` random patches of ``x`` (reflect-padded by p//2, so a patch is centred on any pixel, as in
    the dense evaluation): positions (image, y, x) and their standardised pretrained descriptors."""
    N, _, H, W = x.shape
    img = torch.randint(N, (n,), generator=gen)
    ys = torch.randint(H - p + 1, (n,), generator=gen)
    xs = torch.randint(W - p + 1, (n,), generator=gen)
    out = []
    for i in range(0, n, 128):
        patches = torch.stack([x[a, :, b : b + p, c : c + p] for a, b, c in
                               zip(img[i : i + 128].tolist(), ys[i : i + 128].tolist(), xs[i : i + 128].tolist())])
        out.append(extractor(patches))
        log(f"  bank p={p}: {min(i + 128, n)}/{n} patches", end="\r")
    d = torch.cat(out)
    mean, std = d.mean(0), d.std(0)
    std = std.clamp_min(0.05 * float(std.mean()))   # near-constant channels must not dominate
    return img, ys, xs, (d - mean) / std


def _augment(patch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Luminance change and Gaussian noise, in [0, 1] pixel units (patches are in [-1, 1])."""
    b = patch.shape[0]
    gain = 1.0 + LUMA * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1)
    offset = 0.5 * LUMA * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1)
    x01 = (patch + 1) * 0.5 * gain + offset + NOISE_STD * torch.randn(patch.shape, generator=gen)
    return x01.clamp(0, 1) * 2 - 1


def correlation_loss(desc: torch.Tensor) -> torch.Tensor:
    """Mean absolute off-diagonal entry of the correlation matrix of descriptors B×d."""
    z = desc - desc.mean(0, keepdim=True)
    z = z / (z.pow(2).mean(0, keepdim=True).sqrt() + 1e-6)
    c = z.t() @ z / desc.shape[0]
    d = c.shape[0]
    off = c - torch.diag(torch.diagonal(c))
    return off.abs().sum() / (d * (d - 1))


def teacher_losses(cfg: StudentsConfig, net, decoder, x: torch.Tensor, bank, p: int, idx: torch.Tensor,
                   gen: torch.Generator):
    """(total, parts) of the teacher objective for the bank anchors ``idx``."""
    img, ys, xs, target = bank
    N, _, H, W = x.shape
    b = idx.numel()
    a_img, a_y, a_x = img[idx], ys[idx], xs[idx]
    s = cfg.pos_shift
    p_y = (a_y + torch.randint(-s, s + 1, (b,), generator=gen)).clamp(0, H - p)
    p_x = (a_x + torch.randint(-s, s + 1, (b,), generator=gen)).clamp(0, W - p)
    if N > 1:   # another image: shift the index by 1..N-1
        n_img = (a_img + torch.randint(1, N, (b,), generator=gen)) % N
    else:
        n_img = a_img
    n_y = torch.randint(H - p + 1, (b,), generator=gen)
    n_x = torch.randint(W - p + 1, (b,), generator=gen)

    def crop(ii, yy, xx):
        return torch.stack([x[i, :, y : y + p, c : c + p] for i, y, c in zip(ii.tolist(), yy.tolist(), xx.tolist())])

    patches = torch.cat([crop(a_img, a_y, a_x), _augment(crop(a_img, p_y, p_x), gen), crop(n_img, n_y, n_x)])
    desc = net(patches).flatten(1)
    da, dp, dn = desc[:b], desc[b : 2 * b], desc[2 * b :]
    d = desc.shape[1]
    l_k = ((decoder(da) - target[idx]) ** 2).mean()
    # Triplet distances between descriptors standardised over the batch (what the students regress
    # is standardised too), so that the margin does not depend on the descriptors' scale.
    z = (desc - desc.mean(0, keepdim=True)) / (desc.std(0, keepdim=True) + 1e-6)
    za, zp, zn = z[:b], z[b : 2 * b], z[2 * b :]
    pos = ((za - zp) ** 2).sum(1) / d
    neg = torch.minimum(((za - zn) ** 2).sum(1), ((zp - zn) ** 2).sum(1)) / d
    l_m = F.relu(cfg.margin + pos - neg).mean()
    l_c = correlation_loss(desc)
    loss = cfg.lambda_k * l_k + cfg.lambda_m * l_m + cfg.lambda_c * l_c
    return loss, {"loss": loss.item(), "kd": l_k.item(), "triplet": l_m.item(), "compact": l_c.item()}


@torch.no_grad()
def teacher_stats(net, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of the dense teacher descriptors over all pixels of ``x``."""
    s1 = s2 = None
    count = 0
    for i in range(len(x)):
        t = net.dense(x[i : i + 1]).double()
        f = t.transpose(0, 1).flatten(1)
        s1 = f.sum(1) if s1 is None else s1 + f.sum(1)
        s2 = (f * f).sum(1) if s2 is None else s2 + (f * f).sum(1)
        count += f.shape[1]
    mean = s1 / count
    std = (s2 / count - mean * mean).clamp_min(0).sqrt()
    return mean.float(), std.clamp_min(1e-6 + 1e-3 * float(std.mean())).float()


@torch.no_grad()
def validation_stats(scorer: StudentsScorer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per scale (mean, std) of the raw regression error and predictive variance over ``x``'s pixels."""
    errs = [[] for _ in scorer.scales]
    vars_ = [[] for _ in scorer.scales]
    for i in range(len(x)):
        for k in range(len(scorer.scales)):
            e, v = scorer.error_variance(k, x[i : i + 1])
            errs[k].append(e.flatten().double())
            vars_[k].append(v.flatten().double())
    def stats(vals):
        a = torch.cat(vals)
        return [float(a.mean()), max(float(a.std()), 1e-6 * max(abs(float(a.mean())), 1.0))]
    return (torch.tensor([stats(e) for e in errs]), torch.tensor([stats(v) for v in vars_]))


def student_loss(scorer: StudentsScorer, k: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss, per-student mean squared errors M) of scale ``k``'s students regressing its
    teacher's standardised descriptors on the images ``x``."""
    with torch.no_grad():
        target = scorer.teacher_target(k, x)
    err = (scorer.student_predictions(k, x) - target.unsqueeze(1)) ** 2      # N×M×d×H×W
    losses = err.transpose(0, 1).flatten(1).mean(1)
    return losses.sum(), losses


def fit_scorer(cfg: StudentsConfig, images: np.ndarray, preprocess, seed: int = 0, log=print) -> StudentsScorer:
    """Train teachers and students on uint8 N×H×W×3 normal images; returns the scorer in eval mode."""
    check_config(cfg)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise AdrtError(f"students: expected uint8 images N×H×W×3, got shape {tuple(images.shape)}")
    n, h, w, _ = images.shape
    if h != w:
        raise AdrtError(f"students: expected square images, got {h}×{w}")
    size = min(cfg.dense_size, h) if cfg.dense_size > 0 else h
    if size <= max(cfg.scales) // 2:
        raise AdrtError(f"students: dense maps of {size} px are too small for receptive field {max(cfg.scales)} "
                        f"(the reflect padding of p//2 must be smaller than the map); use dense maps above "
                        f"{max(cfg.scales) // 2} px or drop that scale")
    tr_idx, val_idx = split_validation(n, cfg.val_fraction, cfg.min_val, MIN_TRAIN, seed, "students")
    torch.manual_seed(seed)
    scorer = StudentsScorer(cfg)
    decoders = torch.nn.ModuleDict()
    x_all = to_tensor(images, preprocess, size)
    x_train, x_val = x_all[tr_idx], x_all[val_idx]
    extra, extra_what = load_extra(cfg.distill_data, size, size, sub_seed(seed, "distill") % 2**32, 2 * len(tr_idx))
    x_distill = x_train if extra is None else torch.cat([x_train, to_tensor(extra, preprocess, size)])
    bank_size = min(cfg.bank_size, BANK_PER_IMAGE * len(x_distill))
    teacher_steps = min(cfg.teacher_steps, math.ceil(cfg.teacher_epochs * bank_size / cfg.teacher_batch))
    student_steps = n_steps(cfg.student_steps, cfg.student_epochs, len(tr_idx), h, size, cfg.student_batch)
    log(f"  students: {len(tr_idx)} training + {len(val_idx)} validation images at {size}×{size}; "
        f"teacher distilled on {len(x_distill)} images"
        + (f" ({len(tr_idx)} training images + {extra_what})" if extra is not None else " (the training images)")
        + f"; scales {cfg.scales}, M={cfg.n_students}, d={cfg.descriptor_dim}, width {cfg.width}")
    extractor = None
    # Decoders exist from the start so that a checkpoint always holds the same modules.
    for p in cfg.scales:
        decoders[str(p)] = torch.nn.Linear(cfg.descriptor_dim, pretrained_dim(cfg.backbone))
    session = Session("students", cfg, images, seed, {"scorer": scorer, "decoders": decoders}, log)
    t_start = time.perf_counter()
    for k, p in enumerate(cfg.scales):
        teacher = scorer.teachers[k]
        name = f"teacher p={p}"
        if not session.is_done(name):
            if extractor is None:
                extractor = PretrainedDescriptor(cfg.backbone, cfg.distill_size).eval()
            gen = torch.Generator().manual_seed(sub_seed(seed, f"bank {p}"))
            r = p // 2
            x_pad = F.pad(x_distill, (r, r, r, r), mode="reflect")
            bank = make_bank(x_pad, p, bank_size, extractor, gen, log)
            log("")

            def step(i, g, teacher=teacher, dec=decoders[str(p)], bank=bank, p=p, x_pad=x_pad):
                idx = torch.randint(bank_size, (cfg.teacher_batch,), generator=g)
                return teacher_losses(cfg, teacher, dec, x_pad, bank, p, idx, g)

            session.run(name, teacher_steps, list(teacher.parameters()) + list(decoders[str(p)].parameters()),
                        cfg.teacher_lr, cfg.weight_decay, step,
                        describe=f"{cfg.teacher_batch} triplets of {p}×{p} patches")
        name = f"stats p={p}"
        if not session.is_done(name):
            m = min(cfg.stats_images, len(x_train))
            mean, std = teacher_stats(teacher.eval(), x_train[:m])
            scorer.t_mean[k] = mean
            scorer.t_std[k] = std
            session.mark_done(name)
        name = f"students p={p}"
        if not session.is_done(name):
            students = scorer.students[k]   # M independent networks (grouped), one loss each, summed

            def step(i, g, k=k):
                idx = torch.randint(len(x_train), (cfg.student_batch,), generator=g)
                loss, losses = student_loss(scorer, k, x_train[idx])
                return loss, {"loss": loss.item(), **{f"s{j}": l.item() for j, l in enumerate(losses)}}

            scorer.teachers.eval()
            session.run(name, student_steps, students.parameters(), cfg.student_lr, cfg.weight_decay, step,
                        describe=f"{cfg.student_batch} whole image(s) each, {cfg.n_students} students")
    if not session.is_done("validation"):
        scorer.eval()
        err, var = validation_stats(scorer, x_val)
        scorer.err_stats.copy_(err)
        scorer.var_stats.copy_(var)
        session.mark_done("validation")
    log(f"  students: trained in {time.perf_counter() - t_start:.0f} s"
        + (f"; stopped early: {', '.join(session.stopped)}" if session.stopped else ""))
    for k, p in enumerate(cfg.scales):
        log(f"  p={p}: validation error {scorer.err_stats[k, 0]:.4g}±{scorer.err_stats[k, 1]:.3g}, "
            f"variance {scorer.var_stats[k, 0]:.4g}±{scorer.var_stats[k, 1]:.3g}")
    return scorer.eval()
