"""`adrt check`: will TensorRT's ONNX parser take this graph, and compute what it says?

:func:`check_model` applies the rules of :mod:`adrt.export.trt_rules` (per TensorRT target: the
operator matrix and opset range, uint8 only at the graph's I/O, the form of reduction axes, Shape's
start/end, pooling dilations, Q/DQ zero points, Resize and Pad modes; DLA limits when DLA is
asked for) and returns one :class:`Violation` per offending node, naming node, operator, rule and
the rule's source. It reads graphs with the ``onnx`` package only (type inference for the dtypes
of intermediate tensors): no torch, no TensorRT, so it runs where ``adrt build-engine`` runs.
:func:`check_bundle` checks every model of a bundle that a target would build from
(:func:`models_for`: the opset-17 ``*.trt86`` variants for 8.6 where the bundle has them).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from adrt.errors import AdrtError, BundleError, InputError
from adrt.export import trt_rules as R
from adrt.export.dla import has_dla, no_dla_reason

PIP_EXTRA = "pip install 'adrt[tensorrt]'"
# ONNX TensorProto element types -> the matrices' type names (DOUBLE is cast down to FLOAT by every version).
_TYPE_NAMES = {1: "FP32", 2: "UINT8", 3: "INT8", 5: "INT16", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16",
               11: "FP32", 16: "BF16", 17: "FP8", 18: "FP8", 19: "FP8", 20: "FP8", 21: "UINT4", 22: "INT4",
               23: "FP4"}
# Which tensor's type the Supported Types column is about, where it is not the first input.
_TYPED_INPUT = {"Where": 1}
_TYPED_OUTPUT = ("ConstantOfShape", "Cast", "CastLike")


def import_onnx():
    try:
        import onnx
    except ImportError as e:
        raise AdrtError(f"the TensorRT conformance check reads graphs with the onnx package, which is not "
                        f"importable here ({e}); {PIP_EXTRA} (or pip install onnx)") from None
    return onnx


@dataclass(frozen=True)
class Violation:
    """A node that breaks ``rule``. ``fatal`` False: a note (a layer that falls back to the GPU)."""

    rule: str
    node: str
    op: str
    message: str
    source: str
    fatal: bool = True

    def line(self) -> str:
        kind = "" if self.fatal else "note: "
        return f"{kind}{self.node} ({self.op}): {self.message} [rule {self.rule}; {self.source}]"

    def to_dict(self) -> dict:
        return {"rule": self.rule, "node": self.node, "op": self.op, "message": self.message, "source": self.source,
                "fatal": self.fatal}


def parse_target(value: str) -> str:
    """"8.6", "10" or "latest"; a TensorRT version number ("8.6.1", "10.3") maps to its rule set."""
    v = str(value).strip().lower()
    if v not in R.TARGETS and v.replace(".", "").isdigit() and v.split(".")[0]:
        v = target_for_version(v)
    if v not in R.TARGETS:
        raise InputError(f"unknown TensorRT target {value!r}; available: {', '.join(R.TARGETS)}")
    return v


def target_for_version(version: str) -> str:
    """The rule set for an installed TensorRT ``version`` string: 8.x → 8.6, 10.x → 10, newer → latest."""
    major = int(str(version).split(".")[0])
    if major < 8:
        raise InputError(f"TensorRT {version} is older than the oldest target adrt has rules for (8.6)")
    return "8.6" if major < 10 else "10" if major == 10 else "latest"


class _Graph:
    """The facts about a model the rules need: dtypes, constants, consumers, graph I/O."""

    def __init__(self, model):
        onnx = import_onnx()
        from onnx import numpy_helper

        self.model = model
        g = model.graph
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except onnx.shape_inference.InferenceError:   # checked with the types it declares
            inferred = model
        ig = inferred.graph
        self.types = {v.name: v.type.tensor_type.elem_type for v in list(ig.input) + list(ig.output) + list(ig.value_info)}
        self.consts = {i.name: i for i in g.initializer}
        for n in g.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = a.t
        self.types.update({k: t.data_type for k, t in self.consts.items()})
        self.inputs = [i for i in g.input if i.name not in self.consts]
        self.outputs = {o.name for o in g.output}
        self.consumers: dict = {}
        self.producer: dict = {}
        for n in g.node:
            for x in n.input:
                self.consumers.setdefault(x, []).append(n)
            for o in n.output:
                self.producer[o] = n
        self.array = lambda name: numpy_helper.to_array(self.consts[name])
        self.shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
                       for v in list(ig.input) + list(ig.value_info) if v.type.tensor_type.HasField("shape")}

    def type_name(self, tensor: str) -> str | None:
        t = self.types.get(tensor)
        return _TYPE_NAMES.get(t) if t else None


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _name(node, i: int) -> str:
    return node.name or f"#{i} {node.op_type}"


def check_model(model, target: str = "latest", *, dla: bool = False, gpu_fallback: bool = False,
                precision: str | None = None, profile: tuple | None = None, trt_version: str | None = None) -> list:
    """Violations of ``target``'s rules by ``model`` (an onnx ModelProto or a path).

    ``dla``: also the DLA rules, for a model of ``precision`` built with batch ``profile``
    (min, opt, max); without ``gpu_fallback`` a layer DLA cannot run is fatal, with it a note.
    ``trt_version``: the installed TensorRT (``adrt build-engine``), which decides whether there is
    DLA at all; without it, the target's version does (``latest``, 10.15: none).
    """
    onnx = import_onnx()
    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(str(model))
    t = R.target(parse_target(target))
    g = _Graph(model)
    out: list = []

    def add(rule, node, op, message, fatal=True):
        out.append(Violation(rule, node, op, message, R.RULES[rule].source(t.key), fatal))

    _check_opset(model, t, add)
    for i, node in enumerate(model.graph.node):
        name = _name(node, i)
        if node.domain not in ("", "ai.onnx"):
            add("opset", name, node.op_type, f"operator domain {node.domain!r}: TensorRT's parser knows the default "
                                             "domain only (a plugin would be needed)")
            continue
        _check_op(node, name, g, t, add)
    _check_uint8(model, g, add)
    if dla:
        _check_dla(model, g, t, precision, profile, gpu_fallback, add, trt_version)
    return out


def _check_opset(model, t, add) -> None:
    versions = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    v = versions.get("ai.onnx")
    lo, hi = t.opset
    if v is None or not lo <= v <= hi:
        hint = " (adrt writes an opset-17 copy for it: model.trt86.onnx)" if t.key == "8.6" else ""
        add("opset", "graph", "-", f"opset {v}; TensorRT {t.tensorrt} parses opsets {lo} to {hi}{hint}")


def _check_op(node, name, g, t, add) -> None:
    op = node.op_type
    if op not in t.ops:
        add("op-support", name, op, f"{op} is not supported by TensorRT {t.tensorrt}'s ONNX parser")
        return
    allowed = t.ops[op]
    tensors = ([node.output[0]] if op in _TYPED_OUTPUT else []) + \
              ([] if op in ("ConstantOfShape",) else [node.input[_TYPED_INPUT.get(op, 0)]] if node.input else [])
    for x in tensors:
        ty = g.type_name(x)
        seen = "INT32" if ty == "INT64" and t.int64_as_int32 else ty
        if ty and seen not in allowed and not (ty == "UINT8" and op in ("Cast", "CastLike")):
            how = " (cast down to INT32)" if seen != ty else ""
            add("op-types", name, op, f"{op} on {ty}{how} tensor {x!r}; TensorRT {t.tensorrt} lists "
                                     f"{', '.join(sorted(allowed))}")
    if op in R.REDUCE_OPS:
        _check_reduce(node, name, g, t, add)
    elif op == "Shape" and not t.shape_start_end and (_attr(node, "start", 0) != 0 or _attr(node, "end") is not None):
        add("shape-slice", name, op, f"start={_attr(node, 'start', 0)}, end={_attr(node, 'end')}: TensorRT "
                                     f"{t.tensorrt} ignores them and returns the whole shape (wrong results)")
    elif op in R.POOL_OPS and any(d != 1 for d in _attr(node, "dilations", []) or []):
        add("pool-dilations", name, op, f"dilations {list(_attr(node, 'dilations'))}; TensorRT pools without dilation")
    elif op in ("QuantizeLinear", "DequantizeLinear"):
        _check_qdq(node, name, g, t, add)
    elif op == "Resize":
        _check_resize(node, name, g, t, add)
    elif op == "Pad":
        _check_pad(node, name, g, t, add)


def _check_reduce(node, name, g, t, add) -> None:
    axes = node.input[1] if len(node.input) > 1 and node.input[1] else None
    if axes is None:
        return
    if node.op_type not in t.axes_input_reductions:
        add("reduce-axes", name, node.op_type, f"axes given as an input ({axes!r}); TensorRT {t.tensorrt}'s "
                                               f"{node.op_type} importer ignores it and reduces over every axis "
                                               "(wrong results); use the axes attribute (opset ≤ 17)")
    elif axes not in g.consts:
        add("reduce-axes", name, node.op_type, f"axes input {axes!r} is computed; TensorRT needs an initializer")


def _check_qdq(node, name, g, t, add) -> None:
    op = node.op_type
    zp = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if zp is None:
        if t.qdq_zero_point_required:
            add("qdq", name, op, f"no zero-point input; TensorRT {t.tensorrt} requires an int8 zero point of 0")
    elif zp not in g.consts:
        add("qdq", name, op, f"zero point {zp!r} is computed; TensorRT needs a constant zero point of 0")
    else:
        ty = g.type_name(zp)
        values = g.array(zp)
        if ty == "UINT8" or (ty not in ("INT8", "FP8", "INT4") and ty is not None):
            add("qdq", name, op, f"zero point {zp!r} is {ty}; TensorRT quantises to int8 (symmetric)")
        if values.size and (values != 0).any():
            add("qdq", name, op, f"zero point {zp!r} is not all zeros (e.g. {values.flat[0]}); TensorRT quantises "
                                 "symmetrically")
    scale = node.input[1] if len(node.input) > 1 else None
    if scale in g.consts and (g.array(scale) <= 0).any():
        add("qdq", name, op, f"scale {scale!r} has values ≤ 0")


def _check_resize(node, name, g, t, add) -> None:
    mode = _attr(node, "mode", "nearest")
    ctm = _attr(node, "coordinate_transformation_mode", "half_pixel")
    nearest = _attr(node, "nearest_mode", "round_prefer_floor")
    bad = []
    if mode not in R.RESIZE_MODES:
        bad.append(f"mode {mode!r} (supported: {', '.join(R.RESIZE_MODES)})")
    if ctm not in R.RESIZE_COORDINATE_MODES:
        bad.append(f"coordinate_transformation_mode {ctm!r}")
    if mode == "nearest" and nearest not in R.RESIZE_NEAREST_MODES:
        bad.append(f"nearest_mode {nearest!r}")
    if t.key == "8.6" and ctm == "tf_half_pixel_for_nn" and nearest != "round_prefer_floor":
        bad.append("tf_half_pixel_for_nn with a nearest mode other than round_prefer_floor")
    if _attr(node, "antialias", 0):
        bad.append("antialias=1 (TensorRT does not antialias)")
    if _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        bad.append(f"keep_aspect_ratio_policy {_attr(node, 'keep_aspect_ratio_policy')!r} (only 'stretch')")
    if _attr(node, "axes") is not None:
        bad.append(f"axes attribute {list(_attr(node, 'axes'))}")
    scales = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if t.resize_linear_inner_axes and mode == "linear" and scales in g.consts:
        s = g.array(scales).ravel()
        if (s[: max(0, len(s) - t.resize_linear_inner_axes)] != 1).any():
            bad.append(f"linear scales {s.tolist()} resize an axis outside the {t.resize_linear_inner_axes} innermost")
    for b in bad:
        add("resize", name, "Resize", b)


def _check_pad(node, name, g, t, add) -> None:
    mode = _attr(node, "mode", "constant")
    if mode not in R.PAD_MODES:
        add("pad", name, "Pad", f"mode {mode!r}; TensorRT pads with {', '.join(R.PAD_MODES)}")
    axes = node.input[3] if len(node.input) > 3 and node.input[3] else None
    if axes is not None and (not t.pad_axes_input or axes not in g.consts):
        add("pad", name, "Pad", f"axes input {axes!r}; TensorRT {t.tensorrt} takes "
                                + ("no axes input" if not t.pad_axes_input else "it only as an initializer"))


def _check_uint8(model, g, add) -> None:
    for i, node in enumerate(model.graph.node):
        for o in node.output:
            if g.type_name(o) == "UINT8" and o not in g.outputs:
                add("uint8-io", _name(node, i), node.op_type, f"produces uint8 tensor {o!r}, which is not a graph "
                                                             "output (TensorRT takes uint8 only at the graph's I/O)")
    names = {id(n): _name(n, i) for i, n in enumerate(model.graph.node)}
    for inp in g.inputs:
        if g.type_name(inp.name) != "UINT8":
            continue
        for n in g.consumers.get(inp.name, []):
            to = _attr(n, "to")
            if n.op_type != "Cast" or _TYPE_NAMES.get(to) not in ("FP32", "FP16"):
                what = f"Cast to {_TYPE_NAMES.get(to, to)}" if n.op_type == "Cast" else n.op_type
                add("uint8-io", names[id(n)], n.op_type, f"reads the uint8 input {inp.name!r} ({what}); only a Cast "
                                                        "to float32/float16 may consume it")


def _dla_precision(node, g) -> str:
    if node.op_type in ("Conv", "ConvTranspose") and (p := g.producer.get(node.input[0])) is not None \
            and p.op_type == "DequantizeLinear":
        return "int8"
    ty = g.type_name(node.output[0]) if node.output else None
    return {"FP16": "fp16", "INT8": "int8"}.get(ty or "", "fp32")


def _check_dla(model, g, t, precision, profile, gpu_fallback, add, trt_version=None) -> None:
    if precision not in ("fp16", "int8"):
        add("dla-precision", "graph", "-", f"a {precision or 'fp32'} model; DLA runs fp16 or int8 only")
    if profile is not None:
        lo, opt, hi = profile
        if not lo == opt == hi:
            add("dla-shape", "graph", "-", f"batch profile {lo}/{opt}/{hi}; DLA needs a static batch (min = opt = max)")
        if hi > R.DLA_MAX_BATCH:
            add("dla-shape", "graph", "-", f"batch {hi} > {R.DLA_MAX_BATCH}")
    for inp in g.inputs:
        dims = g.shapes.get(inp.name, [])[1:]
        if any(d and d > R.DLA_MAX_DIM for d in dims):
            add("dla-shape", "graph", "-", f"input {inp.name!r} dimensions {dims} exceed {R.DLA_MAX_DIM}")
    version = trt_version or t.tensorrt
    if not has_dla(version):
        add("dla-version", "graph", "-", no_dla_reason(version))
    if not t.dla_explicit_quantization and any(n.op_type in ("QuantizeLinear", "DequantizeLinear")
                                               for n in model.graph.node):
        add("dla-qdq", "graph", "-", f"a Q/DQ (explicitly quantised) graph; TensorRT {t.tensorrt} DLA takes none")
    for i, node in enumerate(model.graph.node):
        if node.op_type == "Constant":
            continue
        why = _dla_layer_problem(node, g)
        if why is None and _dla_precision(node, g) == "fp32":
            why = "computes in float32 in this graph (DLA: fp16/int8)"
        if why:
            add("dla-layer", _name(node, i), node.op_type,
                why + ("; runs on the GPU (GPU fallback)" if gpu_fallback else "; without --gpu-fallback the build "
                                                                               "fails"), fatal=not gpu_fallback)


def _dla_layer_problem(node, g) -> str | None:
    op = node.op_type
    layer = R.DLA_LAYERS.get(op)
    if layer is None:
        return f"{op} is not a DLA layer"
    if op in R.DLA_INT8_ONLY and _dla_precision(node, g) != "int8":
        return f"{layer} runs on DLA in INT8 only"
    if op in ("Conv", "ConvTranspose"):
        w = node.input[1] if len(node.input) > 1 else None
        dims = list(g.consts[w].dims) if w in g.consts else g.shapes.get(w) or []
        if len(dims) != 4:
            return f"{layer}: DLA takes 2D {layer.lower()}s only"
        kernel, strides = dims[2:], _attr(node, "strides", [1, 1])
        lo, hi = R.DLA_CONV_KERNEL
        if not all(lo <= k <= hi for k in kernel):
            return f"{layer}: kernel {kernel} outside [{lo}, {hi}]"
        lo, hi = R.DLA_CONV_STRIDE
        if not all(lo <= s <= hi for s in strides):
            return f"{layer}: stride {list(strides)} outside [{lo}, {hi}]"
        if max(dims[0], dims[1]) > R.DLA_CHANNELS[1]:
            return f"{layer}: channels {dims[:2]} above {R.DLA_CHANNELS[1]}"
        if op == "ConvTranspose" and (_attr(node, "group", 1) != 1 or any(d != 1 for d in _attr(node, "dilations", []) or [])
                                      or any(p != 0 for p in _attr(node, "pads", []) or [])):
            return "Deconvolution: DLA takes no grouped, dilated or padded deconvolution"
    if op == "Concat" and _attr(node, "axis") not in (1, -3):
        return f"Concatenation along axis {_attr(node, 'axis')}; DLA concatenates channels only"
    return None


# --- bundles ----------------------------------------------------------------------------------------

def models_for(manifest: dict, target: str) -> list:
    """(variant key, entry) of the model ``target`` would build from, per precision: for 8.6 an
    opset-≤17 variant (``*.trt86``) where the bundle has one, for the others the main model."""
    by_precision: dict = {}
    for key, e in (manifest.get("models") or {}).items():
        by_precision.setdefault(e.get("precision", key), []).append((key, e))
    out = []
    for prec, cands in by_precision.items():
        if target == "8.6":
            out.append(min(cands, key=lambda c: (int(c[1].get("opset", 18)) > 17, c[0] != prec)))
        else:
            out.append(min(cands, key=lambda c: (c[0] != prec, -int(c[1].get("opset", 18)))))
    order = {"fp32": 0, "fp16": 1, "int8": 2}
    return sorted(out, key=lambda c: (order.get(c[1].get("precision"), 3), c[0]))


def check_bundle(bundle: str | os.PathLike, targets=R.TARGETS, *, dla: bool = False, gpu_fallback: bool = False,
                 profile: tuple | None = None) -> dict:
    """{target: {variant key: [Violation]}} for every model of ``bundle`` each target would use."""
    from adrt.runtime.bundle import open_bundle

    b = open_bundle(Path(bundle))
    try:
        out = {}
        for tgt in (parse_target(x) for x in targets):
            out[tgt] = {key: check_model(b.root / e["file"], tgt, dla=dla, gpu_fallback=gpu_fallback,
                                         precision=e.get("precision"), profile=profile)
                        for key, e in models_for(b.manifest, tgt)}
        return out
    finally:
        b.cleanup()


def fatal_count(report: dict) -> int:
    return sum(1 for per in report.values() for vs in per.values() for v in vs if v.fatal)


def format_report(report: dict, notes: bool = True) -> str:
    """Text of a :func:`check_bundle` report: per target and model, every violation on its own line;
    notes (layers that fall back to the GPU) summarised by operator, or left out with ``notes=False``."""
    from collections import Counter

    lines = []
    for tgt, per in report.items():
        for key, vs in per.items():
            errors = [v for v in vs if v.fatal]
            rest = [v for v in vs if not v.fatal]
            lines.append(f"TensorRT {tgt}: {key}: " + (f"{len(errors)} violation(s)" if errors else "ok")
                         + (f", {len(rest)} note(s)" if rest else ""))
            lines += ["  " + v.line() for v in errors]
            if notes and rest:
                by_op = Counter(v.op for v in rest)
                lines.append(f"  note: {len(rest)} layer(s) run on the GPU, not on DLA (GPU fallback): "
                             + ", ".join(f"{op} ×{n}" for op, n in by_op.most_common())
                             + f" [rule {rest[0].rule}; {rest[0].source}]")
    return "\n".join(lines)


def require_conformance(onnx_path: Path, target: str, **kw) -> None:
    """Raise BundleError listing the violations when ``onnx_path`` breaks ``target``'s rules."""
    vs = [v for v in check_model(onnx_path, target, **kw) if v.fatal]
    if vs:
        shown = "\n  ".join(v.line() for v in vs[:20]) + (f"\n  … and {len(vs) - 20} more" if len(vs) > 20 else "")
        raise BundleError(f"{Path(onnx_path).name} breaks {len(vs)} rule(s) of TensorRT {target}'s ONNX parser "
                          f"(adrt check):\n  {shown}")
