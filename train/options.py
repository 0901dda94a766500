"""Checks for method options (``--set key=value``, Python overrides, stored run configs).

Each method's frozen Config calls its checks in ``__post_init__``, so a value out of range fails
at construction, naming the method and the option, before any data is read; never as a
traceback in the middle of fitting or as a parity failure at export.
"""
from __future__ import annotations

from typing import Sequence

from adrt.contract import check_choice, check_float, check_int
from adrt.errors import AdrtError


def int_opt(method: str, cfg, name: str, lo: int | None = None, hi: int | None = None) -> None:
    check_int(f"{method} option {name}", getattr(cfg, name), lo, hi, err=AdrtError)


def float_opt(method: str, cfg, name: str, lo: float | None = None, hi: float | None = None, *,
              lo_open: bool = False, hi_open: bool = False) -> None:
    check_float(f"{method} option {name}", getattr(cfg, name), lo, hi, lo_open=lo_open, hi_open=hi_open,
                err=AdrtError)


def choice_opt(method: str, cfg, name: str, allowed: Sequence[str]) -> None:
    check_choice(f"{method} option {name}", getattr(cfg, name), allowed, err=AdrtError)


def ints_opt(method: str, cfg, name: str, lo: int = 1) -> None:
    """A non-empty tuple of integers >= lo."""
    v = getattr(cfg, name)
    if not isinstance(v, (tuple, list)) or not v:
        raise AdrtError(f"{method} option {name}={v!r}: expected a non-empty list of integers >= {lo}")
    for i, x in enumerate(v):
        check_int(f"{method} option {name}[{i}]", x, lo, err=AdrtError)


def backbone_channels(method: str, cfg) -> int:
    """Channels of the backbone taps that ``cfg.backbone`` and ``cfg.tap_strides`` select (checked:
    a known variant, strides it has); metadata only, no weights are loaded."""
    from adrt.train.backbone import tap_info, taps_for_strides

    if not isinstance(cfg.backbone, str):
        raise AdrtError(f"{method} option backbone={cfg.backbone!r}: expected a name such as 'lite0'")
    ints_opt(method, cfg, "tap_strides", 1)
    taps = taps_for_strides(cfg.backbone, list(cfg.tap_strides))      # BackboneError names what exists
    info = {t["block"]: t for t in tap_info(cfg.backbone)}
    return sum(info[t]["channels"] for t in taps)


def dims_opt(method: str, cfg, name: str, lo: int, dims: int, zero: str = "") -> None:
    """An integer option that counts feature dimensions: at most the ``dims`` the taps have."""
    v = getattr(cfg, name)
    int_opt(method, cfg, name, lo)
    if v > dims:
        raise AdrtError(f"{method} option {name}={v}: the {cfg.backbone} taps at strides "
                        f"{', '.join(map(str, cfg.tap_strides))} have {dims} dims; expected {lo}{zero} to {dims}")


#: A normalisation (x − lo) / (hi − lo) whose spread hi − lo is below this fraction of the values'
#: magnitude max(|lo|, |hi|) would mostly magnify noise: training stops instead (check_spread).
MIN_RELATIVE_SPREAD = 1e-2


def check_spread(method: str, what: str, lo: float, hi: float, how: str) -> None:
    """Refuse a degenerate normalisation: ``hi − lo`` (e.g. two quantiles, or a std against its
    mean) must exceed MIN_RELATIVE_SPREAD × max(|lo|, |hi|); else the normalised map is noise
    magnified by 1/spread. ``how`` says where lo and hi come from."""
    import math

    spread, scale = hi - lo, max(abs(lo), abs(hi))
    if not (math.isfinite(spread) and spread > MIN_RELATIVE_SPREAD * scale and spread > 0):
        rel = spread / scale if scale > 0 and math.isfinite(spread) else float("nan")
        raise AdrtError(f"{method}: the {what} normalisation degenerates: {how} are {lo:.6g} and {hi:.6g}, a spread "
                        f"of {rel:.2g} of their size (at least {MIN_RELATIVE_SPREAD:g} is needed); dividing by it would "
                        f"magnify noise {1 / max(rel, 1e-12):.3g}× into the map. The map is nearly constant on normal "
                        f"images (training collapsed, or the image size hides the texture): train longer, change the "
                        f"learning rate or the image size")
