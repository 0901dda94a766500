"""DLA (Jetson Orin NX/AGX, Xavier) requests for ``adrt build-engine``: what is asked, and what DLA
cannot do, refused before anything is built (the per-layer limits are adrt.export.trt_check's)."""
from __future__ import annotations

from dataclasses import dataclass

from adrt.errors import BackendError, InputError

# TensorRT versions with DLA on Jetson: 8.x, 10.0-10.7 and 11.4.1+ (JetPack 7.2.2+) (NVIDIA, TensorRT
# 11.4.1 "Working with DLA": "TensorRT 10.7 was the last 10.x release that supported DLA"; none in
# 11.0-11.4.0 on JetPack).
DLA_LAST_10X = (10, 7)


@dataclass(frozen=True)
class DlaOptions:
    """Build for DLA core ``core``; ``gpu_fallback``: layers DLA cannot run go to the GPU."""

    core: int
    gpu_fallback: bool = False

    def __post_init__(self):
        if self.core < 0:
            raise InputError(f"DLA core must be 0 or more, got {self.core}")


def has_dla(version: str) -> bool:
    """Whether TensorRT ``version`` ("8.6.1", "10.3.0", "11.4.1") builds for DLA on Jetson."""
    v = tuple([int(x) if x.isdigit() else 0 for x in str(version).split(".")] + [0, 0, 0])
    return not (v[0] == 9 or (v[0] == 10 and v[:2] > DLA_LAST_10X) or (v[0] == 11 and v[:3] < (11, 4, 1)))


def no_dla_reason(version: str) -> str:
    """Why TensorRT ``version`` cannot build a DLA engine, and which versions can (one wording for
    ``build-engine``'s refusal and ``adrt check``'s dla-version rule)."""
    return (f"TensorRT {version} has no DLA on Jetson (NVIDIA: 10.7 was the last 10.x release with DLA; "
            f"11.0-11.4.0 have none on JetPack); build with TensorRT 8.6 or 10.0-10.7 (or 11.4.1+ on JetPack 7.2.2+)")


def check_dla_request(dla: DlaOptions, precision: str, profile, version: str) -> None:
    """Refuse, with the reason, what DLA cannot do: fp32, a dynamic batch, a TensorRT without DLA."""
    if precision == "fp32":
        raise InputError("DLA runs fp16 or int8 layers only; build --precision fp16 or --precision int8 for DLA")
    if not profile.min == profile.opt == profile.max:
        raise InputError(f"DLA needs a static batch (min = opt = max), got {profile.min}/{profile.opt}/{profile.max}; "
                         f"e.g. --min-batch {profile.opt} --opt-batch {profile.opt} --max-batch {profile.opt}")
    if not has_dla(version):
        raise BackendError(no_dla_reason(version))
