"""A run folder to a bundle, in one call: the fused fp32 graph, the reduced-precision variants, the opset-17
copies for TensorRT 8.6 and the TensorRT parser conformance counts, assembled beside the target and moved
into place once complete. Used by `adrt export`, `adrt train --export`, `adrt demo` and `adrt train-many`."""
from __future__ import annotations

from pathlib import Path

from adrt.data import Dataset, load_images
from adrt.errors import InputError
from adrt.export.onnx import write_bundle
from adrt.export.quantize import Precision, add_variant, load_calibration, parse_precision
from adrt.export.trt86 import add_trt86_variants
from adrt.export.trt_check import check_bundle, fatal_count, format_report
from adrt.outputs import Kind, check_output, staged_folder
from adrt.runtime.bundle import read_manifest, write_manifest
from adrt.train.fit import load_run, with_geometry


def export_run(run, out, data=None, precisions=(), calib=None, int8_target="tensorrt", trt86=True, *,
               overwrite: bool = False, log=lambda m: None, geometry=None, input_size=None) -> Path:
    """Export a run folder to a bundle; parity is checked on real training images when ``data`` is given.

    ``geometry`` (adrt.contract.Geometry) / ``input_size`` (height, width): export behind another
    input geometry than the run's (e.g. tiles of the trained size over a full frame); the detector
    is then recalibrated on the run's held-out images (adrt.train.fit.with_geometry).
    ``precisions``: reduced-precision models to add besides fp32 ("fp16", "int8"; int8 needs
    ``calib``, a folder of normal images), see adrt.export.quantize. ``trt86``: also write the
    opset-17 copies TensorRT 8.6 builds from (adrt.export.trt86). Every model is then checked
    against TensorRT's parser rules (adrt.export.trt_check): the counts go into the manifest
    (``export.tensorrt_check``) and ``log`` gets a warning listing any violation. The bundle is
    assembled beside ``out`` and moved into place once complete; an existing bundle is replaced only
    with ``overwrite``, anything else (the run itself, the data, a foreign folder) never.
    """
    inputs = [p for p in (run, data, calib) if p is not None]
    check_output(out, Kind.BUNDLE, overwrite=overwrite, inputs=inputs)
    wanted = [p for p in dict.fromkeys(parse_precision(p) for p in precisions) if p is not Precision.FP32]
    if Precision.INT8 in wanted and calib is None:
        raise InputError("int8 needs calibration images: --calib DIR (normal images)")
    det, meta = load_run(run)
    if geometry is not None or input_size is not None:
        det, meta = with_geometry(det, meta, geometry if geometry is not None else det.geometry, input_size, data,
                                  log)
    # Calibration images are read (and counted) before anything is written.
    calib_data = load_calibration(calib, det.spec.height, det.spec.width) if Precision.INT8 in wanted else None
    # Lets `adrt bench` find the torch detector of this bundle on the training machine.
    meta["training"]["run_folder"] = str(Path(run).resolve())
    samples = None
    if data is not None:
        ds = Dataset.open(data)
        paths = [s.path for s in ds.test if s.label == 1][:1] + ds.train[:2]
        samples = load_images(paths, det.spec.height, det.spec.width, det.geometry)
    out = Path(out)
    with staged_folder(out, Kind.BUNDLE, overwrite=overwrite, inputs=inputs) as tmp:
        write_bundle(det, meta, tmp, sample_images=samples)
        for p in wanted:
            add_variant(tmp, p, calib_data=calib_data, int8_target=int8_target)
        if trt86:
            add_trt86_variants(tmp, samples)
        record_conformance(tmp, log)
    return out


def record_conformance(bundle: Path, log=lambda m: None) -> dict:
    """Check every model of ``bundle`` against each TensorRT target's parser rules; record the
    violation counts in the manifest (``export.tensorrt_check``) and log a warning listing them."""
    report = check_bundle(bundle)
    manifest = read_manifest(bundle)
    manifest.setdefault("export", {})["tensorrt_check"] = {
        tgt: {key: sum(v.fatal for v in vs) for key, vs in per.items()} for tgt, per in report.items()}
    write_manifest(bundle, manifest)
    if fatal_count(report):
        log("warning: TensorRT's ONNX parser would refuse or misread parts of this bundle (adrt check):\n"
            + format_report({t: {k: v for k, v in per.items() if any(x.fatal for x in v)} for t, per in report.items()},
                            notes=False))
    return report
