"""Regenerate the generative-detector figures: MemAE, a plain AE, a VAE with K projection steps, MMD scores.

Per dataset (128×128 inputs, CPU):

* trains ``memae`` (defaults), the plain autoencoder baseline (``memae`` with ``mem_size=0``, same
  network without the memory) and ``vae`` (defaults), timed;
* exports the three runs and evaluates the bundles with ONNX Runtime (image AUROC, pixel AUROC,
  AUPRO, F1-max: the ``adrt export`` / ``adrt eval`` path);
* evaluates the test-time variants of the same trained networks with torch eager (parity with the
  graph is tested in tests/): the VAE's projection map for several K (one projection of up to
  max(K) steps per batch, the maps read off at every K on the way: the iterates do not depend
  on K), the MMD score of the VAE (prior and aggregated-posterior references) and of MemAE,
  and MemAE's SSIM map;
* on the first dataset only (latency does not depend on the weights): bundles of the VAE at every
  K, the MMD head, MemAE and the AE, each benchmarked at batch 1 with ONNX Runtime CPU beside torch
  eager in the same run (``adrt.bench.harness.bench``).

Writes benchmarks/results/generative.{json,md}.

    nice -n 10 python benchmarks/generative.py                       # both datasets
    nice -n 10 python benchmarks/generative.py --datasets bottle --reuse

Needs `pip install -e ".[train]"` and ../shared/data (MVTec AD layout).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _results import DATASETS  # benchmarks/_results.py (this folder is on sys.path)

HERE = Path(__file__).resolve().parent


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30, help="Timed runs per latency configuration.")
    ap.add_argument("--ks", type=int, nargs="+", default=[0, 5, 10, 20], help="Projection steps to evaluate.")
    ap.add_argument("--latency-ks", type=int, nargs="+", default=None, help="K values to benchmark (default: --ks).")
    ap.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                    help="Training option for every network (e.g. iterations=400); recorded in the rows' config.")
    ap.add_argument("--no-ae", action="store_true", help="Skip the plain AE baseline.")
    ap.add_argument("--latency-threads", type=int, nargs="+", default=None,
                    help="Thread counts for the latency runs (default: --threads, then 1).")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--skip-eval", action="store_true",
                    help="Keep the accuracy rows already in the results file (with --reuse); only rerun latency.")
    ap.add_argument("--work", type=Path, default=Path("runs/generative"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "generative")
    ap.add_argument("--reuse", action="store_true", help="Reuse run folders and bundles that already exist in --work.")
    args = ap.parse_args(argv)

    import torch

    from adrt.bench.machine import machine_info

    torch.set_num_threads(args.threads)
    out_json = args.out.with_suffix(".json")
    report = json.loads(out_json.read_text()) if args.reuse and out_json.is_file() else {}
    report.pop("notes", None)   # notes describe one particular run; write them again by hand
    report.update({"machine": machine_info(), "torch": torch.__version__, "threads": args.threads,
                   "size": args.size, "runs": args.runs, "training_options": args.options,
                   "command": " ".join(["python", "benchmarks/generative.py", *(argv or sys.argv[1:])])})
    old_rows = report.get("rows", [])   # report["rows"] is rewritten after each dataset
    rows = [r for r in old_rows if r["dataset"] not in args.datasets]
    args.latency_threads = args.latency_threads or list(dict.fromkeys([args.threads, 1]))
    latency = report.get("latency", [])
    for i, name in enumerate(args.datasets):
        data = DATASETS[name]
        if not data.is_dir():
            log(f"skip {name}: {data} not found")
            continue
        t0 = time.perf_counter()
        if args.skip_eval:
            rows += [r for r in old_rows if r["dataset"] == name]
        else:
            rows += dataset_rows(name, data, args)
        log(f"{name}: {time.perf_counter() - t0:.0f} s")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report["rows"] = rows
        if i == 0 and not args.no_latency:
            latency = latency_rows(name, data, args, latency)
            report["latency"] = latency
            report["latency_dataset"] = name
        out_json.write_text(json.dumps(report, indent=2))
        args.out.with_suffix(".md").write_text(to_markdown(report))
    report["rows"], report["latency"] = rows, latency
    out_json.write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(to_markdown(report))
    print(to_markdown(report))
    return 0


# --------------------------------------------------------------------------------------------- runs


def trained(method: str, name: str, data: Path, args, options: dict | None = None) -> Path:
    from adrt.train.fit import train

    run = args.work / f"{name}_{data.name}"
    common = dict(o.split("=", 1) for o in args.options)
    if not (args.reuse and (run / "detector.json").exists()):
        train(method, data, run, size=args.size, threads=args.threads, options={**common, **(options or {})},
              overwrite=True)
    return run


def derived(run: Path, tag: str, args, **changes) -> Path:
    from adrt.train.generative import with_options

    out = run.parent / f"{run.name}__{tag}"
    if not (args.reuse and (out / "detector.json").exists()):
        with_options(run, out, log=log, overwrite=True, **changes)
    return out


_EXPORT_SECONDS: dict[str, float] = {}


def exported(run: Path, data: Path, args) -> tuple[Path, float | None]:
    """The run's bundle (exported unless reusable) and the export time (None when reused and not timed
    in this process)."""
    from adrt.export.pipeline import export_run

    bundle = run.parent / f"{run.name}_bundle"
    if not (args.reuse and (bundle / "manifest.json").exists()):
        t0 = time.perf_counter()
        export_run(run, bundle, data, overwrite=True)
        _EXPORT_SECONDS[str(bundle)] = round(time.perf_counter() - t0, 1)
    return bundle, _EXPORT_SECONDS.get(str(bundle))


def _meta(run: Path) -> dict:
    return json.loads((run / "detector.json").read_text())


def test_set(data: Path, size: int):
    from adrt.data import Dataset, load_images, load_masks

    ds = Dataset.open(data)
    images = load_images([s.path for s in ds.test], size, size)
    labels = [s.label for s in ds.test]
    types = [s.defect_type for s in ds.test]
    return images, labels, types, load_masks(ds.test, size, size)


def metrics(test, scores, maps) -> dict:
    from adrt.metrics import evaluate

    _, labels, types, masks = test
    return evaluate(labels, scores, types, masks=masks, maps=maps if masks is not None else None)


def row(label, dataset, run, res, evaluated_with, **extra) -> dict:
    o = res["overall"]
    meta = _meta(run)
    src = meta["training"].get("derived_from", {}).get("run")
    train_s = _meta(Path(src))["training"]["seconds"] if src else meta["training"]["seconds"]
    r = {"label": label, "dataset": dataset, "method": meta["method"], "config": meta["config"],
         "image_auroc": o["image_auroc"], "pixel_auroc": o.get("pixel_auroc"), "aupro": o.get("aupro"),
         "f1_max": o["f1_max"], "train_seconds": train_s, "evaluated_with": evaluated_with,
         "per_type": res["per_type"], **extra}
    log(f"  {label} ({dataset}): image AUROC {r['image_auroc']:.3f}, pixel AUROC {r['pixel_auroc'] or 0:.3f}, "
        f"AUPRO {r['aupro'] or 0:.3f} [{evaluated_with}]")
    return r


def eager_raw(run: Path, images):
    from adrt.train.detector import run_raw
    from adrt.train.fit import load_run

    det, _ = load_run(run)
    maps, scores = run_raw(det, images)
    return scores, maps


def vae_sweep(run: Path, images, ks, batch: int = 8) -> dict:
    """Raw (scores, maps) of the VAE run at every K in ``ks`` from one projection of max(ks) steps."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from adrt.train.fit import load_run

    det, _ = load_run(run)
    sc = det.scorer
    out = {k: ([], []) for k in ks}
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x0 = det.preprocess(torch.from_numpy(images[i : i + batch]))
            x = x0
            for t in range(0, max(ks) + 1):
                if t:
                    x = sc.step(x, x0)
                if t in ks:
                    target = x if t else sc.net(x0)[0]
                    amap = sc.error(x0, target)
                    score = sc.map_score(amap)
                    m = F.interpolate(amap.unsqueeze(1), size=x0.shape[-2:], mode="bilinear",
                                      align_corners=False).squeeze(1)
                    out[t][0].append(score.numpy())
                    out[t][1].append(det.blur(m).numpy())
    return {k: (np.concatenate(s), np.concatenate(m)) for k, (s, m) in out.items()}


