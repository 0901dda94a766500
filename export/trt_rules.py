"""TensorRT's ONNX-parser rules as data, per adrt TensorRT target, each with where it comes from.

Targets: ``8.6`` (JetPack 6.0), ``10`` (10.0, the oldest 10.x: what it takes, later 10.x take) and
``latest`` (10.15, the newest support matrix read). The operator matrices (supported operators and
their Supported Types) are in ``trt_ops.json``; this module holds the rest: the opset ranges, the
behaviours of the parser's importers that decide whether a graph parses or computes what it says,
and the DLA layer limits. :mod:`adrt.export.trt_check` applies them and cites :attr:`Rule.sources`
in every violation. Sources were read from the onnx/onnx-tensorrt repository (branches 8.6-GA,
10.0-GA; docs/operators.md of 10.15) and NVIDIA's TensorRT documentation; nothing here is code
from them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

TARGETS = ("8.6", "10", "latest")
REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
              "ReduceProd", "ReduceSum", "ReduceSumSquare")
POOL_OPS = ("MaxPool", "AveragePool", "LpPool")

_OT86 = "onnx/onnx-tensorrt 8.6-GA"
_OT10 = "onnx/onnx-tensorrt 10.0-GA"
_OTL = "onnx/onnx-tensorrt docs/operators.md (TensorRT 10.15)"
_DLA = "TensorRT docs, DLA Supported Layers and Restrictions (docs.nvidia.com/deeplearning/tensorrt/latest/" \
       "inference-library/dla-layer-restrictions.html)"


@dataclass(frozen=True)
class Rule:
    """One rule: what it asks of a graph and, per target, where it comes from."""

    id: str
    summary: str
    sources: dict

    def source(self, target: str) -> str:
        return self.sources.get(target) or self.sources["*"]


def _all(text: str) -> dict:
    return {"*": text}


RULES = {r.id: r for r in (
    Rule("opset", "the default-domain opset is in the target's range; no other operator domain",
         {"8.6": f"{_OT86} docs/operators.md ('supports operators up to Opset 17')",
          "10": f"{_OT10} docs/operators.md ('opset 9 to opset 20')", "latest": f"{_OTL} ('opset 9 to opset 24')"}),
    Rule("op-support", "the operator is in the target's ONNX operator support matrix",
         {"8.6": f"{_OT86} docs/operators.md", "10": f"{_OT10} docs/operators.md", "latest": _OTL}),
    Rule("op-types", "the operator's data type is in the matrix's Supported Types (8.6 casts INT64 down to INT32)",
         {"8.6": f"{_OT86} docs/operators.md (Supported Types; note on INT64)", "10": f"{_OT10} docs/operators.md",
          "latest": _OTL}),
    Rule("uint8-io", "uint8 only as a network input or output: no node produces a uint8 tensor that is not a graph "
         "output, and a uint8 input is consumed by Cast to float32/float16 only",
         {"8.6": f"{_OT86} ModelImporter.cpp ('TensorRT does not support UINT8 types for intermediate tensors!'); "
                 "TensorRT 8.6 Python API, DataType.UINT8 (convert uint8 network inputs to float32/float16 before "
                 "other layers)",
          "*": f"{_OT10} ModelImporter.cpp (legalUINT8) and docs/operators.md ('UINT8 is only supported as network "
               "input or output tensor types'); TensorRT API, DataType.UINT8"}),
    Rule("reduce-axes", "a reduction's axes come as an attribute, or as an initializer input where the importer "
         "reads that input (8.6: ReduceSum and ReduceLogSum only; the others reduce over every axis)",
         {"8.6": f"{_OT86} builtin_op_importers.cpp (ReduceMax/Mean/Min/Prod/L1/L2/LogSumExp/SumSquare importers "
                 "pass no axes input to reduceTensor) and onnx2trt_utils.cpp reduceTensor ('Axis input must be an "
                 "initializer!')",
          "*": f"{_OT10} importerUtils.cpp reduceTensor ('Axis input must be an initializer!'); docs/operators.md "
               "('`axes` must be an initializer')"}),
    Rule("shape-slice", "Shape has no start/end attributes (the 8.6 importer ignores them and returns the whole "
         "shape)", {"*": f"{_OT86} builtin_op_importers.cpp (Shape importer: addShape only)"}),
    Rule("pool-dilations", "pooling dilations are empty or all ones",
         {"8.6": f"{_OT86} onnx2trt_utils.cpp poolingHelper ('This version of TensorRT does not support dilations "
                 "other than 1.')",
          "*": f"{_OT10} docs/operators.md (MaxPool/AveragePool/LpPool: '`dilations` must be empty or all ones')"}),
    Rule("qdq", "QuantizeLinear/DequantizeLinear: int8 zero point that is all zeros (8.6: the zero-point input "
         "must be present), positive scales",
         {"8.6": f"{_OT86} builtin_op_importers.cpp QuantDequantLinearHelper ('requires 3 inputs', 'zero point ... "
                 "must be all zeros', 'Scale coefficients must all be positive')",
          "*": f"{_OT10} docs/operators.md ('`y_zero_point` must be 0', '`x_zero_point` must be zero'); "
               "onnxOpImporters.cpp (UINT8 zero points)"}),
    Rule("resize", "Resize: mode nearest or linear; a supported coordinate transformation and nearest mode; no "
         "antialiasing, aspect-ratio policy 'stretch', no axes attribute (8.6 does not read the opset-18 "
         "attributes); 8.6: linear resize with constant scales only on the 3 innermost axes",
         {"8.6": f"{_OT86} docs/operators.md (Resize) and builtin_op_importers.cpp (Resize importer, "
                 "canUseNDResize)",
          "*": f"{_OT10} docs/operators.md (Resize: modes, 'Supported aspect ratio policy: stretch', "
               "'Antialiasing is not supported')"}),
    Rule("pad", "Pad: mode constant, reflect or edge; no axes input (8.6), or an initializer axes input (10+)",
         {"8.6": f"{_OT86} builtin_op_importers.cpp Pad ('TensorRT does not support dynamic axes for pad!', "
                 "'Unsupported pad mode')",
          "*": f"{_OT10} onnxOpImporters.cpp Pad (axes only as an initializer) and docs/operators.md"}),
    Rule("dla-precision", "DLA runs fp16 or int8 layers only", _all(_DLA + "; TensorRT Developer Guide, Working "
                                                                     "with DLA ('limited to networks running in "
                                                                     "FP16 or INT8 mode')")),
    Rule("dla-shape", "DLA: static shapes (profile min = opt = max), batch ≤ 4096, other dimensions ≤ 8192",
         _all(_DLA + " (General Restrictions)")),
    Rule("dla-layer", "the layer is in DLA's layer support summary, within its limits (else it needs GPU fallback)",
         _all(_DLA + " (Table: DLA Layer Support Summary); TensorRT API, IPoolingLayer ('DLA only supports kMAX "
                     "and kAVERAGE pooling types')")),
    Rule("dla-version", "the TensorRT version has DLA (8.x, 10.0-10.7; NVIDIA: 10.7 was the last 10.x release "
         "with DLA, and 11.0-11.4.0 have none on JetPack)",
         _all("TensorRT 11.4.1 docs, Working with DLA (docs.nvidia.com/deeplearning/tensorrt/11.4.1/inference-library/"
              "work-with-dla.html)")),
    Rule("dla-qdq", "TensorRT 8.x DLA takes no explicit quantization (Q/DQ) graphs",
         {"*": "TensorRT 8.x Developer Guide, Working with DLA ('DLA does not support Explicit Quantization'; "
               "developer.nvidia.com/zh-cn/blog/tensorrt-deep-learning-accelerator-cn)"}),
)}


@dataclass(frozen=True)
class Target:
    """What one TensorRT version's ONNX parser takes."""

    key: str
    tensorrt: str
    opset: tuple
    ops: dict                   # operator -> frozenset of Supported Types
    int64_as_int32: bool        # 8.6 casts INT64 tensors down to INT32
    axes_input_reductions: frozenset    # reductions whose importer reads an axes *input*
    shape_start_end: bool       # the Shape importer honours start/end
    pad_axes_input: bool        # Pad may take an (initializer) axes input
    qdq_zero_point_required: bool
    resize_linear_inner_axes: int       # linear resize with constant scales: only the innermost N axes (0: any)
    dla_explicit_quantization: bool


