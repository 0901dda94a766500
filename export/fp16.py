"""FP16 copy of a fused graph: the feature region's weights become float16, with Cast nodes on its boundary;
the preprocessing, scoring, upsampling, blur and calibration stay float32 (see :mod:`adrt.export.region`).

Our own converter, ~60 lines: onnxconverter-common's would do, at the price of one more dependency.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from adrt.errors import BundleError

from adrt.export.region import DATA_INPUTS, elem_types, feature_region


def convert_fp16(model, region: Sequence[str] | None = None):
    """A copy of ``model`` whose ``region`` nodes (default: :func:`feature_region`) compute in float16.

    Weights used inside become float16 copies (a weight shared with a float32 node keeps its
    original too). A Cast goes on each float tensor entering the region (before its first use) and
    leaving it (right after its producer), so the graph's inputs and outputs keep their types.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    region = set(feature_region(model) if region is None else region)
    types = elem_types(model)
    inits = {i.name: i for i in g.initializer}
    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    fp16_max = float(np.finfo(np.float16).max)

    produced_in = {y for n in g.node if n.name in region for y in n.output if types.get(y) == f32}
    used_outside = {o.name for o in g.output} | {x for n in g.node if n.name not in region for x in n.input}
    half_init: dict[str, str] = {}     # float32 initializer -> its float16 copy
    cast_in: dict[str, str] = {}       # float32 tensor entering the region -> its float16 cast
    nodes = []
    for node in g.node:
        if node.name not in region:
            nodes.append(node)
            continue
        n_data = DATA_INPUTS.get(node.op_type, len(node.input))
        for k, x in enumerate(node.input):
            if not x or k >= n_data or types.get(x) != f32:
                continue
            if x in produced_in:
                node.input[k] = x + "__fp16"
            elif x in inits:
                if x not in half_init:
                    arr = numpy_helper.to_array(inits[x])
                    if arr.size and float(np.abs(arr).max()) > fp16_max:
                        raise BundleError(f"weight {x} exceeds the float16 range (|w| up to {np.abs(arr).max():.3g})")
                    half = numpy_helper.from_array(arr.astype(np.float16), x + "__fp16")
                    g.initializer.append(half)
                    half_init[x] = half.name
                node.input[k] = half_init[x]
            else:
                if x not in cast_in:
                    cast_in[x] = x + "__to_fp16"
                    nodes.append(helper.make_node("Cast", [x], [cast_in[x]], to=f16, name=f"adrt_to_fp16_{len(cast_in)}"))
                node.input[k] = cast_in[x]
        nodes.append(node)
        for j, y in enumerate(node.output):
            if y in produced_in:
                node.output[j] = y + "__fp16"
                if y in used_outside:
                    nodes.append(helper.make_node("Cast", [y + "__fp16"], [y], to=f32, name=f"adrt_to_fp32_{y}"))
    del g.node[:]
    g.node.extend(nodes)
    # float32 originals that only the region used are gone now.
    used = {x for n in g.node for x in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.value_info[:]  # types inside the region changed; ONNX Runtime infers them again
    onnx.checker.check_model(model)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)  # a type clash at the boundary fails here
    return model
