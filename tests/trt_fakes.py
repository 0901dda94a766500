"""Small fakes of the TensorRT, pycuda and cuda-python calls adrt makes, strict about their use.

They let the tests drive adrt.runtime.tensorrt and adrt.export.engine without a GPU, so a typo, a
wrong argument or a wrong call order fails CI. What they check:

- one fake GPU (``FakeGPU``): device memory at made-up addresses, pinned host blocks at real ones,
  streams whose queued work (copies, engine runs) happens only at ``synchronize`` — reading a host
  output before synchronising, or copying it back before the engine ran, gives stale bytes;
- ``fake_pycuda``: ``pycuda.driver`` (init first, a pushed context for allocations, async copies
  only from/to page-locked arrays, every allocation freed, the context popped and detached);
- ``fake_cudart``: ``cuda.bindings.runtime`` (status tuples, pinned host memory for async copies,
  everything freed/destroyed);
- ``fake_tensorrt(generation)``: ``tensorrt`` 8.6 (bindings API only — the real 8.6 also has the
  tensor-name API; it is left out so the tests prove the bindings path is the one taken; explicit
  batch required), 10 (tensor-name API only, strongly typed networks refuse FP16/INT8 flags), 11
  (no weak-typing flags at all, no ``platform_has_fast_*``, no STRONGLY_TYPED flag: always strong);
  DLA: ``DeviceType``, ``config.default_device_type``/``DLA_core``, ``GPU_FALLBACK``,
  ``builder.num_DLA_cores`` (``FakeGPU(dla_cores=2)``), ``runtime.DLA_core``; a DLA build needs an
  existing core and a static profile.

The fake engine really computes: its plan carries the ONNX graph, and "execution" runs it with ONNX
Runtime CPU on the bytes found in device memory, writing the outputs back there.
"""
from __future__ import annotations

import ctypes
import enum
import itertools
import json
import types

import numpy as np


# --- the GPU ----------------------------------------------------------------------------------

class FakeGPU:
    def __init__(self, name: str = "NVIDIA Fake H200", capability=(9, 0), fast_fp16=True, fast_int8=True,
                 dla_cores: int = 0):
        self.name, self.capability = name, capability
        self.fast_fp16, self.fast_int8 = fast_fp16, fast_int8
        self.dla_cores = dla_cores                    # Jetson Orin NX/AGX: 2
        self.memory: dict[int, bytearray] = {}        # device address -> bytes
        self._next = itertools.count(0x7F00_0000_0000, 1 << 24)
        self.pinned: dict[int, object] = {}           # host address -> keep-alive buffer
        self.streams: dict[int, list] = {}            # handle -> queued callables
        self._handles = itertools.count(0x5000)
        self.log: list[str] = []                      # call order, for the tests

    # device memory
    def malloc(self, nbytes: int) -> int:
        ptr = next(self._next)
        self.memory[ptr] = bytearray(nbytes)
        return ptr

    def free(self, ptr: int) -> None:
        if ptr not in self.memory:
            raise RuntimeError(f"fake cuda: free of unknown device pointer {ptr:#x}")
        del self.memory[ptr]

    def _block(self, ptr: int, nbytes: int) -> tuple[bytearray, int]:
        for base, buf in self.memory.items():
            if base <= ptr and ptr + nbytes <= base + len(buf):
                return buf, ptr - base
        raise RuntimeError(f"fake cuda: {nbytes} bytes at {ptr:#x} are not inside one device allocation")

    def write(self, ptr: int, data: bytes) -> None:
        buf, off = self._block(ptr, len(data))
        buf[off : off + len(data)] = data

    def read(self, ptr: int, nbytes: int) -> bytes:
        buf, off = self._block(ptr, nbytes)
        return bytes(buf[off : off + nbytes])

    # pinned host memory
    def host_alloc(self, nbytes: int) -> int:
        buf = ctypes.create_string_buffer(nbytes)
        addr = ctypes.addressof(buf)
        self.pinned[addr] = buf
        return addr

    def is_pinned(self, addr: int, nbytes: int) -> bool:
        return any(base <= addr and addr + nbytes <= base + len(buf) for base, buf in self.pinned.items())

    # streams
    def new_stream(self) -> int:
        h = next(self._handles)
        self.streams[h] = []
        return h

    def enqueue(self, handle: int, what: str, fn) -> None:
        if handle not in self.streams:
            raise RuntimeError(f"fake cuda: unknown stream handle {handle!r}")
        self.log.append(what)
        self.streams[handle].append(fn)

    def synchronize(self, handle: int) -> None:
        self.log.append("sync")
        queue = self.streams[handle]
        while queue:
            queue.pop(0)()


