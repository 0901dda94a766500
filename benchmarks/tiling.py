"""Input geometry: tiling fused in the graph and letterboxing, measured.

    python benchmarks/tiling.py synth     --out benchmarks/results/tiling_synth      # (a) small defects at 1 MP
    python benchmarks/tiling.py latency   --out benchmarks/results/tiling_latency    # (b) ORT CPU, 1 MP and 5 MP
    python benchmarks/tiling.py magnetic  --out benchmarks/results/tiling_magnetic   # (c) magnetic tile
    python benchmarks/tiling.py trainmem  --out benchmarks/results/tiling_trainmem   # training peak RSS

Every configuration goes through the product's path: ``adrt train ... --export`` in a child process
(its peak RSS from ``/usr/bin/time``), then the bundle evaluated with ONNX Runtime. ``synth`` writes
a 1024×1024 procedural data set (``adrt.synth``, weave texture) whose defects are at most 6 px wide
and compares the 256-px squash with 256-px tiles over the full frame. ``latency`` wraps the trained
models' scorers in tiled graphs at 1 MP (1024×1024) and 5 MP (2048×2448) and times them against the
single-tile graph at batch 1 and at batch = tiles, in a fresh process per graph (peak RSS too).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from _results import write_report  # benchmarks/_results.py (this folder is on sys.path)

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("ADRT_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
MAGNETIC = DATA / "magnetic_tile" / "magnetic_tile"
ADRT = [sys.executable, "-m", "adrt.cli"]


def timed(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` under /usr/bin/time; wall seconds and peak RSS (MiB) of the child."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB %M", *cmd], stdout=f, stderr=subprocess.STDOUT)
    text = log.read_text()
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{text[-3000:]}")
    kb = int(text.rsplit("MAXRSS_KB", 1)[1].split()[0])
    return {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mib": round(kb / 1024, 1)}


def train(method: str, data: Path, work: Path, name: str, args: list[str], sets: list[str] = (),
          export: bool = True) -> dict:
    run, bundle = work / f"{name}_run", work / f"{name}_bundle"
    cmd = [*ADRT, "train", method, "--data", str(data), "--out", str(run), "--threads", "2", "--overwrite",
           *(["--export", str(bundle)] if export else []), *args, *(x for s in sets for x in ("--set", s))]
    rec = timed(cmd, work / f"{name}_train.log")
    return {"name": name, "method": method, "args": " ".join([*args, *(f"--set {s}" for s in sets)]),
            "train": rec, "bundle": str(bundle), "run": str(run)}


def evaluate(bundle: str, data: Path) -> dict:
    import adrt.runtime as rt
    from adrt.evaluate import evaluate_session

    with rt.load(bundle, threads=2) as s:
        r = evaluate_session(s, data, log=lambda m: None)
    o = r["overall"]
    keys = ("image_auroc", "pixel_auroc", "aupro", "f1_max")
    return {**{k: None if o.get(k) is None else round(o[k], 4) for k in keys},
            "eval_seconds": r["inference_seconds"], "geometry": r["data"]["geometry"]}


def train_eval(method: str, data: Path, work: Path, name: str, geometry_name: str, args: list[str],
               sets: list[str] = ()) -> dict:
    rec = train(method, data, work, name, args, sets)
    rec.update(evaluate(rec["bundle"], data), geometry_name=geometry_name)
    print(json.dumps(rec), flush=True)
    return rec


def env() -> dict:
    import onnxruntime
    import torch

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__, "threads": 2}


def table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(c for c, _ in cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "".join("| " + " | ".join(_fmt(r, k) for _, k in cols) + " |\n" for r in rows)


def _fmt(r: dict, key: str) -> str:
    v = r
    for part in key.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return "–" if v is None else (f"{v:.3f}" if isinstance(v, float) and abs(v) < 10 else str(v))


# --- (a) small defects at 1 MP ------------------------------------------------------------------

def synth(out: Path, work: Path, methods: list[str]) -> None:
    from adrt.synth import make_dataset

    data = work / "synth1024"
    if not (data / ".adrt-synth.json").is_file():
        make_dataset(data, size=1024, n_train=30, n_test_good=16, n_test_defect=16, seed=0, texture="weave", fine=6,
                     overwrite=True)
    rows = []
    for method in methods:
        for name, args in (("squash256", ["--size", "256"]),
                           ("tiled256", ["--tile", "256", "--input-size", "1024x1024", "--overlap", "32"])):
            rows.append(train_eval(method, data, work, f"synth_{method}_{name}", name, args))
    md = ("# Tiling check: 1024×1024 frames, defects at most 6 px wide\n\n"
          "`python benchmarks/tiling.py synth` — `adrt.synth.make_dataset(size=1024, fine=6, texture='weave')`: "
          "30 good training frames (26 fit, 4 held out), 16 good and 16 defective test frames (thin scratches "
          "1.5–6 px wide, 24–64 px long; dots 3–6 px). *squash256*: the frame resized to 256×256 (today's "
          "default); *tiled256*: 25 tiles of 256×256 (overlap 32) cut, scored and stitched inside the graph, "
          "training on the same tiles. Metrics from the bundle on ONNX Runtime (`adrt eval`); pixel metrics "
          "at the bundle's map resolution (256² squashed masks vs the full 1024² frame). Train peak RSS: the "
          "whole `adrt train --export` child.\n\n"
          + table(rows, [("method", "method"), ("geometry", "geometry_name"), ("image AUROC", "image_auroc"),
                         ("pixel AUROC", "pixel_auroc"), ("AUPRO", "aupro"), ("train+export s", "train.seconds"),
                         ("train peak RSS MiB", "train.peak_rss_mib"), ("eval s", "eval_seconds")]))
    write_report(out, {"env": env(), "rows": rows}, md)


# --- (b) latency and memory at 1 MP and 5 MP ----------------------------------------------------

WORKER = r"""
import json, sys, time
import numpy as np, onnxruntime as ort
path, h, w, batch, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
o = ort.SessionOptions(); o.intra_op_num_threads = 2; o.inter_op_num_threads = 1
s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
s.run(None, {"image": x})
ts = []
for _ in range(runs):
    t0 = time.perf_counter(); s.run(None, {"image": x}); ts.append(time.perf_counter() - t0)
