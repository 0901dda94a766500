"""Figures of the `reference` method (change detection against a reference image), against PatchCore.

Parts (each short; run them one at a time, results merge into benchmarks/results/reference.{json,md}):

* ``pairs``: procedural reference/test pairs at 512 px (adrt.synth_pairs; shifts ≤ 4 px, gain, offset,
  noise; missing/extra strokes): one design (a fixed line: golden image baked into the graph, per-position
  statistics) and 8 designs (a reference per image, global statistics); PatchCore on the same splits.
* ``align``: 8 designs captured with shifts up to 12 px (3 cells of the stride-4 grid): the in-graph
  global shift search (``align=3``) against none, at the same neighbourhood radius.
* ``finetune``: the self-supervised fine-tune (``finetune_steps``) against the frozen backbone.
* ``tile``: magnetic tile (../shared/data) with a per-image reference: the nearest normal training tile
  by global feature (EfficientNet-Lite0's last block, average-pooled, cosine), for test images among all
  training tiles, for training images among the others; PatchCore on the same (the dataset's) split.
* ``latency``: ONNX Runtime CPU, batch 1, 2 threads, the bundles above against PatchCore at the same
  size, interleaved in one process (median and p90 of 5 rounds × ``--runs``).

    nice -n 5 python benchmarks/reference.py --parts pairs
    nice -n 5 python benchmarks/reference.py --parts align finetune
    nice -n 5 python benchmarks/reference.py --parts tile latency

Needs `pip install -e ".[train]"`; ``tile`` needs ../shared/data.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from _results import DATASETS, write_report  # benchmarks/_results.py (this folder is on sys.path)

HERE = Path(__file__).resolve().parent
TILE = DATASETS["magnetic_tile"]
PARTS = ("pairs", "align", "finetune", "tile", "latency")


def run_case(work: Path, name: str, method: str, data: Path, size: int, options: dict, threads: int) -> dict:
    """Train, export (fp32, no TensorRT 8.6 copy) and evaluate with ONNX Runtime CPU; one result row."""
    from adrt.evaluate import evaluate_session
    from adrt.export.pipeline import export_run
    from adrt.runtime import load
    from adrt.train.fit import train

    run, bundle = work / name, work / f"{name}_bundle"
    t0 = time.perf_counter()
    train(method, data, run, size=size, threads=threads, options=options, overwrite=True)
    train_s = time.perf_counter() - t0
    export_run(run, bundle, data, trt86=False, overwrite=True)
    with load(bundle, threads=threads) as s:
        t0 = time.perf_counter()
        res = evaluate_session(s, data, None)
        eval_s = time.perf_counter() - t0
    o = res["overall"]
    row = {"case": name, "method": method, "data": data.name, "size": size, "options": options,
           "image_auroc": o["image_auroc"], "pixel_auroc": o.get("pixel_auroc"), "aupro": o.get("aupro"),
           "f1_max": o["f1_max"], "n_test": res["data"]["n_test"], "train_s": round(train_s, 1),
           "eval_s": round(eval_s, 1), "bundle": str(bundle),
           "per_type": {k: {m: v[m] for m in ("image_auroc", "pixel_auroc", "aupro") if m in v}
                        for k, v in res["per_type"].items()}}
    print(f"{name}: image AUROC {o['image_auroc']:.3f}, pixel AUROC {o.get('pixel_auroc') or 0:.3f}, "
          f"AUPRO {o.get('aupro') or 0:.3f} (train {train_s:.0f} s)", file=sys.stderr, flush=True)
    return row


def pair_data(work: Path, name: str, designs: int, shift: float, n_train: int = 40) -> Path:
    from adrt.synth_pairs import make_pairs

    return make_pairs(work / "data" / name, size=512, n_train=n_train, n_test_good=20, n_test_change=20,
                      designs=designs, shift=shift, seed=0, overwrite=True)


def part_pairs(work, threads) -> list:
    one, many = pair_data(work, "pairs_1design", 1, 4), pair_data(work, "pairs_8designs", 8, 4)
    return [
        run_case(work, "reference_golden_1design", "reference", one, 512, {"golden": str(one / "golden.png")}, threads),
        run_case(work, "reference_perimage_1design", "reference", one, 512, {}, threads),
        run_case(work, "patchcore_1design", "patchcore", one, 512, {}, threads),
        run_case(work, "reference_perimage_8designs", "reference", many, 512, {}, threads),
        run_case(work, "patchcore_8designs", "patchcore", many, 512, {}, threads),
    ]


def part_align(work, threads) -> list:
    data = pair_data(work, "pairs_8designs_shift12", 8, 12)
    return [run_case(work, f"reference_shift12_align{a}", "reference", data, 512, {"align": a}, threads)
            for a in (0, 3)]


def part_finetune(work, threads) -> list:
    # 256 px input: the fine-tune's 100 steps at 512 px would take over 10 minutes here.
    data = pair_data(work, "pairs_8designs", 8, 4)
    return [run_case(work, f"reference_256_finetune{n}", "reference", data, 256,
                     {"finetune_steps": n} if n else {}, threads) for n in (0, 100)]


def global_features(paths, size: int = 224, batch: int = 16) -> np.ndarray:
    """L2-normalised average-pooled output of EfficientNet-Lite0's last block, one row per image."""
    import torch

    from adrt.data import load_images
    from adrt.train.backbone import load_pretrained

    net = load_pretrained("lite0")
    last = len(net._blocks) - 1
    out = []
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            x = torch.from_numpy(load_images(paths[i : i + batch], size, size)).permute(0, 3, 1, 2).float()
            f = net.features((x / 255.0 - 0.5) / 0.5, [last])[0].mean((2, 3))
            out.append(torch.nn.functional.normalize(f, dim=1).numpy())
    return np.concatenate(out)


