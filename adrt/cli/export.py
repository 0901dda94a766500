"""`adrt export`, `adrt check` and `adrt build-engine`: bundles from run folders, and what TensorRT makes of them
(export needs torch and onnx)."""
from __future__ import annotations

from pathlib import Path

import click

from adrt.cli.options import geometry_options, parse_geometry


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
@click.option("--no-trt86", is_flag=True,
              help="Skip the opset-17 copies (model*.trt86.onnx) that TensorRT 8.6 / JetPack 6.0 builds from.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle at OUT (never any other folder).")
@geometry_options
def export(run, out, data, precisions, calib, int8_target, no_trt86, overwrite, input_size, tile, overlap, letterbox,
           pad_value):
    """Export the detector of run folder RUN to a bundle at OUT.

    By default with the run's input geometry. --tile N --input-size HxW (N the run's size) exports a
    tiled bundle taking HxW frames; --letterbox one that letterboxes; both recalibrate on the run's
    held-out images (from --data, or the dataset recorded in the run).
    """
    if "int8" in precisions and calib is None:
        raise click.BadParameter("int8 needs calibration images: --calib DIR (normal images)", param_hint="--calib")
    geometry = size = None
    if any(v is not None for v in (input_size, tile, overlap, pad_value)) or letterbox:
        geometry, size = parse_geometry(input_size, tile, overlap, letterbox, pad_value)
    from adrt.export.pipeline import export_run   # torch: loaded for this command only

    b = export_run(run, out, data, precisions, calib, int8_target, trt86=not no_trt86, overwrite=overwrite,
                   log=lambda m: click.echo(m, err=True), geometry=geometry, input_size=size)
    click.echo(f"bundle: {b}")


@click.command("check")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--trt", "targets", multiple=True, default=("8.6", "10", "latest"), show_default=True,
              metavar="8.6|10|latest", help="TensorRT target(s) whose parser rules to apply (repeatable).")
@click.option("--dla", is_flag=True, help="Also the DLA rules (fp16/int8 models, static batch, DLA layers).")
@click.option("--gpu-fallback", is_flag=True, help="With --dla: layers DLA cannot run are notes, not errors.")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="With --dla: the static batch to build for.")
@click.option("--json", "as_json", is_flag=True, help="Print the violations as JSON.")
@click.pass_context
def check_cmd(ctx, bundle, targets, dla, gpu_fallback, batch, as_json):
    """Check BUNDLE's graphs (or one .onnx file) against TensorRT's ONNX-parser rules.

    Each violation names the node, its operator, the rule and the rule's source (onnx-tensorrt's
    importers and support matrix, NVIDIA's documentation). Exit status 1 when any is found.
    """
    import json

    from adrt.export.trt_check import check_bundle, check_model, fatal_count, format_report, parse_target

    targets = [parse_target(t) for t in dict.fromkeys(targets)]
    profile = (batch, batch, batch) if batch else None
    if bundle.suffix == ".onnx" and bundle.is_file():
        report = {t: {bundle.name: check_model(bundle, t, dla=dla, gpu_fallback=gpu_fallback,
                                               precision=_file_precision(bundle), profile=profile)}
                  for t in targets}
    else:
        report = check_bundle(bundle, targets, dla=dla, gpu_fallback=gpu_fallback, profile=profile)
    if as_json:
        click.echo(json.dumps({t: {k: [v.to_dict() for v in vs] for k, vs in per.items()}
                               for t, per in report.items()}, indent=1))
    else:
        click.echo(format_report(report))
    ctx.exit(1 if fatal_count(report) else 0)


def _file_precision(path: Path) -> str:
    """A lone .onnx file's precision, from adrt's file names (model.fp16.onnx, model.int8.trt86.onnx)."""
    parts = path.name.split(".")
    return next((p for p in parts if p in ("fp16", "int8")), "fp32")


@click.command("build-engine")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp16", show_default=True,
              help="fp16 needs the bundle's fp16 model, int8 its int8 (QDQ) model (adrt export --precision).")
@click.option("--min-batch", type=click.IntRange(min=1), default=1, show_default=True, help="Profile: smallest batch.")
@click.option("--opt-batch", type=click.IntRange(min=1), default=1, show_default=True, help="Profile: batch tuned for.")
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True, help="Profile: largest batch.")
@click.option("--workspace-mib", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Builder workspace limit.")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="Timing cache file to reuse and update (default: one per GPU and TensorRT version under ~/.cache/adrt).")
@click.option("--no-timing-cache", is_flag=True, help="Build without a timing cache.")
@click.option("--device", type=click.IntRange(min=0), default=0, show_default=True, help="CUDA device index.")
@click.option("--dla-core", type=click.IntRange(min=0), default=None,
              help="Build for this DLA core (Jetson Orin NX/AGX): fp16 or int8, a static batch (min = opt = max).")
@click.option("--gpu-fallback", is_flag=True, help="With --dla-core: run the layers DLA cannot run on the GPU.")
@click.option("--no-check", is_flag=True, help="Skip the parity check of the new engine against ONNX Runtime CPU.")
@click.option("--keep-failed", is_flag=True,
              help="Store a plan that fails its parity check (recorded as failed in the manifest).")
@click.option("--no-conformance", is_flag=True,
              help="Parse even if adrt check finds violations of the installed TensorRT's parser rules.")
def build_engine_cmd(bundle, precision, min_batch, opt_batch, max_batch, workspace_mib, timing_cache, no_timing_cache,
                     device, dla_core, gpu_fallback, no_check, keep_failed, no_conformance):
    """Build a TensorRT engine for this GPU from BUNDLE's ONNX and store it in BUNDLE.

    The graph is checked against the installed TensorRT's parser rules first (TensorRT 8.x builds
    from the opset-17 copy, made if missing); the engine is then compared with ONNX Runtime CPU
    (every output's shape, dtype and values; tolerances per precision in adrt.export.engine) and
    not stored if it differs.
    """
    import json

    from adrt.export.engine import BatchProfile, DlaOptions, build_into_bundle

    if gpu_fallback and dla_core is None:
        raise click.BadParameter("--gpu-fallback goes with --dla-core N", param_hint="--gpu-fallback")
    profile = BatchProfile(min_batch, opt_batch, max_batch)
    cache = None if no_timing_cache else (timing_cache or True)
    dla = None if dla_core is None else DlaOptions(dla_core, gpu_fallback)
    record = build_into_bundle(bundle, precision, profile, workspace_mib, cache, device, not no_check,
                               log=lambda m: click.echo(m, err=True), dla=dla, keep_failed=keep_failed,
                               conformance=not no_conformance)
    where = f", DLA core {record['dla_core']}" if "dla_core" in record else ""
    click.echo(f"engine: {Path(bundle) / record['file']}  ({record['gpu']}{where}, TensorRT {record['tensorrt']}, "
               f"{record['precision']} from {record['onnx']}, built in {record['build_seconds']} s, timing cache "
               f"{record['timing_cache']})")
    if "parity_vs_ort_cpu" in record:
        click.echo("parity vs ONNX Runtime CPU (max |Δ|, raw outputs relative to their range): " + json.dumps(
            {k: round(v["max_rel"] if k.startswith("raw") else v["max_abs"], 6)
             for k, v in record["parity_vs_ort_cpu"].items() if "max_abs" in v})
            + ("" if record["parity_ok"] else "  FAILED: " + "; ".join(record.get("parity_failures", []))))