def dataset_rows(name: str, data: Path, args) -> list[dict]:
    from adrt.evaluate import evaluate_session
    from adrt.runtime import load

    rows = []
    test = test_set(data, args.size)
    runs = {"MemAE": trained("memae", "memae", data, args)}
    if not args.no_ae:
        runs["AE (memae, mem_size=0)"] = trained("memae", "ae", data, args, {"mem_size": 0})
    runs["VAE"] = trained("vae", "vae", data, args)
    vae_k = _meta(runs["VAE"])["config"]["k_steps"]

    # The real path: export + ONNX Runtime evaluation of the trained runs.
    for label, run in runs.items():
        bundle, export_s = exported(run, data, args)
        with load(bundle, threads=args.threads) as s:
            res = evaluate_session(s, data, args.work / f"{run.name}_eval", overlays=6, log=log)
        lab = f"VAE + projection K={vae_k}" if label == "VAE" else label
        rows.append(row(lab, name, run, res, "onnxruntime", export_seconds=export_s,
                        inference_seconds=res["inference_seconds"]))

    # Test-time variants of the same networks (torch eager).
    memae = runs["MemAE"]
    for tag, label, changes in (("mmd", "MemAE, MMD score (latent vs normal latents)", {"score": "mmd"}),
                                ("ssim", "MemAE, SSIM map", {"error": "ssim"})):
        run = derived(memae, tag, args, **changes)
        rows.append(row(label, name, run, metrics(test, *eager_raw(run, test[0])), "torch eager"))
    vae = runs["VAE"]
    t0 = time.perf_counter()
    sweep = vae_sweep(vae, test[0], sorted(set(args.ks)))
    log(f"  VAE sweep over K = {sorted(set(args.ks))}: {time.perf_counter() - t0:.0f} s")
    for k, (scores, maps) in sorted(sweep.items()):
        label = "VAE reconstruction error (K=0)" if k == 0 else f"VAE + projection K={k}"
        rows.append(row(label, name, vae, metrics(test, scores, maps), "torch eager", k_steps=k))
    for ref in ("prior", "aggregate"):
        run = derived(vae, f"mmd_{ref}", args, k_steps=0, score="mmd", mmd_ref=ref)
        rows.append(row(f"VAE, MMD score ({ref} reference; map K=0)", name, run,
                        metrics(test, *eager_raw(run, test[0])), "torch eager", k_steps=0))
    return rows


