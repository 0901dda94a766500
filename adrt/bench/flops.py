"""FLOPs and parameters of an ONNX graph, counted from its nodes with shapes from ONNX shape inference.

Counted at batch 1 (every symbolic input dimension is set to 1 before inference). Convention:

* Conv, ConvTranspose, MatMul, Gemm (and their integer/QLinear forms): 2 FLOPs per multiply–accumulate;
  bias additions are not counted.
* Element-wise arithmetic (Add, Mul, Sigmoid, Clip, Sqrt, ...): 1 FLOP per output element.
* Reductions (ReduceSum/Min/Max/Mean, ArgMin/ArgMax): 1 FLOP per input element; Softmax 3 per element.
* Pooling: kernel size per output element (global pooling: 1 per input element).
* Resize: 2 FLOPs per tap per output element (linear: 2^k taps over k resized axes; cubic: 4^k;
  nearest: 0).
* BatchNormalization 2, Instance/Layer/GroupNormalization 4 per element.
* Data movement (Reshape, Transpose, Concat, Gather, Slice, Pad, Cast, Shape, ...): 0.

Parameters are the elements of the graph's initializers and Constant tensors of floating-point or
8-bit type (int32/int64 index and shape constants are not parameters). For a fused adrt graph that
includes the method's fitted state: PatchCore's memory bank, PaDiM's Gaussians.

``onnx`` comes with the ``train`` extra; on a runtime-only install :func:`count` returns ``None``
values and the reason instead of failing.
"""
from __future__ import annotations

import os
from math import prod

MATMUL_CLASS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "ConvInteger", "MatMulInteger", "QLinearConv",
                "QLinearMatMul")
ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Sigmoid", "Tanh", "Relu", "LeakyRelu", "Elu",
    "Selu", "Clip", "Abs", "Neg", "Max", "Min", "Mean", "Sum", "Erf", "Reciprocal", "HardSigmoid", "HardSwish",
    "Softplus", "Softsign", "Sin", "Cos", "Floor", "Ceil", "Round", "Sign", "Mod", "Where", "Equal", "Less",
    "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor", "PRelu", "Gelu", "Mish", "Celu",
    "ThresholdedRelu", "IsNaN", "IsInf", "BitShift", "QuantizeLinear", "DequantizeLinear",
})
REDUCTIONS = frozenset({"ReduceSum", "ReduceMin", "ReduceMax", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2",
                        "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMin", "ArgMax", "TopK"})
SOFTMAX = frozenset({"Softmax", "LogSoftmax", "Hardmax"})
POOLING = frozenset({"AveragePool", "MaxPool", "LpPool"})
GLOBAL_POOLING = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
NORMS = {"BatchNormalization": 2, "InstanceNormalization": 4, "LayerNormalization": 4, "GroupNormalization": 4}

# TensorProto element types that hold weights (FLOAT, UINT8, INT8, FLOAT16, DOUBLE, BFLOAT16, FP8 kinds).
_WEIGHT_TYPES = frozenset({1, 2, 3, 10, 11, 16, 17, 18, 19, 20})

CONVENTION = ("batch 1; 2 FLOPs per multiply-accumulate in Conv/MatMul/Gemm (bias not counted); element-wise ops "
              "1 per output element; reductions 1 per input element; pooling kernel size per output; Resize 2 per "
              "tap; data movement 0")


def count(model_or_path, batch: int = 1) -> dict:
    """FLOPs and parameters of an ONNX model (a path or a ModelProto) at ``batch``.

    Returns ``{"flops", "matmul_flops", "params", "by_op", "unknown_shapes", "batch", "convention"}``;
    ``unknown_shapes`` counts nodes of counted types whose shapes inference could not resolve (the total
    is then a lower bound). Without the ``onnx`` package: ``{"flops": None, "params": None, "reason": ...}``.
    """
    try:
        import onnx
        from onnx import shape_inference
    except ImportError:
        return {"flops": None, "matmul_flops": None, "params": None,
                "reason": "the onnx package is not installed (pip install onnx, or pip install -e '.[train]' in the adrt source folder)"}
    if isinstance(model_or_path, (str, os.PathLike)):
        model = onnx.load(os.fspath(model_or_path), load_external_data=False)
    else:
        model = onnx.ModelProto()
        model.CopyFrom(model_or_path)
    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    for inp in graph.input:
        if inp.name in init_names:
            continue
        for d in inp.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.Clear()
                d.dim_value = batch
    try:
        model = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as e:  # onnx raises its own error types; the counts would be meaningless without shapes
        return {"flops": None, "matmul_flops": None, "params": _params(model.graph),
                "reason": f"ONNX shape inference failed: {e}"}
    g = model.graph
    shapes = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        if vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = dims
    for t in g.initializer:
        shapes[t.name] = list(t.dims)
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    shapes[n.output[0]] = list(a.t.dims)

    by_op, unknown = _tally(g, shapes)
    shapes_from = "onnx shape inference"
    if unknown:
        # Some exporters emit shapes that inference cannot follow (e.g. Pad with computed pads). Run the
        # graph once at batch 1 with ONNX Runtime and read the missing shapes off the real tensors.
        missing = {x for n in g.node if n.op_type in unknown for x in list(n.input) + list(n.output)
                   if x and (shapes.get(x) is None or None in shapes[x])}
        try:
            shapes.update(_shapes_by_running(model, sorted(missing), batch))
            by_op, unknown = _tally(g, shapes)
            shapes_from = "onnx shape inference + one ONNX Runtime run for the shapes it could not resolve"
        except Exception:  # noqa: BLE001 - the fallback is best effort; what stays unknown is reported
            pass
    return {"flops": int(sum(by_op.values())), "matmul_flops": int(sum(by_op.get(k, 0) for k in MATMUL_CLASS)),
            "params": _params(g), "by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
            "unknown_shapes": unknown, "batch": batch, "shapes_from": shapes_from, "convention": CONVENTION}