# VmHWM: this process's own peak (ru_maxrss would carry the parent's peak over fork and exec).
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"ms_median": 1000 * float(np.median(ts)), "ms_min": 1000 * min(ts), "peak_rss_mib": hwm / 1024}))
"""


def time_graph(path: Path, h: int, w: int, batch: int, runs: int) -> dict:
    p = subprocess.run([sys.executable, "-c", WORKER, str(path), str(h), str(w), str(batch), str(runs)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def latency(out: Path, work: Path, runs_by_method: dict[str, str], runs: int) -> None:
    import torch

    from adrt.contract import Geometry, InputSpec
    from adrt.export.onnx import export_onnx
    from adrt.train.detector import Detector
    from adrt.train.fit import load_run

    torch.set_num_threads(2)
    rows = []
    for method, run in runs_by_method.items():
        det, _ = load_run(run)
        tile = det.model_size
        single = Detector(det.scorer, InputSpec(*tile), sigma=det.blur.sigma).eval()
        p1 = export_onnx(single, work / f"lat_{method}_single.onnx")
        one = time_graph(p1, *tile, 1, runs)
        for frame, label in (((1024, 1024), "1 MP"), ((2048, 2448), "5 MP")):
            g = Geometry("tile", tile=tile, overlap=32)
            tiled = Detector(det.scorer, InputSpec(*frame), sigma=det.blur.sigma, geometry=g).eval()
            n = tiled.tiling.n_tiles
            pt = export_onnx(tiled, work / f"lat_{method}_{frame[0]}x{frame[1]}.onnx")
            batched = time_graph(p1, *tile, n, max(2, runs // 4))
            full = time_graph(pt, *frame, 1, max(2, runs // 4))
            row = {"method": method, "frame": f"{frame[0]}×{frame[1]} ({label})", "tiles": n,
                   "single_ms": round(one.get("ms_median", float("nan")), 1),
                   "budget_ms": round(1.1 * n * one.get("ms_median", float("nan")), 1),
                   "batch_tiles_ms": round(batched.get("ms_median", float("nan")), 1),
                   "tiled_ms": round(full.get("ms_median", float("nan")), 1),
                   "tiled_peak_rss_mib": round(full.get("peak_rss_mib", float("nan")), 1),
                   "single_peak_rss_mib": round(one.get("peak_rss_mib", float("nan")), 1),
                   "errors": {k: v["error"] for k, v in (("single", one), ("batched", batched), ("tiled", full))
                              if "error" in v}}
            row["within_budget"] = bool(row["tiled_ms"] <= row["budget_ms"])
            row["ratio_vs_tiles_x_single"] = round(row["tiled_ms"] / (n * row["single_ms"]), 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    md = ("# Tiled graphs: latency and memory at 1 MP and 5 MP (ONNX Runtime CPU, 2 threads)\n\n"
          "`python benchmarks/tiling.py latency` — each method's trained scorer (256-px model) wrapped in a "
          "tiled graph (256-px tiles, overlap 32; the cut, the per-tile upsampling and blur, and the stitching "
          "all in the graph) and compared with the single-tile graph. Median over the runs after one warm-up, "
          "each graph in its own process (peak RSS of that process, VmHWM, ORT's arena included). *budget*: tiles × "
          "single-tile latency + 10 % (the target); *batch of tiles*: the single-tile graph at batch = tiles "
          "(what the tiles cost without cutting and stitching).\n\n"
          + table(rows, [("method", "method"), ("frame", "frame"), ("tiles", "tiles"), ("1 tile ms", "single_ms"),
                         ("batch of tiles ms", "batch_tiles_ms"), ("tiled frame ms", "tiled_ms"),
                         ("budget ms", "budget_ms"), ("tiled / (tiles × 1 tile)", "ratio_vs_tiles_x_single"),
                         ("within budget", "within_budget"), ("tiled peak RSS MiB", "tiled_peak_rss_mib"),
                         ("1 tile peak RSS MiB", "single_peak_rss_mib")]))
    write_report(out, {"env": env(), "runs": runs, "rows": rows}, md)


# --- training memory: streamed features against all held -----------------------------------------

FEATURES = r"""
import sys, numpy as np, torch
from adrt.contract import Geometry, InputSpec
from adrt.data import Dataset, split_holdout
from adrt.train.fit import input_spec, make_config, training_images
from adrt.train.detector import Detector
from adrt.train.registry import get_method
method, data, mode, size, frame = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(2)
g = Geometry("tile", tile=(size, size), overlap=32) if frame != "-" else Geometry()
spec = input_spec(size, tuple(map(int, frame.split("x"))) if frame != "-" else None, g)
fit, _ = split_holdout(Dataset.open(data).train, 0.1, 4, 0)
cfg = make_config(method)
scorer = get_method(method).build(cfg, pretrained=True).eval()
pre = Detector(torch.nn.Identity(), spec).preprocess
images = training_images(fit, spec, g, streams=(mode == "streamed"))
from adrt.train.features import embed_images, sample_patches
if method == "patchcore":
    if mode == "streamed":
        rows, n = sample_patches(scorer.features, pre, images, cfg.coreset_max_patches)
    else:   # the pre-#19 path: every patch's features held, then subsampled
        f = embed_images(scorer.features, pre, images)
        flat = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]); n = flat.shape[0]
        rows = flat[torch.randperm(n)[: cfg.coreset_max_patches]]