def tile_pairs(work: Path) -> tuple[Path, dict]:
    """A view of magnetic tile (symlinks) with reference/ holding each image's nearest training tile."""
    from adrt.data import Dataset

    ds = Dataset.open(TILE)
    dst = work / "data" / "magnetic_tile_nn"
    if (dst / "pairs.json").is_file():
        return dst, json.loads((dst / "pairs.json").read_text())
    import shutil

    shutil.rmtree(dst, ignore_errors=True)
    t0 = time.perf_counter()
    train = list(ds.train)
    test = [s.path for s in ds.test]
    ft, fs = global_features(train), global_features(test)
    sim_tt = ft @ ft.T
    np.fill_diagonal(sim_tt, -np.inf)                  # a training tile is never its own reference
    nn_train, nn_test = sim_tt.argmax(1), (fs @ ft.T).argmax(1)
    for p in list(ds.train) + test:
        rel = p.relative_to(TILE)
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(p, dst / rel)
    (dst / "ground_truth").symlink_to(TILE / "ground_truth")
    for paths, nn in ((train, nn_train), (test, nn_test)):
        for p, j in zip(paths, nn):
            ref = dst / "reference" / p.relative_to(TILE)
            ref.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(train[j], ref)
    info = {"n_train": len(train), "n_test": len(test), "seconds": round(time.perf_counter() - t0, 1),
            "similarity_test_median": float(np.median((fs @ ft.T).max(1))),
            "similarity_train_median": float(np.median(sim_tt.max(1)))}
    (dst / "pairs.json").write_text(json.dumps(info))
    return dst, info


def part_tile(work, threads) -> list:
    if not TILE.is_dir():
        print(f"skip tile: {TILE} not found", file=sys.stderr)
        return []
    data, info = tile_pairs(work)
    print(f"magnetic tile pairs: {info}", file=sys.stderr)
    rows = [run_case(work, "reference_tile_nn", "reference", data, 256, {}, threads),
            run_case(work, "patchcore_tile", "patchcore", TILE, 256, {}, threads)]
    rows[0]["pairing"] = info
    return rows