# --- pycuda.driver ----------------------------------------------------------------------------

def fake_pycuda(gpu: FakeGPU) -> types.ModuleType:
    mod = types.ModuleType("pycuda.driver")
    state = {"init": False, "contexts": [], "live": set()}

    def init():
        state["init"] = True

    class Context:
        def __init__(self):
            self.pushed = False
            self.detached = False

        def push(self):
            self.pushed = True
            state["contexts"].append(self)

        def pop(self):
            if not state["contexts"] or state["contexts"][-1] is not self:
                raise RuntimeError("fake pycuda: pop of a context that is not current")
            state["contexts"].pop()
            self.pushed = False

        def detach(self):
            if self.pushed:
                raise RuntimeError("fake pycuda: detach of a context that is still pushed")
            self.detached = True

    class Device:
        def __init__(self, i):
            if not state["init"]:
                raise RuntimeError("fake pycuda: cuda.init() was not called")
            if i != 0:
                raise RuntimeError(f"fake pycuda: invalid device ordinal {i}")

        @staticmethod
        def count():
            if not state["init"]:
                raise RuntimeError("fake pycuda: cuda.init() was not called")
            return 1

        def name(self):
            return gpu.name

        def compute_capability(self):
            return gpu.capability

        def retain_primary_context(self):
            return Context()

    def _need_context():
        if not state["contexts"]:
            raise RuntimeError("fake pycuda: no current context")

    class DeviceAllocation:
        def __init__(self, nbytes):
            self.ptr = gpu.malloc(nbytes)
            state["live"].add(self.ptr)

        def __int__(self):
            return self.ptr

        def free(self):
            gpu.free(self.ptr)
            state["live"].discard(self.ptr)

    def mem_alloc(nbytes):
        _need_context()
        if not isinstance(nbytes, int) or nbytes <= 0:
            raise ValueError(f"fake pycuda: mem_alloc({nbytes!r})")
        return DeviceAllocation(nbytes)

    def pagelocked_empty(shape, dtype):
        _need_context()
        dtype = np.dtype(dtype)
        n = int(np.prod(shape)) * dtype.itemsize
        addr = gpu.host_alloc(max(n, 1))
        raw = np.ctypeslib.as_array((ctypes.c_uint8 * max(n, 1)).from_address(addr))
        return raw[:n].view(dtype).reshape(shape)

    class Stream:
        def __init__(self):
            _need_context()
            self.handle = gpu.new_stream()

        def synchronize(self):
            gpu.synchronize(self.handle)

    def _check_host(arr, what):
        if not isinstance(arr, np.ndarray) or not arr.flags.c_contiguous:
            raise TypeError(f"fake pycuda: {what} needs a contiguous numpy array")
        if not gpu.is_pinned(arr.ctypes.data, arr.nbytes):
            raise ValueError(f"fake pycuda: {what} from pageable memory (use pagelocked_empty)")

    def memcpy_htod_async(dest, src, stream=None):
        _check_host(src, "memcpy_htod_async")
        if not isinstance(stream, Stream):
            raise TypeError("fake pycuda: memcpy_htod_async needs a Stream")
        ptr, addr, n = int(dest), src.ctypes.data, src.nbytes
        gpu.enqueue(stream.handle, "htod", lambda: gpu.write(ptr, ctypes.string_at(addr, n)))

    def memcpy_dtoh_async(dest, src, stream=None):
        _check_host(dest, "memcpy_dtoh_async")
        if not isinstance(stream, Stream):
            raise TypeError("fake pycuda: memcpy_dtoh_async needs a Stream")
        ptr, addr, n = int(src), dest.ctypes.data, dest.nbytes
        gpu.enqueue(stream.handle, "dtoh", lambda: ctypes.memmove(addr, gpu.read(ptr, n), n))

    mod.init, mod.Device, mod.mem_alloc, mod.pagelocked_empty = init, Device, mem_alloc, pagelocked_empty
    mod.Stream, mod.memcpy_htod_async, mod.memcpy_dtoh_async = Stream, memcpy_htod_async, memcpy_dtoh_async
    mod._state = state
    return mod