else:
    from adrt.train.padim.model import GaussianMoments, fit_gaussians
    if mode == "streamed":
        m = GaussianMoments()
        embed_images(scorer.features, pre, images, sink=lambda f: m.update(f[:, scorer.channel_idx]))
        out = m.finish(cfg.eps)
    else:   # the pre-#19 path: all feature maps held, then one batch estimate
        f = embed_images(scorer.features, pre, images)
        out = fit_gaussians(f[:, scorer.channel_idx], cfg.eps)
print("images", len(images))
"""


def trainmem(out: Path, work: Path, methods: list[str], n_train: int) -> None:
    from adrt.synth import make_dataset

    data = work / f"synth1024_n{n_train}"
    if not (data / ".adrt-synth.json").is_file():
        make_dataset(data, size=1024, n_train=n_train, n_test_good=2, n_test_defect=2, seed=1, texture="weave",
                     fine=6, overwrite=True)
    rows = []
    for method in methods:
        for name, size, frame in (("512 squash", 512, "-"), ("1024 tiled (25 tiles of 256)", 256, "1024x1024")):
            row = {"method": method, "geometry": name}
            for mode in ("held", "streamed"):
                rec = timed([sys.executable, "-c", FEATURES, method, str(data), mode, str(size), frame],
                            work / f"mem_{method}_{size}_{mode}.log")
                row[mode] = rec
            args = ["--size", "512"] if frame == "-" else ["--tile", "256", "--input-size", frame, "--overlap", "32"]
            row["adrt_train"] = train(method, data, work, f"mem_{method}_{size}", args, export=False)["train"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    md = (f"# Training memory: features streamed into the bank / statistics\n\n"
          f"`python benchmarks/tiling.py trainmem` — {n_train} good 1024×1024 frames (`adrt.synth`, weave), "
          f"{n_train - max(4, round(0.1 * n_train))} fit. Peak RSS of a child process that runs only the "
          f"feature stage: *held* is the path before #19 (every image's feature maps kept, then PatchCore "
          f"subsampled to `coreset_max_patches` and PaDiM estimated in one batch), *streamed* the path now "
          f"(PatchCore samples its candidates while the features stream in; PaDiM accumulates per-position "
          f"moments batch by batch; tiles decoded one frame at a time). *adrt train*: the whole command "
          f"(coreset, calibration included), streamed.\n\n"
          + table(rows, [("method", "method"), ("geometry", "geometry"), ("held MiB", "held.peak_rss_mib"),
                         ("held s", "held.seconds"), ("streamed MiB", "streamed.peak_rss_mib"),
                         ("streamed s", "streamed.seconds"), ("adrt train MiB", "adrt_train.peak_rss_mib"),
                         ("adrt train s", "adrt_train.seconds")]))
    write_report(out, {"env": env(), "n_train": n_train, "rows": rows}, md)


# --- (c) magnetic tile --------------------------------------------------------------------------

def magnetic(out: Path, work: Path, configs: list[str], rows_file: Path | None = None) -> None:
    """Train and evaluate each configuration; with ``rows_file`` (the JSON lines an earlier run
    printed) only write the report from those rows."""
    rows = [json.loads(ln) for ln in rows_file.read_text().splitlines() if ln.startswith("{")] if rows_file else []
    for cfg in configs if rows_file is None else ():
        method, name, *args = cfg.split()
        sets = [a for a in args if "=" in a and not a.startswith("--")]
        args = [a for a in args if a not in sets]
        rows.append(train_eval(method, MAGNETIC, work, f"mt_{method}_{name}", name, args, sets))
    md = ("# Magnetic tile: letterbox against today's squash\n\n"
          "`python benchmarks/tiling.py magnetic` — frames 103–632 px wide, 222–403 px tall (aspect up to 2.8:1). "
          "*squash*: resized to the square model size (today); *letterbox*: scaled to fit keeping the aspect "
          "ratio, centred, padded. Evaluated on the 190 good + 392 defective test images with ONNX Runtime; for "
          "letterbox bundles the maps are brought back to the frame (padding dropped) on the grid the masks are "
          "resized to, so padding never counts as normal pixels. Targets of issue #19: pixel AUROC ≥ 0.90, "
          "AUPRO ≥ 0.85, image AUROC ≥ 0.95.\n\n"
          + table(rows, [("method", "method"), ("geometry", "geometry_name"), ("options", "args"),
                         ("image AUROC", "image_auroc"), ("pixel AUROC", "pixel_auroc"), ("AUPRO", "aupro"),
                         ("train+export s", "train.seconds"), ("train peak RSS MiB", "train.peak_rss_mib")]))
    write_report(out, {"env": env(), "rows": rows}, md)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["synth", "latency", "magnetic", "trainmem"])
    ap.add_argument("--n-train", type=int, default=60, help="trainmem: good training frames")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=HERE.parent / "runs" / "tiling")
    ap.add_argument("--methods", nargs="+", default=["patchcore", "padim"])
    ap.add_argument("--run", action="append", default=[], metavar="METHOD=RUN", help="latency: a trained run")
    ap.add_argument("--runs", type=int, default=12, help="latency: timed runs of the single-tile graph")
    ap.add_argument("--config", action="append", default=[], metavar="'METHOD NAME ARGS...'",
                    help="magnetic: a training configuration")
    ap.add_argument("--rows", type=Path, default=None, help="magnetic: only report the JSON rows of an earlier run")
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    if a.what == "synth":
        synth(a.out, a.work, a.methods)
    elif a.what == "trainmem":
        trainmem(a.out, a.work, a.methods, a.n_train)
    elif a.what == "latency":
        latency(a.out, a.work, dict(r.split("=", 1) for r in a.run), a.runs)
    else:
        magnetic(a.out, a.work, a.config or ["padim squash --size 256", "padim letterbox --size 256 --letterbox"],
                 a.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