def latency_rows(name: str, data: Path, args, previous: list[dict] = ()) -> list[dict]:
    """ORT vs torch eager per detector and thread count; a reused bundle keeps the export time that
    ``previous`` (the results file's latency rows) recorded for it."""
    from adrt.bench.harness import bench

    vae = args.work / f"vae_{data.name}"
    memae = args.work / f"memae_{data.name}"
    k_default = _meta(vae)["config"]["k_steps"]
    todo = [("MemAE", memae, None)]
    if not args.no_ae:
        todo.append(("AE (memae, mem_size=0)", args.work / f"ae_{data.name}", None))
    for k in sorted(set(args.latency_ks or args.ks)):
        run = vae if k == k_default else derived(vae, f"k{k}", args, k_steps=k)
        todo.append((f"VAE K={k}", run, k))
    todo.append(("VAE MMD score (K=0)", args.work / f"vae_{data.name}__mmd_prior", 0))
    rows = []
    for label, run, k in todo:
        bundle, export_s = exported(run, data, args)
        if export_s is None:
            export_s = next((r.get("export_seconds") for r in previous
                             if r["label"] == label and r["dataset"] == name), None)
        for threads in args.latency_threads:
            log(f"  bench {label}, {threads} threads")
            rep = bench(bundle, threads=threads, runs=args.runs, torch_run=run, batch=4)
            ort_ms = rep["results"][0]["latency_ms"]
            torch_ms = rep["results"][1]["latency_ms"]
            rows.append({"label": label, "dataset": name, "k_steps": k, "threads": threads, "ort_cpu_ms": ort_ms,
                         "torch_eager_ms": torch_ms, "speedup": rep.get("speedup_vs_torch"),
                         "export_seconds": export_s, "ort_peak_rss_mb": rep["results"][0].get("peak_rss_mb"),
                         "loadavg_end": rep["machine"].get("loadavg_end"),
                         "bundle_mb": round(sum(p.stat().st_size for p in bundle.iterdir()) / 2**20, 2)})
            log(f"    ORT {ort_ms['mean']:.1f} ms, torch {torch_ms['mean']:.1f} ms")
    return rows


