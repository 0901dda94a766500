"""Execution backends: one small class each, same shape (run a dict of inputs, close).

Selection is explicit. A backend that is asked for and not really active raises with what is
available: onnxruntime-gpu lists CUDA even on a machine without a GPU and then runs on the CPU
silently, so the providers of the created session are checked, not the installed ones.
"""
from __future__ import annotations

import os

import numpy as np

from adrt.contract import Backend as BackendName
from adrt.contract import InputSpec, check_graph_io
from adrt.errors import BackendError
from adrt.runtime.limits import check_threads


_PROVIDERS = {
    BackendName.ORT_CPU: ["CPUExecutionProvider"],
    BackendName.ORT_CUDA: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    BackendName.ORT_TRT: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def open_backend(bundle, backend: BackendName, precision: str = "fp32", threads: int | None = None):
    """The backend object for ``bundle``'s model of ``precision`` (a TensorRT plan for ``tensorrt``)."""
    if backend is BackendName.TENSORRT:
        from adrt.runtime.tensorrt import open_tensorrt  # tensorrt and pycuda are imported only here

        return open_tensorrt(bundle, precision)
    return OrtBackend(bundle.model_path(precision), backend, threads, spec=bundle.contract.input,
                      names=bundle.contract.inputs)


def backend_names() -> list[str]:
    return [b.value for b in BackendName]


def parse_backend(name: str | BackendName) -> BackendName:
    if isinstance(name, BackendName):
        return name
    try:
        return BackendName(name)
    except (ValueError, TypeError):
        raise BackendError(f"unknown backend {name!r}; available: {', '.join(backend_names())}") from None


class OrtBackend:
    """ONNX Runtime with the providers of ``backend``; the first one must really be active."""

    def __init__(self, onnx_path: str | os.PathLike, backend: BackendName = BackendName.ORT_CPU,
                 threads: int | None = None, spec: InputSpec | None = None, names: tuple | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - onnxruntime is a base dependency
            raise BackendError(f"onnxruntime is not installed ({e}); pip install onnxruntime") from None
        self.backend = backend = parse_backend(backend)
        threads = check_threads(threads)
        if backend not in _PROVIDERS:
            raise BackendError(f"backend {backend.value} is not an ONNX Runtime backend; those are "
                               f"{', '.join(b.value for b in _PROVIDERS)}")
        wanted = _PROVIDERS[backend]
        installed = ort.get_available_providers()
        if wanted[0] not in installed:
            raise BackendError(f"backend {backend.value} needs {wanted[0]}, which this onnxruntime "
                               f"does not have; installed providers: {', '.join(installed)}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(onnx_path), sess_options=opts,
                                                providers=[p for p in wanted if p in installed])
        except Exception as e:  # onnxruntime raises its own types; give the file and the cause
            raise BackendError(f"{onnx_path}: ONNX Runtime could not load the model: {e}") from None
        active = self.session.get_providers()
        if active[0] != wanted[0]:
            raise BackendError(f"backend {backend.value}: {wanted[0]} is installed but not active "
                               f"(active: {', '.join(active)}); no GPU or CUDA libraries? "
                               f"refusing to fall back silently")
        if spec is not None:
            # A graph whose I/O differ from the manifest fails here, not at the first run.
            check_graph_io(_io(self.session.get_inputs()), _io(self.session.get_outputs()), spec, str(onnx_path),
                           names)
        self.threads = threads or opts.intra_op_num_threads
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, feeds)))

    def close(self) -> None:
        self.session = None


# ONNX Runtime's type strings -> numpy's names (the contract's).
_ORT_TYPES = {"tensor(uint8)": "uint8", "tensor(float)": "float32", "tensor(float16)": "float16",
              "tensor(double)": "float64", "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8"}


def _io(args) -> list[tuple[str, str, list | None]]:
    return [(a.name, _ORT_TYPES.get(a.type, a.type), a.shape) for a in args]
