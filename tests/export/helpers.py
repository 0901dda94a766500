"""Shared by the precision tests: every variant of a bundle run over the synthetic test split."""
from __future__ import annotations

import numpy as np


def run_variants(bundle, data, precisions=("fp32", "fp16", "int8")):
    """(labels, {precision: runtime result over the test images}), each variant loaded by precision."""
    import adrt.runtime as rt
    from adrt.data import Dataset

    ds = Dataset.open(data)
    paths, labels = [s.path for s in ds.test], np.array([s.label for s in ds.test])
    out = {}
    for p in precisions:
        with rt.load(bundle, precision=p, threads=1) as s:
            assert s.precision == p
            out[p] = s.run_files(paths)
    return labels, out
