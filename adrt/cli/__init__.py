"""The `adrt` command. Subcommands are imported only when run, so `adrt infer` and `adrt bench`
start fast and never import torch.

Errors: an AdrtError (or a click usage error) is one line and exit status 1 (2 for usage); any
other exception is a one-line "unexpected" message that asks for a re-run with ``--debug``, which
shows the traceback; Ctrl-C exits with 130 and one line, without a traceback.
"""
from __future__ import annotations

import importlib
import os

import click

from adrt._version import __version__
from adrt.errors import AdrtError

_COMMANDS = {
    "train": ("adrt.cli.train", "train", "Fit a method on normal images; write a run folder (and a bundle)."),
    "export": ("adrt.cli.export", "export", "Export a run folder to a bundle (fused ONNX + manifest)."),
    "eval": ("adrt.cli.bundle", "eval_cmd", "Metrics of a bundle on a dataset's test split (+ overlays)."),
    "infer": ("adrt.cli.bundle", "infer", "Score images or folders with a bundle; CSV/JSON out, optional overlays."),
    "bench": ("adrt.cli.bundle", "bench_cmd", "Latency, throughput and memory of a bundle (and the torch detector)."),
    "check": ("adrt.cli.export", "check_cmd", "Check a bundle's graphs against TensorRT's ONNX-parser rules (8.6, 10, latest)."),
    "build-engine": ("adrt.cli.export", "build_engine_cmd", "Build a TensorRT engine for this GPU into a bundle (fp32/fp16/int8)."),
    "info": ("adrt.cli.bundle", "info", "Show a bundle's manifest summary after verifying it."),
    "synth": ("adrt.cli.train", "synth", "Write a procedural dataset (textures with painted defects) in MVTec layout."),
    "methods": ("adrt.cli.train", "methods", "List registered methods and their options."),
    "demo": ("adrt.cli.train", "demo", "The whole path on a generated dataset: train, export, eval, infer, bench."),
    "build-capi": ("adrt.cli.capi", "build_capi", "Build the C API (libadrt + adrt.h) and its example program."),
    "triton": ("adrt.cli.triton", "triton_cmd", "Write a Triton Inference Server model repository from bundles."),
    "triton-check": ("adrt.cli.triton", "triton_check_cmd", "Verify a Triton repository written by adrt (schema, checksums)."),
    "train-many": ("adrt.cli.cluster", "train_many_cmd", "Train many products (a config or a folder of categories) as Ray tasks."),
}

#: What to run for the commands that need the training dependencies, from a source checkout
#: (adrt is not on a package index). CPU-only torch comes from PyTorch's CPU index.
TRAIN_INSTALL_HINT = ('pip install -e ".[train]" in the adrt source folder (for a CPU-only torch first: '
                      'pip install torch --index-url https://download.pytorch.org/whl/cpu)')


def _debug(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return bool(root.params.get("debug")) or os.environ.get("ADRT_DEBUG", "") not in ("", "0")


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(_COMMANDS)

    def get_command(self, ctx, name):
        if name not in _COMMANDS:
            return None
        module, attr, _ = _COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        # Help text without importing every subcommand (and torch with them).
        with formatter.section("Commands"):
            formatter.write_dl([(n, h) for n, (_, _, h) in _COMMANDS.items()])

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except AdrtError as e:
            if _debug(ctx):
                raise
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            if _debug(ctx):
                raise
            click.echo("adrt: interrupted (nothing half-written was left in place)", err=True)
            raise click.exceptions.Exit(130) from None
        except ImportError as e:
            if _debug(ctx):
                raise
            if getattr(e, "name", "") in ("torch", "onnx", "onnxscript"):
                raise click.ClickException(f"this command needs {e.name}: {TRAIN_INSTALL_HINT}") from None
            raise click.ClickException(f"unexpected ImportError: {e} (re-run with --debug for the traceback)") from None
        except Exception as e:
            if _debug(ctx):
                raise
            raise click.ClickException(f"unexpected {type(e).__name__}: {e} (a bug in adrt, or an environment "
                                       f"problem; re-run with --debug for the traceback)") from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="adrt")
@click.option("--debug", is_flag=True, help="Show the full traceback of any error (also: ADRT_DEBUG=1).")
def main(debug):
    """adrt: visual anomaly detection from training to edge deployment."""

