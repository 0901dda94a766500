"""PatchCore's feature dimension: accuracy, training time and latency per ``embed_dim``.

Each configuration goes through the product's own path (``adrt train`` → export → evaluation of
the bundle with ONNX Runtime), so the figures include the holdout calibration and the paper's
image-score reweighting. ``embed_dim=0`` keeps all 152 dimensions of the EfficientNet-Lite0 taps.

``pool<k>`` rows replace the principal axes by the reduction of the paper's code: each tap's
channels adaptive-average-pooled to k, concatenated, pooled again to k (equal weight per tap).

    python benchmarks/patchcore_dims.py --dims 0 128 96 64 --pool 96 --out benchmarks/results/patchcore_dims
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _results import DATASETS, write_report  # benchmarks/_results.py (this folder is on sys.path)

HERE = Path(__file__).resolve().parent


def pooling_matrix(tap_channels: list[int], k: int):
    """D×k matrix of the paper code's reduction: per tap pool to k, concatenate, pool to k."""
    import torch
    import torch.nn.functional as F

    def pool(d_in: int, d_out: int) -> torch.Tensor:   # x @ pool(d_in, d_out) == adaptive_avg_pool1d(x, d_out)
        return F.adaptive_avg_pool1d(torch.eye(d_in)[:, None, :], d_out)[:, 0, :]

    per_tap = torch.block_diag(*[pool(c, k) for c in tap_channels])        # D × (taps·k)
    return (per_tap @ pool(k * len(tap_channels), k)).contiguous()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", nargs="+", type=int, default=[0, 128, 96, 64])
    ap.add_argument("--pool", nargs="*", type=int, default=[96], help="also the paper code's channel pooling to k")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/adrt_patchcore_dims"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "patchcore_dims")
    args = ap.parse_args(argv)

    import torch

    from adrt.evaluate import evaluate_session
    from adrt.export.pipeline import export_run
    from adrt.runtime import load
    from adrt.bench.machine import machine_info
    from adrt.train.backbone import tap_info, taps_for_strides
    from adrt.train.fit import train
    from adrt.train.patchcore.model import PatchCoreConfig, PatchCoreScorer

    torch.set_num_threads(args.threads)
    cfg = PatchCoreConfig()
    info = {t["block"]: t for t in tap_info(cfg.backbone)}
    tap_channels = [info[t]["channels"] for t in taps_for_strides(cfg.backbone, list(cfg.tap_strides))]
    configs = [(f"pca{k}" if k else "all", k, False) for k in args.dims] + [(f"pool{k}", k, True) for k in args.pool]
    rows = []
    pca = PatchCoreScorer.set_projection
    for name in args.datasets:
        data = DATASETS[name]
        if not data.is_dir():
            print(f"skip {name}: {data} not found", file=sys.stderr)
            continue
        for label, k, pooled in configs:
            if pooled:
                PatchCoreScorer.set_projection = lambda self, patches: setattr(self, "proj", pooling_matrix(tap_channels, k))
            try:
                run = train("patchcore", data, args.work / f"{label}_{name}", options={"embed_dim": k},
                            threads=args.threads, log=lambda *a, **kw: None, overwrite=True)
            finally:
                PatchCoreScorer.set_projection = pca
            meta = json.loads((run / "detector.json").read_text())
            bundle = export_run(run, args.work / f"{label}_{name}_bundle", data, overwrite=True)
            with load(bundle, threads=args.threads) as s:
                t0 = time.perf_counter()
                res = evaluate_session(s, data, log=lambda m: None)
            o = res["overall"]
            rows.append({"dataset": name, "config": label, "dims": k or sum(tap_channels),
                         "image_auroc": o["image_auroc"], "pixel_auroc": o.get("pixel_auroc"), "aupro": o.get("aupro"),
                         "train_seconds": meta["training"]["seconds"], "eval_seconds": round(time.perf_counter() - t0, 1),
                         "bundle_mb": round(sum(p.stat().st_size for p in bundle.iterdir()) / 2**20, 2)})
            print(json.dumps(rows[-1]), file=sys.stderr)
    report = {"machine": machine_info(), "torch": torch.__version__, "threads": args.threads, "rows": rows}
    write_report(args.out, report, to_markdown(report))
    return 0


def to_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# PatchCore feature dimension ({m['cpus']} CPUs, torch {report['torch']}, {report['threads']} threads)", "",
             "`adrt train patchcore --set embed_dim=k`, exported and evaluated with ONNX Runtime. `all`: the 152 tap "
             "dimensions; `pca<k>`: k leading principal axes of the training patches (the default: 96); `pool<k>`: "
             "the paper code's channel pooling (equal weight per tap). Train s includes the coreset search.", "",
             "| dataset | config | dims | image AUROC | pixel AUROC | AUPRO | train s | bundle MB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['dataset']} | {r['config']} | {r['dims']} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | "
                     f"{r['aupro']:.3f} | {r['train_seconds']:.0f} | {r['bundle_mb']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