def _tally(graph, shapes: dict) -> tuple[dict, dict]:
    by_op: dict[str, int] = {}
    unknown: dict[str, int] = {}
    for n in graph.node:
        try:
            f = _node_flops(n, shapes)
        except _Unknown:
            unknown[n.op_type] = unknown.get(n.op_type, 0) + 1
            continue
        if f:
            by_op[n.op_type] = by_op.get(n.op_type, 0) + f
    return by_op, unknown


def _shapes_by_running(model, names: list[str], batch: int) -> dict:
    """Shapes of ``names`` from one ONNX Runtime run of ``model`` on zeros at ``batch``."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    outputs = {o.name for o in m.graph.output}
    inits = {t.name for t in m.graph.initializer}
    for name in names:
        if name not in outputs and name not in inits:
            m.graph.output.append(helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else batch for d in i.shape]
        dtype = helper.tensor_dtype_to_np_dtype(next(x.type.tensor_type.elem_type for x in m.graph.input
                                                     if x.name == i.name))
        feeds[i.name] = np.zeros(shape, dtype)
    wanted = [o.name for o in sess.get_outputs()]
    return {n: list(v.shape) for n, v in zip(wanted, sess.run(wanted, feeds)) if n in set(names)}


class _Unknown(Exception):
    pass


def _shape(shapes: dict, name: str) -> list[int]:
    s = shapes.get(name)
    if s is None or any(d is None or d < 0 for d in s):
        raise _Unknown(name)
    return s


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            if a.type == a.INT:
                return a.i
            if a.type == a.INTS:
                return list(a.ints)
            if a.type == a.STRING:
                return a.s.decode()
            if a.type == a.FLOAT:
                return a.f
    return default


def _node_flops(n, shapes: dict) -> int:
    op = n.op_type
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = _shape(shapes, n.input[3 if op == "QLinearConv" else 1])
        y = _shape(shapes, n.output[0])
        # Each output element: C_in/group × kernel multiply-accumulates; w is C_out × C_in/group × k...
        return 2 * prod(y) * prod(w[1:])
    if op == "ConvTranspose":
        x = _shape(shapes, n.input[0])
        w = _shape(shapes, n.input[1])   # C_in × C_out/group × k...: each input element feeds that many outputs
        return 2 * prod(x) * prod(w[1:])
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        a = _shape(shapes, n.input[0])
        y = _shape(shapes, n.output[0])
        return 2 * prod(y) * a[-1]
    if op == "Gemm":
        a = _shape(shapes, n.input[0])
        y = _shape(shapes, n.output[0])
        k = a[0] if _attr(n, "transA", 0) else a[1]
        return 2 * prod(y) * k
    if op in ELEMENTWISE:
        return prod(_shape(shapes, n.output[0]))
    if op in REDUCTIONS:
        return prod(_shape(shapes, n.input[0]))
    if op in SOFTMAX:
        return 3 * prod(_shape(shapes, n.input[0]))
    if op in POOLING:
        kernel = _attr(n, "kernel_shape", [])
        return prod(_shape(shapes, n.output[0])) * prod(kernel)
    if op in GLOBAL_POOLING:
        return prod(_shape(shapes, n.input[0]))
    if op in NORMS:
        return NORMS[op] * prod(_shape(shapes, n.output[0]))
    if op in ("Resize", "Upsample"):
        mode = _attr(n, "mode", "nearest")
        if mode == "nearest":
            return 0
        x = _shape(shapes, n.input[0])
        y = _shape(shapes, n.output[0])
        k = sum(1 for a, b in zip(x, y) if a != b)
        taps = (4 if mode == "cubic" else 2) ** k
        return 2 * taps * prod(y)
    return 0


def _params(graph) -> int:
    total = sum(prod(t.dims) for t in graph.initializer if t.data_type in _WEIGHT_TYPES)
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type in _WEIGHT_TYPES:
                    total += prod(a.t.dims)
    return int(total)
