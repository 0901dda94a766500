"""benchmarks/gpu_check.py on this CPU machine: without TensorRT it says so and still checks the rules
and times ONNX Runtime; against the TensorRT/CUDA fakes (tests/trt_fakes.py) it builds, compares and
times every precision, on DLA too where the device has DLA cores."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests import trt_fakes

pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def gpu_check():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def prepared(runs, tmp_path_factory):
    """What `gpu_check.py prepare` leaves: a folder of bundles (here one, PaDiM with fp16) and images.npy."""
    from adrt.export.quantize import add_variant

    root = tmp_path_factory.mktemp("gpu_bundles")
    b = root / "padim_bundle"
    shutil.copytree(runs("padim")[1], b)
    add_variant(b, "fp16", threads=1)
    np.save(root / "images.npy", np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8))
    return root


def test_without_tensorrt_it_reports_why_and_still_checks_and_times(monkeypatch, gpu_check, prepared, tmp_path):
    trt_fakes.install(monkeypatch, None, None)
    out = tmp_path / "report"
    assert gpu_check.main(["run", "--bundles", str(prepared), "--runs", "3", "--work", str(tmp_path / "w"),
                           "--out", str(out)]) == 0
    rep = json.loads(out.with_suffix(".json").read_text())
    assert any(s.startswith("tensorrt engines: missing") for s in rep["skipped"])
    assert any(s.startswith("cuda-python memory path: missing") for s in rep["skipped"])
    b = rep["bundles"]["padim_bundle"]
    assert set(b["rules"]) == {"8.6", "10", "latest"} and not any(v for t in b["rules"].values() for v in t.values())
    assert set(b["precisions"]) == {"fp32", "fp16"}
    for row in b["precisions"].values():
        assert row["ort-cpu"]["latency"]["p50_ms"] > 0 and "tensorrt" not in row
        assert "skipped" in row["ort-cuda"] and "CUDA" in row["ort-cuda"]["skipped"]
    md = out.with_suffix(".md").read_text()
    assert "Could not run:" in md and "| padim_bundle | ok | ok | ok |" in md


def test_against_the_fakes_it_builds_compares_and_times_every_precision_and_dla(monkeypatch, gpu_check, prepared,
                                                                               tmp_path):
    gpu = trt_fakes.FakeGPU(name="Orin", capability=(8, 7), dla_cores=2)
    _, trt, _ = trt_fakes.install(monkeypatch, 10, "cuda-python", gpu=gpu, version="10.3.0")
    out = tmp_path / "report"
    assert gpu_check.main(["run", "--bundles", str(prepared / "padim_bundle"), "--runs", "3", "--work",
                           str(tmp_path / "w"), "--out", str(out)]) == 0
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["cuda_memory_path"]["ok"] and rep["dla_cores"] == 2
    rows = rep["bundles"]["padim_bundle"]["precisions"]
    for p in ("fp32", "fp16"):
        r = rows[p]["tensorrt"]
        assert r["parity_ok"] is True and r["latency"]["p50_ms"] > 0, r
        assert r["outputs"]["raw_map"][0][1:] == [64, 64] and r["outputs"]["score"][1] == "float32"
    assert "tensorrt-dla0" not in rows["fp32"]                       # DLA runs fp16/int8 only
    dla = rows["fp16"]["tensorrt-dla0"]
    assert dla["build"]["dla_core"] == 0 and dla["parity_ok"] is True, dla
    assert "runtime.DLA_core:0" in trt.calls
    assert set(rep["bundles"]["padim_bundle"]["rules"]) == {"8.6", "10", "latest"}     # 10.3 → the 10 rules
