"""INT8 and FP16 ONNX against FP32 on ONNX Runtime CPU: accuracy and latency, measured together.

For each method × dataset, the bundle is copied (its own folder is not touched), the FP16 and INT8
models are added (adrt.export.quantize; INT8 calibrated on the dataset's normal training images)
and every variant is evaluated on the test split (image AUROC, pixel AUROC, AUPRO, and the
accuracy / false-positive rate at the fp32 calibration's threshold 0.5). Latency is batch-1,
host uint8 in → maps and scores out, the variants interleaved round by round in one process so
machine noise lands on all of them; the ratio is variant / fp32 of the medians.

Variants: ``fp16``; ``int8`` (target ``tensorrt``: symmetric int8 activations, the file
``adrt build-engine --precision int8`` uses); ``int8-cpu`` (target ``cpu``: uint8 activations,
what ONNX Runtime on x86 fuses completely).

    python benchmarks/precision.py --bundles /tmp/runs --work /tmp/adrt-precision
    python benchmarks/precision.py --only patchcore_bottle --runs 20

Bundles are looked up as ``<bundles>/<method>_<dataset>_bundle`` (dataset: bottle, mtile). Writes
benchmarks/results/precision.{json,md}. Needs onnx and onnxruntime (no torch).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
DATASETS = {"bottle": DATA / "mvtec_ad" / "bottle", "mtile": DATA / "magnetic_tile" / "magnetic_tile"}
METHODS = ("patchcore", "padim")
VARIANTS = ("fp32", "fp16", "int8", "int8-cpu")
# The bound: INT8 may lose at most this much image AUROC (points = 0.01 AUROC).
MAX_INT8_LOSS_POINTS = 0.5


def prepare(src: Path, work: Path, data: Path, log) -> dict[str, tuple[Path, str]]:
    """Copies of ``src`` with the variants added: variant -> (bundle folder, precision to load)."""
    from adrt.export.quantize import add_variant

    base = work / src.name
    cpu = work / (src.name + "-int8cpu")
    for d in (base, cpu):
        if d.exists():
            shutil.rmtree(d)
        shutil.copytree(src, d, symlinks=False)
    t0 = time.perf_counter()
    add_variant(base, "fp16", calib=data, log=log)
    t1 = time.perf_counter()
    add_variant(base, "int8", calib=data, int8_target="tensorrt", log=log)
    t2 = time.perf_counter()
    add_variant(cpu, "int8", calib=data, int8_target="cpu", log=log)
    t3 = time.perf_counter()
    log(f"  variants made: fp16 {t1 - t0:.1f} s, int8 {t2 - t1:.1f} s, int8-cpu {t3 - t2:.1f} s")
    return {"fp32": (base, "fp32"), "fp16": (base, "fp16"), "int8": (base, "int8"), "int8-cpu": (cpu, "int8")}


def evaluate_variant(session, images, labels, types, masks) -> dict:
    from adrt.metrics import evaluate

    maps, scores, calibrated = [], [], []
    for i in range(0, len(images), 8):
        r = session.run(images[i : i + 8])
        maps.append(r.raw_maps)
        scores.append(r.raw_scores)
        calibrated.append(r.scores)
    raw_maps, raw_scores = np.concatenate(maps), np.concatenate(scores)
    res = evaluate(labels, raw_scores, types, masks=masks, maps=raw_maps if masks is not None else None)
    pred = np.concatenate(calibrated) >= session.threshold
    o = res["overall"]
    return {"image_auroc": o["image_auroc"], "pixel_auroc": o.get("pixel_auroc"), "aupro": o.get("aupro"),
            "f1_max": o["f1_max"], "accuracy_at_threshold": float((pred == labels.astype(bool)).mean()),
            "fpr_at_threshold": float(pred[labels == 0].mean()), "recall_at_threshold": float(pred[labels == 1].mean()),
            "good_raw_score_mean": float(raw_scores[labels == 0].mean())}


def interleaved_latency(sessions: dict, image: np.ndarray, runs: int, warmup: int = 3) -> dict:
    for s in sessions.values():
        for _ in range(warmup):
            s.run(image)
    times = {k: [] for k in sessions}
    names = list(sessions)
    for r in range(runs):
        for k in names[r % len(names):] + names[: r % len(names)]:   # rotate the order each round
            t0 = time.perf_counter()
            sessions[k].run(image)
            times[k].append(time.perf_counter() - t0)
    return {k: {"median_ms": float(np.median(v) * 1e3), "min_ms": float(np.min(v) * 1e3),
                "p90_ms": float(np.percentile(v, 90) * 1e3), "runs": len(v)} for k, v in times.items()}


def model_facts(bundle: Path, precision: str) -> dict:
    m = json.loads((bundle / "manifest.json").read_text())["models"][precision]  # fp32: just file
    keep = ("reduced_ops", "float_parts", "int8_target", "activations", "calibration", "float_prefix")
    out = {k: m[k] for k in keep if k in m}
    if "parity_vs_fp32" in m:
        out["raw_score_median_rel_vs_fp32"] = m["parity_vs_fp32"]["raw_score_median_rel"]
    out["file_mb"] = round((bundle / m["file"]).stat().st_size / 2**20, 2)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", type=Path, default=Path("/tmp/runs"), help="Folder with <method>_<dataset>_bundle.")
    ap.add_argument("--work", type=Path, default=Path("/tmp/adrt-precision"), help="Where the variant bundles go.")
    ap.add_argument("--only", nargs="*", default=None, help="e.g. patchcore_bottle padim_mtile")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=40, help="Timed batch-1 runs per variant (interleaved).")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "precision")
    args = ap.parse_args(argv)

    import onnxruntime as ort

    import adrt.runtime as rt
    from adrt.data import Dataset, load_images, load_masks

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for method in METHODS:
        for dname, dpath in DATASETS.items():
            key = f"{method}_{dname}"
            if args.only and key not in args.only:
                continue
            src = args.bundles / f"{key}_bundle"
            if not (src / "manifest.json").exists():
                log(f"{key}: no bundle at {src}; skipped")
                rows.append({"case": key, "skipped": f"no bundle at {src}"})
                continue
            src = src.resolve()
            log(f"{key}: making variants")
            variants = prepare(src, args.work, dpath, log)
            ds = Dataset.open(dpath)
            first = rt.load(variants["fp32"][0])
            h, w = first.height, first.width
            first.close()
            images = load_images([s.path for s in ds.test], h, w)
            masks = load_masks(ds.test, h, w)
            labels = np.array([s.label for s in ds.test])
            types = [s.defect_type for s in ds.test]
            sessions = {v: rt.load(b, threads=args.threads, precision=p) for v, (b, p) in variants.items()}
            try:
                metrics = {}
                for v, s in sessions.items():
                    t0 = time.perf_counter()
                    metrics[v] = evaluate_variant(s, images, labels, types, masks)
                    metrics[v]["eval_seconds"] = round(time.perf_counter() - t0, 1)
                    log(f"  {v}: image AUROC {metrics[v]['image_auroc']:.4f}, pixel AUROC {metrics[v]['pixel_auroc']}")
                lat = interleaved_latency(sessions, images[:1], args.runs)
            finally:
                for s in sessions.values():
                    s.close()
            ref = metrics["fp32"]
            row = {"case": key, "method": method, "dataset": dname, "n_test": len(images), "variants": {}}
            for v in VARIANTS:
                b, p = variants[v]
                e = {**metrics[v], "latency": lat[v], "latency_ratio_vs_fp32": lat[v]["median_ms"] / lat["fp32"]["median_ms"],
                     "image_auroc_loss_points": 100 * (ref["image_auroc"] - metrics[v]["image_auroc"])}
                e["model"] = model_facts(b, p)
                row["variants"][v] = e
            row["int8_within_bound"] = row["variants"]["int8"]["image_auroc_loss_points"] <= MAX_INT8_LOSS_POINTS
            rows.append(row)

    report = {
        "what": "INT8/FP16 ONNX vs FP32 on ONNX Runtime CPU (accuracy on the test split, batch-1 latency interleaved)",
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "load_avg_1m": os.getloadavg()[0], "python": platform.python_version(),
                    "onnxruntime": ort.__version__, "threads": args.threads},
        "int8_bound_points": MAX_INT8_LOSS_POINTS,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(to_markdown(report))
    print(to_markdown(report))
    return 0 if all(r.get("int8_within_bound", True) for r in rows) else 1


def _f(x, fmt="{:.4f}"):
    return "-" if x is None else fmt.format(x)


def to_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Reduced precision on ONNX Runtime CPU",
        "",
        f"Regenerate: `python benchmarks/precision.py`. ONNX Runtime {m['onnxruntime']}, {m['threads']} threads, "
        f"{m['cpus']} CPUs (load average {m['load_avg_1m']:.1f} at the end: a shared machine, so compare the "
        "ratios, which were measured interleaved in one process, more than the absolute times).",
        "",
        "Metrics use the raw outputs. *acc@0.5* and *FPR@0.5* use the calibrated score at the bundle's "
        "threshold, which was set on the fp32 model: they show how far a variant moves normal scores. "
        f"INT8 may lose at most {report['int8_bound_points']} points of image AUROC.",
        "",
        "| case | variant | image AUROC | Δ points | pixel AUROC | AUPRO | acc@0.5 | FPR@0.5 | latency p50 ms | × fp32 | MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for r in report["results"]:
        if "skipped" in r:
            lines.append(f"| {r['case']} | skipped: {r['skipped']} |||||||||| |")
            continue
        for v, e in r["variants"].items():
            mb = e.get("model", {}).get("file_mb", "")
            lines.append(
                f"| {r['case']} | {v} | {_f(e['image_auroc'])} | {0.0 - e['image_auroc_loss_points'] + 0.0:+.2f} | "
                f"{_f(e['pixel_auroc'])} | {_f(e['aupro'])} | {_f(e['accuracy_at_threshold'], '{:.3f}')} | "
                f"{_f(e['fpr_at_threshold'], '{:.3f}')} | {e['latency']['median_ms']:.1f} | "
                f"{e['latency_ratio_vs_fp32']:.2f} | {mb} |")
        for v in ("int8", "int8-cpu"):
            fp = r["variants"][v]["model"].get("float_prefix", {})
            if fp:
                notes.append(f"- {r['case']} {v}: {fp['quantized_nodes']} Conv/Clip nodes int8, the first "
                             f"{fp['float_prefix_nodes']} left float (normal-score shift {fp['score_shift_std']:+.2f} "
                             f"calibration std, measured on the {fp.get('measured_on', 'calibration images')})")
    lines += [
        "",
        "## What stayed float",
        "",
        "FP16 and INT8 reduce only the backbone (feature extractor): in FP16 all its Conv, Clip, Add, pooling, "
        "tap Resize and Concat nodes; in INT8 its Conv and Clip nodes (QDQ, per-channel symmetric int8 weights, "
        "biases float) after a float prefix chosen by measurement. Float32 everywhere: the preprocessing "
        "(cast, scale, mean/std), the scoring (PatchCore's nearest-neighbour GEMM against the memory bank and "
        "the image-score reweighting; PaDiM's per-position Mahalanobis distance), the upsampling, the Gaussian "
        "blur and the calibration sigmoid.",
        "",
        *notes,
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
