"""Shared fixtures: a tiny procedural dataset, trained runs and exported bundles per method.

Everything is small (64×64 images, a few dozen of them) so the whole suite stays fast on 2 cores.
"""
from __future__ import annotations

import os
from pathlib import Path

# OpenMP threads that spin while waiting make torch ~10x slower on a shared 2-core machine; set
# before torch is first imported (fixtures import it lazily).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

SIZE = 64
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    from adrt.synth import make_dataset

    return make_dataset(tmp_path_factory.mktemp("data") / "weave", size=SIZE, n_train=20, n_test_good=4,
                        n_test_defect=6, seed=0)


@pytest.fixture(scope="session")
def runs(tmp_path_factory, synth_data):
    """method -> (run folder, bundle folder), trained and exported once per session (lazily)."""
    pytest.importorskip("torch")
    cache: dict[str, tuple[Path, Path]] = {}
    root = tmp_path_factory.mktemp("runs")

    def get(method: str) -> tuple[Path, Path]:
        if method not in cache:
            from adrt.export.cli import export_run
            from adrt.train.fit import train

            run = train(method, synth_data, root / method, size=SIZE, seed=0, log=lambda *a, **k: None)
            bundle = export_run(run, root / f"{method}_bundle", synth_data)
            cache[method] = (run, bundle)
        return cache[method]

    return get


def methods() -> list[str]:
    try:
        from adrt.train.registry import available
    except ImportError:  # runtime-only install
        return []
    return available()
