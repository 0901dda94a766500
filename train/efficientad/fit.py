"""Training of EfficientAD (kept beside the model, not in it), as the paper's Algorithm 1 with the
substitutions needed here (no ImageNet):

1. *teacher*: the PDN regresses pretrained features of the distillation images (the fit images,
   plus ``distill_data`` folders): EfficientNet-Lite taps at strides 8 and 16, each averaged over
   3×3 neighbours (PatchCore's locally aware features, as the paper's extractor), resampled to
   the PDN grid, reduced to C channels by averaging groups of adjacent channels (PatchCore's
   adaptive pooling, as in the paper) and standardised per channel. Mean squared error.
2. *teacher stats*: the teacher's per-channel mean/std on the training images.
3. *student + autoencoder*: per step one training image I and one augmented copy I' (brightness,
   contrast or saturation ×U(0.8, 1.2)); L = L_hard + L_penalty + L_AE + L_STAE with
   L_hard = mean of the squared teacher–student differences at or above their q_hard quantile,
   L_penalty = mean squared student output (first C channels) on a penalty image (the paper uses
   ImageNet; here procedural "dead leaves" images — occluding discs of random colour and
   power-law sizes, a data-free stand-in for natural image statistics — or image folders),
   L_AE = ||T(I') − A(I')||², L_STAE = ||A(I') − S(I')[C:]||² (means). Adam, lr ×0.1 after 95 %.
4. *quantiles*: q_a, q_b of both maps over every cell of the validation images.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from adrt.errors import AdrtError
from adrt.train.options import check_spread
from adrt.train.backbone import load_pretrained, tap_info, taps_for_strides
from adrt.train.efficientad.model import EfficientADConfig, EfficientADScorer, check_config
from adrt.train.trainer import Session, n_steps, split_validation, sub_seed, to_tensor
from adrt.train.pretrain_data import load_extra

MIN_TRAIN = 2
TARGET_STRIDES = (8, 16)


def target_dim(variant: str) -> int:
    info = tap_info(variant)
    return sum(info[t]["channels"] for t in taps_for_strides(variant, TARGET_STRIDES))


@torch.no_grad()
def distill_targets(images: np.ndarray, preprocess, cfg: EfficientADConfig, grid: int, n: int, log) -> torch.Tensor:
    """Standardised pretrained targets N×C×n×n for uint8 NHWC images (see the module docstring)."""
    net = load_pretrained(cfg.backbone)
    taps = taps_for_strides(cfg.backbone, TARGET_STRIDES)
    off = (grid - n) // 2
    out = []
    for i in range(0, len(images), 8):
        x = preprocess(torch.from_numpy(images[i : i + 8]))
        feats = []
        for f in net.features(x, taps):
            f = F.avg_pool2d(f, 3, stride=1, padding=1, count_include_pad=False)
            feats.append(F.interpolate(f, size=(grid, grid), mode="bilinear", align_corners=False))
        f = torch.cat(feats, 1)[:, :, off : off + n, off : off + n]
        b, c, hh, ww = f.shape
        f = F.adaptive_avg_pool1d(f.permute(0, 2, 3, 1).reshape(-1, 1, c), cfg.out_channels)
        out.append(f.reshape(b, hh, ww, -1).permute(0, 3, 1, 2).contiguous())
        log(f"  teacher targets {min(i + 8, len(images))}/{len(images)}", end="\r")
    log("")
    t = torch.cat(out)
    mean = t.mean((0, 2, 3), keepdim=True)
    std = t.std((0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (t - mean) / std


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One of brightness, contrast, saturation × U(0.8, 1.2), on [-1, 1] images (the paper's AE augmentation)."""
    x01 = (x + 1) * 0.5
    kind = int(torch.randint(3, (1,), generator=gen))
    f = float(0.8 + 0.4 * torch.rand(1, generator=gen))
    gray = (0.299 * x01[:, 0] + 0.587 * x01[:, 1] + 0.114 * x01[:, 2]).unsqueeze(1)
    if kind == 0:
        y = x01 * f
    elif kind == 1:
        y = (x01 - gray.mean((2, 3), keepdim=True)) * f + gray.mean((2, 3), keepdim=True)
    else:
        y = (x01 - gray) * f + gray
    return y.clamp(0, 1) * 2 - 1


def hard_loss(target: torch.Tensor, pred: torch.Tensor, q: float) -> torch.Tensor:
    """Mean of the squared differences at or above their q-quantile (hard feature loss)."""
    d = (target - pred) ** 2
    thr = torch.quantile(d.detach().flatten(), q)
    return d[d >= thr].mean()


@torch.no_grad()
def _batched(fn, x: torch.Tensor, batch: int = 16) -> list:
    return [fn(x[i : i + batch]) for i in range(0, len(x), batch)]


