"""`adrt train`, `adrt methods` and `adrt demo` (need torch)."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import click

from adrt.cli.options import geometry_options, overwrite_option, parse_geometry, parse_set
from adrt.errors import AdrtError


@click.command()
@click.argument("method")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="MVTec AD category folder or a folder of good images.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run folder to write.")
@click.option("--size", type=click.IntRange(min=32), default=None, help="Square model size (default 256; with --tile, the tile's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--holdout", type=click.FloatRange(0.0, 0.9, min_open=True), default=0.1, show_default=True,
              help="Fraction of normal images held out for calibration.")
@click.option("--set", "options", multiple=True, metavar="KEY=VALUE", help="Method option, e.g. coreset_ratio=0.05.")
@click.option("--export", "bundle", type=click.Path(path_type=Path), default=None, help="Also export a bundle here.")
@click.option("--threads", type=int, default=None, help="Torch threads, 1 to 4 per CPU (default: torch's choice).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing run folder at --out (and bundle at --export); never any other folder.")
@click.option("--calibration", type=click.Choice(["std", "fpr", "f1"]), default=None,
              help="Threshold rule on the held-out normal images: std (mean + k*std, the default), fpr (a target "
                   "false-positive rate; implied by --fpr), f1 (F1-optimal with --defects; implied by it).")
@click.option("--k", type=float, default=None, help="std rule: threshold = mean + K*std (default 3).")
@click.option("--fpr", type=float, default=None,
              help="fpr rule: target false-positive rate per normal image, e.g. 0.01 (the achieved rate's "
                   "uncertainty, given the held-out count, is printed and recorded).")
@click.option("--pixel-fpr", type=float, default=None,
              help="fpr/f1 rules: target false-positive rate per normal pixel (default: --fpr, or 0.01).")
@click.option("--defects", type=click.Path(path_type=Path), default=None,
              help="Labelled defect images for --calibration f1: an MVTec-style folder (test/<type>/ with "
                   "ground_truth masks) or a folder of defect images; not the dataset you evaluate on.")
@click.option("--image-score", default="max", show_default=True, metavar="max|topk:FRACTION",
              help="Image score: the method's own (max of the map, PatchCore's reweighted max), or the mean of the "
                   "top FRACTION of the smoothed map, e.g. topk:0.01 (robust to one hot pixel, e.g. at the border).")
@geometry_options
def train(method, data, out, size, seed, holdout, options, bundle, threads, overwrite, calibration, k, fpr,
          pixel_fpr, defects, image_score, input_size, tile, overlap, letterbox, pad_value):
    """Fit METHOD (see `adrt methods`) on the normal images of DATA.

    With --tile N --input-size HxW the frames are resized to HxW and the method fits on their NxN
    tiles (cut as the exported graph cuts them); the bundle takes HxW frames.
    """
    from adrt.outputs import Kind, check_output
    from adrt.thresholds import options_from_cli
    from adrt.train.fit import input_spec, make_config
    from adrt.train.fit import train as run_train

    opts = parse_set(options)
    make_config(method, opts)                     # unknown method or bad --set: before anything else
    geometry, frame = parse_geometry(input_size, tile, overlap, letterbox, pad_value)
    if geometry.tiled:
        if size is not None and (size, size) != tuple(geometry.tile):
            raise AdrtError(f"--size {size} and --tile {tile}: with --tile the model's size is the tile's")
        size = geometry.tile[0]
    elif frame is not None and size is not None:
        raise AdrtError("--size and --input-size: give one (--input-size HxW for a non-square model)")
    size = 256 if size is None else size
    input_spec(size, frame, geometry)             # sizes and tiling checked before anything else
    cal = options_from_cli(calibration, k, fpr, pixel_fpr, defects)
    if bundle is not None:
        # Both outputs are checked before training starts, not after it.
        if _nested(bundle, out):
            raise AdrtError(f"--export {bundle} and --out {out} overlap; the bundle and the run folder must be "
                            f"two separate folders")
        check_output(bundle, Kind.BUNDLE, overwrite=overwrite, inputs=[data], option="--export")
    run = run_train(method, data, out, size=size, seed=seed, holdout=holdout, options=opts, threads=threads,
                    overwrite=overwrite, geometry=geometry, input_size=frame, calibration=cal, defects=defects,
                    image_score=image_score)
    click.echo(f"run folder: {run}")
    if bundle is not None:
        from adrt.export.pipeline import export_run

        export_run(run, bundle, data, overwrite=overwrite, log=lambda m: click.echo(m, err=True))
        click.echo(f"bundle: {bundle}")


def _nested(a: Path, b: Path) -> bool:
    ra, rb = Path(a).resolve(), Path(b).resolve()
    return ra == rb or ra in rb.parents or rb in ra.parents


@click.command()
def methods():
    """List registered methods and their options (with defaults)."""
    from adrt.train.registry import available, get_method

    for name in available():
        cls = get_method(name)
        click.echo(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0] if cls.__doc__ else ''}")
        for f in fields(cls.Config):
            click.echo(f"    {f.name} = {getattr(cls.Config(), f.name)!r}")


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True,
              help="Demo folder. Re-running replaces a demo folder made before (recognised by its .adrt-demo "
                   "marker and contents), never any other folder.")
@click.option("--method", default="patchcore", show_default=True)
@click.option("--size", type=click.IntRange(min=32), default=128, show_default=True)
def demo(out, method, size):
    """Generate a dataset, train, export, evaluate, infer and benchmark, all on the CPU."""
    from adrt.outputs import DEMO_MARKER, Kind, recognise
    from adrt.train.fit import make_config

    make_config(method)                           # an unknown method fails before anything is written
    replaced = _demo_folder(out, recognise(out, Kind.DEMO))
    try:
        _run_demo(out, method, size)
    except BaseException:
        # A failed demo leaves what was there before (or nothing), not a half-made folder.
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        if replaced is not None:
            replaced.rename(out)
        raise
    if replaced is not None:
        import shutil

        shutil.rmtree(replaced, ignore_errors=True)
    (out / DEMO_MARKER).touch()


def _demo_folder(out: Path, ours: bool) -> Path | None:
    """Make ``out`` ready for the demo: new, empty, or a demo folder (moved aside, returned)."""
    from adrt.errors import OutputError
    from adrt.outputs import DEMO_MARKER, check_parent, make_folder

    if out.exists() and (not out.is_dir() or out.is_symlink()):
        raise OutputError(f"--out {out} exists and is not a folder; choose another --out")
    check_parent(out)
    aside = None
    if out.is_dir() and any(out.iterdir()):
        if not ours:
            raise OutputError(f"--out {out} is a folder that is not a demo folder made by adrt (it holds other "
                              f"files); refusing to replace it: choose another --out")
        import secrets

        aside = out.parent / f".{out.name}.adrt-old-{secrets.token_hex(4)}"
        out.rename(aside)
    make_folder(out)
    # The marker first: a demo interrupted half-way is still recognised as one next time.
    (out / DEMO_MARKER).touch()
    return aside


def _run_demo(out: Path, method: str, size: int) -> None:
    from adrt.bench.harness import bench
    from adrt.bench.report import write_report
    from adrt.bench.report_md import to_markdown
    from adrt.evaluate import evaluate_session, record_metrics
    from adrt.export.pipeline import export_run
    from adrt.metrics import format_table
    from adrt.runtime import load
    from adrt.synth import make_dataset
    from adrt.train.fit import make_config
    from adrt.train.fit import train as run_train
    from adrt.train.registry import get_method

    if get_method(method).needs_references(make_config(method)):
        from adrt.synth_pairs import make_pairs      # a method that compares each image with a reference

        data = make_pairs(out / "data", size=size, n_train=60, n_test_good=10, n_test_change=10, designs=4,
                          shift=min(4.0, size / 128), seed=0)
    else:
        data = make_dataset(out / "data", size=size, n_train=60, n_test_good=10, n_test_defect=10, seed=0)
    click.echo(f"1/5 dataset: {data}")
    run = run_train(method, data, out / "run", size=size)
    click.echo(f"2/5 trained: {run}")
    bundle = export_run(run, out / "bundle", data, log=lambda m: click.echo(m, err=True))
    click.echo(f"3/5 exported: {bundle}")
    with load(bundle) as s:
        result = evaluate_session(s, data, out / "eval", overlays=6)
        click.echo("4/5 evaluated with ONNX Runtime (CPU):\n" + format_table(result))
        r = s.run_files(sorted((data / "test").rglob("*.png"))[:4])
        click.echo("    infer: " + ", ".join(f"{x:.2f}" for x in r.scores))
    record_metrics(bundle, data, result)
    report = bench(bundle, runs=30, torch_run=run)
    paths = write_report(report, out / "bench")
    click.echo("5/5 benchmark:\n" + to_markdown(report))
    click.echo(f"\nbundle:   {bundle}  (the deployable detector: manifest.json + model.onnx)")
    click.echo(f"overlays: {out / 'eval' / 'overlays'};  metrics: {out / 'eval' / 'metrics.json'}")
    click.echo(f"report:   {', '.join(str(p) for p in paths)}  (open the .html in a browser)")
    click.echo(f"next:     adrt infer {bundle} {data / 'test'} --out scores.csv   "
               f"(or your own images: adrt train {method} --data YOUR_DATA --out runs/mine --export bundles/mine)")


@click.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--size", type=click.IntRange(min=16), default=None, help="Image side [default: 128; 512 with --pairs].")
@click.option("--train", "n_train", type=click.IntRange(min=1), default=60, show_default=True)
@click.option("--test-good", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--test-defect", type=click.IntRange(min=1), default=10, show_default=True,
              help="Per defect type (with --pairs: changed images in all, half missing, half extra strokes).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--pairs", is_flag=True, help="Reference/test pairs for change detection (printed-circuit-like designs "
              "captured with small shifts, brightness changes and noise; missing/extra strokes), with a reference/ "
              "folder mirroring train/ and test/.")
@click.option("--designs", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --pairs: distinct designs (1: one golden image, golden.png; more: references differ per image).")
@click.option("--shift", type=click.FloatRange(min=0), default=4.0, show_default=True,
              help="With --pairs: the largest translation of a capture, in pixels.")
@overwrite_option
def synth(out, size, n_train, test_good, test_defect, seed, pairs, designs, shift, overwrite):
    """Write a procedural dataset to OUT (MVTec AD layout, exact masks)."""
    if pairs:
        from adrt.synth_pairs import make_pairs

        make_pairs(out, size=size or 512, n_train=n_train, n_test_good=test_good, n_test_change=test_defect,
                   designs=designs, shift=shift, seed=seed, overwrite=overwrite)
    else:
        from adrt.synth import make_dataset

        make_dataset(out, size=size or 128, n_train=n_train, n_test_good=test_good, n_test_defect=test_defect,
                     seed=seed, overwrite=overwrite)
    click.echo(f"dataset written to {out}")