def part_latency(rows: list, threads: int, runs: int) -> list:
    """Interleaved batch-1 latency of every bundle in ``rows`` (grouped by input size)."""
    import adrt.runtime as rt

    sessions, out = [], []
    for r in rows:
        if r.get("bundle") and Path(r["bundle"]).is_dir():
            s = rt.load(r["bundle"], threads=threads)
            rng = np.random.default_rng(0)
            x = rng.integers(0, 256, (1, s.height, s.width, 3), dtype=np.uint8)
            ref = rng.integers(0, 256, x.shape, dtype=np.uint8) if s.paired else None
            for _ in range(3):
                s.run(x, references=ref)
            sessions.append((r, s, x, ref, []))
    for _ in range(5):
        for r, s, x, ref, times in sessions:
            for _ in range(runs):
                t0 = time.perf_counter()
                s.run(x, references=ref)
                times.append((time.perf_counter() - t0) * 1e3)
    for r, s, x, ref, times in sessions:
        out.append({"case": r["case"], "size": r["size"], "inputs": 2 if s.paired else 1,
                    "ms_median": round(float(np.median(times)), 2),
                    "ms_p90": round(float(np.percentile(times, 90)), 2), "runs": len(times)})
        s.close()
    return out


def to_markdown(report: dict) -> str:
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    m = report.get("machine", {})
    lines = [f"# reference method: change detection against a reference image "
             f"({m.get('platform', '?')}, {m.get('cpus', '?')} CPUs, {report.get('threads')} threads)", "",
             "Image AUROC / pixel AUROC / AUPRO with ONNX Runtime CPU on each dataset's test split "
             "(`python benchmarks/reference.py`, see its docstring for the protocol).", ""]
    for part in ("pairs", "align", "finetune", "tile"):
        rows = report.get("parts", {}).get(part, [])
        if not rows:
            continue
        lines += [f"## {part}", "", "| case | method | data | size | options | image AUROC | pixel AUROC | AUPRO "
                  "| train s | eval s |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            opts = ", ".join(f"{k}={v}" for k, v in r["options"].items() if k != "golden") or "-"
            if "golden" in r["options"]:
                opts = "golden image" + ("" if opts == "-" else ", " + opts)
            lines.append(f"| {r['case']} | {r['method']} | {r['data']} | {r['size']} | {opts} | {f(r['image_auroc'])} | "
                         f"{f(r['pixel_auroc'])} | {f(r['aupro'])} | {r['train_s']:.0f} | {r['eval_s']:.0f} |")
        if part == "tile" and rows and rows[0].get("pairing"):
            p = rows[0]["pairing"]
            lines += ["", f"Pairing: median cosine similarity of a test tile to its reference {p['similarity_test_median']:.3f}, "
                          f"of a training tile to its nearest other one {p['similarity_train_median']:.3f} "
                          f"({p['n_train']} training, {p['n_test']} test tiles; {p['seconds']:.0f} s)."]
        lines.append("")
    lat = report.get("parts", {}).get("latency", [])
    if lat:
        lines += ["## latency", "", "ONNX Runtime CPU, batch 1, interleaved rounds in one process.", "",
                  "| case | size | inputs | median ms | p90 ms | runs |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['case']} | {r['size']} | {r['inputs']} | {r['ms_median']:.1f} | {r['ms_p90']:.1f} | {r['runs']} |"
                  for r in lat]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10, help="Timed runs per bundle and round (latency).")
    ap.add_argument("--work", type=Path, default=Path("runs/reference_bench"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "reference")
    args = ap.parse_args(argv)

    import torch

    from adrt.bench.machine import machine_info

    torch.set_num_threads(args.threads)
    path = args.out.with_suffix(".json")
    report = json.loads(path.read_text()) if path.is_file() else {"parts": {}}
    report.update(machine=machine_info(), threads=args.threads, torch=torch.__version__)
    for part in args.parts:
        if part == "latency":
            done = [r for p in ("pairs", "align", "tile") for r in report["parts"].get(p, [])]
            report["parts"]["latency"] = part_latency(done, args.threads, args.runs)
        else:
            report["parts"][part] = globals()[f"part_{part}"](args.work, args.threads)
        write_report(args.out, report, to_markdown(report), show=False)
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
