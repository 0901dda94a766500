"""Export a trained Detector to a bundle: fused ONNX graph + manifest.

``export_onnx(detector, path)`` traces the eval forward (uint8 NHWC in, maps and scores out, dynamic
batch). ``export_bundle(run, out)`` writes the whole bundle into a temporary folder, checks
parity with ONNX Runtime and only then moves it into place (adrt.outputs: an existing bundle is
replaced only with ``overwrite``, anything else never). The manifest is built and validated by
adrt.contract.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import platform
import warnings
from pathlib import Path

import numpy as np
import torch

from adrt._version import __version__
from adrt.contract import FORMAT, FORMAT_VERSION, OUTPUT_NAMES, RESIZE, Precision
from adrt.errors import AdrtError
from adrt.export.feeds import sample_feeds
from adrt.outputs import Kind, staged_folder
from adrt.runtime.bundle import write_manifest
from adrt.train.detector import Detector

OPSET = 18
# Parity tolerances between ONNX Runtime and torch (float32, same CPU); the normalised outputs are
# in [0, 1], raw outputs are compared relative to their scale.
ATOL_NORMALISED = 1e-3
RTOL_RAW = 1e-3


def export_onnx(detector: Detector, path: str | os.PathLike, batch: int = 2, opset: int = OPSET) -> Path:
    """Trace ``detector`` (eval mode) to ONNX with input ``image`` uint8 N×H×W×C, batch dynamic."""
    detector = detector.eval()
    spec = detector.spec
    example = torch.zeros(batch, spec.height, spec.width, spec.channels, dtype=torch.uint8)
    inputs = list(detector.input_names)
    examples = tuple(example.clone() for _ in inputs)     # distinct tensors: never aliased into one input
    names = list(OUTPUT_NAMES)
    # One eager pass first: shape-dependent constants (the blur's upsampling matrices) become
    # buffers, which the exporter writes as initializers instead of tracing their construction.
    # A detector whose eager guard refuses the zero image (non-finite output) is still exported:
    # its graph carries the guard's NaN instead.
    with torch.no_grad(), contextlib.suppress(AdrtError):
        detector(*(e[:1] for e in examples))
    # The torch.export-based exporter: its graph comes out constant-folded (TF-"same" pads folded
    # into the convs, no shape arithmetic), about 12 % faster on ORT CPU than the TorchScript one.
    batch_dim = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                detector, examples, input_names=inputs, output_names=names,
                dynamic_shapes={name: {0: batch_dim} for name in inputs},
                opset_version=opset, dynamo=True, external_data=False, verbose=False,
            )
        except Exception as e:
            # torch's exporter wraps what happens inside it; a Ctrl-C stays a Ctrl-C.
            if _interrupted(e):
                raise KeyboardInterrupt from None
            raise
        program.save(str(path), external_data=False)
    import onnx

    model = onnx.load(str(path))
    take_shapes_from_cast(model)
    written = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if written != opset:
        # torch's exporter keeps opset 18 when the version converter fails (Pad): convert it ourselves.
        from adrt.export.trt86 import OPSET as TRT86_OPSET, to_trt86

        if opset != TRT86_OPSET or written < opset:
            raise AdrtError(f"the exporter wrote opset {written} where opset {opset} was asked for")
        model, _ = to_trt86(model)
    onnx.save(model, str(path))
    return Path(path)


def _interrupted(e: BaseException) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def take_shapes_from_cast(model) -> int:
    """Let the Cast of the uint8 input be its only consumer: Shape nodes that read the input (the
    exporter takes the symbolic batch size from it) read the Cast's output instead, which has the
    same shape. TensorRT takes uint8 only as a network input consumed by a Cast. Returns the
    number of rewired nodes; raises AdrtError when the input has no Cast consumer to read from.
    """
    g = model.graph
    inits = {i.name for i in g.initializer}
    rewired = 0
    for inp in (i for i in g.input if i.name not in inits):
        if inp.type.tensor_type.elem_type != 2:          # onnx.TensorProto.UINT8
            continue
        users = [n for n in g.node if inp.name in n.input]
        casts = [n for n in users if n.op_type == "Cast"]
        shapes = [n for n in users if n.op_type == "Shape"]
        if not shapes:
            continue
        if len(casts) != 1:
            raise AdrtError(f"graph input {inp.name!r}: expected one Cast to read its shape from, found {len(casts)}")
        cast = casts[0]
        for n in shapes:
            n.input[0] = cast.output[0]
            rewired += 1
        # Topological order: the Cast (it reads only the graph input) goes first.
        nodes = [cast] + [n for n in g.node if n is not cast]
        del g.node[:]
        g.node.extend(nodes)
    return rewired


def parity(detector: Detector, onnx_path: Path, images: np.ndarray, references: np.ndarray | None = None) -> dict:
    """Max differences between ONNX Runtime and torch on ``images`` (uint8 N×H×W×C), with
    ``references`` (default: :func:`sample_feeds`) for a paired detector."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    # One image per call: a tiled detector's frame is already a batch of tiles (memory ∝ one frame).
    every = sample_feeds(detector.input_names, images, references)
    feeds = [{k: v[i : i + 1] for k, v in every.items()} for i in range(len(images))]
    got = [np.concatenate(x) for x in zip(*(sess.run(None, f) for f in feeds))]
    with torch.inference_mode():
        ref = [np.concatenate(x) for x in zip(*([t.numpy() for t in detector(*(torch.from_numpy(f[n])
                                                                               for n in detector.input_names))]
                                                for f in feeds))]
    out = {}
    for name, g, r in zip(Detector.output_names, got, ref):
        err = float(np.abs(g - r).max())
        scale = float(np.abs(r).max()) or 1.0
        out[name] = {"max_abs": err, "max_rel": err / scale}
    return out


