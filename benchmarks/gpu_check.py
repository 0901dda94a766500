"""The real thing on a machine with an NVIDIA GPU: engines, providers, parity, latency.

For every bundle given (default: the variant bundles benchmarks/precision.py made, one per method ×
dataset) and every precision it has a model for (fp32, fp16, int8):

- ``tensorrt``: ``adrt build-engine`` into a copy of the bundle (profile 1/1/8), then the native
  backend (pycuda or cuda-python);
- ``ort-cuda`` and ``ort-trt``: ONNX Runtime's CUDA and TensorRT execution providers (needs
  onnxruntime-gpu; a provider that is installed but not active is reported, not used);

each checked against ONNX Runtime CPU running the same graph variant on the same images, and timed
(batch-1 latency, host uint8 in to maps and scores back on the host; batch-8 throughput).

Tolerances (raw outputs, max |Δ| relative to the reference's range; normalised outputs, max |Δ|):
fp32 1e-3 / 1e-3, fp16 2e-2 / 2e-2, int8 5e-2 / 5e-2 — an int8 or fp16 GPU kernel rounds
differently from ONNX Runtime CPU's emulation of the same graph. What cannot run (no TensorRT, no
onnxruntime-gpu, no CUDA binding) is listed with the reason; the rest still runs.

    python benchmarks/gpu_check.py                                   # bundles under /tmp/adrt-precision
    python benchmarks/gpu_check.py --bundles b1 b2 --backends tensorrt ort-cuda --runs 200

Writes benchmarks/results/gpu_check.{json,md} (or --out). Torch-free.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _results import write_report  # benchmarks/_results.py (this folder is on sys.path)

HERE = Path(__file__).resolve().parent
TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "int8": 5e-2}
BACKENDS = ("tensorrt", "ort-cuda", "ort-trt")


def gpu_facts() -> dict:
    """What the machine has, each item with the reason when it is missing."""
    facts = {"python": platform.python_version(), "machine": platform.machine()}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        facts["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
    except (OSError, subprocess.SubprocessError) as e:
        facts["nvidia_smi"] = f"not available ({e})"
    try:
        import tensorrt

        facts["tensorrt"] = tensorrt.__version__
    except ImportError as e:
        facts["tensorrt"] = f"missing ({e})"
    for name in ("pycuda", "cuda.bindings"):
        try:
            __import__(name)
            facts[name] = "present"
        except ImportError as e:
            facts[name] = f"missing ({e})"
    import onnxruntime as ort

    facts["onnxruntime"] = f"{ort.__version__}, providers {ort.get_available_providers()}"
    return facts


def compare(got: dict, want: dict) -> dict:
    out = {}
    for name, r in want.items():
        err = float(np.abs(got[name] - r).max())
        out[name] = {"max_abs": err, "max_rel": err / (float(np.abs(r).max()) or 1.0)}
    return out


def within(parity: dict, precision: str) -> bool:
    tol = TOLERANCE[precision]
    return all((v["max_rel"] if k.startswith("raw") else v["max_abs"]) <= tol for k, v in parity.items())


def timed(session, h: int, w: int, runs: int, batch: int = 8) -> dict:
    x1 = np.random.default_rng(3).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    xb = np.random.default_rng(4).integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
    for _ in range(10):
        session.run(x1)
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(x1)
        t.append(time.perf_counter() - t0)
    session.run(xb)
    tb = []
    for _ in range(max(5, runs // 8)):
        t0 = time.perf_counter()
        session.run(xb)
        tb.append(time.perf_counter() - t0)
    ms = np.array(t) * 1e3
    return {"p50_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "min_ms": float(ms.min()),
            "runs": runs, "throughput_ips": float(batch / np.median(tb)), "batch": batch}


def check_bundle(src: Path, work: Path, backends, runs: int, images: np.ndarray | None, log) -> list[dict]:
    import adrt.runtime as rt
    from adrt.errors import AdrtError
    from adrt.export.engine import BatchProfile, build_into_bundle

    manifest = json.loads((src / "manifest.json").read_text())
    h, w = int(manifest["input"]["height"]), int(manifest["input"]["width"])
    if images is None:
        images = np.random.default_rng(0).integers(0, 256, (4, h, w, 3), dtype=np.uint8)
    dst = work / src.name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    rows = []
    for precision in [p for p in ("fp32", "fp16", "int8") if p in manifest["models"]]:
        with rt.load(dst, precision=precision) as s:
            ref = s.backend.run({"image": images})
            cpu = timed(s, h, w, max(10, runs // 10))
        rows.append({"bundle": src.name, "precision": precision, "backend": "ort-cpu", "latency": cpu})
        for backend in backends:
            row = {"bundle": src.name, "precision": precision, "backend": backend}
            try:
                if backend == "tensorrt":
                    rec = build_into_bundle(dst, precision, BatchProfile(1, 1, 8), log=log)
                    row["build"] = {k: rec[k] for k in ("file", "gpu", "compute_capability", "tensorrt",
                                                        "build_seconds", "timing_cache")}
                with rt.load(dst, backend=backend, precision=precision) as s:
                    row["parity"] = compare(s.backend.run({"image": images}), ref)
                    row["parity_ok"] = within(row["parity"], precision)
                    row["latency"] = timed(s, h, w, runs)
                    row["speedup_vs_ort_cpu"] = cpu["p50_ms"] / row["latency"]["p50_ms"]
            except (AdrtError, OSError) as e:
                row["skipped"] = str(e)
            log(f"{src.name} {precision} {backend}: " + (f"skipped: {row['skipped']}" if "skipped" in row else
                f"p50 {row['latency']['p50_ms']:.2f} ms, parity {'ok' if row['parity_ok'] else 'OUT OF TOLERANCE'}"))
            rows.append(row)
    return rows


def to_markdown(report: dict) -> str:
    f = report["machine"]
    lines = ["# GPU check", "", f"Regenerate on a GPU machine: `python benchmarks/gpu_check.py`. Machine: "
             f"{f.get('nvidia_smi')}; TensorRT: {f.get('tensorrt')}; pycuda: {f.get('pycuda')}; "
             f"cuda-python: {f.get('cuda.bindings')}; ONNX Runtime: {f.get('onnxruntime')}.", "",
             "Tolerances vs ONNX Runtime CPU on the same graph: " +
             ", ".join(f"{k} {v:g}" for k, v in TOLERANCE.items()) + " (raw: relative to range; normalised: absolute).",
             "", "| bundle | precision | backend | p50 ms | images/s (batch 8) | × ORT CPU | parity | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        if "skipped" in r:
            lines.append(f"| {r['bundle']} | {r['precision']} | {r['backend']} | - | - | - | - | skipped: {r['skipped']} |")
            continue
        lat = r["latency"]
        par = "-" if "parity" not in r else ("ok" if r["parity_ok"] else "**out of tolerance**") + \
            f" (raw {max(v['max_rel'] for k, v in r['parity'].items() if k.startswith('raw')):.1e})"
        lines.append(f"| {r['bundle']} | {r['precision']} | {r['backend']} | {lat['p50_ms']:.2f} | "
                     f"{lat['throughput_ips']:.0f} | {r.get('speedup_vs_ort_cpu', 1.0):.1f} | {par} | "
                     f"{r.get('build', {}).get('file', '')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", nargs="*", type=Path, default=None,
                    help="Bundle folders (default: every *_bundle folder under /tmp/adrt-precision).")
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--data", type=Path, default=None, help="Dataset whose test images are used for parity.")
    ap.add_argument("--work", type=Path, default=Path("/tmp/adrt-gpu-check"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gpu_check")
    args = ap.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    bundles = args.bundles or sorted(p for p in Path("/tmp/adrt-precision").glob("*_bundle") if p.is_dir())
    if not bundles:
        log("no bundles: pass --bundles, or run benchmarks/precision.py first")
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    facts = gpu_facts()
    log(json.dumps(facts, indent=1))
    images = None
    results = []
    for b in bundles:
        if args.data is not None:
            from adrt.data import Dataset, load_images

            m = json.loads((b / "manifest.json").read_text())["input"]
            ds = Dataset.open(args.data)
            images = load_images([s.path for s in ds.test[:8]], m["height"], m["width"])
        results += check_bundle(b.resolve(), args.work, args.backends, args.runs, images, log)
    report = {"machine": facts, "tolerance": TOLERANCE, "results": results,
              "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cwd": os.getcwd()}
    write_report(args.out, report, to_markdown(report))
    ran = [r for r in results if "parity_ok" in r]
    return 1 if any(not r["parity_ok"] for r in ran) else 0


if __name__ == "__main__":
    sys.exit(main())
