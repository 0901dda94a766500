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


def pytest_collection_modifyitems(config, items):
    # `long` tests run only when the marker expression asks for them (-m long): a plain run, and
    # CI's `-m "not slow"` (which would otherwise override a default -m in addopts), skip them.
    if "long" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="long run: select with -m long")
    for item in items:
        if item.get_closest_marker("long") is not None:
            item.add_marker(skip)


try:  # Hypothesis profiles: a few hundred examples per fuzz test by default, no example database.
    from hypothesis import HealthCheck, settings

    settings.register_profile("adrt", max_examples=200, deadline=None, database=None,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.load_profile("adrt")
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    pass
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
            from adrt.export.pipeline import export_run
            from adrt.train.fit import train

            run = train(method, synth_data, root / method, size=SIZE, seed=0, log=lambda *a, **k: None)
            bundle = export_run(run, root / f"{method}_bundle", synth_data)
            cache[method] = (run, bundle)
        return cache[method]

    return get


@pytest.fixture(scope="session")
def variant_bundles(runs, synth_data, tmp_path_factory):
    """method -> a copy of its bundle with fp16 and int8 (tensorrt target) models and the opset-17
    copies of all three for TensorRT 8.6, as ``adrt export --precision fp16 --precision int8`` makes
    them (lazily, once per session)."""
    import shutil

    cache: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("variants_methods")

    def get(method: str) -> Path:
        if method not in cache:
            from adrt.export.quantize import add_variant
            from adrt.export.trt86 import add_trt86_variants

            dst = root / method
            shutil.copytree(runs(method)[1], dst)
            add_variant(dst, "fp16", threads=1)
            add_variant(dst, "int8", calib=synth_data, threads=1)
            add_trt86_variants(dst)
            cache[method] = dst
        return cache[method]

    return get


def methods() -> list[str]:
    try:
        from adrt.train.registry import available
    except ImportError:  # runtime-only install
        return []
    return available()
