"""Triton model configurations (config.pbtxt) for adrt bundles, without torch and without Triton.

A config is built as a plain structure (``build_config``) from the model's tensors and the serving
options, written as protobuf text (``to_pbtxt``), and checked against Triton's model configuration
schema, the ``ModelConfig`` protobuf shipped in ``tritonclient`` (``check_schema``), when that is
installed: a serving host may have only the runtime.

Tensors come from the ONNX model itself (``model_io``), so any number of uint8 NHWC inputs
(``image``, and ``reference`` for a method that has one) and any outputs are served as they are.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

from adrt.errors import BundleError, InputError, ServingError

# ONNX Runtime's element type names -> Triton's.
_ONNX_TO_TRITON = {
    "tensor(uint8)": "TYPE_UINT8", "tensor(int8)": "TYPE_INT8", "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32", "tensor(int64)": "TYPE_INT64", "tensor(float16)": "TYPE_FP16",
    "tensor(float)": "TYPE_FP32", "tensor(double)": "TYPE_FP64", "tensor(bool)": "TYPE_BOOL",
}
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class Form(str, enum.Enum):
    """How a bundle is served: Triton's ONNX Runtime backend, a TensorRT plan, or adrt.runtime in
    Triton's Python backend."""

    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt_plan"
    PYTHON = "python"


FORMS = [f.value for f in Form]
KINDS = ("auto", "cpu", "gpu")
PYTHON_BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "tensorrt")


@dataclass(frozen=True)
class Tensor:
    """One model input or output as Triton sees it: ``dims`` without the batch dimension;
    ``reshape`` is the model's own shape when it differs (a batch-only tensor is ``[1]`` to
    clients and ``[]`` to the model)."""

    name: str
    data_type: str
    dims: tuple
    reshape: tuple | None = None


@dataclass(frozen=True)
class ModelIO:
    inputs: tuple
    outputs: tuple


@dataclass(frozen=True)
class ServeOptions:
    """Serving settings shared by every model of one ``adrt triton`` call."""

    max_batch: int = 8
    dynamic_batching: bool = True
    preferred_batch: tuple = ()
    max_queue_delay_us: int = 1000
    instances: int = 1
    kind: str = "auto"
    threads: int | None = None
    precision: str = "fp32"
    keep_versions: int = 1
    # onnxruntime form: ONNX Runtime's TensorRT execution provider on GPU instances.
    ort_tensorrt: bool = False
    ort_tensorrt_precision: str = "fp16"
    ort_tensorrt_cache: str = "/tmp/adrt-trt-cache"
    # python form: the adrt.runtime backend that model.py opens.
    python_backend: str = "ort-cpu"
    # tensorrt_plan form: the engine tag without its precision (nvidia-h200-sm90-trt10.3.0).
    target: str | None = None

    def check(self, form: Form) -> None:
        """Raise InputError naming the option for settings Triton or adrt would refuse later."""
        if self.max_batch < 1:
            raise InputError(f"--max-batch {self.max_batch}: expected >= 1 (Triton batches requests up to this size)")
        for b in self.preferred_batch:
            if not 1 <= b <= self.max_batch:
                raise InputError(f"--preferred-batch {b}: expected 1..{self.max_batch} (--max-batch)")
        if self.preferred_batch and not self.dynamic_batching:
            raise InputError("--preferred-batch needs dynamic batching; drop --no-dynamic-batching")
        if self.max_queue_delay_us < 0:
            raise InputError(f"--max-queue-delay-us {self.max_queue_delay_us}: expected >= 0")
        if self.instances < 1:
            raise InputError(f"--instances {self.instances}: expected >= 1")
        if self.kind not in KINDS:
            raise InputError(f"--kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads {self.threads}: expected >= 1")
        if self.precision not in ("fp32", "fp16", "int8"):
            raise InputError(f"--precision {self.precision!r}: expected fp32, fp16 or int8")
        if self.keep_versions < 1:
            raise InputError(f"--keep-versions {self.keep_versions}: expected >= 1")
        if self.ort_tensorrt and form is not Form.ONNXRUNTIME:
            raise InputError(f"--ort-tensorrt is an option of the onnxruntime form, not {form.value}")
        if self.ort_tensorrt_precision not in ("fp32", "fp16"):
            raise InputError(f"--ort-tensorrt-precision {self.ort_tensorrt_precision!r}: expected fp32 or fp16")
        if self.python_backend not in PYTHON_BACKENDS:
            raise InputError(f"--python-backend {self.python_backend!r}: expected one of {', '.join(PYTHON_BACKENDS)}")
        if form is Form.TENSORRT and self.kind == "cpu":
            raise InputError("--kind cpu: a TensorRT plan runs on a GPU only (use --form onnxruntime or python)")

    def instance_kind(self, form: Form) -> str:
        if self.kind == "cpu":
            return "KIND_CPU"
        if self.kind == "gpu" or form is Form.TENSORRT:
            return "KIND_GPU"
        if form is Form.PYTHON:
            # adrt.runtime picks its device itself; a GPU instance only matters for GPU backends.
            return "KIND_CPU" if self.python_backend == "ort-cpu" else "KIND_GPU"
        return "KIND_AUTO"


