"""Resource bounds of the runtime: threads, decoded pixels, zip extraction.

Every bound is checked before the resource is used (thread pools before they are created, an
image's pixel count from its header before it is decoded, a zip's members before they are
extracted), and a value outside it is an InputError/DataError/BundleError naming it.
"""
from __future__ import annotations

import os

from adrt.contract import check_int
from adrt.errors import InputError

#: Intra-op threads per logical CPU at most: more only adds contention (and ONNX Runtime creates
#: its whole pool at load, ~90 threads/s: `threads=10000` took minutes).
THREADS_PER_CPU = 4

#: Decoded pixels per image at most, by default. A decoded image costs ~12 bytes per pixel at peak
#: in Pillow + numpy (13370×13370 = 179 MP took 2.17 GB); 64 MP is ~0.8 GB, a fraction of a 4 GB
#: Jetson that also holds the model, and still above the largest industrial area-scan sensors
#: (~65 MP at 9344×7000 is refused: raise the limit for those). Override per call (``max_pixels=``)
#: or for the process with the environment variable below.
DEFAULT_MAX_PIXELS = 64_000_000
MAX_PIXELS_ENV = "ADRT_MAX_PIXELS"

#: Zip bundles: total uncompressed bytes, members, and compression ratio of any member larger
#: than ZIP_RATIO_MIN_BYTES. Bundles hold a few ONNX graphs and plans (dense floats compress
#: ~1.1:1); a zip bomb reaches 1000:1.
MAX_ZIP_BYTES = 4 << 30
MAX_ZIP_MEMBERS = 1000
MAX_ZIP_RATIO = 100
ZIP_RATIO_MIN_BYTES = 1 << 20


def max_threads() -> int:
    return (os.cpu_count() or 1) * THREADS_PER_CPU


def check_threads(threads, what: str = "threads") -> int | None:
    """None (the backend's default) or an integer in 1..cpu_count×4."""
    if threads is None:
        return None
    return check_int(what, threads, 1, max_threads(), err=InputError)


def max_pixels(value=None) -> int:
    """The pixel limit: ``value`` if given, else $ADRT_MAX_PIXELS, else DEFAULT_MAX_PIXELS."""
    if value is not None:
        return check_int("max_pixels", value, 1, err=InputError)
    env = os.environ.get(MAX_PIXELS_ENV)
    if env is None or env.strip() == "":
        return DEFAULT_MAX_PIXELS
    try:
        parsed = int(env.strip().replace("_", ""))
    except ValueError:
        raise InputError(f"${MAX_PIXELS_ENV}={env!r}: expected a positive integer (pixels per image)") from None
    return check_int(f"${MAX_PIXELS_ENV}", parsed, 1, err=InputError)
