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
