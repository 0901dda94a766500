"""`adrt triton` and `adrt triton-check`: thin wrappers over adrt.triton.repository (no torch)."""
from __future__ import annotations

from pathlib import Path

import click

from adrt.triton.config import FORMS, KINDS, PYTHON_BACKENDS, Form, ServeOptions


@click.command("triton")
@click.argument("bundles", nargs=-1, required=True, metavar="[NAME=]BUNDLE...")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Model repository folder to write.")
@click.option("--form", type=click.Choice(FORMS), default="python", show_default=True,
              help="python: adrt.runtime in Triton's Python backend; onnxruntime: Triton's ONNX Runtime backend on "
                   "the fused model; tensorrt_plan: the bundles' TensorRT engines (adrt build-engine).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="Model variant served (tensorrt_plan: the engine of that precision).")
@click.option("--max-batch", type=int, default=8, show_default=True, help="max_batch_size: largest batch Triton forms.")
@click.option("--dynamic-batching/--no-dynamic-batching", default=True, show_default=True,
              help="Let Triton combine concurrent requests into one batch.")
@click.option("--preferred-batch", type=int, multiple=True, help="Preferred batch size (repeatable).")
@click.option("--max-queue-delay-us", type=int, default=1000, show_default=True,
              help="How long a request may wait for others to batch with.")
@click.option("--instances", type=int, default=1, show_default=True, help="Model instances (instance_group count).")
@click.option("--kind", type=click.Choice(KINDS), default="auto", show_default=True,
              help="Instance kind; auto: GPU where there is one (tensorrt_plan: always GPU).")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads per instance.")
@click.option("--keep-versions", type=int, default=1, show_default=True,
              help="How many of the newest versions Triton serves at once (version_policy latest).")
@click.option("--ort-tensorrt", is_flag=True, help="onnxruntime form: ONNX Runtime's TensorRT accelerator on GPUs.")
@click.option("--ort-tensorrt-precision", type=click.Choice(["fp32", "fp16"]), default="fp16", show_default=True)
@click.option("--ort-tensorrt-cache", default="/tmp/adrt-trt-cache", show_default=True,
              help="Engine cache folder on the server (one subfolder per model).")
@click.option("--python-backend", type=click.Choice(PYTHON_BACKENDS), default="ort-cpu", show_default=True,
              help="python form: the adrt.runtime backend model.py opens.")
@click.option("--target", default=None,
              help="tensorrt_plan form: engine tag without precision, e.g. nvidia-h200-sm90-trt10.3.0 (adrt info lists "
                   "them); default: the one target all bundles have.")
@click.option("--version", "version", type=int, default=None, help="Version folder number (default 1; next with --add).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it is a repository written by adrt triton.")
@click.option("--add", is_flag=True, help="Add the bundles to OUT (written by adrt triton) as new versions or models.")
def triton_cmd(bundles, out, form, precision, max_batch, dynamic_batching, preferred_batch, max_queue_delay_us,
               instances, kind, threads, keep_versions, ort_tensorrt, ort_tensorrt_precision, ort_tensorrt_cache,
               python_backend, target, version, overwrite, add):
    """Write a Triton Inference Server model repository with one model per BUNDLE."""
    from adrt.triton.repository import check_repository, parse_sources, write_repository

    opts = ServeOptions(max_batch=max_batch, dynamic_batching=dynamic_batching, preferred_batch=tuple(preferred_batch),
                        max_queue_delay_us=max_queue_delay_us, instances=instances, kind=kind, threads=threads,
                        precision=precision, keep_versions=keep_versions, ort_tensorrt=ort_tensorrt,
                        ort_tensorrt_precision=ort_tensorrt_precision, ort_tensorrt_cache=ort_tensorrt_cache,
                        python_backend=python_backend, target=target)
    record = write_repository(parse_sources(bundles), out, Form(form), opts, overwrite=overwrite, add=add,
                              version=version, log=lambda m: click.echo(m, err=True))
    rows = check_repository(out)
    for r in rows:
        click.echo(f"{out}/{r['model']}/{r['version']}  {r['form']}  {r['method']}  checksums ok")
    if record["schema"]:
        click.echo(f"configs: checked against {record['schema']} ModelConfig")
    else:
        click.echo("configs: not checked against Triton's schema (pip install 'adrt[triton]')")


@click.command("triton-check")
@click.argument("repo", type=click.Path(path_type=Path))
def triton_check_cmd(repo):
    """Verify a repository written by adrt triton: configs against Triton's schema, files against checksums."""
    from adrt.triton.repository import check_repository

    rows = check_repository(repo)
    for r in rows:
        click.echo(f"{r['model']}/{r['version']}  {r['form']}  {r['method']}  {r['files']} file(s) ok  schema: {r['schema']}")
