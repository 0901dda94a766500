"""CUDA device memory, pinned host memory and streams for the native TensorRT backend, through one of two
Python bindings: pycuda (on Jetson it builds against JetPack's CUDA) or NVIDIA's cuda-python where pycuda is
absent. Both shims offer the same small interface (``device_info``, ``stream``, ``pinned``, ``device``,
``to_device``, ``to_host``, ``synchronize``, ``close``); :func:`open_cuda` picks one. The bindings are
imported only when a shim is opened, so this module loads without them.
"""
from __future__ import annotations

import ctypes

import numpy as np

from adrt.errors import BackendError

PIP_EXTRA = 'pip install -e ".[tensorrt]" (in the adrt source folder)'


class _PyCuda:
    """CUDA through pycuda.driver, on the device's primary context (the one TensorRT uses)."""

    binding = "pycuda"

    def __init__(self, device: int = 0):
        import pycuda.driver as cuda

        self.cuda = cuda
        cuda.init()
        if not 0 <= device < cuda.Device.count():
            raise BackendError(f"CUDA device {device} does not exist; this machine has {cuda.Device.count()}")
        self.dev = cuda.Device(device)
        self.ctx = self.dev.retain_primary_context()
        self.ctx.push()
        self._device_allocs: list = []

    def device_info(self) -> tuple[str, tuple[int, int]]:
        major, minor = self.dev.compute_capability()
        return str(self.dev.name()), (int(major), int(minor))

    def stream(self):
        s = self.cuda.Stream()
        return s, int(s.handle)

    def pinned(self, shape, dtype) -> np.ndarray:
        return self.cuda.pagelocked_empty(shape, dtype)

    def device(self, nbytes: int) -> int:
        mem = self.cuda.mem_alloc(max(int(nbytes), 1))
        self._device_allocs.append(mem)
        return int(mem)

    def to_device(self, ptr: int, host: np.ndarray, stream) -> None:
        self.cuda.memcpy_htod_async(ptr, host, stream)

    def to_host(self, host: np.ndarray, ptr: int, stream) -> None:
        self.cuda.memcpy_dtoh_async(host, ptr, stream)

    def synchronize(self, stream) -> None:
        stream.synchronize()

    def close(self) -> None:
        for mem in self._device_allocs:
            mem.free()
        self._device_allocs = []
        if self.ctx is not None:
            self.ctx.pop()
            self.ctx.detach()
            self.ctx = None


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python ≥ 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


class _CudaPython:
    """CUDA through the cuda-python runtime bindings; each call returns (status, *results)."""

    binding = "cuda-python"

    def __init__(self, device: int = 0):
        self.rt = _import_cudart()
        count = self._check(self.rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if not 0 <= device < count:
            raise BackendError(f"CUDA device {device} does not exist; this machine has {count}")
        self.device_index = device
        self._check(self.rt.cudaSetDevice(device), "cudaSetDevice")
        self._device_ptrs: list[int] = []
        self._host_ptrs: list[int] = []
        self._streams: list = []

    def _check(self, result, what: str):
        status, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if int(status) != int(self.rt.cudaError_t.cudaSuccess):
            _, text = self.rt.cudaGetErrorString(status)
            text = text.decode() if isinstance(text, bytes) else str(text)
            raise BackendError(f"CUDA call {what} failed: {text} ({int(status)})")
        return rest[0] if len(rest) == 1 else (rest or None)

    def device_info(self) -> tuple[str, tuple[int, int]]:
        prop = self._check(self.rt.cudaGetDeviceProperties(self.device_index), "cudaGetDeviceProperties")
        name = prop.name
        name = name.split(b"\0", 1)[0].decode() if isinstance(name, (bytes, bytearray)) else str(name)
        return name, (int(prop.major), int(prop.minor))

    def stream(self):
        s = self._check(self.rt.cudaStreamCreate(), "cudaStreamCreate")
        self._streams.append(s)
        return s, int(s)

    def pinned(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = max(int(np.prod(shape)) * dtype.itemsize, 1)
        ptr = int(self._check(self.rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        self._host_ptrs.append(ptr)
        # A numpy view of the pinned block (freed in close(), after the views are dropped).
        raw = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr))
        return raw[: int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)

    def device(self, nbytes: int) -> int:
        ptr = int(self._check(self.rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))
        self._device_ptrs.append(ptr)
        return ptr

    def to_device(self, ptr: int, host: np.ndarray, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, stream), "cudaMemcpyAsync(H2D)")

    def to_host(self, host: np.ndarray, ptr: int, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, stream), "cudaMemcpyAsync(D2H)")

    def synchronize(self, stream) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def close(self) -> None:
        for ptr in self._device_ptrs:
            self._check(self.rt.cudaFree(ptr), "cudaFree")
        for ptr in self._host_ptrs:
            self._check(self.rt.cudaFreeHost(ptr), "cudaFreeHost")
        for s in self._streams:
            self._check(self.rt.cudaStreamDestroy(s), "cudaStreamDestroy")
        self._device_ptrs, self._host_ptrs, self._streams = [], [], []


def open_cuda(device: int = 0):
    """pycuda if importable, else cuda-python; a BackendError naming the extra if neither is."""
    try:
        import pycuda.driver  # noqa: F401
    except ImportError as e:
        pycuda_error = e
    else:
        return _PyCuda(device)
    try:
        _import_cudart()
    except ImportError as e:
        raise BackendError(f"the tensorrt backend needs pycuda or cuda-python for device memory and streams; "
                           f"neither is importable ({pycuda_error}; {e}); {PIP_EXTRA}") from None
    return _CudaPython(device)