def check_model_name(name: str) -> str:
    if not _NAME.match(name):
        raise InputError(f"model name {name!r}: expected letters, digits, '_', '.', '-' (a folder name Triton "
                         f"serves under /v2/models/NAME), not starting with '.' or '-'")
    return name


# --- tensors from the ONNX model --------------------------------------------------------------

def model_io(onnx_path: str | Path, manifest: dict) -> ModelIO:
    """The tensors of the ONNX model at ``onnx_path``, checked against the bundle's input spec.

    Every input must be uint8 N×H×W×C with a dynamic batch; ``image`` must match the manifest's
    H×W×C. Outputs keep their static shapes; a batch-only output (``score``) becomes ``[1]`` for
    clients with ``reshape: []`` for the model, as Triton requires non-empty dims with batching.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # Only the graph's signature is read: no optimisation pass, one thread.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types
        raise BundleError(f"{onnx_path}: ONNX Runtime could not read the model: {e}") from None
    spec = manifest["input"]
    hwc = (int(spec["height"]), int(spec["width"]), int(spec["channels"]))
    inputs = []
    for t in sess.get_inputs():
        dims = _static_dims(onnx_path, t, "input")
        if t.type != "tensor(uint8)" or len(dims) != 3:
            raise BundleError(f"{onnx_path}: input {t.name!r} is {t.type} {_shape(t.shape)}; adrt triton serves "
                              f"uint8 N×H×W×C inputs (camera frames) only")
        if t.name == "image" and dims != hwc:
            raise BundleError(f"{onnx_path}: input 'image' is N×{'×'.join(map(str, dims))} but the manifest says "
                              f"{'×'.join(map(str, hwc))}: the bundle is inconsistent")
        inputs.append(Tensor(t.name, "TYPE_UINT8", dims))
    if not any(t.name == "image" for t in inputs):
        raise BundleError(f"{onnx_path}: no input named 'image' (inputs: {', '.join(t.name for t in inputs)})")
    outputs = []
    for t in sess.get_outputs():
        if t.type not in _ONNX_TO_TRITON:
            raise BundleError(f"{onnx_path}: output {t.name!r} has type {t.type}, which Triton does not serve")
        dims = _static_dims(onnx_path, t, "output")
        reshape = None
        if not dims:
            dims, reshape = (1,), ()
        outputs.append(Tensor(t.name, _ONNX_TO_TRITON[t.type], dims, reshape))
    return ModelIO(tuple(inputs), tuple(outputs))


def _shape(shape) -> str:
    return "×".join(str(d) for d in shape)


def _static_dims(path, t, what: str) -> tuple:
    shape = list(t.shape)
    if not shape or isinstance(shape[0], int) and shape[0] > 0:
        raise BundleError(f"{path}: {what} {t.name!r} has shape {_shape(shape) or 'scalar'}; Triton's batching "
                          f"needs a dynamic batch as its first dimension")
    rest = shape[1:]
    if not all(isinstance(d, int) and d > 0 for d in rest):
        raise BundleError(f"{path}: {what} {t.name!r} has shape {_shape(shape)}; only the batch dimension may be "
                          f"dynamic")
    return tuple(rest)


# --- the config -------------------------------------------------------------------------------

class Bare(str):
    """An enum value, written without quotes."""


def _param(key: str, value) -> dict:
    return {"key": key, "value": {"string_value": str(value)}}


def build_config(name: str, form: Form, io: ModelIO, opts: ServeOptions, model_file: str) -> dict:
    """The model configuration as a structure ``to_pbtxt`` writes (field names as in Triton's
    model_config.proto). ``model_file`` is the file in each version folder Triton loads."""
    cfg: dict = {"name": name}
    if form is Form.PYTHON:
        cfg["backend"] = "python"
    elif form is Form.ONNXRUNTIME:
        cfg["platform"] = "onnxruntime_onnx"
    else:
        cfg["platform"] = "tensorrt_plan"
    cfg["max_batch_size"] = opts.max_batch
    if opts.keep_versions != 1:
        cfg["version_policy"] = {"latest": {"num_versions": opts.keep_versions}}
    cfg["input"] = [_tensor(t, "input") for t in io.inputs]
    cfg["output"] = [_tensor(t, "output") for t in io.outputs]
    if opts.dynamic_batching:
        db: dict = {}
        if opts.preferred_batch:
            db["preferred_batch_size"] = list(opts.preferred_batch)
        db["max_queue_delay_microseconds"] = opts.max_queue_delay_us
        cfg["dynamic_batching"] = db
    cfg["instance_group"] = [{"count": opts.instances, "kind": Bare(opts.instance_kind(form))}]
    if form is not Form.PYTHON:
        cfg["default_model_filename"] = model_file
    params = []
    if form is Form.ONNXRUNTIME:
        if opts.threads:
            params.append(_param("intra_op_thread_count", opts.threads))
            params.append(_param("inter_op_thread_count", 1))
        if opts.ort_tensorrt:
            trt = [{"key": "precision_mode", "value": opts.ort_tensorrt_precision.upper()},
                   {"key": "trt_engine_cache_enable", "value": "1"},
                   {"key": "trt_engine_cache_path", "value": f"{opts.ort_tensorrt_cache.rstrip('/')}/{name}"}]
            cfg["optimization"] = {"execution_accelerators": {
                "gpu_execution_accelerator": [{"name": "tensorrt", "parameters": trt}]}}
    elif form is Form.PYTHON:
        params.append(_param("adrt_backend", opts.python_backend))
        params.append(_param("adrt_precision", opts.precision))
        if opts.threads:
            params.append(_param("adrt_threads", opts.threads))
    if params:
        cfg["parameters"] = params
    return cfg


def _tensor(t: Tensor, kind: str) -> dict:
    d: dict = {"name": t.name, "data_type": Bare(t.data_type), "dims": list(t.dims)}
    if t.reshape is not None:
        d["reshape"] = {"shape": list(t.reshape)}
    return d


def to_pbtxt(cfg: dict) -> str:
    """Protobuf text format of a ``build_config`` structure, one field per line."""
    return "".join(_fields(cfg, 0))


def _scalar(v) -> str:
    if isinstance(v, Bare):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def _fields(d: dict, depth: int):
    pad = "  " * depth
    for k, v in d.items():
        if isinstance(v, dict):
            yield f"{pad}{k} {{\n"
            yield from _fields(v, depth + 1)
            yield f"{pad}}}\n"
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            yield f"{pad}{k} [\n"
            for i, x in enumerate(v):
                yield f"{pad}  {{\n"
                yield from _fields(x, depth + 2)
                yield f"{pad}  }}{',' if i < len(v) - 1 else ''}\n"
            yield f"{pad}]\n"
        elif isinstance(v, list):
            yield f"{pad}{k}: [{', '.join(_scalar(x) for x in v)}]\n"
        else:
            yield f"{pad}{k}: {_scalar(v)}\n"


# --- schema check -----------------------------------------------------------------------------

def schema_version() -> str | None:
    """tritonclient's version when its ModelConfig protobuf is importable, else None."""
    try:
        from tritonclient.grpc import model_config_pb2  # noqa: F401
    except ImportError:
        return None
    try:
        from importlib.metadata import version

        return f"tritonclient {version('tritonclient')}"
    except Exception:  # metadata missing in an odd install: the schema is there all the same
        return "tritonclient"