@lru_cache(maxsize=None)
def _matrices() -> dict:
    return json.loads((Path(__file__).with_name("trt_ops.json")).read_text())


@lru_cache(maxsize=None)
def target(key: str) -> Target:
    """The rules of TensorRT target ``key`` ("8.6", "10" or "latest"); KeyError for another key."""
    if key not in TARGETS:
        raise KeyError(key)
    m = _matrices()[key]
    ops = {op: frozenset(types.split()) for op, types in m["supported"].items()}
    is86 = key == "8.6"
    return Target(key=key, tensorrt=m["tensorrt"], opset=tuple(m["opset"]), ops=ops, int64_as_int32=is86,
                  axes_input_reductions=frozenset({"ReduceSum", "ReduceLogSum"} if is86 else REDUCE_OPS),
                  shape_start_end=not is86, pad_axes_input=not is86, qdq_zero_point_required=is86,
                  resize_linear_inner_axes=3 if is86 else 0, dla_explicit_quantization=not is86)


def matrix_source(key: str) -> str:
    return _matrices()[key]["source"]


# --- Resize (all targets; the 8.6 importer's own checks agree) -------------------------------------
RESIZE_MODES = ("nearest", "linear")
RESIZE_COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")
RESIZE_NEAREST_MODES = ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")
PAD_MODES = ("constant", "reflect", "edge")

# --- DLA (Jetson/DriveOS DLA; the summary table) ----------------------------------------------------
DLA_MAX_BATCH = 4096
DLA_MAX_DIM = 8192
# ONNX operator -> the DLA layer it becomes, for the operators the summary lists. Others run on the
# GPU (with GPU fallback) or fail the build (without).
DLA_LAYERS = {
    "Conv": "Convolution", "ConvTranspose": "Deconvolution",
    "Relu": "Activation", "Sigmoid": "Activation", "Tanh": "Activation", "Clip": "Activation",
    "LeakyRelu": "Activation",
    "Add": "ElementWise", "Sub": "ElementWise", "Mul": "ElementWise", "Max": "ElementWise",
    "Min": "ElementWise", "Div": "ElementWise", "Pow": "ElementWise",
    "Equal": "Comparison", "Greater": "Comparison", "Less": "Comparison",
    "Concat": "Concatenation", "MaxPool": "Pooling", "AveragePool": "Pooling",
    "PRelu": "Parametric ReLU", "LRN": "LRN",
}
DLA_CONV_KERNEL = (1, 32)
DLA_CONV_STRIDE = (1, 8)
DLA_CHANNELS = (1, 8192)
DLA_INT8_ONLY = ("Equal", "Greater", "Less")   # comparisons: INT8 only
