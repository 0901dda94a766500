"""`adrt export` (needs torch and onnx)."""
from __future__ import annotations

from pathlib import Path

import click


def export_run(run, out, data=None, precisions=(), calib=None, int8_target="tensorrt", *,
               overwrite: bool = False) -> Path:
    """Export a run folder to a bundle; parity is checked on real training images when ``data`` is given.

    ``precisions``: reduced-precision models to add besides fp32 ("fp16", "int8"; int8 needs
    ``calib``, a folder of normal images), see adrt.export.quantize. The bundle is assembled beside
    ``out`` and moved into place once complete; an existing bundle is replaced only with
    ``overwrite``, anything else (the run itself, the data, a foreign folder) never.
    """
    from adrt.data import Dataset, load_images
    from adrt.export.onnx import write_bundle
    from adrt.export.quantize import Precision, add_variant, load_calibration, parse_precision
    from adrt.outputs import Kind, check_output, staged_folder
    from adrt.train.fit import load_run

    inputs = [p for p in (run, data, calib) if p is not None]
    check_output(out, Kind.BUNDLE, overwrite=overwrite, inputs=inputs)
    wanted = [p for p in dict.fromkeys(parse_precision(p) for p in precisions) if p is not Precision.FP32]
    if Precision.INT8 in wanted and calib is None:
        raise click.BadParameter("int8 needs calibration images: --calib DIR (normal images)", param_hint="--calib")
    det, meta = load_run(run)
    # Calibration images are read (and counted) before anything is written.
    calib_data = load_calibration(calib, det.spec.height, det.spec.width) if Precision.INT8 in wanted else None
    # Lets `adrt bench` find the torch detector of this bundle on the training machine.
    meta["training"]["run_folder"] = str(Path(run).resolve())
    samples = None
    if data is not None:
        ds = Dataset.open(data)
        paths = [s.path for s in ds.test if s.label == 1][:1] + ds.train[:2]
        samples = load_images(paths, det.spec.height, det.spec.width)
    out = Path(out)
    with staged_folder(out, Kind.BUNDLE, overwrite=overwrite, inputs=inputs) as tmp:
        write_bundle(det, meta, tmp, sample_images=samples)
        for p in wanted:
            add_variant(tmp, p, calib_data=calib_data, int8_target=int8_target)
    return out


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Bundle folder to write.")
@click.option("--data", type=click.Path(path_type=Path), default=None, help="Dataset for the parity check images.")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["fp32", "fp16", "int8"]),
              help="Also add this reduced-precision model (repeatable); fp32 model.onnx is always there.")
@click.option("--calib", type=click.Path(path_type=Path), default=None,
              help="Normal images for INT8 calibration (MVTec category or image folder; at least 16).")
@click.option("--int8-target", type=click.Choice(["tensorrt", "cpu"]), default="tensorrt", show_default=True,
              help="tensorrt: symmetric int8 activations (TensorRT, ARM); cpu: uint8 activations (fastest on x86 ORT).")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle at OUT (never any other folder).")
def export(run, out, data, precisions, calib, int8_target, overwrite):
    """Export the detector of run folder RUN to a bundle at OUT."""
    b = export_run(run, out, data, precisions, calib, int8_target, overwrite=overwrite)
    click.echo(f"bundle: {b}")