def fit_scorer(cfg: EfficientADConfig, images: np.ndarray, preprocess, seed: int = 0, log=print) -> EfficientADScorer:
    """Train teacher, student and autoencoder on uint8 N×H×W×3 normal images; returns the scorer in eval mode."""
    check_config(cfg)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise AdrtError(f"efficientad: expected uint8 images N×H×W×3, got shape {tuple(images.shape)}")
    dim = target_dim(cfg.backbone)
    if cfg.out_channels > dim:
        raise AdrtError(f"efficientad option out_channels={cfg.out_channels}: at most {dim}, the channels of the "
                        f"{cfg.backbone} features the teacher is distilled from")
    n_img, h, w, _ = images.shape
    tr_idx, val_idx = split_validation(n_img, cfg.val_fraction, cfg.min_val, MIN_TRAIN, seed, "efficientad")
    torch.manual_seed(seed)
    scorer = EfficientADScorer(cfg)
    c, n, grid = cfg.out_channels, scorer.n, cfg.image_size // 4
    x_all = to_tensor(images, preprocess, cfg.image_size)
    x_tr, x_val = x_all[tr_idx], x_all[val_idx]
    session = Session("efficientad", cfg, images, seed, {"scorer": scorer}, log)
    n_par = sum(p.numel() for p in scorer.parameters())
    log(f"  efficientad-{cfg.size}: {len(tr_idx)} training + {len(val_idx)} validation images at "
        f"{cfg.image_size}×{cfg.image_size}, maps {n}×{n}, C={c}, width {cfg.width}, {n_par / 1e6:.2f} M parameters")
    t_start = time.perf_counter()

    if not session.is_done("teacher"):
        distill = images[tr_idx]
        extra, what = load_extra(cfg.distill_data, h, w, sub_seed(seed, "distill") % 2**32, len(tr_idx))
        if extra is not None:
            distill = np.concatenate([distill, extra])
        log(f"  teacher distilled on {len(distill)} images ({len(tr_idx)} training images"
            + (f" + {what})" if extra is not None else ")"))
        targets = distill_targets(distill, preprocess, cfg, grid, n, log)
        x_d = to_tensor(distill, preprocess, cfg.image_size)

        def teacher_step(i, g):
            idx = torch.randint(len(x_d), (cfg.teacher_batch,), generator=g)
            loss = F.mse_loss(scorer.teacher(x_d[idx]), targets[idx])
            return loss, {"loss": loss.item()}

        steps = n_steps(cfg.teacher_steps, cfg.teacher_epochs, len(x_d), h, cfg.image_size, cfg.teacher_batch)
        session.run("teacher", steps, scorer.teacher.parameters(), cfg.teacher_lr, cfg.weight_decay,
                    teacher_step, describe=f"{cfg.teacher_batch} images, distilling {cfg.backbone}")
    if not session.is_done("teacher stats"):
        t = torch.cat(_batched(scorer.teacher.eval(), x_tr)).double()
        scorer.t_mean.copy_(t.mean((0, 2, 3), keepdim=True).float())
        scorer.t_std.copy_(t.std((0, 2, 3), keepdim=True).clamp_min(1e-6).float())
        session.mark_done("teacher stats")

    if not session.is_done("student+autoencoder"):
        penalty = None
        if cfg.penalty not in ("", "none"):
            s_ = cfg.image_size
            pen, _ = load_extra(cfg.penalty, s_, s_, sub_seed(seed, "penalty") % 2**32, cfg.penalty_images)
            penalty = to_tensor(pen, preprocess, s_)
        with torch.no_grad():
            t_tr = torch.cat(_batched(scorer.teacher_features, x_tr))
        scorer.teacher.eval()
        for p in scorer.teacher.parameters():
            p.requires_grad_(False)

        def step(i, g):
            k = int(torch.randint(len(x_tr), (1,), generator=g))
            x = x_tr[k : k + 1]
            s = scorer.student(x)
            l_hard = hard_loss(t_tr[k : k + 1], s[:, :c], cfg.q_hard)
            loss = l_hard
            parts = {"hard": l_hard.item()}
            if penalty is not None:
                j = int(torch.randint(len(penalty), (1,), generator=g))
                l_pen = (scorer.student(penalty[j : j + 1])[:, :c] ** 2).mean()
                loss = loss + l_pen
                parts["penalty"] = l_pen.item()
            xa = augment(x, g)
            with torch.no_grad():
                ta = scorer.teacher_features(xa)
            a = scorer.autoencoder(xa)
            sa = scorer.student(xa)[:, c:]
            l_ae = ((ta - a) ** 2).mean()
            l_stae = ((a - sa) ** 2).mean()
            loss = loss + l_ae + l_stae
            parts.update(ae=l_ae.item(), stae=l_stae.item())
            return loss, {"loss": loss.item(), **parts}

        params = list(scorer.student.parameters()) + list(scorer.autoencoder.parameters())
        steps = n_steps(cfg.steps, cfg.epochs, len(x_tr), h, cfg.image_size)
        session.run("student+autoencoder", steps, params, cfg.lr, cfg.weight_decay, step, lr_drop_at=0.95,
                    describe="1 image + 1 augmented copy" + (" + 1 penalty image" if penalty is not None else ""))
        for p in scorer.teacher.parameters():
            p.requires_grad_(True)
    if not session.is_done("quantiles"):
        scorer.eval()
        maps = _batched(lambda xb: torch.stack(scorer.raw_maps(xb)), x_val)
        st = torch.cat([m[0] for m in maps]).flatten()
        ae = torch.cat([m[1] for m in maps]).flatten()
        qs = torch.tensor([cfg.q_a, cfg.q_b])
        for buf, vals, name in ((scorer.q_st, st, "student-teacher"), (scorer.q_ae, ae, "autoencoder")):
            q = torch.quantile(vals.double(), qs.double()).float()
            check_spread("efficientad", f"{name} map", float(q[0]), float(q[1]),
                         f"its q_a = {cfg.q_a:g} and q_b = {cfg.q_b:g} quantiles on {len(x_val)} validation images")
            buf.copy_(q)
        session.mark_done("quantiles")
    log(f"  efficientad: trained in {time.perf_counter() - t_start:.0f} s"
        + (f"; stopped early: {', '.join(session.stopped)}" if session.stopped else "")
        + f"; quantiles ST {scorer.q_st.tolist()}, AE {scorer.q_ae.tolist()}")
    return scorer.eval()