# --- cuda.bindings.runtime --------------------------------------------------------------------

def fake_cudart(gpu: FakeGPU) -> types.ModuleType:
    mod = types.ModuleType("cuda.bindings.runtime")

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorInvalidValue = 1
        cudaErrorInvalidDevice = 101

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToHost = 0
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStream_t:
        def __init__(self, handle):
            self._h = handle

        def __int__(self):
            return self._h

    state = {"device": None, "host": set(), "dev": set(), "streams": set()}
    ok = cudaError_t.cudaSuccess

    def cudaGetDeviceCount():
        return ok, 1

    def cudaSetDevice(i):
        if i != 0:
            return (cudaError_t.cudaErrorInvalidDevice,)
        state["device"] = i
        return (ok,)

    def cudaGetDeviceProperties(i):
        if i != 0:
            return cudaError_t.cudaErrorInvalidDevice, None
        prop = types.SimpleNamespace(name=gpu.name.encode() + b"\0" * (256 - len(gpu.name)),
                                     major=gpu.capability[0], minor=gpu.capability[1])
        return ok, prop

    def cudaGetErrorString(err):
        return ok, cudaError_t(err).name.encode()

    def _need_device():
        if state["device"] is None:
            raise RuntimeError("fake cudart: cudaSetDevice was not called")

    def cudaMalloc(n):
        _need_device()
        if n <= 0:
            return cudaError_t.cudaErrorInvalidValue, 0
        ptr = gpu.malloc(n)
        state["dev"].add(ptr)
        return ok, ptr

    def cudaFree(ptr):
        gpu.free(ptr)
        state["dev"].discard(ptr)
        return (ok,)

    def cudaMallocHost(n):
        _need_device()
        addr = gpu.host_alloc(n)
        state["host"].add(addr)
        return ok, addr

    def cudaFreeHost(addr):
        if addr not in state["host"]:
            return (cudaError_t.cudaErrorInvalidValue,)
        state["host"].discard(addr)
        return (ok,)

    def cudaStreamCreate():
        _need_device()
        s = cudaStream_t(gpu.new_stream())
        state["streams"].add(int(s))
        return ok, s

    def cudaStreamDestroy(s):
        state["streams"].discard(int(s))
        return (ok,)

    def cudaStreamSynchronize(s):
        if not isinstance(s, cudaStream_t):
            return (cudaError_t.cudaErrorInvalidValue,)
        gpu.synchronize(int(s))
        return (ok,)

    def cudaMemcpyAsync(dst, src, count, kind, stream):
        if not isinstance(stream, cudaStream_t) or not isinstance(kind, cudaMemcpyKind):
            return (cudaError_t.cudaErrorInvalidValue,)
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            if not gpu.is_pinned(src, count):
                return (cudaError_t.cudaErrorInvalidValue,)
            gpu.enqueue(int(stream), "htod", lambda: gpu.write(dst, ctypes.string_at(src, count)))
        elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
            if not gpu.is_pinned(dst, count):
                return (cudaError_t.cudaErrorInvalidValue,)
            gpu.enqueue(int(stream), "dtoh", lambda: ctypes.memmove(dst, gpu.read(src, count), count))
        else:
            return (cudaError_t.cudaErrorInvalidValue,)
        return (ok,)

    for f in (cudaGetDeviceCount, cudaSetDevice, cudaGetDeviceProperties, cudaGetErrorString, cudaMalloc, cudaFree,
              cudaMallocHost, cudaFreeHost, cudaStreamCreate, cudaStreamDestroy, cudaStreamSynchronize, cudaMemcpyAsync):
        setattr(mod, f.__name__, f)
    mod.cudaError_t, mod.cudaMemcpyKind = cudaError_t, cudaMemcpyKind
    mod._state = state
    return mod


# --- tensorrt ---------------------------------------------------------------------------------

class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    INT64 = 6


_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
       DataType.BOOL: np.bool_, DataType.UINT8: np.uint8, DataType.INT64: np.int64}
_ONNX_TO_DT = {1: DataType.FLOAT, 10: DataType.HALF, 2: DataType.UINT8, 3: DataType.INT8, 6: DataType.INT32,
               7: DataType.INT64, 9: DataType.BOOL}
PLAN_MAGIC = b"FAKETRT1"


