"""Image score: the method's own maximum against the top-k mean of the smoothed map (image AUROC).

For each data set and method a run folder is trained through the product's path (or reused from
``--reuse DATASET_METHOD=RUN``); the test split's raw maps and scores come from the run's detector
(adrt.train.detector.run_raw, the graph's eval forward). ``max`` is the method's own image score
(PatchCore: the paper's reweighted maximum patch score; PaDiM: the map's maximum); ``topk:F`` the
mean of the top F of the smoothed map, as ``adrt train --image-score topk:F`` computes it in the
graph.

    nice -n 5 python benchmarks/image_score.py --out benchmarks/results/image_score
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from _results import write_report  # benchmarks/_results.py (this folder is on sys.path)

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
DATASETS = {"bottle": DATA / "mvtec_ad" / "bottle", "magnetic_tile": DATA / "magnetic_tile" / "magnetic_tile"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--methods", nargs="+", default=["patchcore", "padim"])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.001, 0.005, 0.01, 0.05])
    ap.add_argument("--reuse", nargs="*", default=[], metavar="DATASET_METHOD=RUN")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/adrt_image_score"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "image_score")
    args = ap.parse_args(argv)

    import torch

    from adrt.data import Dataset, load_images
    from adrt.metrics import image_auroc
    from adrt.train.detector import run_raw
    from adrt.train.fit import load_run, train

    torch.set_num_threads(args.threads)
    reuse = dict(r.split("=", 1) for r in args.reuse)
    rows = []
    for name in args.datasets:
        data = DATASETS[name]
        ds = Dataset.open(data)
        labels = np.array([s.label for s in ds.test])
        imgs = None
        for method in args.methods:
            run = reuse.get(f"{name}_{method}") or train(method, data, args.work / f"{name}_{method}", size=args.size,
                                                         overwrite=True, log=lambda *a, **k: None)
            det, meta = load_run(run)
            if imgs is None:
                imgs = load_images([s.path for s in ds.test], det.spec.height, det.spec.width)
            maps, scores = run_raw(det, imgs)
            flat = np.sort(maps.reshape(len(maps), -1), axis=1)
            row = {"dataset": name, "method": method, "border": meta["config"].get("border", "zero"),
                   "max": image_auroc(labels, scores), "map max": image_auroc(labels, flat[:, -1])}
            for f in args.fractions:
                k = max(1, int(round(f * flat.shape[1])))
                row[f"topk:{f:g}"] = image_auroc(labels, flat[:, -k:].mean(1))
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    report = {"what": "image AUROC: the method's own max vs the top-k mean of the smoothed map", "size": args.size,
              "fractions": args.fractions, "rows": rows}
    write_report(args.out, report, to_markdown(report))
    return 0


def to_markdown(report: dict) -> str:
    cols = ["max", "map max"] + [f"topk:{f:g}" for f in report["fractions"]]
    lines = [f"# Image score: max vs top-k mean ({report['size']} px)", "",
             "Image AUROC on the test split. `max`: the method's own image score (PatchCore: the paper's reweighted "
             "maximum patch score; PaDiM: the map's maximum); `map max`: the smoothed map's maximum; `topk:F`: the "
             "mean of the top F of the smoothed map (`adrt train --image-score topk:F`). Same fitted model per row.", "",
             "| data set | method | PatchCore border | " + " | ".join(cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for r in report["rows"]:
        lines.append(f"| {r['dataset']} | {r['method']} | {r['border'] if r['method'] == 'patchcore' else '-'} | "
                     + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
