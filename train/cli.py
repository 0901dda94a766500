"""`adrt train`, `adrt methods` and `adrt demo` (need torch)."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import click

from adrt.errors import AdrtError


def _parse_options(items) -> dict:
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep:
            raise AdrtError(f"--set {it!r}: expected KEY=VALUE")
        out[k.strip().replace("-", "_")] = v.strip()
    return out


@click.command()
@click.argument("method")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="MVTec AD category folder or a folder of good images.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run folder to write.")
@click.option("--size", type=click.IntRange(min=32), default=256, show_default=True, help="Square input size.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--holdout", type=click.FloatRange(0.0, 0.9, min_open=True), default=0.1, show_default=True,
              help="Fraction of normal images held out for calibration.")
@click.option("--set", "options", multiple=True, metavar="KEY=VALUE", help="Method option, e.g. coreset_ratio=0.05.")
@click.option("--export", "bundle", type=click.Path(path_type=Path), default=None, help="Also export a bundle here.")
@click.option("--threads", type=click.IntRange(min=1), default=None)
def train(method, data, out, size, seed, holdout, options, bundle, threads):
    """Fit METHOD (see `adrt methods`) on the normal images of DATA."""
    from adrt.train.fit import train as run_train

    run = run_train(method, data, out, size=size, seed=seed, holdout=holdout, options=_parse_options(options),
                    threads=threads)
    click.echo(f"run folder: {run}")
    if bundle is not None:
        from adrt.export.cli import export_run

        export_run(run, bundle, data, log=lambda m: click.echo(m, err=True))
        click.echo(f"bundle: {bundle}")


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
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True)
@click.option("--method", default="patchcore", show_default=True)
@click.option("--size", type=click.IntRange(min=32), default=128, show_default=True)
def demo(out, method, size):
    """Generate a dataset, train, export, evaluate, infer and benchmark, all on the CPU."""
    from adrt.commands import record_metrics
    from adrt.evaluate import evaluate_session
    from adrt.export.cli import export_run
    from adrt.metrics import format_table
    from adrt.runtime import load
    from adrt.runtime.bench import bench, to_markdown, write_report
    from adrt.synth import make_dataset
    from adrt.train.fit import train as run_train

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
    write_report(report, out / "bench")
    click.echo("5/5 benchmark:\n" + to_markdown(report))
    click.echo(f"overlays in {out / 'eval' / 'overlays'}; metrics in {out / 'eval' / 'metrics.json'}")
