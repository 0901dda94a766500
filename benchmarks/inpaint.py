"""Inpainting detector figures: accuracy and latency per test-time mask set, on bottle and magnetic tile.

Per dataset the default `inpaint` configuration is trained once (timed). The mask set is a
test-time choice, so every mask set below uses that one network:

1. Accuracy grid, one torch pass over the test split: the error maps of each cell size k ∈ (2, 4,
   8, 16) for n_masks ∈ (2, 3), with both error types. A cell size's masks do not depend on the
   rest of the set (same seed), so the map of any mask set of those cells is the mean of its cell
   sizes' maps; then the Detector's Gaussian blur and the image score max, exactly as in the graph.
   Metrics: image AUROC, pixel AUROC, AUPRO (adrt.metrics).
2. Latency per number of masks M (the cost depends on M only, and the graphs of the two datasets
   differ only in weights and mask values, so it is measured once, on the first dataset): a run
   folder with that mask set (`with_mask_set`, recalibrated on the run's held-out images),
   exported, then ONNX Runtime CPU beside torch eager at batch 1 (`adrt.bench.harness.bench`).
3. End to end: the default mask set's bundle evaluated with ONNX Runtime (`evaluate_session`),
   which must agree with its row of the grid.

Writes benchmarks/results/inpaint.{json,md}.

    nice -n 10 python benchmarks/inpaint.py                  # both datasets, 128 px
    python benchmarks/inpaint.py --datasets bottle --reuse   # reuse trained runs and cached maps

Needs `pip install -e ".[train]"` and ../shared/data (MVTec AD layout).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from _results import DATASETS, write_report  # benchmarks/_results.py (this folder is on sys.path)

HERE = Path(__file__).resolve().parent
CELLS = (2, 4, 8, 16)
# Mask sets reported (cells, n_masks). The first is RIAD's.
SETS = [
    ((2, 4, 8, 16), 3),
    ((4, 8, 16), 3),
    ((2, 4, 8), 3),
    ((2, 4, 8, 16), 2),
    ((2, 4), 3),
    ((4, 8), 3),
    ((8, 16), 3),
    ((4, 8, 16), 2),
    ((2, 4), 2),
    ((8, 16), 2),
    ((4,), 3),
    ((8,), 3),
    ((2,), 2),
    ((4,), 2),
]
ERRORS = ("msgms", "se")


def per_scale_maps(run, data, size: int, log) -> dict:
    """{(n_masks, error): float16 N×len(CELLS)×H×W} error maps of the test split, plus labels and masks."""
    import numpy as np
    import torch
    from dataclasses import replace

    from adrt.data import Dataset, load_images, load_masks
    from adrt.train.fit import load_run
    from adrt.train.inpaint import InpaintScorer
    from adrt.train.inpaint.model import ReconstructionError

    det, meta = load_run(run)
    ds = Dataset.open(data)
    errors = {e: ReconstructionError(e, det.scorer.cfg.gms_scales) for e in ERRORS}
    out = {}
    for n in (2, 3):
        scorer = InpaintScorer(replace(det.scorer.cfg, cells=CELLS, n_masks=n)).eval()
        scorer.net.load_state_dict(det.scorer.net.state_dict())
        scorer.set_masks(size, size, meta["training"]["seed"])
        acc = {e: [] for e in ERRORS}
        t0 = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(ds.test), 8):
                x = det.preprocess(torch.from_numpy(load_images([s.path for s in ds.test[i : i + 8]], size, size)))
                rec = scorer.reconstructions(x)
                for e in ERRORS:
                    acc[e].append(scorer.per_scale_errors(x, rec, errors[e]).numpy().astype(np.float16))
                log(f"  error maps n_masks={n}: {min(i + 8, len(ds.test))}/{len(ds.test)}", end="\r")
        log(f"  error maps n_masks={n}: {len(ds.test)} images in {time.perf_counter() - t0:.0f} s")
        for e in ERRORS:
            out[f"{n}_{e}"] = np.concatenate(acc[e])
    out["labels"] = np.array([s.label for s in ds.test])
    m = load_masks(ds.test, size, size)
    out["masks"] = m if m is not None else np.zeros(0)
    return out


def grid_metrics(maps: dict, size: int, sigma: float) -> list[dict]:
    import numpy as np
    import torch

    from adrt.metrics import aupro, image_auroc, pixel_auroc
    from adrt.train.detector import GaussianBlur

    blur = GaussianBlur(sigma, size, size)
    labels, masks = maps["labels"], maps["masks"]
    rows = []
    for cells, n in SETS:
        for e in ERRORS:
            per = maps[f"{n}_{e}"][:, [CELLS.index(k) for k in cells]].astype(np.float32).mean(1)
            with torch.inference_mode():
                m = blur(torch.from_numpy(per)).numpy()
            s = m.reshape(len(m), -1).max(1)
            row = {"cells": list(cells), "n_masks": n, "masks": len(cells) * n, "error": e, "sigma": sigma,
                   "image_auroc": image_auroc(labels, s)}
            if masks.size:
                row.update(pixel_auroc=pixel_auroc(masks, m), aupro=aupro(masks, m))
            rows.append(row)
    return rows


def one_thread_latency(pairs: dict, size: int, rounds: int = 4, reps: int = 5) -> dict:
    """Batch-1 latency with one thread, ONNX Runtime and torch eager interleaved per number of masks.

    ``pairs``: M -> (bundle, run folder). On a CPU shared with other jobs one thread is the least
    disturbed measurement (two threads wait for each other whenever a core is taken).
    """
    import numpy as np
    import torch

    from adrt.runtime import load
    from adrt.train.fit import load_run

    torch.set_num_threads(1)
    x = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    xt = torch.from_numpy(x)
    sessions = {m: load(b, threads=1) for m, (b, _) in pairs.items()}
    dets = {m: load_run(r)[0] for m, (_, r) in pairs.items()}
    times = {m: {"ort": [], "torch": []} for m in pairs}
    try:
        with torch.inference_mode():
            for m in pairs:
                sessions[m].run(x), dets[m](xt)
            for _ in range(rounds):
                for m in pairs:
                    for name, fn in (("ort", lambda: sessions[m].run(x)), ("torch", lambda: dets[m](xt))):
                        for _ in range(reps):
                            t0 = time.perf_counter()
                            fn()
                            times[m][name].append((time.perf_counter() - t0) * 1e3)
    finally:
        for s in sessions.values():
            s.close()
    return {m: {f"{k}_ms_{stat}": float(getattr(np, stat)(v)) if stat != "p50" else float(np.median(v))
                for k, v in t.items() for stat in ("min", "p50")} | {"runs": rounds * reps}
            for m, t in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--data", type=Path, default=None, help="Another dataset folder instead (a smoke test).")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2, help="Threads for the latency comparison.")
    ap.add_argument("--train-threads", type=int, default=1,
                    help="Threads for training and the accuracy pass "
                         "(on a shared CPU one thread was 4-10× faster than two).")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--work", type=Path, default=Path("runs/inpaint"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "inpaint")
    ap.add_argument("--reuse", action="store_true", help="Reuse trained runs and cached error maps in --work.")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from adrt.evaluate import evaluate_session
    from adrt.export.pipeline import export_run
    from adrt.runtime import load
    from adrt.bench.harness import bench
    from adrt.bench.machine import machine_info
    from adrt.train.fit import train
    from adrt.train.inpaint import InpaintConfig, with_mask_set

    def log(msg="", end="\n"):
        if end == "\r" and not sys.stderr.isatty():
            return
        print(msg, end=end, file=sys.stderr, flush=True)

    default = InpaintConfig()
    report = {"machine": machine_info(), "torch": torch.__version__, "size": args.size, "threads": args.threads,
              "train_threads": args.train_threads, "runs": args.runs, "config": asdict(default), "datasets": {}}
    datasets = {args.data.name: args.data} if args.data else {k: DATASETS[k] for k in args.datasets}
    latency: dict[int, dict] = {}
    for name, data in datasets.items():
        if not data.is_dir():
            log(f"skip {name}: {data} not found")
            continue
        work = args.work / name
        run = work / "run"
        torch.set_num_threads(args.train_threads)
        if not (args.reuse and (run / "detector.json").exists()):
            train("inpaint", data, run, size=args.size, threads=args.train_threads, log=log, overwrite=True)
        meta = json.loads((run / "detector.json").read_text())
        cache = work / "error_maps.npz"
        if args.reuse and cache.exists():
            maps = dict(np.load(cache))
        else:
            maps = per_scale_maps(run, data, args.size, log)
            np.savez(cache, **maps)
        t0 = time.perf_counter()
        rows = grid_metrics(maps, args.size, default.sigma)
        log(f"  metrics of {len(rows)} variants in {time.perf_counter() - t0:.0f} s")

        # Latency per number of masks, ORT CPU beside torch eager in the same run. The graph differs
        # between datasets only in its weights and mask values, so it is measured on the first dataset.
        if not latency:
            lat_cache = args.work / "latency.json"
            if args.reuse and lat_cache.exists():
                latency.update({int(k): v for k, v in json.loads(lat_cache.read_text()).items()})
            for cells, n in SETS:
                m = len(cells) * n
                if m in latency:
                    continue
                derived = with_mask_set(run, work / f"run_m{m}", cells=cells, n_masks=n, overwrite=True)
                bundle = export_run(derived, work / f"bundle_m{m}", data, overwrite=True)
                rep = bench(bundle, threads=args.threads, runs=args.runs, torch_run=derived)
                ort_ms, torch_ms = rep["results"][0]["latency_ms"], rep["results"][1]["latency_ms"]
                latency[m] = {"cells": list(cells), "n_masks": n, "measured_on": name, "ort_cpu_ms": ort_ms,
                              "torch_eager_ms": torch_ms,
                              "bundle_mb": round(sum(p.stat().st_size for p in bundle.iterdir()) / 2**20, 2)}
                log(f"  {m:2d} masks: ORT {ort_ms['mean']:.1f} ms, torch {torch_ms['mean']:.1f} ms")
                lat_cache.parent.mkdir(parents=True, exist_ok=True)
                lat_cache.write_text(json.dumps(latency, indent=2))
            one_cache = args.work / "latency_1thread.json"
            one = json.loads(one_cache.read_text()) if args.reuse and one_cache.exists() else {}
            if set(one) != {str(m) for m in latency}:
                log("  one-thread latency, ORT and torch eager interleaved")
                one = one_thread_latency({m: (work / f"bundle_m{m}", work / f"run_m{m}") for m in sorted(latency)},
                                         args.size)
                one_cache.write_text(json.dumps(one, indent=2))
                torch.set_num_threads(args.train_threads)
            for m, v in one.items():
                latency[int(m)]["one_thread"] = v
        for r in rows:
            r.update(train_seconds=meta["training"]["seconds"], **{k: latency[r["masks"]][k] for k in
                                                                    ("ort_cpu_ms", "torch_eager_ms")})

        # End to end with ONNX Runtime for the default mask set (the trained run itself).
        key = {"cells": list(default.cells), "n_masks": default.n_masks, "error": default.error}
        e2e_cache = work / "end_to_end_default.json"
        cached = json.loads(e2e_cache.read_text()) if args.reuse and e2e_cache.exists() else {}
        if cached.get("set") == key:
            e2e = cached["overall"]
        else:
            derived = with_mask_set(run, work / "run_default", **key, sigma=default.sigma, overwrite=True)
            bundle = export_run(derived, work / "bundle_default", data, overwrite=True)
            with load(bundle, threads=args.train_threads) as s:
                e2e = evaluate_session(s, data, work / "eval_default", overlays=6, log=log)["overall"]
            e2e_cache.write_text(json.dumps({"set": key, "overall": e2e}, indent=2))
        grid_row = next(r for r in rows if r["cells"] == list(default.cells) and r["n_masks"] == default.n_masks
                        and r["error"] == default.error)
        for k in ("image_auroc", "pixel_auroc", "aupro"):
            if k in e2e and abs(e2e[k] - grid_row[k]) > 2e-3:
                raise SystemExit(f"{name}: ORT end-to-end {k} {e2e[k]:.4f} differs from the grid's {grid_row[k]:.4f}")
        report["datasets"][name] = {"data": str(data), "training": meta["training"], "rows": rows,
                                    "end_to_end_default": e2e}
        for r in rows:
            log(f"{name} {r['cells']}×{r['n_masks']} {r['error']}: image {r['image_auroc']:.3f} "
                f"pixel {r.get('pixel_auroc', float('nan')):.3f} AUPRO {r.get('aupro', float('nan')):.3f}")
    report["latency"] = latency
    write_report(args.out, report, to_markdown(report))
    return 0


def to_markdown(report: dict) -> str:
    m, cfg = report["machine"], report["config"]
    lat = report["latency"]
    where = next(iter(lat.values()))["measured_on"] if lat else "-"
    lines = [
        f"# Inpainting detector figures ({m['platform']}, {m['cpus']} CPUs shared with other jobs, "
        f"ONNX Runtime {m['onnxruntime']}, torch {report['torch']})",
        "",
        f"Input {report['size']}×{report['size']}. One network per dataset: partial-conv U-Net, channels "
        f"{tuple(cfg['channels'])}, trained with {report['train_threads']} thread(s) for "
        f"min({cfg['iterations']}, {cfg['epochs']} epochs) steps of {cfg['batch_size']} whole images, random masks "
        f"(cells {tuple(cfg['train_cells'])} px, hole probability 1/{cfg['train_n_masks']}). The mask set is a "
        "test-time choice on that network: M = len(cells) × n_masks masked copies per image. Accuracy from one "
        "torch pass over the test split (see the script's docstring), σ = "
        f"{cfg['sigma']} blur, score = max of the map; the default set is also evaluated end to end with ONNX "
        "Runtime below.",
        "",
    ]
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for name, d in report["datasets"].items():
        tr = d["training"]
        by = {}
        for r in d["rows"]:
            by.setdefault((tuple(r["cells"]), r["n_masks"]), {})[r["error"]] = r
        lines += [f"## {name}", "",
                  f"Trained on {tr['n_fit']} images ({tr['n_holdout']} held out for calibration) in "
                  f"{tr['seconds']:.0f} s (all rows share this network).", "",
                  "| cells (px) × n_masks | M | MSGMS: image AUROC | pixel AUROC | AUPRO | squared error: image AUROC "
                  "| pixel AUROC | AUPRO |",
                  "|---|---|---|---|---|---|---|---|"]
        for (cells, n), errs in by.items():
            g, q = errs["msgms"], errs["se"]
            mark = " (default)" if list(cells) == list(cfg["cells"]) and n == cfg["n_masks"] else ""
            mark += " (RIAD's)" if cells == (2, 4, 8, 16) and n == 3 else ""
            lines.append(f"| {','.join(map(str, cells))} × {n}{mark} | {len(cells) * n} | {f(g['image_auroc'])} | "
                         f"{f(g.get('pixel_auroc'))} | {f(g.get('aupro'))} | {f(q['image_auroc'])} | "
                         f"{f(q.get('pixel_auroc'))} | {f(q.get('aupro'))} |")
        e = d["end_to_end_default"]
        lines += ["", f"Default set ({','.join(map(str, cfg['cells']))} × {cfg['n_masks']}, {cfg['error']}) end to end "
                      f"with ONNX Runtime (`adrt eval` path): image AUROC {f(e.get('image_auroc'))}, pixel AUROC "
                      f"{f(e.get('pixel_auroc'))}, AUPRO {f(e.get('aupro'))}, F1-max {f(e.get('f1_max'))}.", ""]
    lines += ["## Latency by number of masks", "",
              f"Batch 1, uint8 image in → map and score out. The cost depends on M only; measured once, on {where}. "
              f"Columns 2-3: `adrt.bench.harness.bench` with {report['threads']} threads, mean / p50 / min over "
              f"{report['runs']} runs, ONNX Runtime CPU and torch eager in the same run. The CPU was shared with other "
              "jobs (load average 4-7 on 2 cores), which inflates these, torch eager's most (its two OpenMP threads "
              "wait for each other whenever a core is taken). Columns 4-5: one thread, ONNX Runtime and torch eager "
              "interleaved per M, min / p50 — the least disturbed figures.", "",
              f"| M | ORT ms, {report['threads']} threads | torch eager ms, {report['threads']} threads "
              "| ORT ms, 1 thread | torch eager ms, 1 thread | bundle MB |",
              "|---|---|---|---|---|---|"]
    for k in sorted(lat, key=int, reverse=True):
        o, t, one = lat[k]["ort_cpu_ms"], lat[k]["torch_eager_ms"], lat[k].get("one_thread")
        c1 = f"{one['ort_ms_min']:.1f} / {one['ort_ms_p50']:.1f}" if one else "-"
        c2 = f"{one['torch_ms_min']:.1f} / {one['torch_ms_p50']:.1f}" if one else "-"
        lines.append(f"| {k} | {o['mean']:.1f} / {o['p50']:.1f} / {o['min']:.1f} | {t['mean']:.1f} / {t['p50']:.1f} / "
                     f"{t['min']:.1f} | {c1} | {c2} | {lat[k]['bundle_mb']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
