"""Options and option parsing shared by several commands."""
from __future__ import annotations

import click

from adrt.errors import AdrtError

overwrite_option = click.option("--overwrite", is_flag=True,
                                help="Replace an existing output of this command's kind (never anything else).")


def parse_set(items) -> dict:
    """``--set KEY=VALUE`` values -> {key: value} (dashes in keys become underscores; values stay strings)."""
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep:
            raise AdrtError(f"--set {it!r}: expected KEY=VALUE")
        out[k.strip().replace("-", "_")] = v.strip()
    return out


def geometry_options(f):
    """--input-size, --tile, --overlap, --letterbox, --pad-value (train and export)."""
    opts = [
        click.option("--input-size", default=None, metavar="HxW",
                     help="The bundle's input: with --tile the full frame (e.g. 2048x2448), fixed at export; "
                          "otherwise a non-square model size (instead of --size)."),
        click.option("--tile", default=None, metavar="N|HxW",
                     help="Tile the frame in the graph: tiles of this (model) size, run as one batch, the map "
                          "stitched at full resolution."),
        click.option("--overlap", type=click.IntRange(min=0), default=None,
                     help="With --tile: pixels shared by neighbouring tiles (blended by linear ramps); default 0."),
        click.option("--letterbox", is_flag=True,
                     help="Keep the aspect ratio: scale to fit, centre, pad (instead of squashing)."),
        click.option("--pad-value", default=None, metavar="V|R,G,B",
                     help="With --letterbox: the padding colour (default 0)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def parse_geometry(input_size, tile, overlap, letterbox, pad_value):
    """CLI values -> (adrt.contract.Geometry, (height, width) or None)."""
    from adrt.runtime.geometry import geometry_from_options, parse_size

    geometry = geometry_from_options(tile, overlap, letterbox, pad_value)
    if geometry.tiled and input_size is None:
        raise AdrtError("--tile needs --input-size HEIGHTxWIDTH: the full frame a tiled bundle takes")
    return geometry, None if input_size is None else parse_size(input_size)