def check_parity(report: dict) -> None:
    bad = []
    for name, r in report.items():
        if name.startswith("raw"):
            if r["max_rel"] > RTOL_RAW:
                bad.append(f"{name}: relative error {r['max_rel']:.2e} > {RTOL_RAW}")
        elif r["max_abs"] > ATOL_NORMALISED:
            bad.append(f"{name}: abs error {r['max_abs']:.2e} > {ATOL_NORMALISED}")
    if bad:
        raise AdrtError("exported graph does not match the torch detector: " + "; ".join(bad))


def export_bundle(detector: Detector, meta: dict, out: str | os.PathLike, *, sample_images: np.ndarray | None = None,
                  metrics: dict | None = None, overwrite: bool = False, inputs=()) -> Path:
    """Write a verified bundle folder ``out`` and return it. An existing bundle there is replaced
    only with ``overwrite``; a folder that is not a bundle, or one of ``inputs``, never.

    ``sample_images`` (uint8 N×H×W×C, N≥2) are used for the parity check; random images otherwise.
    """
    out = Path(out)
    with staged_folder(out, Kind.BUNDLE, overwrite=overwrite, inputs=inputs) as tmp:
        write_bundle(detector, meta, tmp, sample_images=sample_images, metrics=metrics)
    return out


def write_bundle(detector: Detector, meta: dict, folder: Path, *, sample_images: np.ndarray | None = None,
                 metrics: dict | None = None) -> Path:
    """Export ``detector`` into the existing empty ``folder``: model.onnx, parity check, manifest."""
    spec = detector.spec
    if sample_images is None:
        rng = np.random.default_rng(0)
        sample_images = rng.integers(0, 256, (2, spec.height, spec.width, spec.channels), dtype=np.uint8)
    onnx_path = export_onnx(detector, folder / "model.onnx")
    report = parity(detector, onnx_path, np.ascontiguousarray(sample_images))
    check_parity(report)
    import onnx

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "adrt_version": __version__,
        "method": meta["method"],
        "config": meta["config"],
        "input": {**spec.to_manifest(), **detector.geometry.input_fields()},
        "inputs": list(detector.input_names),
        **({} if detector.geometry == RESIZE else {"geometry": detector.geometry.to_manifest(spec.height, spec.width)}),
        "outputs": {
            "anomaly_map": "float32 N×H×W, calibrated: 0.5 is the threshold",
            "score": "float32 N, calibrated: 0.5 is the threshold",
            "raw_map": "float32 N×H×W, uncalibrated",
            "raw_score": "float32 N, uncalibrated",
            # max: the method's own image score (or the map's maximum); topk:F: mean of the top F of the map
            "image_score": meta.get("image_score", "max"),
        },
        "threshold": 0.5,
        "calibration": meta["calibration"],
        "training": meta["training"],
        "metrics": metrics or {},
        "export": {
            "opset": OPSET, "torch": torch.__version__, "onnx": onnx.__version__,
            "python": platform.python_version(), "parity": report,
            "parity_tolerance": {"normalised_atol": ATOL_NORMALISED, "raw_rtol": RTOL_RAW},
        },
        "models": {Precision.FP32.value: {"file": "model.onnx", "precision": Precision.FP32.value, "opset": OPSET}},
        "files": {"model.onnx": {}},
    }
    write_manifest(folder, manifest)
    return folder
