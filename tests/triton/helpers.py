"""Bundles made by the Triton tests without training: a two-input ONNX graph, and fake engines."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from adrt.runtime.bundle import FORMAT, FORMAT_VERSION, write_manifest


def reference_bundle(out: Path, size: int = 16) -> Path:
    """A bundle whose graph takes two uint8 N×H×W×3 inputs, ``image`` and ``reference`` (as a
    method comparing a frame with a golden image would): raw_map = mean |image − reference| over
    channels, raw_score = sqrt(max(raw_map) − 1), so an image equal to its reference gives NaN."""
    onnx = __import__("pytest").importorskip("onnx")
    from onnx import TensorProto, helper

    h = w = size
    nodes = [
        helper.make_node("Cast", ["image"], ["a"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["reference"], ["b"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["a", "b"], ["d"]),
        helper.make_node("Abs", ["d"], ["ad"]),
        helper.make_node("ReduceMean", ["ad"], ["raw_map"], axes=[3], keepdims=0),
        helper.make_node("ReduceMax", ["raw_map"], ["mx"], axes=[1, 2], keepdims=0),
        helper.make_node("Sub", ["mx", "one"], ["mx1"]),
        helper.make_node("Sqrt", ["mx1"], ["raw_score"]),
        helper.make_node("Sub", ["raw_map", "ten"], ["m10"]),
        helper.make_node("Sigmoid", ["m10"], ["anomaly_map"]),
        helper.make_node("Sub", ["raw_score", "ten"], ["s10"]),
        helper.make_node("Sigmoid", ["s10"], ["score"]),
    ]
    image = helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", h, w, 3])
    ref = helper.make_tensor_value_info("reference", TensorProto.UINT8, ["batch", h, w, 3])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", h, w]) for n in ("anomaly_map", "raw_map")]
    outs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch"]) for n in ("score", "raw_score")]
    outs = [outs[0], outs[2], outs[1], outs[3]]
    consts = [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]), helper.make_tensor("ten", TensorProto.FLOAT, [], [10.0])]
    graph = helper.make_graph(nodes, "diff", [image, ref], outs, initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    out.mkdir(parents=True)
    onnx.save(model, str(out / "model.onnx"))
    manifest = {
        "inputs": ["image", "reference"],
        "format": FORMAT, "format_version": FORMAT_VERSION, "adrt_version": "test", "method": "diff",
        "input": {"height": h, "width": w, "channels": 3, "mean": [0, 0, 0], "std": [1, 1, 1], "resize": "bilinear",
                  "color": "rgb", "dtype": "uint8", "layout": "NHWC", "batch": "dynamic"},
        "threshold": 0.5, "models": {"fp32": {"file": "model.onnx", "precision": "fp32"}},
        "files": {"model.onnx": {}},
    }
    write_manifest(out, manifest)
    return out


def with_fake_engines(bundle: Path, out: Path, engines: list[dict]) -> Path:
    """A copy of ``bundle`` whose manifest records TensorRT plans (dummy bytes): each of ``engines``
    gives gpu, cc ("9.0"), tensorrt, precision and optionally profile (min, max)."""
    from adrt.runtime.tensorrt import plan_tag

    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "engines").mkdir()
    for e in engines:
        major, minor = (int(x) for x in e["cc"].split("."))
        tag = plan_tag(e["gpu"], (major, minor), e["tensorrt"], e["precision"])
        rel = f"engines/{tag}.plan"
        (out / rel).write_bytes(f"not a real plan: {tag}".encode())
        lo, hi = e.get("profile", (1, 8))
        h, w = manifest["input"]["height"], manifest["input"]["width"]
        manifest.setdefault("engines", {})[tag] = {
            "file": rel, "precision": e["precision"], "gpu": e["gpu"], "compute_capability": e["cc"],
            "tensorrt": e["tensorrt"], "onnx": "model.onnx",
            "profile": {"input": "image", "min": [lo, h, w, 3], "opt": [lo, h, w, 3], "max": [hi, h, w, 3]}}
        manifest["files"][rel] = {}
    write_manifest(out, manifest)
    return out
