"""`adrt train-many`: a thin wrapper over adrt.cluster (Ray is imported only when it runs)."""
from __future__ import annotations

from pathlib import Path

import click

from adrt.cli.options import parse_set


def _overrides(method, size, seed, holdout, cpus, gpus, memory_mb, threads, no_eval, options) -> dict:
    out: dict = {}
    for key, value in (("method", method), ("size", size), ("seed", seed), ("holdout", holdout), ("cpus", cpus),
                       ("gpus", gpus), ("memory_mb", memory_mb), ("threads", threads)):
        if value is not None:
            out[key] = value
    if no_eval:
        out["evaluate"] = False
    if options:
        out["options"] = parse_set(options)
    return out


@click.command("train-many")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Output folder: runs/, bundles/, logs/, results.json and results.md.")
@click.option("--address", default=None, help="Existing Ray cluster ('auto' or host:port); default: a local Ray here.")
@click.option("--local-cpus", type=click.IntRange(min=1), default=None,
              help="CPUs of the local Ray (default: all of this machine's).")
@click.option("--local-gpus", type=click.IntRange(min=0), default=None, help="GPUs of the local Ray.")
@click.option("--max-retries", type=click.IntRange(min=0), default=3, show_default=True,
              help="Retries of a product whose worker or node died (a product's own error is not retried).")
@click.option("--overwrite", is_flag=True, help="Retrain into an earlier train-many output folder.")
@click.option("--method", default=None, help="Method for products that do not name one (default patchcore).")
@click.option("--size", type=int, default=None, help="Square input size (default 256).")
@click.option("--seed", type=int, default=None)
@click.option("--holdout", type=float, default=None, help="Calibration fraction (default 0.1).")
@click.option("--cpus", type=float, default=None, help="CPUs each product's task asks for (default 1).")
@click.option("--gpus", type=float, default=None, help="GPUs each product's task asks for (default 0).")
@click.option("--memory-mb", type=int, default=None, help="Memory each product's task asks for.")
@click.option("--threads", type=int, default=None, help="Torch threads per product (default: its CPUs).")
@click.option("--no-eval", is_flag=True, help="Skip evaluation on the test split.")
@click.option("--set", "options", multiple=True, metavar="KEY=VALUE", help="Method option for every product.")
def train_many_cmd(config, out, address, local_cpus, local_gpus, max_retries, overwrite, method, size, seed, holdout,
                   cpus, gpus, memory_mb, threads, no_eval, options):
    """Train every product of CONFIG (a .json/.toml file, or a folder of MVTec-style categories),
    each as a Ray task; a product that fails is reported and the others go on."""
    from adrt.cluster.products import load_products
    from adrt.cluster.train_many import progress_to_stderr, run_many, to_markdown

    if address and (local_cpus or local_gpus is not None):
        raise click.BadParameter("--local-cpus/--local-gpus size a local Ray; with --address the cluster is given",
                                 param_hint="--address")
    overrides = _overrides(method, size, seed, holdout, cpus, gpus, memory_mb, threads, no_eval, options)
    products = load_products(config, overrides)
    report = run_many(products, out, address=address, local_cpus=local_cpus, local_gpus=local_gpus,
                      max_retries=max_retries, overwrite=overwrite, progress=progress_to_stderr)
    click.echo(to_markdown(report), nl=False)
    failed = [r["name"] for r in report["products"] if r["status"] != "ok"]
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(report['products'])} products failed ({', '.join(failed)}); "
                                   f"see {Path(out) / 'results.md'} and their logs")
