"""Opset-17 copies of a bundle's graphs for TensorRT 8.6 (JetPack 6.0): ``model.trt86.onnx`` & co.

TensorRT 8.6 parses opsets up to 17, and its importers ignore what opset 18 moved into inputs or
new attributes: ReduceMax/Mean/Min/Prod/L1/L2/LogSumExp/SumSquare reduce over *every* axis when
the axes come as an input, and Shape returns the whole shape whatever its start/end. An opset-18
graph that parsed would compute wrong scores. The exporter (torch.onnx, dynamo) writes opset 18
even when asked for 17 (ONNX's version converter fails on Pad and the exporter keeps the original),
so :func:`to_trt86` converts our own opset-18 graph, op by op, for the few operators whose
opset-18 form differs:

- Reduce* (not ReduceSum, whose axes input dates from opset 13 and which 8.6 reads): the constant
  axes input becomes the ``axes`` attribute;
- Resize: the opset-18 attributes (antialias, keep_aspect_ratio_policy, axes) are dropped when they
  hold their defaults; Pad: no axes input; Split: ``num_outputs`` becomes equal parts (or an
  explicit split input);
- Shape with start/end becomes Shape + Slice (an 8.6 importer workaround, valid in any opset).

Any other operator whose definition changed after opset 17 is refused by name. The copy is
checked against the opset-18 graph on ONNX Runtime (:func:`add_trt86_variants`, parity recorded in
the manifest) and against TensorRT 8.6's rules (:mod:`adrt.export.trt_check`). Needs ``onnx`` and
``onnxruntime``, no torch: ``adrt build-engine`` can make one on the device.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np

from adrt.errors import BundleError
from adrt.export.trt_rules import REDUCE_OPS
from adrt.runtime.bundle import open_bundle, sha256_file, write_manifest

OPSET = 17
SUFFIX = ".trt86"
# The opset-17 copy against its source on ONNX Runtime CPU: raw outputs by max |Δ| relative to their
# range, calibrated outputs (in [0, 1]) by max |Δ|. The same operators on the same data (ONNX Runtime
# may pick another kernel for a reduction's opset-17 form): anything above float rounding is a
# conversion error.
PARITY_RTOL = 1e-5
PARITY_ATOL = 1e-5
_HANDLED = set(REDUCE_OPS) | {"Resize", "Pad", "Split", "Shape"}


def _const(g, name):
    from onnx import numpy_helper

    for i in g.initializer:
        if i.name == name:
            return numpy_helper.to_array(i)
    for n in g.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return numpy_helper.to_array(n.attribute[0].t)
    raise BundleError(f"{name!r} must be a constant for the opset-17 conversion")


def _drop_attrs(node, defaults: dict, what: str) -> None:
    from onnx import helper

    keep = []
    for a in node.attribute:
        if a.name in defaults:
            v = helper.get_attribute_value(a)
            v = v.decode() if isinstance(v, bytes) else v
            if v != defaults[a.name]:
                raise BundleError(f"{what} {node.name}: {a.name}={v!r} has no opset-17 form (TensorRT 8.6 would "
                                  f"ignore it)")
        else:
            keep.append(a)
    del node.attribute[:]
    node.attribute.extend(keep)


def to_trt86(model):
    """An opset-17 copy of opset-18 ``model`` that TensorRT 8.6 imports as the original computes.
    Returns (model, {rewrite: count})."""
    import onnx
    from onnx import helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    versions = {o.domain or "": o.version for o in model.opset_import}
    if versions.get("", 0) <= OPSET:
        return model, {}
    g = model.graph
    ig = onnx.shape_inference.infer_shapes(model).graph
    shapes = {v.name: [d.dim_value or None for d in v.type.tensor_type.shape.dim]
              for v in list(ig.input) + list(ig.value_info) + list(ig.output)}
    done: dict = {}
    nodes = []
    for node in g.node:
        op = node.op_type
        schema_changed = node.domain in ("", "ai.onnx") and \
            onnx.defs.get_schema(op, versions[""], "").since_version > OPSET
        if op in REDUCE_OPS and op != "ReduceSum" and len(node.input) > 1:
            axes = node.input[1]
            if axes:
                node.attribute.append(helper.make_attribute("axes", [int(a) for a in _const(g, axes).ravel()]))
            elif any(a.name == "noop_with_empty_axes" and a.i for a in node.attribute):
                raise BundleError(f"{op} {node.name}: noop_with_empty_axes=1 has no opset-17 form")
            del node.input[1:]
            done["reduce axes input -> attribute"] = done.get("reduce axes input -> attribute", 0) + 1
        if op in REDUCE_OPS and op != "ReduceSum":
            _drop_attrs(node, {"noop_with_empty_axes": 0}, op)
        elif op == "Resize":
            _drop_attrs(node, {"antialias": 0, "keep_aspect_ratio_policy": "stretch"}, op)
            if any(a.name == "axes" for a in node.attribute):
                raise BundleError(f"Resize {node.name}: an axes attribute has no opset-17 form")
            done["Resize opset-18 attributes dropped"] = done.get("Resize opset-18 attributes dropped", 0) + 1
        elif op == "Pad":
            if len(node.input) > 3 and node.input[3]:
                raise BundleError(f"Pad {node.name}: an axes input has no opset-17 form (TensorRT 8.6 takes none)")
            del node.input[3:]
        elif op == "Split" and any(a.name == "num_outputs" for a in node.attribute):
            _split_sizes(node, shapes, g)
            done["Split num_outputs -> sizes"] = done.get("Split num_outputs -> sizes", 0) + 1
        elif op == "Shape" and any(a.name in ("start", "end") for a in node.attribute):
            nodes.extend(_shape_slice(node, g))
            done["Shape start/end -> Shape + Slice"] = done.get("Shape start/end -> Shape + Slice", 0) + 1
            continue
        elif schema_changed and op not in _HANDLED:
            raise BundleError(f"{op} {node.name}: its opset-{versions['']} definition has no opset-17 form here; "
                              "TensorRT 8.6 cannot take this graph")
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    used = {x for n in g.node for x in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = OPSET
    del g.value_info[:]
    onnx.checker.check_model(model)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return model, done


def _split_sizes(node, shapes: dict, g) -> None:
    from onnx import numpy_helper

    n = next(a.i for a in node.attribute if a.name == "num_outputs")
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    keep = [a for a in node.attribute if a.name != "num_outputs"]
    del node.attribute[:]
    node.attribute.extend(keep)
    dims = shapes.get(node.input[0])
    dim = dims[axis] if dims and -len(dims) <= axis < len(dims) else None
    if dim is None:
        raise BundleError(f"Split {node.name}: the length of axis {axis} is unknown; cannot size its {n} parts")
    if dim % n:
        part = -(-dim // n)
        sizes = [part] * (dim // part) + ([dim % part] if dim % part else [])
        name = f"{node.name}__split_sizes"
        g.initializer.append(numpy_helper.from_array(np.array(sizes, np.int64), name))
        del node.input[1:]
        node.input.append(name)


def _shape_slice(node, g) -> list:
    from onnx import helper, numpy_helper

    start = next((a.i for a in node.attribute if a.name == "start"), 0)
    end = next((a.i for a in node.attribute if a.name == "end"), None)
    full = node.output[0] + "__full"
    shape = helper.make_node("Shape", [node.input[0]], [full], name=node.name + "__full")
    names = [f"{node.name}__{k}" for k in ("starts", "ends", "axes")]
    stop = np.iinfo(np.int64).max if end is None else end
    for k, v in zip(names, (start, stop, 0)):
        g.initializer.append(numpy_helper.from_array(np.array([v], np.int64), k))
    sl = helper.make_node("Slice", [full, *names], [node.output[0]], name=node.name)
    return [shape, sl]


# --- bundle variants ---------------------------------------------------------------------------

def variant_file(name: str) -> str:
    """model.onnx → model.trt86.onnx; model.fp16.onnx → model.fp16.trt86.onnx."""
    stem = name[: -len(".onnx")] if name.endswith(".onnx") else name
    return f"{stem}{SUFFIX}.onnx"


def parity(a: Path, b: Path, images: np.ndarray) -> dict:
    """Max |Δ| (and relative to the range) of every output of graphs ``a`` and ``b`` on ONNX Runtime CPU."""
    import onnxruntime as ort

    runs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (a, b)]
    names = [o.name for o in runs[0].get_outputs()]
    from adrt.export.feeds import sample_feeds

    # One image per call: a tiled bundle's frame is already a batch of tiles (memory ∝ one frame).
    every = sample_feeds([i.name for i in runs[0].get_inputs()], images)
    feeds = [{k: v[i : i + 1] for k, v in every.items()} for i in range(len(images))]
    ra, rb = ([np.concatenate(x) for x in zip(*(r.run(None, f) for f in feeds))] for r in runs)
    out = {}
    for name, x, y in zip(names, ra, rb):
        same_nan = bool((np.isnan(x) == np.isnan(y)).all())
        fin = np.isfinite(x) & np.isfinite(y)
        err = float(np.abs(x[fin] - y[fin]).max()) if fin.any() else 0.0
        scale = (float(np.abs(x[fin]).max()) if fin.any() else 0.0) or 1.0
        out[name] = {"max_abs": err, "max_rel": err / scale, "same_nan": same_nan}
    return out


def add_trt86_variants(bundle, images: np.ndarray | None = None, keys=None, log=lambda m: None) -> list:
    """Add an opset-17 copy of each opset-18 model of the bundle folder ``bundle`` (``keys``: only these
    variants) as ``<variant>.trt86``, after checking it against its source on ``images`` (uint8
    N×H×W×3; random ones by default). A copy made from another version of its source (its
    ``source_sha256``) is replaced. Returns the new variant keys."""
    import onnx

    b = open_bundle(bundle)
    if b._tmp:
        b.cleanup()
        raise BundleError(f"{bundle}: adding models needs a bundle folder, not a .zip")
    manifest, root = b.manifest, b.root
    spec = b.input
    if images is None:
        images = np.random.default_rng(0).integers(0, 256, (2, int(spec["height"]), int(spec["width"]),
                                                            int(spec["channels"])), dtype=np.uint8)
    added = []
    for key, e in list(manifest["models"].items()):
        if key.endswith(SUFFIX) or (keys is not None and key not in keys):
            continue
        src = root / e["file"]
        digest = sha256_file(src)
        if (manifest["models"].get(key + SUFFIX) or {}).get("source_sha256") == digest:
            continue        # made from this very model already
        model = onnx.load(str(src))
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        if opset <= OPSET:
            continue
        converted, rewrites = to_trt86(model)
        name = variant_file(e["file"])
        # Not mkstemp: its 0600 would stay on the model (others must be able to read a copied bundle).
        tmp = root / f".{name}.adrt-tmp-{secrets.token_hex(4)}"
        try:
            onnx.save(converted, tmp)
            report = parity(src, Path(tmp), images)
            bad = {k: v for k, v in report.items() if not v["same_nan"]
                   or (v["max_rel"] > PARITY_RTOL if k.startswith("raw") else v["max_abs"] > PARITY_ATOL)}
            if bad:
                raise BundleError(f"the opset-17 copy of {e['file']} differs from it on ONNX Runtime: {bad}")
            os.replace(tmp, root / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        manifest["models"][key + SUFFIX] = {
            "file": name, "precision": e.get("precision", key), "opset": OPSET, "target": "tensorrt-8.6",
            "source": key, "source_sha256": digest, "rewrites": rewrites, "parity_vs_source": report,
            "parity_tolerance": {"raw_max_rel": PARITY_RTOL, "normalised_max_abs": PARITY_ATOL}}
        manifest["files"][name] = {}
        added.append(key + SUFFIX)
        done = ", ".join(f"{k}: {v}" for k, v in rewrites.items()) or "no rewrite"
        log(f"{name}: opset-17 copy of {e['file']} for TensorRT 8.6 ({done})")
    if added:
        write_manifest(root, manifest)
    b.cleanup()
    return added
