"""The torch-free runtime: numpy + ONNX Runtime. Never imports torch (tested)."""
from adrt.runtime.backends import BackendName, backend_names
from adrt.runtime.bundle import Bundle, open_bundle
from adrt.runtime.session import Result, Session, load

__all__ = ["BackendName", "Bundle", "Result", "Session", "backend_names", "load", "open_bundle"]
