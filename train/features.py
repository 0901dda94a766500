"""Multi-tap feature maps from the pretrained backbone, resampled onto one grid."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adrt.train.backbone import EfficientNetLite, load_pretrained, tap_info, taps_for_strides


BORDERS = ("zero", "reflect_local", "reflect")


class TapFeatures(nn.Module):
    """Concatenated backbone taps on a grid of stride ``grid_stride`` → N×C×(H/g)×(W/g).

    ``local``: average each tap over a ``local``×``local`` neighbourhood first (PatchCore's
    locally aware patch features). Finer taps are average-pooled down to the grid, coarser ones
    bilinearly upsampled.

    ``border``: what the features at the image border see.
    ``zero``: the backbone's own zero padding, and a border neighbourhood averages only the cells
    inside the image (fewer of them). Both make border features unlike any inside: on a stochastic
    texture their nearest-neighbour distance to a memory bank is the largest of the image
    (benchmarks/results/patchcore_border.md). ``reflect_local``: the neighbourhood is completed by
    reflecting the tap at its edge. ``reflect``: the image is reflect-padded by ``pad`` pixels (the
    largest tap stride × 2) before the backbone and the taps are cropped back after the local
    averaging, so every grid cell's receptive field and neighbourhood hold image content.
    """

    def __init__(self, variant: str, strides: Sequence[int], grid_stride: int, local: int = 1,
                 pretrained: bool = True, border: str = "zero"):
        super().__init__()
        self.backbone = load_pretrained(variant) if pretrained else EfficientNetLite(variant).eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.taps = taps_for_strides(variant, list(strides))
        info = {t["block"]: t for t in tap_info(variant)}
        self.tap_strides = [info[t]["stride"] for t in self.taps]
        self.channels = sum(info[t]["channels"] for t in self.taps)
        self.grid_stride = grid_stride
        self.local = local
        if border not in BORDERS:
            raise ValueError(f"border={border!r}: expected one of {', '.join(BORDERS)}")
        self.border = border
        self.pad = 2 * max(self.tap_strides + [grid_stride]) if border == "reflect" else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // self.grid_stride, x.shape[-1] // self.grid_stride
        # Reflection needs pad < the side: small inputs get the largest multiple of the coarsest
        # stride that fits (static at export, the input size being fixed).
        step = max(self.tap_strides + [self.grid_stride])
        pad = self.pad
        while pad and pad >= min(x.shape[-2], x.shape[-1]):
            pad -= step
        if pad:
            # Reflect-pad (ONNX Pad mode reflect: TensorRT takes it) so the backbone's zero padding
            # lies `pad` pixels outside the image instead of at its edge.
            x = F.pad(x, (pad,) * 4, mode="reflect")
        out = []
        for f, s in zip(self.backbone.features(x, self.taps), self.tap_strides):
            if self.local > 1:
                r = self.local // 2
                if self.border == "reflect_local":
                    f = F.avg_pool2d(F.pad(f, (r,) * 4, mode="reflect"), self.local, stride=1)
                else:
                    f = F.avg_pool2d(f, self.local, stride=1, padding=r, count_include_pad=False)
            if pad:
                c = pad // s
                f = f[..., c : f.shape[-2] - c, c : f.shape[-1] - c]
            if s < self.grid_stride:
                f = F.adaptive_avg_pool2d(f, (h, w))
            elif f.shape[-2:] != (h, w):
                f = F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
            out.append(f)
        return torch.cat(out, dim=1)


@torch.inference_mode()
def embed_images(features: nn.Module, preprocess, images, batch_size: int = 8, progress=None,
                 sink=None) -> torch.Tensor | None:
    """Feature maps N×C×h×w for uint8 N×H×W×C images (numpy), computed in batches. With ``sink``
    each batch's maps go to ``sink(batch)`` instead and nothing is kept (returns None)."""
    outs = []
    for i in range(0, len(images), batch_size):
        x = preprocess(torch.from_numpy(images[i : i + batch_size]))
        f = features(x)
        if sink is None:
            outs.append(f)
        else:
            sink(f)
        if progress is not None:
            progress(min(i + batch_size, len(images)), len(images))
    return torch.cat(outs) if sink is None else None


@torch.inference_mode()
def sample_patches(features: nn.Module, preprocess, images, keep: int, seed: int = 0, transform=None,
                   batch_size: int = 8, progress=None) -> tuple[torch.Tensor, int]:
    """A uniform random sample of at most ``keep`` patch feature rows (0: all) of every image's map,
    computed batch by batch so that only the sample is held (streamed: peak memory ∝ ``keep``, not
    the number of images). Each row gets a random key; the ``keep`` smallest keys seen so far are
    kept. ``transform`` maps the N×C×h×w feature batch first (e.g. a channel subset).
    Returns (rows M×C, number of patches seen)."""
    g = torch.Generator().manual_seed(seed)
    rows = keys = None
    seen = 0
    for i in range(0, len(images), batch_size):
        f = features(preprocess(torch.from_numpy(images[i : i + batch_size])))
        if transform is not None:
            f = transform(f)
        flat = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
        seen += flat.shape[0]
        k = torch.rand(flat.shape[0], generator=g)
        rows = flat if rows is None else torch.cat([rows, flat])
        keys = k if keys is None else torch.cat([keys, k])
        if keep and rows.shape[0] > keep:
            idx = keys.topk(keep, largest=False).indices.sort().values
            rows, keys = rows[idx].clone(), keys[idx]
        if progress is not None:
            progress(min(i + batch_size, len(images)), len(images))
    return rows, seen