def fake_tensorrt(generation: int, gpu: FakeGPU, version: str | None = None) -> types.ModuleType:
    """A ``tensorrt`` module of API generation 8, 10 or 11 on ``gpu``."""
    import onnx

    if generation not in (8, 10, 11):
        raise ValueError(generation)
    version = version or {8: "8.6.1", 10: "10.3.0", 11: "11.0.0"}[generation]
    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    mod.DataType = DataType
    mod.nptype = lambda dt: _NP[dt]
    mod.calls = []            # every builder/runtime call, in order

    class Severity(enum.Enum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class ILogger:
        def __init__(self):
            self._initialised = True

        def log(self, severity, msg):  # overridden
            raise NotImplementedError

    def _log(logger, severity, msg):
        if not getattr(logger, "_initialised", False):
            raise RuntimeError("fake tensorrt: ILogger subclass did not call ILogger.__init__")
        logger.log(severity, msg)

    ILogger.Severity = Severity
    mod.ILogger = ILogger
    flags = {"EXPLICIT_BATCH": 0} if generation < 11 else {}
    if generation == 10:
        flags["STRONGLY_TYPED"] = 1
    mod.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", flags) if flags else \
        types.SimpleNamespace()
    bflags = {"TF32": 6, "OBEY_PRECISION_CONSTRAINTS": 9, "GPU_FALLBACK": 3}
    mod.DeviceType = enum.Enum("DeviceType", {"GPU": 0, "DLA": 1})
    if generation < 11:
        bflags.update({"FP16": 0, "INT8": 1})
    mod.BuilderFlag = enum.IntEnum("BuilderFlag", bflags)
    mod.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    if generation >= 10:
        mod.TensorIOMode = enum.Enum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})

    class Tensor:
        def __init__(self, name, dtype, shape):
            self.name, self.dtype, self.shape = name, dtype, shape

    class Layer:
        def __init__(self, name, outputs):
            self.name, self._outputs, self.precision, self.output_types = name, outputs, None, {}

        @property
        def num_outputs(self):
            return len(self._outputs)

        def get_output(self, j):
            return self._outputs[j]

        def set_output_type(self, j, dt):
            self.output_types[j] = dt

    class Network:
        def __init__(self, flags_value):
            self.flags = flags_value
            self.model = None
            self.layers: list = []

        @property
        def num_layers(self):
            return len(self.layers)

        def get_layer(self, i):
            return self.layers[i]

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.logger, self.errors = network, logger, []

        def parse(self, data):
            mod.calls.append("parse")
            if generation < 10 and not self.network.flags & (1 << 0):
                self.errors.append("Network must have explicit batch dimensions (EXPLICIT_BATCH)")
                return False
            if not isinstance(data, (bytes, bytearray)):
                self.errors.append(f"parse() takes bytes, got {type(data).__name__}")
                return False
            try:
                model = onnx.load_from_string(bytes(data))
                typed = onnx.shape_inference.infer_shapes(model)
            except Exception as e:
                self.errors.append(f"not an ONNX model: {e}")
                return False
            self.network.model = bytes(data)
            vtypes = {v.name: v.type.tensor_type.elem_type for v in
                      list(typed.graph.value_info) + list(typed.graph.output) + list(typed.graph.input)}
            for n in typed.graph.node:
                outs = [Tensor(o, _ONNX_TO_DT.get(vtypes.get(o), DataType.FLOAT), None) for o in n.output]
                self.network.layers.append(Layer(n.name, outs))
            self.network.inputs = [Tensor(i.name, _ONNX_TO_DT[i.type.tensor_type.elem_type],
                                          [d.dim_value or -1 for d in i.type.tensor_type.shape.dim])
                                   for i in typed.graph.input]
            self.network.input = self.network.inputs[0]
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    mod.OnnxParser = OnnxParser

    class TimingCache:
        def __init__(self, tag):
            self.tag = tag

        def serialize(self):
            return json.dumps({"timing_cache": self.tag}).encode()

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            mod.calls.append("set_shape")
            if not all(len(x) == len(lo) for x in (opt, hi)) or not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
                raise ValueError(f"fake tensorrt: bad profile {lo} {opt} {hi}")
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Config:
        def __init__(self):
            self.flags = {"TF32"}
            self.pool = {}
            self.profiles = []
            self.cache = None
            self._device = mod.DeviceType.GPU
            self._dla_core = -1

        # DLA: the device layers default to and the core, as properties like TensorRT's bindings.
        @property
        def default_device_type(self):
            return self._device

        @default_device_type.setter
        def default_device_type(self, value):
            if not isinstance(value, mod.DeviceType):
                raise TypeError(f"fake tensorrt: default_device_type takes a DeviceType, got {value!r}")
            mod.calls.append(f"default_device_type:{value.name}")
            self._device = value

        @property
        def DLA_core(self):
            return self._dla_core

        @DLA_core.setter
        def DLA_core(self, value):
            if not isinstance(value, int):
                raise TypeError(f"fake tensorrt: DLA_core takes an int, got {value!r}")
            mod.calls.append(f"DLA_core:{value}")
            self._dla_core = value

        def set_memory_pool_limit(self, pool, size):
            mod.calls.append("set_memory_pool_limit")
            if not isinstance(size, int) or size <= 0:
                raise ValueError(f"fake tensorrt: pool size {size!r}")
            self.pool[pool] = size

        def set_flag(self, f):
            mod.calls.append(f"set_flag:{f.name}")
            self.flags.add(f.name)

        def clear_flag(self, f):
            mod.calls.append(f"clear_flag:{f.name}")
            self.flags.discard(f.name)

        def add_optimization_profile(self, p):
            self.profiles.append(p)
            return len(self.profiles) - 1

        def create_timing_cache(self, blob):
            if not isinstance(blob, (bytes, bytearray)):
                raise TypeError("fake tensorrt: create_timing_cache takes bytes")
            if not blob:
                return TimingCache(f"{gpu.name}/{version}")
            return TimingCache(json.loads(bytes(blob))["timing_cache"])

        def set_timing_cache(self, cache, ignore_mismatch):
            mod.calls.append("set_timing_cache")
            if cache.tag != f"{gpu.name}/{version}" and not ignore_mismatch:
                return False
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            mod.calls.append("Builder")
            self.logger = logger

        def create_network(self, flags_value=0):
            mod.calls.append(f"create_network:{flags_value}")
            return Network(flags_value)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            mod.calls.append("build_serialized_network")
            strongly = generation >= 11 or (generation == 10 and network.flags & (1 << 1))
            if network.model is None:
                _log(self.logger, Severity.ERROR, "network has no layers (parse it first)")
                return None
            if strongly and config.flags & {"FP16", "INT8"}:
                _log(self.logger, Severity.ERROR, "precision flags are not allowed on strongly typed networks")
                return None
            if 0 not in config.pool:
                _log(self.logger, Severity.ERROR, "fake: the workspace limit was not set")
                return None
            if len(config.profiles) != 1 or any(t.name not in config.profiles[0].shapes for t in network.inputs):
                _log(self.logger, Severity.ERROR, "dynamic input needs an optimisation profile")
                return None
            lo, opt, hi = config.profiles[0].shapes[network.input.name]
            if list(lo[1:]) != network.input.shape[1:]:
                _log(self.logger, Severity.ERROR, f"profile {lo} does not match input {network.input.shape}")
                return None
            dla = config.default_device_type == mod.DeviceType.DLA
            if dla and not 0 <= config.DLA_core < gpu.dla_cores:
                _log(self.logger, Severity.ERROR, f"DLA core {config.DLA_core} requested, {gpu.dla_cores} available")
                return None
            if dla and not lo == opt == hi:
                _log(self.logger, Severity.ERROR, "DLA does not support dynamic shapes (min, opt, max must be equal)")
                return None
            header = {"version": version, "gpu": gpu.name, "profile": [lo, opt, hi], "flags": sorted(config.flags),
                      "pinned": sum(1 for layer in network.layers if layer.precision is not None),
                      "dla_core": config.DLA_core if dla else None}
            h = json.dumps(header).encode()
            return bytearray(PLAN_MAGIC + len(h).to_bytes(4, "little") + h + network.model)

    Builder.num_DLA_cores = property(lambda self: gpu.dla_cores)
    if generation < 11:
        Builder.platform_has_fast_fp16 = property(lambda self: gpu.fast_fp16)
        Builder.platform_has_fast_int8 = property(lambda self: gpu.fast_int8)
    mod.Builder = Builder

    # -- runtime --
    class Engine:
        def __init__(self, header, model_bytes):
            import onnxruntime as ort

            self.header = header
            self.session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
            self.inputs = [i.name for i in self.session.get_inputs()]
            self.outputs = [o.name for o in self.session.get_outputs()]
            self.names = self.inputs + self.outputs
            self.profile = [tuple(x) for x in header["profile"]]
            self.sample = self.profile[0][1:]

        def dtype(self, name):
            if name in self.inputs:
                return DataType.UINT8
            return DataType.FLOAT

        def shape_for(self, name, n):
            if name in self.inputs:
                return (n, *self.sample)
            if name in ("anomaly_map", "raw_map"):
                return (n, self.sample[0], self.sample[1])
            return (n,)

        def create_execution_context(self):
            return Context(self)

    class Context:
        def __init__(self, engine):
            self.engine = engine
            self.batch = None
            self.addresses = {}

        def _set(self, shape):
            lo, _, hi = self.engine.profile
            shape = tuple(int(d) for d in shape)
            if len(shape) != len(lo) or not all(a <= b <= c for a, b, c in zip(lo, shape, hi)):
                return False
            self.batch = shape[0]
            return True

        def _enqueue(self, handle, addr):
            e = self.engine
            if self.batch is None:
                raise RuntimeError("fake tensorrt: input shape not set before execution")
            missing = [n for n in e.names if not addr.get(n)]
            if missing:
                raise RuntimeError(f"fake tensorrt: no device address for {missing}")
            n = self.batch
            for name in e.names:   # the buffers must hold this batch: check now, like TensorRT would fault
                size = int(np.prod(e.shape_for(name, n))) * np.dtype(_NP[e.dtype(name)]).itemsize
                gpu._block(addr[name], size)

            def run():
                feeds = {}
                for name in e.inputs:
                    shape = e.shape_for(name, n)
                    feeds[name] = np.frombuffer(gpu.read(addr[name], int(np.prod(shape))), np.uint8).reshape(shape)
                for oname, y in zip(e.outputs, e.session.run(None, feeds)):
                    gpu.write(addr[oname], np.ascontiguousarray(y, np.float32).tobytes())

            gpu.enqueue(handle, "execute", run)
            return True

    if generation < 10:
        def num_bindings(self):
            return len(self.names)

        Engine.num_bindings = property(num_bindings)
        Engine.get_binding_name = lambda self, i: self.names[i]
        Engine.binding_is_input = lambda self, i: self.names[i] in self.inputs
        Engine.get_binding_dtype = lambda self, i: self.dtype(self.names[i])
        Engine.get_binding_shape = lambda self, i: (-1, *self.shape_for(self.names[i], 1)[1:])

        def get_profile_shape(self, profile, i):
            if profile != 0 or self.names[i] not in self.inputs:
                raise RuntimeError(f"fake tensorrt: get_profile_shape({profile}, {i}) of a non-input")
            return [list(s) for s in self.profile]

        Engine.get_profile_shape = get_profile_shape

        def set_binding_shape(self, i, shape):
            if self.engine.names[i] not in self.engine.inputs:
                return False
            return self._set(shape)

        def get_binding_shape(self, i):
            if self.batch is None:
                return (-1, *self.engine.shape_for(self.engine.names[i], 1)[1:])
            return self.engine.shape_for(self.engine.names[i], self.batch)

        def execute_async_v2(self, bindings, stream_handle):
            if not isinstance(bindings, list) or len(bindings) != len(self.engine.names):
                raise TypeError(f"fake tensorrt: bindings must be a list of {len(self.engine.names)} pointers")
            if not isinstance(stream_handle, int):
                raise TypeError("fake tensorrt: stream handle must be an int")
            return self._enqueue(stream_handle, dict(zip(self.engine.names, bindings)))

        Context.set_binding_shape = set_binding_shape
        Context.get_binding_shape = get_binding_shape
        Context.execute_async_v2 = execute_async_v2
    else:
        Engine.num_io_tensors = property(lambda self: len(self.names))

        def _name(self, name):
            if name not in self.names:
                raise RuntimeError(f"fake tensorrt: no tensor {name!r}")
            return name

        Engine.get_tensor_name = lambda self, i: self.names[i]
        Engine.get_tensor_mode = lambda self, name: (mod.TensorIOMode.INPUT if _name(self, name) in self.inputs
                                                     else mod.TensorIOMode.OUTPUT)
        Engine.get_tensor_dtype = lambda self, name: self.dtype(_name(self, name))
        Engine.get_tensor_shape = lambda self, name: (-1, *self.shape_for(_name(self, name), 1)[1:])

        def get_tensor_profile_shape(self, name, profile):
            if profile != 0 or _name(self, name) not in self.inputs:
                raise RuntimeError(f"fake tensorrt: get_tensor_profile_shape({name!r}, {profile}) of a non-input")
            return [list(s) for s in self.profile]

        Engine.get_tensor_profile_shape = get_tensor_profile_shape

        def set_input_shape(self, name, shape):
            if _name(self.engine, name) not in self.engine.inputs:
                return False
            return self._set(shape)

        def get_tensor_shape(self, name):
            if self.batch is None:
                return (-1, *self.engine.shape_for(_name(self.engine, name), 1)[1:])
            return self.engine.shape_for(_name(self.engine, name), self.batch)

        def set_tensor_address(self, name, ptr):
            if not isinstance(ptr, int):
                raise TypeError("fake tensorrt: address must be an int")
            self.addresses[_name(self.engine, name)] = ptr
            return True

        def execute_async_v3(self, stream_handle):
            if not isinstance(stream_handle, int):
                raise TypeError("fake tensorrt: stream handle must be an int")
            return self._enqueue(stream_handle, self.addresses)

        Context.set_input_shape = set_input_shape
        Context.get_tensor_shape = get_tensor_shape
        Context.set_tensor_address = set_tensor_address
        Context.execute_async_v3 = execute_async_v3

    class Runtime:
        def __init__(self, logger):
            mod.calls.append("Runtime")
            self.logger = logger
            self._dla_core = -1

        @property
        def DLA_core(self):
            return self._dla_core

        @DLA_core.setter
        def DLA_core(self, value):
            if not isinstance(value, int) or not 0 <= value < gpu.dla_cores:
                raise ValueError(f"fake tensorrt: runtime DLA_core {value!r}; the device has {gpu.dla_cores}")
            mod.calls.append(f"runtime.DLA_core:{value}")
            self._dla_core = value

        def deserialize_cuda_engine(self, plan):
            mod.calls.append("deserialize_cuda_engine")
            data = bytes(plan)
            try:
                if not data.startswith(PLAN_MAGIC):
                    raise ValueError("magic")
                n = int.from_bytes(data[8:12], "little")
                header = json.loads(data[12 : 12 + n])
                model = data[12 + n :]
                onnx.load_from_string(model)
            except Exception:
                _log(self.logger, Severity.ERROR, "1: [runtime.cpp::deserializeCudaEngine] the plan is corrupt")
                return None
            if header["version"] != version:
                _log(self.logger, Severity.ERROR, f"The engine plan file is not compatible with this version of "
                                                  f"TensorRT, expecting library version {version} got {header['version']}")
                return None
            return Engine(header, model)

    mod.Runtime = Runtime
    return mod


