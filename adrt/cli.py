"""The `adrt` command. Subcommands are imported only when run, so `adrt infer` and `adrt bench`
start fast and never import torch; AdrtError becomes a one-line error and exit status 1."""
from __future__ import annotations

import importlib

import click

from adrt._version import __version__
from adrt.errors import AdrtError

_COMMANDS = {
    "train": ("adrt.train.cli", "train", "Fit a method on normal images; write a run folder (and a bundle)."),
    "export": ("adrt.export.cli", "export", "Export a run folder to a bundle (fused ONNX + manifest)."),
    "eval": ("adrt.commands", "eval_cmd", "Metrics of a bundle on a dataset's test split (+ overlays)."),
    "infer": ("adrt.commands", "infer", "Score images or folders with a bundle; CSV/JSON out, optional overlays."),
    "bench": ("adrt.commands", "bench_cmd", "Latency, throughput and memory of a bundle (and the torch detector)."),
    "check": ("adrt.export.cli", "check_cmd", "Check a bundle's graphs against TensorRT's ONNX-parser rules (8.6, 10, latest)."),
    "build-engine": ("adrt.export.cli", "build_engine_cmd", "Build a TensorRT engine for this GPU into a bundle (fp32/fp16/int8)."),
    "info": ("adrt.commands", "info", "Show a bundle's manifest summary after verifying it."),
    "synth": ("adrt.commands", "synth", "Write a procedural dataset (textures with painted defects) in MVTec layout."),
    "methods": ("adrt.train.cli", "methods", "List registered methods and their options."),
    "demo": ("adrt.train.cli", "demo", "The whole path on a generated dataset: train, export, eval, infer, bench."),
    "build-capi": ("adrt.runtime.capi.build", "build_capi", "Build the C API (libadrt + adrt.h) and its example program."),
}


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
        except AdrtError as e:
            raise click.ClickException(str(e)) from None
        except ImportError as e:
            if getattr(e, "name", "") in ("torch", "onnx"):
                raise click.ClickException(f"this command needs {e.name}: pip install 'adrt[train]'") from None
            raise


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="adrt")
def main():
    """adrt: visual anomaly detection from training to edge deployment."""


if __name__ == "__main__":
    main()
