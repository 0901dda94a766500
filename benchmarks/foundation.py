"""Regenerate the foundation figures: PatchCore and PaDiM on the shared real data.

For each method × dataset: train (timed), export, evaluate with ONNX Runtime (image/pixel AUROC,
AUPRO, F1-max), then latency at 256×256 batch 1 of ONNX Runtime CPU beside the torch eager
detector in the same process. Writes benchmarks/results/foundation.{json,md}.

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

from _results import write_report  # benchmarks/_results.py (this folder is on sys.path)

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
DATASETS = {"bottle": DATA / "mvtec_ad" / "bottle", "magnetic_tile": DATA / "magnetic_tile" / "magnetic_tile"}


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

    from adrt.commands import record_metrics
    from adrt.evaluate import evaluate_session
    from adrt.export.cli import export_run
    from adrt.runtime import load
    from adrt.runtime.bench import bench, machine_info
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
                train(method, data, run, size=args.size, threads=args.threads)
            train_s = json.loads((run / "detector.json").read_text())["training"]["seconds"]
            bundle = export_run(run, args.work / f"{method}_{name}_bundle", data)
            with load(bundle, threads=args.threads) as s:
                res = evaluate_session(s, data, args.work / f"{method}_{name}_eval", overlays=8)
            record_metrics(bundle, data, res)   # accuracy travels with the bundle (adrt bench plots it)
            rep = bench(bundle, threads=args.threads, runs=args.runs, torch_run=run)
            ort_ms = rep["results"][0]["latency_ms"]
            torch_ms = rep["results"][1]["latency_ms"]
            o = res["overall"]
            rows.append({
                "method": method, "dataset": name, "size": args.size,
                "image_auroc": o["image_auroc"], "pixel_auroc": o.get("pixel_auroc"), "aupro": o.get("aupro"),
                "f1_max": o["f1_max"], "train_seconds": train_s,
                "ort_cpu_ms": ort_ms, "torch_eager_ms": torch_ms, "speedup": rep["speedup_vs_torch"],
                "ort_peak_rss_mb": rep["results"][0]["peak_rss_mb"], "per_type": res["per_type"],
                "bundle_mb": round(sum(p.stat().st_size for p in bundle.iterdir()) / 2**20, 1),
                "wall_seconds": round(time.perf_counter() - t0, 1),
            })
            print(f"{method} {name}: image AUROC {o['image_auroc']:.3f}, pixel AUROC {o.get('pixel_auroc', 0):.3f}, "
                  f"AUPRO {o.get('aupro', 0):.3f}; ORT {ort_ms['mean']:.1f} ms vs torch {torch_ms['mean']:.1f} ms",
                  file=sys.stderr)
    report = {"machine": machine_info(), "torch": torch.__version__, "threads": args.threads, "runs": args.runs,
              "rows": rows}
    write_report(args.out, report, to_markdown(report))
    return 0


def to_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# Foundation figures ({m['platform']}, {m['cpus']} CPUs, ONNX Runtime {m['onnxruntime']}, "
        f"torch {report['torch']}, {report['threads']} threads)",
        "",
        "Latency: batch 1, 256×256, host uint8 in → map and score on the host, mean (p50/p99) over "
        f"{report['runs']} runs after warm-up; ONNX Runtime CPU and torch eager timed in the same process.",
        "",
        "| method | dataset | image AUROC | pixel AUROC | AUPRO | F1-max | train s | ORT ms | torch ms | ORT speed-up | bundle MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for r in report["rows"]:
        o, t = r["ort_cpu_ms"], r["torch_eager_ms"]
        lines.append(f"| {r['method']} | {r['dataset']} | {f(r['image_auroc'])} | {f(r['pixel_auroc'])} | {f(r['aupro'])} | "
                     f"{f(r['f1_max'])} | {r['train_seconds']:.0f} | {o['mean']:.1f} ({o['p50']:.1f}/{o['p99']:.1f}) | "
                     f"{t['mean']:.1f} ({t['p50']:.1f}/{t['p99']:.1f}) | {r['speedup']:.2f}× | {r['bundle_mb']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
