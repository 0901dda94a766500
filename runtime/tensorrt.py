"""Native TensorRT backend: a plan from the bundle, pinned host buffers, device buffers, one stream.

    with rt.load("bundle/", backend="tensorrt", precision="fp16") as det: ...

The plan is chosen from the manifest's ``engines`` by precision, and refused unless it was built
for this GPU (name and compute capability) with this TensorRT version: a plan is a binary for one
GPU and one TensorRT build, and a mismatched one fails at best, and is slow at worst.

Two TensorRT API generations are driven, chosen by the installed major version:

- 8.x, the bindings API: ``get_binding_*``, ``set_binding_shape``, ``execute_async_v2(bindings)``;
- 10.x and 11.x, the tensor-name API: ``get_tensor_*``, ``set_input_shape``,
  ``set_tensor_address``, ``execute_async_v3``.

CUDA memory and streams come from :mod:`adrt.runtime.cuda` (pycuda, or NVIDIA's cuda-python bindings
where pycuda is absent). tensorrt, pycuda and cuda-python are imported only when the backend is opened;
each missing one raises a BackendError naming the pip extra. Every status returned by CUDA or TensorRT
is checked.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from adrt.contract import INPUT_NAME as INPUT
from adrt.contract import OUTPUT_NAMES as OUTPUTS
from adrt.errors import BackendError, BundleError
from adrt.runtime.cuda import PIP_EXTRA, open_cuda



# --- imports and logging ----------------------------------------------------------------------

def import_tensorrt():
    """The tensorrt module, or a BackendError that says how to install it."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendError(f"the tensorrt backend needs NVIDIA's tensorrt Python package, which is not "
                           f"importable here ({e}); {PIP_EXTRA} (on Jetson it comes with JetPack)") from None
    return trt


def trt_major(trt) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        raise BackendError(f"cannot read the TensorRT version {trt.__version__!r}") from None


def make_logger(trt):
    """A trt.ILogger that keeps warnings and errors, to put into exceptions (and prints nothing)."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[str] = []
            sev = trt.ILogger.Severity
            self._keep = {sev.INTERNAL_ERROR: "error", sev.ERROR: "error", sev.WARNING: "warning"}

        def log(self, severity, msg):
            kind = self._keep.get(severity)
            if kind is not None:
                self.messages.append(f"{kind}: {msg}")

        def errors(self) -> str:
            errs = [m for m in self.messages if m.startswith("error")]
            return "; ".join(errs[-5:]) or "TensorRT logged no error"

    return _Logger()


# --- plans in the bundle ----------------------------------------------------------------------

def plan_tag(gpu: str, capability: tuple[int, int], trt_version: str, precision: str) -> str:
    """File stem of a plan: ``nvidia-h200-sm90-trt10.3.0-fp16``."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-") or "gpu"
    return f"{slug}-sm{capability[0]}{capability[1]}-trt{trt_version}-{precision}"


def select_plan(manifest: dict, precision: str, gpu: str, capability: tuple[int, int], trt_version: str) -> dict:
    """The manifest's engine entry for ``precision`` built for this GPU and TensorRT version.

    Raises BundleError when the bundle has none of that precision (naming what it has) or only ones
    built elsewhere (naming where they were built and what this machine is).
    """
    engines = manifest.get("engines") or {}
    same_precision = {k: e for k, e in engines.items() if e.get("precision") == precision}
    if not same_precision:
        have = ", ".join(f"{k} ({e.get('precision')})" for k, e in engines.items()) or "none"
        raise BundleError(f"the bundle has no {precision} TensorRT engine (it has: {have}); build one on this "
                          f"device: adrt build-engine BUNDLE --precision {precision}")
    here = f"{gpu} (compute capability {capability[0]}.{capability[1]}) with TensorRT {trt_version}"
    cc = f"{capability[0]}.{capability[1]}"
    # A GPU plan first; a DLA plan (built with --dla-core) where it is the only one of this precision.
    for e in sorted(same_precision.values(), key=lambda e: e.get("dla_core") is not None):
        if e.get("gpu") == gpu and str(e.get("compute_capability")) == cc and e.get("tensorrt") == trt_version:
            return e
    built = "; ".join(f"{e['file']} was built for {e.get('gpu')} (compute capability {e.get('compute_capability')}) "
                      f"with TensorRT {e.get('tensorrt')}" for e in same_precision.values())
    raise BundleError(f"refusing the {precision} TensorRT engine: {built}; this machine has {here}. "
                      f"Rebuild it here: adrt build-engine BUNDLE --precision {precision}")


