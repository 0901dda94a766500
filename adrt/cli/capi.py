"""`adrt build-capi`: the C API (libadrt + adrt.h) and its example program, built here."""
from __future__ import annotations

import os
from pathlib import Path

import click

from adrt.runtime.capi.build import build_example, build_library, compile_command


@click.command("build-capi")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for libadrt, adrt.h, example.c and the compiled example.")
@click.option("--example/--no-example", default=True, show_default=True,
              help="Also compile the example program (adrt_example).")
@click.option("--cc", default=os.environ.get("CC", "cc"), show_default="$CC or cc",
              help="C compiler for the example.")
@click.option("--verbose", is_flag=True, help="Show the compiler's command lines.")
def build_capi(out_dir: Path, example: bool, cc: str, verbose: bool):
    """Build the C API: libadrt (embedding this Python's adrt runtime) and adrt.h in OUT."""
    if verbose:  # setuptools reports the compiler's command lines through logging
        import logging

        logging.basicConfig(level=logging.INFO, format="%(message)s")
    lib = build_library(out_dir, verbose=verbose)
    click.echo(f"built {lib}\nheader {lib.parent / 'adrt.h'}")
    if example:
        exe = build_example(out_dir, cc)
        click.echo(f"example {exe}  (usage: {exe.name} BUNDLE IMAGE.ppm...)")
    click.echo("compile your program with:\n  " + " ".join(compile_command("app.c", lib.parent, "app", cc)))