# --------------------------------------------------------------------------------------------- report


def to_markdown(report: dict) -> str:
    m = report["machine"]
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        f"# Generative detectors ({m['platform']}, {m['cpus']} CPUs, torch {report['torch']}, "
        f"{report['threads']} threads, {report['size']}×{report['size']} input)",
        "",
        "Image AUROC, pixel AUROC and AUPRO (PRO to 30 % FPR) on the test split; the image score is the "
        "max of the smoothed map unless the row says MMD. `onnxruntime`: the exported bundle evaluated by "
        "`adrt eval`'s code; `torch eager`: the same trained network with other test-time options, in torch "
        "(the graph matches torch within 1e-4, tested). Training time is for the network the row uses.",
        "",
        "| dataset | detector | image AUROC | pixel AUROC | AUPRO | F1-max | train s | evaluated with |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report.get("rows", []):
        lines.append(f"| {r['dataset']} | {r['label']} | {f(r['image_auroc'])} | {f(r['pixel_auroc'])} | "
                     f"{f(r['aupro'])} | {f(r['f1_max'])} | {r['train_seconds']:.0f} | {r['evaluated_with']} |")
    if report.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in report["notes"]]
    if report.get("latency"):
        lines += [
            "",
            f"## Latency (batch 1, {report['size']}×{report['size']}, networks trained on "
            f"{report.get('latency_dataset')})",
            "",
            "Host uint8 image in → map and score on the host; mean (p50/p99) over "
            f"{report['runs']} runs, ONNX Runtime CPU and torch eager interleaved in the same benchmark run "
            "(`adrt.bench.harness.bench`). The machine is shared, so absolute figures carry noise.",
            "",
            "| detector | K | threads | ORT CPU ms | torch eager ms | ORT speed-up | export s | bundle MB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in report["latency"]:
            o, t = r["ort_cpu_ms"], r["torch_eager_ms"]
            k = "-" if r["k_steps"] is None else r["k_steps"]
            sp = "-" if r["speedup"] is None else f"{r['speedup']:.2f}×"
            ex = "-" if r.get("export_seconds") is None else f"{r['export_seconds']:.0f}"
            lines.append(f"| {r['label']} | {k} | {r.get('threads', report['threads'])} | "
                         f"{o['mean']:.1f} ({o['p50']:.1f}/{o['p99']:.1f}) | "
                         f"{t['mean']:.1f} ({t['p50']:.1f}/{t['p99']:.1f}) | {sp} | {ex} | {r['bundle_mb']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
