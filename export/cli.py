"""`adrt export` (needs torch and onnx)."""
from __future__ import annotations

from pathlib import Path

import click


def export_run(run, out, data=None) -> Path:
    """Export a run folder to a bundle; parity is checked on real training images when ``data`` is given."""
    from adrt.data import Dataset, load_images
    from adrt.export.onnx import export_bundle
    from adrt.train.fit import load_run

    det, meta = load_run(run)
    # Lets `adrt bench` find the torch detector of this bundle on the training machine.
    meta["training"]["run_folder"] = str(Path(run).resolve())
    samples = None
    if data is not None:
        ds = Dataset.open(data)
        paths = [s.path for s in ds.test if s.label == 1][:1] + ds.train[:2]
        samples = load_images(paths, det.spec.height, det.spec.width)
    return export_bundle(det, meta, out, sample_images=samples)


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Bundle folder to write.")
@click.option("--data", type=click.Path(path_type=Path), default=None, help="Dataset for the parity check images.")
def export(run, out, data):
    """Export the detector of run folder RUN to a bundle at OUT."""
    b = export_run(run, out, data)
    click.echo(f"bundle: {b}")