def install(monkeypatch, generation: int | None = 10, binding: str = "pycuda", gpu: FakeGPU | None = None,
            version: str | None = None):
    """Put the fakes into sys.modules. ``binding``: "pycuda", "cuda-python" or None (neither);
    ``generation`` None: no tensorrt. Returns (gpu, tensorrt module or None, cuda module or None)."""
    import sys

    gpu = gpu or FakeGPU()
    trt = fake_tensorrt(generation, gpu, version) if generation else None
    monkeypatch.setitem(sys.modules, "tensorrt", trt)   # None makes `import tensorrt` raise ImportError
    cuda_mod = None
    if binding == "pycuda":
        cuda_mod = fake_pycuda(gpu)
        pkg = types.ModuleType("pycuda")
        pkg.driver = cuda_mod
        monkeypatch.setitem(sys.modules, "pycuda", pkg)
        monkeypatch.setitem(sys.modules, "pycuda.driver", cuda_mod)
    else:
        monkeypatch.setitem(sys.modules, "pycuda", None)
        monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    if binding == "cuda-python":
        cuda_mod = fake_cudart(gpu)
        pkg, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
        pkg.bindings, bindings.runtime = bindings, cuda_mod
        monkeypatch.setitem(sys.modules, "cuda", pkg)
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cuda_mod)
    else:
        for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
            monkeypatch.setitem(sys.modules, name, None)
    return gpu, trt, cuda_mod
