"""Value checks shared by the bundle contract and the method options: each raises ``err`` naming
the field, the value and what was expected. Standard library only (and adrt.errors)."""
from __future__ import annotations

import math
import re
from pathlib import PurePosixPath
from typing import Any

from adrt.errors import BundleError, InputError

def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def check_int(name: str, v: Any, lo: int | None = None, hi: int | None = None, err=InputError) -> int:
    """An int (not bool; numpy integers accepted) within [lo, hi]."""
    if isinstance(v, bool) or not hasattr(v, "__index__") or isinstance(v, float):
        raise err(f"{name}={_show(v)}: expected an integer{_range(lo, hi)}")
    v = int(v.__index__())
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise err(f"{name}={v}: expected an integer{_range(lo, hi)}")
    return v


def check_float(name: str, v: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                hi_open: bool = False, err=InputError) -> float:
    """A finite real number (not bool) within the range; NaN and ±inf are refused."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) and not _is_numpy_real(v):
        raise err(f"{name}={_show(v)}: expected a finite number{_range(lo, hi, lo_open, hi_open)}")
    f = float(v)
    bad = not math.isfinite(f)
    if lo is not None:
        bad = bad or (f <= lo if lo_open else f < lo)
    if hi is not None:
        bad = bad or (f >= hi if hi_open else f > hi)
    if bad:
        raise err(f"{name}={_show(v)}: expected a finite number{_range(lo, hi, lo_open, hi_open)}")
    return f


def check_choice(name: str, v: Any, allowed, err=InputError) -> Any:
    if not isinstance(v, str) or v not in allowed:
        raise err(f"{name}={_show(v)}: expected one of {', '.join(map(str, allowed))}")
    return v


def check_str(name: str, v: Any, err=InputError, empty: bool = False) -> str:
    if not isinstance(v, str) or (not empty and not v):
        raise err(f"{name}={_show(v)}: expected a {'' if empty else 'non-empty '}string")
    return v


def check_dict(name: str, v: Any, err=InputError) -> dict:
    if not isinstance(v, dict):
        raise err(f"{name}: expected a JSON object, got {type(v).__name__} {_show(v)}")
    return v


def _is_numpy_real(v: Any) -> bool:
    t = type(v)
    return t.__module__ == "numpy" and hasattr(v, "dtype") and v.dtype.kind in "iuf" and getattr(v, "ndim", 1) == 0


def _range(lo, hi, lo_open=False, hi_open=False) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi}"
    return ""


def check_relative_path(name: str, v: Any, err=BundleError) -> str:
    """A bundle member name: a non-empty relative POSIX path with no '..', '.', empty or
    backslash-separated parts (it must name one file inside the bundle, the same on every system)."""
    if not isinstance(v, str) or not v:
        raise err(f"{name}={_show(v)}: expected a relative file name inside the bundle")
    parts = v.split("/")
    why = None
    if "\0" in v:
        why = "contains a NUL character"
    elif v.startswith("/") or re.match(r"^[A-Za-z]:", v):
        why = "is absolute"
    elif "\\" in v:
        why = "contains a backslash"
    elif any(p in ("", ".", "..") for p in parts):
        why = "has an empty, '.' or '..' part"
    if why:
        raise err(f"{name}={_show(v)} {why}: expected a relative file name inside the bundle")
    return str(PurePosixPath(v))
