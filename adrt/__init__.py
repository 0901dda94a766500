"""adrt: anomaly detection from training to edge deployment.

Parts: ``adrt.train`` (torch, training), ``adrt.export`` (ONNX bundles), ``adrt.runtime``
(numpy + ONNX Runtime, never torch). Importing ``adrt`` itself imports nothing heavy.
"""
from adrt._version import __version__
from adrt.errors import AdrtError, BackendError, BundleError, DataError, InputError, ResultError

__all__ = ["__version__", "AdrtError", "BackendError", "BundleError", "DataError", "InputError", "ResultError"]
