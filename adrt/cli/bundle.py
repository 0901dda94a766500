"""Torch-free commands on bundles: eval, infer, bench, info."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import click

from adrt.cli.options import overwrite_option
from adrt.errors import DataError, OutputError
from adrt.runtime.backends import backend_names

backend_option = click.option("--backend", type=click.Choice(backend_names()), default="ort-cpu", show_default=True,
                              help="Execution backend; a backend that is not really active is an error.")
threads_option = click.option("--threads", type=int, default=None,
                              help="Intra-op threads, 1 to 4 per CPU (default: ONNX Runtime's choice).")
threshold_option = click.option("--threshold", type=float, default=None,
                                help="Image decision threshold on the calibrated score scale, in (0, 1); 0.5 (the "
                                     "default) is the bundle's calibrated threshold, higher flags fewer images.")
pixel_threshold_option = click.option("--pixel-threshold", type=float, default=None,
                                      help="Pixel threshold on the calibrated map scale, in (0, 1) (default 0.5, the "
                                           "bundle's): the contour drawn on overlays.")
precision_option = click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32",
                                show_default=True, help="Model variant of the bundle to run (TensorRT: plan of "
                                "that precision); `adrt info` lists what the bundle has.")


@click.command("eval")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Dataset in MVTec AD layout.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Folder for metrics.json/txt and overlays.")
@click.option("--overlays", type=click.IntRange(min=0), default=0, show_default=True, help="PNG overlays to write.")
@click.option("--record", is_flag=True, help="Store the metrics in the bundle's manifest.")
@overwrite_option
@backend_option
@threads_option
@precision_option
@threshold_option
@pixel_threshold_option
def eval_cmd(bundle, data, out, overlays, record, overwrite, backend, threads, precision, threshold, pixel_threshold):
    """Image AUROC, pixel AUROC, AUPRO and F1-max of BUNDLE on DATA's test split."""
    from adrt.evaluate import evaluate_session, record_metrics
    from adrt.metrics import format_table
    from adrt.outputs import Kind, check_output
    from adrt.runtime import load

    if out is not None:        # refused before the work, not after it
        check_output(out, Kind.EVAL, overwrite=overwrite, inputs=[bundle, data])
    with load(bundle, backend=backend, threads=threads, precision=precision, threshold=threshold,
              pixel_threshold=pixel_threshold) as s:
        result = evaluate_session(s, data, out, overlays, overwrite=overwrite, inputs=[bundle, data])
    click.echo(format_table(result))
    if record:
        record_metrics(bundle, data, result, precision)


def _collect_images(inputs, skip_references: bool = False) -> list[Path]:
    """Files as given; folders scanned recursively for images (entries named like images that are
    not regular files, e.g. a FIFO or a folder ``x.png``, are skipped with a notice).
    ``skip_references``: reference images in a scanned folder (adrt.runtime.pairs) are not collected."""
    from adrt.runtime.pairs import is_reference
    from adrt.runtime.image import scan_images

    paths = []
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            found = scan_images(p, recursive=True, notice=lambda m: click.echo(f"note: {m}", err=True))
            if skip_references:
                found = [f for f in found if not is_reference(f, root=p)]
            if not found:
                raise DataError(f"{p}: no images found")
            paths += found
        elif p.is_file():
            paths.append(p)
        elif p.exists():
            raise DataError(f"{p}: not a regular file or a folder (expected an image file or a folder of images)")
        else:
            raise DataError(f"{p}: no such file or folder")
    return paths


