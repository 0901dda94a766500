"""Regenerate the foundation figures: PatchCore and PaDiM on the shared real data.

For each method × dataset: train (timed), export, evaluate with ONNX Runtime (image/pixel AUROC,
AUPRO, F1-max), then latency at 256×256 batch 1 of ONNX Runtime CPU beside the torch eager
detector (`adrt bench`: each in its own process, interleaved). Writes
benchmarks/results/foundation.{json,md}.

Torch eager is timed twice. First as a batch-1 loop runs it by default: with glibc malloc its
large temporaries go back to the OS after every forward and are faulted in again (~4 000 minor
page faults per PatchCore run at 256×256). Then with glibc told to keep them
(``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``, :data:`TUNED_MALLOC`), torch eager's best
case on this allocator (`bench(..., worker_env=TUNED_MALLOC)`). ONNX Runtime allocates from its own arena and pays neither.

    python benchmarks/foundation.py                       # all methods, both datasets
    python benchmarks/foundation.py --methods patchcore --datasets bottle --runs 50

Needs `pip install -e ".[train]"` and ../shared/data (MVTec AD layout).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _results import DATASETS, write_report  # benchmarks/_results.py (this folder is on sys.path)
from adrt.bench.machine import TUNED_MALLOC  # glibc settings for torch eager's best case

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["patchcore", "padim"])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--work", type=Path, default=Path("runs/foundation"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "foundation")
    ap.add_argument("--reuse", action="store_true", help="Reuse run folders that already exist in --work.")
    args = ap.parse_args(argv)

    import torch

    from adrt.evaluate import record_metrics
    from adrt.evaluate import evaluate_session
    from adrt.export.pipeline import export_run
    from adrt.runtime import load
    from adrt.bench.harness import bench
    from adrt.bench.machine import machine_info
    from adrt.train.fit import train

    torch.set_num_threads(args.threads)
    rows = []
    for name in args.datasets:
        data = DATASETS[name]
        if not data.is_dir():
            print(f"skip {name}: {data} not found", file=sys.stderr)
            continue
        for method in args.methods:
            run = args.work / f"{method}_{name}"
            t0 = time.perf_counter()
            if not (args.reuse and (run / "detector.json").exists()):
                train(method, data, run, size=args.size, threads=args.threads, overwrite=True)
            train_s = json.loads((run / "detector.json").read_text())["training"]["seconds"]
            bundle = export_run(run, args.work / f"{method}_{name}_bundle", data, overwrite=True)
            with load(bundle, threads=args.threads) as s:
                res = evaluate_session(s, data, args.work / f"{method}_{name}_eval", overlays=8)
            record_metrics(bundle, data, res)   # accuracy travels with the bundle (adrt bench plots it)
            rep = bench(bundle, threads=args.threads, runs=args.runs, torch_run=run)
            rep_t = bench(bundle, threads=args.threads, runs=args.runs, torch_run=run, worker_env=TUNED_MALLOC)
            ort, tch = rep["results"]
            ort_t, tch_t = rep_t["results"]
            ort_ms, torch_ms = ort["latency_ms"], tch["latency_ms"]
            o = res["overall"]
            rows.append({
                "method": method, "dataset": name, "size": args.size,
                "image_auroc": o["image_auroc"], "pixel_auroc": o.get("pixel_auroc"), "aupro": o.get("aupro"),
                "f1_max": o["f1_max"], "train_seconds": train_s,
                "ort_cpu_ms": ort_ms, "torch_eager_ms": torch_ms, "speedup": rep["speedup_vs_torch"],
                "page_faults_per_run": {"ort": ort["page_faults_per_run"].get("lat"),
                                        "torch": tch["page_faults_per_run"].get("lat")},
                "tuned_malloc": {"ort_cpu_ms": ort_t["latency_ms"], "torch_eager_ms": tch_t["latency_ms"],
                                 "speedup": rep_t["speedup_vs_torch"],
                                 "torch_page_faults_per_run": tch_t["page_faults_per_run"].get("lat")},
                "ort_peak_rss_mb": ort["peak_rss_mb"], "per_type": res["per_type"],
                "bundle_mb": round(sum(p.stat().st_size for p in bundle.iterdir()) / 2**20, 1),
                "wall_seconds": round(time.perf_counter() - t0, 1),
            })
            print(f"{method} {name}: image AUROC {o['image_auroc']:.3f}, pixel AUROC {o.get('pixel_auroc', 0):.3f}, "
                  f"AUPRO {o.get('aupro', 0):.3f}; ORT {ort_ms['mean']:.1f} ms vs torch {torch_ms['mean']:.1f} ms "
                  f"(tuned malloc: ORT {ort_t['latency_ms']['mean']:.1f} vs {tch_t['latency_ms']['mean']:.1f} ms)",
                  file=sys.stderr)
    report = {"machine": machine_info(), "torch": torch.__version__, "threads": args.threads, "runs": args.runs,
              "tuned_malloc": TUNED_MALLOC, "rows": rows}
    write_report(args.out, report, to_markdown(report))
    return 0


def to_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# Foundation figures ({m['platform']}, {m['cpus']} CPUs, ONNX Runtime {m['onnxruntime']}, "
        f"torch {report['torch']}, {report['threads']} threads)",
        "",
        "Latency: batch 1, 256×256, host uint8 in → map and score on the host, mean (p50/p99) over "
        f"{report['runs']} runs after warm-up; ONNX Runtime CPU and torch eager each in its own process, "
        "interleaved (`adrt bench`), batch 1 timed before any larger batch ran in the process. *torch ms*: a "
        "batch-1 loop with glibc malloc as it comes (page faults: minor faults per run, ORT / torch). *tuned*: "
        "the same bench again with glibc keeping freed memory ("
        + ", ".join(f"`{k}={v}`" for k, v in report.get("tuned_malloc", {}).items()) + "), torch eager's best "
        "case; both ORT and torch re-timed in that run.",
        "",
        "| method | dataset | image AUROC | pixel AUROC | AUPRO | F1-max | train s | ORT ms | torch ms | page faults "
        "| ORT speed-up | tuned: ORT ms | tuned: torch ms | tuned: speed-up | bundle MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for r in report["rows"]:
        o, t = r["ort_cpu_ms"], r["torch_eager_ms"]
        pf, tu = r.get("page_faults_per_run") or {}, r.get("tuned_malloc")
        faults = f"{pf['ort']:.0f} / {pf['torch']:.0f}" if pf.get("torch") is not None else "-"
        tuned = (f"{tu['ort_cpu_ms']['mean']:.1f} | {tu['torch_eager_ms']['mean']:.1f} | {tu['speedup']:.2f}×"
                 if tu else "- | - | -")
        lines.append(f"| {r['method']} | {r['dataset']} | {f(r['image_auroc'])} | {f(r['pixel_auroc'])} | {f(r['aupro'])} | "
                     f"{f(r['f1_max'])} | {r['train_seconds']:.0f} | {o['mean']:.1f} ({o['p50']:.1f}/{o['p99']:.1f}) | "
                     f"{t['mean']:.1f} ({t['p50']:.1f}/{t['p99']:.1f}) | {faults} | {r['speedup']:.2f}× | {tuned} | "
                     f"{r['bundle_mb']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
