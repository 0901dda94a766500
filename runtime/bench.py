"""Latency, throughput and memory of a bundle (and of the torch detector, when torch is there).

Protocol: host uint8 images in, maps and scores back on the host; ``warmup`` untimed runs, then
``runs`` timed batch-1 runs (mean, p50, p90, p99, min, max, std), then throughput at a larger batch.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def time_runs(fn: Callable[[], object], warmup: int, runs: int) -> np.ndarray:
    for _ in range(warmup):
        fn()
    t = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        fn()
        t[i] = time.perf_counter() - t0
    return t


def stats_ms(t: np.ndarray) -> dict:
    ms = t * 1e3
    return {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "min": float(ms.min()), "max": float(ms.max()),
            "std": float(ms.std()), "runs": int(len(ms))}


def _images(h: int, w: int, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def bench_session(session, runs: int = 50, warmup: int = 5, batch: int = 8) -> dict:
    """Time a runtime Session: batch-1 latency and throughput at ``batch``."""
    x1 = _images(session.height, session.width, 1)
    xb = _images(session.height, session.width, batch, seed=1)
    lat = time_runs(lambda: session.run(x1), warmup, runs)
    tb = time_runs(lambda: session.run(xb), 1, max(3, runs // batch))
    return {"latency_ms": stats_ms(lat), "throughput": {"batch": batch, "images_per_s": float(batch / np.median(tb))}}


def bench_torch(run_dir, height: int, width: int, threads: int | None, runs: int = 50, warmup: int = 5,
                batch: int = 8) -> dict:
    """Time the eager torch Detector of a run folder on the same inputs (imports torch)."""
    import torch

    from adrt.train.fit import load_run

    if threads:
        torch.set_num_threads(threads)
    det, _ = load_run(run_dir)
    x1 = torch.from_numpy(_images(height, width, 1))
    xb = torch.from_numpy(_images(height, width, batch, seed=1))
    with torch.inference_mode():
        lat = time_runs(lambda: det(x1), warmup, runs)
        tb = time_runs(lambda: det(xb), 1, max(3, runs // batch))
    return {"latency_ms": stats_ms(lat), "throughput": {"batch": batch, "images_per_s": float(batch / np.median(tb))},
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def machine_info() -> dict:
    import onnxruntime as ort

    return {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__, "onnxruntime": ort.__version__}


def bench(bundle_path, backend: str = "ort-cpu", threads: int | None = None, runs: int = 50, warmup: int = 5,
          batch: int = 8, torch_run=None) -> dict:
    """One report for a bundle on ``backend``; adds the torch eager detector when ``torch_run`` is given."""
    from adrt.runtime.session import load

    with load(bundle_path, backend=backend, threads=threads) as s:
        ort_threads = s.backend.session.get_session_options().intra_op_num_threads
        entry = {"name": f"{s.method} {backend}", "method": s.method, "backend": backend,
                 "size": [s.height, s.width], "threads": ort_threads or os.cpu_count(), **bench_session(s, runs, warmup, batch)}
        h, w = s.height, s.width
    entry["peak_rss_mb"] = round(peak_rss_mb(), 1)   # measured before torch is imported
    report = {"bundle": str(bundle_path), "machine": machine_info(),
              "settings": {"runs": runs, "warmup": warmup, "batch": batch}, "results": [entry]}
    if torch_run is not None:
        t = bench_torch(torch_run, h, w, threads or os.cpu_count(), runs, warmup, batch)
        t.update(name=f"{entry['method']} torch-eager", method=entry["method"], backend="torch-eager", size=[h, w],
                 peak_rss_mb=round(peak_rss_mb(), 1))
        report["results"].append(t)
        report["speedup_vs_torch"] = t["latency_ms"]["mean"] / entry["latency_ms"]["mean"]
    return report


def to_markdown(report: dict) -> str:
    rows = ["| detector | backend | size | threads | mean ms | p50 | p90 | p99 | min | img/s (batch) | peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        lat = r["latency_ms"]
        rows.append(f"| {r['method']} | {r['backend']} | {r['size'][0]}×{r['size'][1]} | {r.get('threads', '-')} | "
                    f"{lat['mean']:.1f} | {lat['p50']:.1f} | {lat['p90']:.1f} | {lat['p99']:.1f} | {lat['min']:.1f} | "
                    f"{r['throughput']['images_per_s']:.1f} ({r['throughput']['batch']}) | {r.get('peak_rss_mb', '-')} |")
    if "speedup_vs_torch" in report:
        rows.append(f"\nONNX Runtime vs torch eager, batch-1 mean: {report['speedup_vs_torch']:.2f}× faster")
    return "\n".join(rows)


def write_report(report: dict, out) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(to_markdown(report) + "\n")
