"""Which nodes of a bundle's fused graph a reduced-precision copy may change, found by structure rather than by
name so that it holds for every registered method: the *feature region* (the network's convolutions and the
ops that join their outputs, where the FLOPs are) and, inside it, what must stay float because rounding there
is rounding of the score itself (compared layers, memory addressing, exact selections, adjoint passes).

Why each part stays float, with the measurements behind it: benchmarks/results/quantize_design.md.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence


from adrt.errors import BundleError


# Ops that seed the reduced region: the network's convolutions (a transposed conv is a decoder's).
_SEED_OPS = {"Conv", "ConvTranspose"}
# Ops that may join the reduced feature region once one of their float inputs comes from it.
_REGION_OPS = _SEED_OPS | {"Clip", "Relu", "LeakyRelu", "Elu", "Add", "Mul", "AveragePool", "MaxPool",
                           "GlobalAveragePool", "Resize", "Concat", "Sigmoid", "HardSigmoid", "HardSwish", "Max",
                           "Slice"}
# Inputs that are not data even when float (Resize's roi and scales are float32 whatever T is).
DATA_INPUTS = {"Resize": 1, "Slice": 1}
# Ops that join the region only when every consumer of their output is a region op too (the
# shifted slices of the students' dilated max-pool do; a slice that starts the scoring does not).
_INNER_ONLY_OPS = {"Slice"}
# Ops whose output depends on their input's shape only, not on its values.
_SHAPE_OPS = {"Shape", "Size"}


def elem_types(model) -> dict[str, int]:
    """Element type of every tensor name (graph IO, initializers, inferred value_info)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {t.name: t.type.tensor_type.elem_type for t in list(g.input) + list(g.output) + list(g.value_info)}
    types.update({i.name: i.data_type for i in g.initializer})
    return types


def image_dependent(model) -> set[str]:
    """Names of the tensors whose *values* depend on the graph input (through any op but Shape/Size).

    Tensors computed from initializers only (a partial conv's mask set, expanded to the batch with
    the input's shape) are constants of the model, not features.
    """
    graph_in = {i.name for i in model.graph.input} - {i.name for i in model.graph.initializer}
    dep = set(graph_in)
    for node in model.graph.node:
        if node.op_type not in _SHAPE_OPS and any(x in dep for x in node.input if x):
            dep.update(o for o in node.output if o)
    return dep


def adjoint_convs(model) -> set[str]:
    """Conv/ConvTranspose nodes that apply another conv's *transpose*: their weight initializer is
    also used by a node of the other conv type earlier in the graph (an explicit backward pass, e.g.
    the VAE's gradient of its energy). Graph order is execution order, so the first use of a weight
    is the forward layer."""
    first: dict[str, str] = {}
    out = set()
    for node in model.graph.node:
        if node.op_type in _SEED_OPS and len(node.input) > 1:
            kind = first.setdefault(node.input[1], node.op_type)
            if kind != node.op_type:
                out.add(node.name)
    return out


# Ops a compared tensor passes through unchanged in meaning (layout, and affine maps by constants).
_PASS_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Split", "Flatten", "Identity", "Resize",
             "Sub", "Add", "Mul", "Div"}


def _links(model) -> tuple[dict, dict]:
    """(producer node of each tensor, consumer nodes of each tensor) of ``model``'s graph."""
    prod, cons = {}, {}
    for n in model.graph.node:
        for x in n.input:
            cons.setdefault(x, []).append(n)
        for o in n.output:
            prod[o] = n
    return prod, cons


