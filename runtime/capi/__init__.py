"""The C API of the adrt runtime: ``adrt.h`` and libadrt, built with ``adrt build-capi``.

libadrt embeds the Python that built it through cffi's embedding mode; its functions are
implemented in :mod:`adrt.runtime.capi._impl` over ``adrt.runtime`` (never torch).
:mod:`adrt.runtime.capi.build` compiles the library and the example program (example.c).
Importing this package imports nothing else (cffi is needed only to build).
"""
from pathlib import Path

HEADER = Path(__file__).resolve().parent / "adrt.h"
EXAMPLE = Path(__file__).resolve().parent / "example.c"

__all__ = ["EXAMPLE", "HEADER"]