def check_schema(text: str, where: str) -> dict:
    """Parse ``text`` as Triton's ModelConfig (tritonclient's protobuf) and return it as a dict.

    Raises ServingError naming ``where`` and the protobuf parser's complaint; ImportError when
    tritonclient is not installed (the caller decides whether that is an error).
    """
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    msg = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as e:
        raise ServingError(f"{where}: not a valid Triton model configuration ({schema_version()} schema): {e}") from None
    d = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    _check_semantics(d, where)
    return d


def _check_semantics(d: dict, where: str) -> None:
    """Rules Triton enforces at load time that the protobuf schema alone does not."""
    if not d.get("platform") and not d.get("backend"):
        raise ServingError(f"{where}: neither platform nor backend is set")
    mbs = int(d.get("max_batch_size", 0))
    for t in d.get("input", []) + d.get("output", []):
        if not t.get("dims"):
            raise ServingError(f"{where}: tensor {t.get('name')!r} has no dims (with max_batch_size > 0 a batch-only "
                               f"tensor is dims [1] with reshape {{ shape: [] }})")
        if any(int(x) == 0 or int(x) < -1 for x in t["dims"]):
            raise ServingError(f"{where}: tensor {t.get('name')!r} has dims {t['dims']}; expected positive or -1")
    for b in d.get("dynamic_batching", {}).get("preferred_batch_size", []):
        if not 1 <= int(b) <= mbs:
            raise ServingError(f"{where}: preferred_batch_size {b} outside 1..max_batch_size {mbs}")
    for g in d.get("instance_group", []):
        if int(g.get("count", 1)) < 1:
            raise ServingError(f"{where}: instance_group count {g.get('count')} < 1")
