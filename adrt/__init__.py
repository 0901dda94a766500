"""adrt: anomaly detection from training to edge deployment.

Parts: ``adrt.train`` (torch, training), ``adrt.export`` (ONNX bundles), ``adrt.runtime``
(numpy + ONNX Runtime, never torch). Importing ``adrt`` itself imports nothing heavy.
"""
import os as _os

# adrt's parts live in the top-level folders train/, export/ and runtime/ (pyproject's package-dir);
# an installed copy has them inside the package. A source checkout imported in place (for instance
# `python -c "import adrt.runtime"` run in the repository root, where this folder shadows the
# installed package) finds them beside this folder instead.
_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "runtime")) and _os.path.isfile(_os.path.join(_root, "runtime", "__init__.py")):
    __path__.append(_root)

from adrt._version import __version__  # noqa: E402
from adrt.errors import AdrtError, BackendError, BundleError, DataError, InputError, ResultError  # noqa: E402

__all__ = ["__version__", "AdrtError", "BackendError", "BundleError", "DataError", "InputError", "ResultError"]