def _looks_like_results(path: Path) -> bool:
    """An `adrt infer` results file: CSV with its header, or JSON rows with path and score."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", "replace")
    except OSError:
        return False
    if path.suffix.lower() == ".json":
        return head.lstrip().startswith("[") and ('"path"' in head or head.strip() == "[]")
    return head.startswith("path,score,label,raw_score")


def _results_text(rows: list[dict], as_json: bool) -> str:
    if as_json:
        return json.dumps(rows, indent=2)
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Results file (.csv or .json); default: CSV on stdout.")
@click.option("--overlays", type=click.Path(path_type=Path), default=None, help="Folder for PNG overlays.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Refuse images larger than this many pixels before decoding (default: $ADRT_MAX_PIXELS or 64 MP).")
@overwrite_option
@backend_option
@threads_option
@precision_option
@threshold_option
@pixel_threshold_option
def infer(bundle, inputs, out, overlays, batch_size, max_pixels, overwrite, backend, threads, precision, threshold,
          pixel_threshold):
    """Score INPUTS (images or folders) with BUNDLE.

    A bundle that compares each image with a reference (`adrt info`: inputs image, reference)
    pairs every image with its reference: DATA/reference/<same path below DATA> or <stem>_ref.png
    next to it; references in scanned folders are not scored themselves."""
    from adrt.outputs import Kind, check_output, check_output_file, ensure_parent, staged_folder, write_bytes_atomic
    from adrt.runtime import load
    from adrt.runtime.image import read_image

    # Every output is checked (and its folder made) before any image is scored.
    if out is not None:
        if out.suffix.lower() not in (".csv", ".json"):
            raise OutputError(f"--out {out}: expected a .csv or .json file name")
        check_output_file(out, overwrite=overwrite, looks_ours=_looks_like_results, what="results file",
                          inputs=[bundle, *inputs])
        ensure_parent(out)
    if overlays is not None:
        check_output(overlays, Kind.OVERLAYS, overwrite=overwrite, inputs=[bundle, *inputs], option="--overlays")
    with load(bundle, backend=backend, threads=threads, precision=precision, threshold=threshold,
              pixel_threshold=pixel_threshold) as s:
        paths = _collect_images(inputs, skip_references=s.paired)
        r = s.run_files(paths, batch_size=batch_size, max_pixels=max_pixels)
        rows = [{"path": str(p), "score": float(r.scores[i]), "label": "anomalous" if r.labels[i] else "normal",
                 "raw_score": float(r.raw_scores[i])} for i, p in enumerate(paths)]
        if overlays is not None:
            from adrt.runtime.overlay import save_panel

            with staged_folder(overlays, Kind.OVERLAYS, overwrite=overwrite, inputs=[bundle, *inputs],
                               option="--overlays") as tmp:
                for i, p in enumerate(paths):
                    # Index prefix: inputs from different folders often share file names.
                    name = f"{i:05d}_{p.parent.name}_{p.stem}.png"
                    save_panel(tmp / name, read_image(p, max_pixels=max_pixels), r.maps[i], float(r.scores[i]),
                               s.threshold, pixel_threshold=s.pixel_threshold, raw_score=float(r.raw_scores[i]))
                    rows[i]["overlay"] = str(overlays / name)
    text = _results_text(rows, out is not None and out.suffix.lower() == ".json")
    if out is None:
        sys.stdout.write(text)
    else:
        write_bytes_atomic(out, text)
    if out is not None:
        n_bad = sum(r["label"] == "anomalous" for r in rows)
        click.echo(f"{len(rows)} images scored, {n_bad} anomalous; results in {out}", err=True)


@click.command("bench")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--backend", "backends", multiple=True, type=click.Choice(backend_names()), default=("ort-cpu",),
              show_default=True, help="Execution backend; repeat for several. One that cannot run here is reported "
                                      "as skipped, with the reason.")
@click.option("--threads", "threads", multiple=True, type=click.IntRange(min=1),
              help="Intra-op threads; repeat for several (default: the runtime's choice).")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["fp32", "fp16", "int8"]),
              default=("fp32",), show_default=True,
              help="Model variant of the bundle (see `adrt info`); repeat for several. One the bundle lacks is "
                   "reported as skipped.")
@click.option("--torch-run", "torch_runs", multiple=True, metavar="[BUNDLE=]RUN",
              help="Run folder a bundle was exported from: also time it in torch eager mode. RUN alone with one "
                   "bundle; BUNDLE=RUN (path or folder name as given) with several. Repeatable.")
@click.option("--no-torch", is_flag=True,
              help="Don't time torch eager for bundles whose recorded run folder is here (the default when torch "
                   "is installed).")
@click.option("--torch-device", "torch_devices", multiple=True, type=click.Choice(["cpu", "cuda"]), default=("cpu",),
              show_default=True, help="Devices for torch eager (backends torch-eager, torch-cuda); repeatable.")
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True,
              help="Timed batch-1 runs per configuration.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=5, show_default=True,
              help="The timed runs are split into this many interleaved rounds over all configurations.")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True, help="Batch for throughput.")
@click.option("--frame", default="480x640", show_default=True, metavar="HxW",
              help="Camera frame size for timing the host-side resize to the bundle's size.")
@click.option("--profile-runs", type=click.IntRange(min=0), default=10, show_default=True,
              help="Profiled runs for the in-graph pre/model/post split (ORT CPU); 0 skips it.")
@click.option("--no-gemm", is_flag=True, help="Skip the numpy GEMM reference (no achieved-vs-GEMM fraction).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Report path: writes OUT.json, OUT.md and OUT.html (existing ones only with --overwrite, and "
                   "only when they are adrt bench reports).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier report at --out (never any other file).")
@click.option("--compare", "compare_to", type=click.Path(path_type=Path), default=None,
              help="An earlier report (.json from --out) to compare with: ratios and flagged regressions.")
@click.option("--regression-threshold", type=click.FloatRange(min=0), default=0.10, show_default=True,
              help="With --compare: slower mean latency (or lower throughput) by more than this fraction is a "
                   "regression.")
@click.option("--fail-on-regression", is_flag=True, help="With --compare: exit with status 1 on any regression.")
@click.pass_context
def bench_cmd(ctx, bundles, backends, threads, precisions, torch_runs, no_torch, torch_devices, runs, warmup, rounds,
              batch, frame, profile_runs, no_gemm, out, overwrite, compare_to, regression_threshold,
              fail_on_regression):
    """Latency, throughput, memory and FLOPs of BUNDLES per backend, precision and thread count, interleaved."""
    from adrt.bench.harness import bench_many
    from adrt.bench.plan import pair_torch_runs, parse_frame, recorded_torch_runs
    from adrt.bench.report import compare, load_report, looks_like_report, report_paths, write_report
    from adrt.bench.report_md import to_markdown
    from adrt.outputs import check_output_file, ensure_parent

    if out is not None:        # the report's three files are checked before the long run, not after it
        for path in report_paths(out):
            check_output_file(path, overwrite=overwrite, looks_ours=looks_like_report, what="bench report",
                              inputs=bundles)
        ensure_parent(out)
    old = load_report(compare_to) if compare_to is not None else None   # a bad file fails before the long run
    paired = pair_torch_runs(bundles, torch_runs)
    if not no_torch:
        paired.update(recorded_torch_runs(bundles, paired))
    report = bench_many(bundles, backends, threads or (None,), paired, runs=runs,
                        warmup=warmup, rounds=rounds, batch=batch, frame=parse_frame(frame),
                        profile_runs=profile_runs, gemm=not no_gemm, torch_devices=torch_devices,
                        precisions=precisions)
    if old is not None:
        report["compare"] = compare(report, old, regression_threshold, against=str(compare_to))
    click.echo(to_markdown(report))
    if out is not None:
        paths = write_report(report, out)
        click.echo("report: " + ", ".join(map(str, paths)), err=True)
    if old is not None and fail_on_regression and report["compare"]["regressions"]:
        click.echo(f"{report['compare']['regressions']} regression(s) against {compare_to}", err=True)
        ctx.exit(1)


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
def info(bundle):
    """Verify BUNDLE and summarise its manifest."""
    from adrt.runtime.bundle import open_bundle

    b = open_bundle(bundle)
    m = b.manifest
    i = m["input"]
    click.echo(f"bundle      {bundle} (format {m['format_version']}, adrt {m['adrt_version']}), checksums ok")
    click.echo(f"method      {m['method']}  {json.dumps(m.get('config', {}))}")
    click.echo(f"input       uint8 N×{i['height']}×{i['width']}×{i['channels']} {i['color']}, resize {i['resize']}")
    if b.contract.paired:
        click.echo(f"inputs      {', '.join(b.contract.inputs)}: every image with its reference image, same size")
    g = b.contract.geometry
    if g.tiled:
        ys, xs = g.grid(b.contract.input.height, b.contract.input.width)
        click.echo(f"geometry    tile: the full frame cut into {len(ys)}×{len(xs)} tiles of {g.tile[0]}×{g.tile[1]} "
                   f"(overlap {g.overlap}, {g.blend} blend) in the graph")
    elif g.mode == "letterbox":
        click.echo(f"geometry    letterbox: aspect kept, centred, padded with {list(g.pad_value)}")
    for k, v in m["models"].items():
        extra = f", int8 target {v['int8_target']}" if v.get("int8_target") else ""
        extra += f" (opset {v['opset']}" + (f", for {v['target']}" if v.get("target") else "") + ")" if v.get("opset") else ""
        click.echo(f"model       {k}: {v['file']}{extra}" + (f"; float: {v['float_parts']}" if v.get("float_parts") else ""))
    for tag, e in sorted(m.get("engines", {}).items()):
        prof = e.get("profile", {})
        batch = f", batch {prof['min'][0]}/{prof['opt'][0]}/{prof['max'][0]}" if prof.get("min") else ""
        click.echo(f"engine      {e.get('precision')}: {e.get('file')} for {e.get('gpu')} (sm {e.get('compute_capability')}), "
                   f"TensorRT {e.get('tensorrt')}{batch}, built {e.get('built', '?')}")
    if not m.get("engines"):
        click.echo("engine      none (build one on the target device: adrt build-engine BUNDLE)")
    cal = b.contract.calibration or {}
    for what in ("image", "pixel"):
        if cal.get(what):
            from adrt.contract import Decision
            from adrt.thresholds import describe

            click.echo(f"threshold   {describe(Decision.from_dict(cal[what]), what)}")
    t = m.get("training", {})
    click.echo(f"training    {t.get('dataset')}: {t.get('n_fit')} fit + {t.get('n_holdout')} calibration images, {t.get('seconds')} s")
    for name, res in m.get("metrics", {}).items():
        o = res["overall"]
        click.echo(f"metrics     {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in o.items() if isinstance(v, float)))
    b.cleanup()