def compared_layers(model, region: Sequence[str]) -> set[str]:
    """Region convs whose output is *compared*: subtracted from another image-dependent tensor (the
    input, for a reconstruction; another network's output, for teacher/student and autoencoder
    pairs), possibly after constant affine maps (feature normalisation) and layout ops.

    They are the last layers before a difference of large terms: int8 error on them is error on
    the score itself. Found from each region output forward through ``_PASS_OPS`` (with a constant
    second operand) to a Sub of two image-dependent tensors, then back through the region's
    non-conv ops to the convs that produced it.
    """
    inside = set(region)
    inits = {i.name for i in model.graph.initializer}
    dep = image_dependent(model)
    nodes = list(model.graph.node)
    prod, cons = _links(model)
    exits = {o for n in nodes if n.name in inside for o in n.output
             if any(c.name not in inside for c in cons.get(o, []))}
    compared = set()
    for e in exits:
        stack, seen = [e], set()
        while stack and e not in compared:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            for c in cons.get(t, []):
                if c.name in inside:
                    continue
                others = [x for x in c.input if x and x != t]
                varying = [x for x in others if x in dep and x not in inits]
                if c.op_type == "Sub" and varying:
                    compared.add(e)
                    break
                if c.op_type in _PASS_OPS and (c.op_type not in {"Sub", "Add", "Mul", "Div"} or not varying):
                    stack.extend(o for o in c.output if o)
    heads, stack, seen = set(), list(compared), set()
    while stack:
        t = stack.pop()
        n = prod.get(t)
        if t in seen or n is None or n.name not in inside:
            continue
        seen.add(t)
        if n.op_type in _SEED_OPS:
            heads.add(n.name)
        else:
            stack.extend(n.input)
    return heads


def map_filters(model) -> set[str]:
    """Conv nodes with one input and one output channel (weight 1×1×kh×kw): filters on a single
    map, not network layers — the Gaussian smoothing of the anomaly map (separable 1×k and k×1
    convs in MemAE/AE and the VAE). They are part of the scoring."""
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    return {n.name for n in model.graph.node
            if n.op_type in _SEED_OPS and len(n.input) > 1 and shapes.get(n.input[1], [0, 0])[:2] == [1, 1]}


def feature_region(model, adjoints: bool = False) -> list[str]:
    """Names of the nodes that form the feature extractor (the network), in graph order.

    Seeded by every Conv and ConvTranspose whose input depends on the image (a conv over a constant,
    e.g. a partial conv's mask, stays float: it counts valid pixels exactly); a node of an op type
    in ``_REGION_OPS`` joins when one of its float data inputs comes from the region and all the
    others come from the region or from initializers. The first node outside (a Sub, Transpose,
    Gather, Reshape or MatMul that starts the scoring) ends it. Adjoint convs (an explicit backward
    pass, :func:`adjoint_convs`) seed only with ``adjoints=True``: they propagate the residual
    x − f(x), a difference of large terms. Single-map filters (:func:`map_filters`, the anomaly
    map's smoothing) never seed.
    """
    import onnx

    float_t = onnx.TensorProto.FLOAT
    types = elem_types(model)
    inits = {i.name for i in model.graph.initializer}
    dep = image_dependent(model)
    skip = map_filters(model) | (set() if adjoints else adjoint_convs(model))
    _, cons = _links(model)
    produced_in: set[str] = set()
    region = []
    for node in model.graph.node:
        if node.op_type not in _REGION_OPS or node.name in skip:
            continue
        if node.op_type in _INNER_ONLY_OPS and not all(c.op_type in _REGION_OPS for o in node.output
                                                       for c in cons.get(o, [])):
            continue
        data = [x for x in node.input[: DATA_INPUTS.get(node.op_type, len(node.input))] if x]
        floats = [x for x in data if types.get(x) == float_t]
        if not floats:
            continue
        if node.op_type in _SEED_OPS:
            ok = data[0] in dep and all(x in produced_in or x in inits or x == data[0] for x in floats)
        else:
            ok = any(x in produced_in for x in floats) and all(x in produced_in or x in inits for x in floats)
        if ok:
            region.append(node.name)
            produced_in.update(o for o in node.output if types.get(o) == float_t)
    if not any(n.op_type in _SEED_OPS for n in model.graph.node if n.name in set(region)):
        raise BundleError("the graph has no convolutional feature extractor to reduce (no Conv nodes)")
    return region