# --- the backend ------------------------------------------------------------------------------

class TensorRTBackend:
    """Run a TensorRT plan: ``run({"image": uint8 N×H×W×3})`` → dict of float32 outputs.

    Buffers are allocated once for the largest batch of the plan's optimisation profile (pinned host
    memory and device memory for every I/O tensor); larger batches run in slices of that size.
    """

    def __init__(self, plan: bytes, device: int = 0, cuda=None, trt=None, dla_core: int | None = None):
        self.trt = trt or import_tensorrt()
        self.major = trt_major(self.trt)
        self.dla_core = dla_core
        self.cuda = cuda or open_cuda(device)
        try:
            self._open(plan)
        except BaseException:
            self.cuda.close()
            raise

    def _open(self, plan: bytes) -> None:
        trt = self.trt
        self.logger = make_logger(trt)
        self.runtime = trt.Runtime(self.logger)
        if self.dla_core is not None:           # a DLA plan runs on the core the runtime names
            self.runtime.DLA_core = int(self.dla_core)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise BackendError(f"TensorRT {trt.__version__} could not deserialise the plan ({len(plan)} bytes): "
                               f"{self.logger.errors()}")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendError(f"TensorRT could not create an execution context: {self.logger.errors()}")
        self.io = self._tensors_v8() if self.major < 10 else self._tensors_v10()
        names = [t["name"] for t in self.io]
        if [t["name"] for t in self.io if t["input"]] != [INPUT] or sorted(n for n in names if n != INPUT) != sorted(OUTPUTS):
            raise BackendError(f"the plan's tensors are {names}; expected input {INPUT!r} and outputs {list(OUTPUTS)}")
        image = self.io[names.index(INPUT)]
        if image["dtype"] != np.uint8:
            raise BackendError(f"the plan's input {INPUT!r} is {image['dtype']}, expected uint8")
        lo, _, hi = image["profile"]
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.sample_shape = tuple(int(d) for d in hi[1:])
        self.stream, self.stream_handle = self.cuda.stream()
        # Buffers for the largest batch; outputs are sized by the shapes TensorRT reports for it.
        self._set_batch(self.max_batch)
        for t in self.io:
            shape = (self.max_batch, *self.sample_shape) if t["input"] else self._output_shape(t)
            t["host"] = self.cuda.pinned(shape, t["dtype"])
            t["device"] = self.cuda.device(t["host"].nbytes)
        self._bind_addresses()

    # TensorRT 8.x: bindings
    def _tensors_v8(self) -> list[dict]:
        trt, e = self.trt, self.engine
        out = []
        for i in range(e.num_bindings):
            is_input = bool(e.binding_is_input(i))
            profile = e.get_profile_shape(0, i) if is_input else None
            out.append({"name": e.get_binding_name(i), "index": i, "input": is_input,
                        "dtype": np.dtype(trt.nptype(e.get_binding_dtype(i))), "profile": profile})
        return out

    # TensorRT 10.x / 11.x: named tensors
    def _tensors_v10(self) -> list[dict]:
        trt, e = self.trt, self.engine
        out = []
        for i in range(e.num_io_tensors):
            name = e.get_tensor_name(i)
            is_input = e.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            profile = e.get_tensor_profile_shape(name, 0) if is_input else None
            out.append({"name": name, "index": i, "input": is_input,
                        "dtype": np.dtype(trt.nptype(e.get_tensor_dtype(name))), "profile": profile})
        return out

    def _set_batch(self, n: int) -> None:
        shape = (n, *self.sample_shape)
        if self.major < 10:
            idx = next(t["index"] for t in self.io if t["input"])
            ok = self.context.set_binding_shape(idx, shape)
        else:
            ok = self.context.set_input_shape(INPUT, shape)
        if not ok:
            raise BackendError(f"TensorRT refused input shape {shape}: {self.logger.errors()}")

    def _output_shape(self, t: dict) -> tuple[int, ...]:
        if self.major < 10:
            shape = self.context.get_binding_shape(t["index"])
        else:
            shape = self.context.get_tensor_shape(t["name"])
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise BackendError(f"TensorRT left output {t['name']} with unresolved shape {shape}")
        return shape

    def _bind_addresses(self) -> None:
        if self.major < 10:
            self._bindings = [0] * len(self.io)
            for t in self.io:
                self._bindings[t["index"]] = t["device"]
        else:
            for t in self.io:
                if not self.context.set_tensor_address(t["name"], t["device"]):
                    raise BackendError(f"TensorRT refused the address of tensor {t['name']}")

    def _execute(self) -> None:
        if self.major < 10:
            ok = self.context.execute_async_v2(self._bindings, self.stream_handle)
        else:
            ok = self.context.execute_async_v3(self.stream_handle)
        if not ok:
            raise BackendError(f"TensorRT execution failed: {self.logger.errors()}")

    def _run_slice(self, images: np.ndarray) -> dict[str, np.ndarray]:
        n = len(images)
        self._set_batch(n)
        inp = next(t for t in self.io if t["input"])
        host_in = inp["host"][:n]
        host_in[...] = images
        self.cuda.to_device(inp["device"], host_in, self.stream)
        self._execute()
        views = {}
        for t in self.io:
            if t["input"]:
                continue
            shape = self._output_shape(t)
            view = t["host"].reshape(-1)[: int(np.prod(shape))].reshape(shape)
            self.cuda.to_host(view, t["device"], self.stream)
            views[t["name"]] = view
        self.cuda.synchronize(self.stream)
        return {k: v.copy() for k, v in views.items()}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = feeds[INPUT]
        if tuple(images.shape[1:]) != self.sample_shape or images.dtype != np.uint8:
            raise BackendError(f"the plan takes uint8 N×{'×'.join(map(str, self.sample_shape))}, got "
                               f"{images.dtype} {'×'.join(map(str, images.shape))}")
        if len(images) < self.min_batch:
            raise BackendError(f"the plan's profile needs a batch of at least {self.min_batch}, got {len(images)}")
        parts = [self._run_slice(images[i : i + self.max_batch]) for i in range(0, len(images), self.max_batch)]
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def close(self) -> None:
        if self.cuda is None:
            return
        # Order matters: context, then engine, then runtime, then the memory and the CUDA context.
        self.context = None
        self.engine = None
        self.runtime = None
        self.cuda.close()
        self.cuda = None


def open_tensorrt(bundle, precision: str, device: int = 0, cuda=None, trt=None) -> TensorRTBackend:
    """The TensorRT backend for ``bundle``'s plan of ``precision`` that matches this machine."""
    trt = trt or import_tensorrt()
    cuda = cuda or open_cuda(device)
    try:
        gpu, cc = cuda.device_info()
        entry = select_plan(bundle.manifest, precision, gpu, cc, str(trt.__version__))
        path = Path(bundle.root) / entry["file"]
        plan = path.read_bytes()
        backend = TensorRTBackend(plan, device, cuda=cuda, trt=trt, dla_core=entry.get("dla_core"))
        spec = bundle.contract.input
        want = (spec.height, spec.width, spec.channels)
        if backend.sample_shape != want:
            backend.close()
            raise BundleError(f"{entry['file']}: the plan takes N×{'×'.join(map(str, backend.sample_shape))} "
                              f"images; the manifest says N×{'×'.join(map(str, want))}")
        return backend
    except BaseException:
        cuda.close()
        raise

