"""Build libadrt (the C API of adrt.h) with cffi's embedding mode, and the example program.

    adrt build-capi --out capi/          # libadrt.so, adrt.h, example.c, adrt_example
    cc app.c -I capi -L capi -ladrt -Wl,-rpath,capi -o app

The library is tied to the Python that builds it: it embeds that interpreter (its version,
prefix and virtual environment) and imports the adrt installed there. Needs cffi
(``pip install "adrt[capi]"``), a C compiler and the Python headers (python3-dev on Debian).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from adrt._version import __version__
from adrt.errors import AdrtError

HERE = Path(__file__).resolve().parent
MODULE = "_adrt_capi"  # the Python module name the library carries (importable only inside it)
LIBRARY = "adrt"

# C functions of libadrt.c that the Python side calls.
_C_HELPERS = "void adrt__set_error(const char *message);"

# Runs once, inside the embedded interpreter, when the first call needs Python. A failure to
# import the runtime is turned into functions that report it (ADRT_E_PYTHON with this message).
_INIT_CODE = '''
import sys
from {module} import ffi, lib

try:
    from adrt.runtime.capi import _impl
    _impl.bind(ffi, lib, {version!r})
except BaseException as _e:
    _message = ("libadrt: cannot load the adrt runtime in the embedded Python %s (%s): %s: %s; sys.path = %r"
                % (sys.version.split()[0], sys.executable, type(_e).__name__, _e, sys.path)).encode("utf-8", "replace")

    def _failed(*args):
        lib.adrt__set_error(_message)
        return 0x100 | 8  # ADRT__RAN | ADRT_E_PYTHON

    for _name in {names!r}:
        ffi.def_extern(name=_name)(_failed)
'''


class BuildError(AdrtError):
    """The C library or the example could not be built here (missing cffi, compiler or headers)."""


def _c_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _internal_names(decls: str) -> list[str]:
    return re.findall(r"\b(adrt__py_\w+)\s*\(", decls)


def library_name() -> str:
    return {"darwin": f"lib{LIBRARY}.dylib", "win32": f"{LIBRARY}.dll"}.get(sys.platform, f"lib{LIBRARY}.so")


def compile_command(source: str | os.PathLike, out_dir: str | os.PathLike, exe: str | os.PathLike,
                    cc: str = "cc") -> list[str]:
    """The command line that compiles and links a C program against the library in ``out_dir``."""
    d = str(out_dir)
    return [cc, "-std=c11", "-O2", "-Wall", "-Wextra", str(source), "-I", d, "-L", d, f"-l{LIBRARY}",
            f"-Wl,-rpath,{d}", "-lpthread", "-o", str(exe)]


def build_library(out_dir: str | os.PathLike, verbose: bool = False) -> Path:
    """Compile libadrt into ``out_dir`` and copy adrt.h beside it; returns the library's path."""
    try:
        import cffi
    except ImportError:
        raise BuildError("building the C API needs cffi: pip install -e '.[capi]' (in the adrt source folder)") from None
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") and sys.platform != "win32":
        raise BuildError(f"this Python ({sys.executable}) was built without a shared libpython "
                         f"(Py_ENABLE_SHARED = 0); embedding it needs one (--enable-shared)")
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.is_file():
        raise BuildError(f"Python headers not found ({include}); install the Python development "
                         f"package (python3-dev on Debian/Ubuntu)")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    decls = (HERE / "_internal.h").read_text()
    names = _internal_names(decls)
    ffi = cffi.FFI()
    ffi.embedding_api(decls)
    ffi.cdef(_C_HELPERS)
    prelude = (f"#define ADRT__VERSION {_c_string(__version__)}\n"
               f"#define ADRT__PYTHON {_c_string(sys.executable)}\n")
    libdir = sysconfig.get_config_var("LIBDIR")
    # rpath: find libpython where it was at build time, without LD_LIBRARY_PATH.
    link = [f"-Wl,-rpath,{libdir}"] if libdir and sys.platform != "win32" else []
    ffi.set_source(MODULE, prelude + (HERE / "libadrt.c").read_text(), include_dirs=[str(HERE)],
                   extra_compile_args=["-std=c11"], extra_link_args=link)
    ffi.embedding_init_code(_INIT_CODE.format(module=MODULE, version=__version__, names=names))
    with tempfile.TemporaryDirectory(prefix="adrt-capi-") as tmp:
        try:
            built = ffi.compile(tmpdir=tmp, target=f"lib{LIBRARY}.*", verbose=verbose)
        except Exception as e:  # distutils/setuptools compile errors; the compiler's output was printed
            raise BuildError(f"compiling libadrt failed: {type(e).__name__}: {e}") from None
        lib = out / library_name()
        tmp_lib = lib.with_name(lib.name + ".tmp")
        shutil.copyfile(built, tmp_lib)
        os.replace(tmp_lib, lib)  # atomic: a running program keeps the old file's inode
    shutil.copyfile(HERE / "adrt.h", out / "adrt.h")
    return lib


def build_example(out_dir: str | os.PathLike, cc: str = "cc") -> Path:
    """Copy example.c into ``out_dir`` and compile it against the library there."""
    out = Path(out_dir).resolve()
    src = out / "example.c"
    shutil.copyfile(HERE / "example.c", src)
    exe = out / "adrt_example"
    cmd = compile_command(src, out, exe, cc)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise BuildError(f"C compiler {cc!r} not found; install one (e.g. gcc) or pass --cc") from None
    if p.returncode != 0:
        raise BuildError(f"compiling the example failed ({' '.join(cmd)}):\n{p.stderr.strip()}")
    return exe