def float_parts(model) -> list[str]:
    """What stays float32 in every variant of ``model``, found by structure (see the module doc)."""
    adj = adjoint_convs(model)
    dep = image_dependent(model)
    const = [n for n in model.graph.node if n.op_type in _SEED_OPS and n.input[0] not in dep]
    parts = ["preprocessing (cast, scale, mean/std)"]
    if adj:
        parts.append(f"the explicit backward pass: {len(adj)} adjoint Conv/ConvTranspose nodes (transposes of "
                     "forward layers, sharing their weights) and the elementwise ops between them")
    if const:
        parts.append(f"{len(const)} convolutions over constants (partial-conv mask renormalisation)")
    filters = map_filters(model)
    if filters:
        parts.append(f"{len(filters)} single-channel map filters (the anomaly map's Gaussian smoothing)")
    parts.append("everything after the network: the method's scoring (distances, differences with the input or "
                 "between networks, feature normalisation, memory attention), upsampling, Gaussian blur, "
                 "calibration sigmoid")
    return parts


def describe_region(model, region: Sequence[str], op_types: Sequence[str] | None = None) -> dict:
    """What is reduced (region nodes, of ``op_types`` if given) and what stays float, by op type."""
    inside = {n.name for n in model.graph.node
              if n.name in set(region) and (op_types is None or n.op_type in set(op_types))}
    reduced = Counter(n.op_type for n in model.graph.node if n.name in inside)
    kept = Counter(n.op_type for n in model.graph.node if n.name not in inside)
    return {"reduced_ops": dict(sorted(reduced.items())), "float_ops": dict(sorted(kept.items())),
            "float_parts": "; ".join(float_parts(model))}


def addressing_layers(model, region: Sequence[str]) -> set[str]:
    """Region nodes upstream of a *memory addressing*: a Softmax whose output the network reads on
    (some region conv lies downstream of it), as MemAE's cosine attention over its memory items,
    followed by hard shrinkage, is read by the decoder. The addressing jumps with small changes of
    the encoding, so int8 noise there re-ranks images that the normal-score check cannot see
    (MemAE on bottle, INT8 ``cpu`` target: −0.56 points with the encoder int8, +0.56 with it float).
    A Softmax that only feeds a score (PatchCore's reweighting) does not count."""
    inside = set(region)
    seeds = {n.name for n in model.graph.node if n.name in inside and n.op_type in _SEED_OPS}
    prod, cons = _links(model)

    def feeds_network(node) -> bool:
        stack, seen = list(node.output), set()
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            for c in cons.get(t, []):
                if c.name in seeds:
                    return True
                stack.extend(c.output)
        return False

    found: set[str] = set()
    for sm in (n for n in model.graph.node if n.op_type == "Softmax" and feeds_network(n)):
        stack, seen = list(sm.input), set()
        while stack:
            t = stack.pop()
            n = prod.get(t)
            if t in seen or n is None:
                continue
            seen.add(t)
            if n.name in inside:
                found.add(n.name)
            stack.extend(n.input)
    return found


def selection_convs(model) -> set[str]:
    """Depthwise two-tap Conv nodes whose every filter is [1, 0] or [−1, 1]: exact selections, not
    network layers — the students' dilated max-pool in conv form, ``a + relu(b − a)``
    (adrt.train.students.model.max_pool2_dilated). INT8 would round the maximum they compute."""
    from onnx import numpy_helper

    weights = {i.name: i for i in model.graph.initializer}
    out = set()
    for n in model.graph.node:
        if n.op_type != "Conv" or len(n.input) < 2 or n.input[1] not in weights:
            continue
        w = weights[n.input[1]]
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if len(w.dims) != 4 or w.dims[1] != 1 or w.dims[0] != group or w.dims[2] * w.dims[3] != 2:
            continue
        taps = numpy_helper.to_array(w).reshape(-1, 2)
        if (taps == [1.0, 0.0]).all(1).all() or (taps == [-1.0, 1.0]).all(1).all():
            out.add(n.name)
    return out
