"""How well does INT8's normal-image check predict the test AUROC it costs? One bundle, every split.

``adrt.export.int8.choose_int8`` keeps the first float prefix/suffix split of the network
whose raw scores on the training holdout (normal images only) shift by ≤ INT8_MAX_SHIFT_STD and
scatter by ≤ INT8_MAX_SCATTER_STD calibration std. This script quantises *every* split of the
search for one bundle and target and records, beside the holdout shift and scatter, the scatter on
the test split's normal and defective images and the image AUROC lost on the test split: the
evidence the bounds are set from.

    python benchmarks/int8_search.py runs/students/efficientad-m_bottle_bundle \\
        ../shared/data/mvtec_ad/bottle --target cpu --name efficientad-m_bottle

Writes benchmarks/results/int8_search_NAME.{json,md}. Needs onnx and onnxruntime (no torch).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("data", type=Path, help="The bundle's training dataset (MVTec AD layout).")
    ap.add_argument("--target", default="cpu", choices=("cpu", "tensorrt"))
    ap.add_argument("--name", required=True, help="Results go to benchmarks/results/int8_search_NAME.*")
    ap.add_argument("--max-splits", type=int, default=None, help="Only the first N splits of the search order.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="Output path without suffix (default: "
                    "benchmarks/results/int8_search_NAME)")
    args = ap.parse_args(argv)

    import onnx

    from adrt.data import Dataset, load_images
    from adrt.export import int8 as Q
    from adrt.export.calibration import holdout_images, load_calibration
    from adrt.metrics import evaluate
    from adrt.runtime.bundle import open_bundle

    b = open_bundle(args.bundle)
    h, w = int(b.input["height"]), int(b.input["width"])
    model = onnx.load(str(b.model_path("fp32")))
    calib, info = load_calibration(args.data, h, w)
    held = holdout_images(b.manifest, info["root"], h, w)
    if held is None:
        raise SystemExit(f"{args.bundle}: no training holdout for {args.data} (not the bundle's training data?)")
    check = Q.check_subset(held)                            # what choose_int8 checks on
    ds = Dataset.open(args.data)
    test = load_images([s.path for s in ds.test], h, w)
    labels = np.array([s.label for s in ds.test])
    types = [s.defect_type for s in ds.test]
    std = float(b.manifest["calibration"]["score_std"])
    fp32 = Q.cpu_session(model, args.threads)
    ref_check, ref_test = Q.raw_scores(fp32, check), Q.raw_scores(fp32, test)
    auroc0 = evaluate(labels, ref_test, types)["overall"]["image_auroc"]
    quantisable = Q.int8_region(model)
    n = len(quantisable)
    splits = Q.int8_candidates(n)[: args.max_splits]
    print(f"{args.name}: fp32 image AUROC {auroc0:.4f}; {len(splits)} splits of {n} quantisable nodes", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory(prefix="adrt-int8-search-") as tmp:
        cache = Path(tmp) / "ranges.json"
        for k, j in splits:
            t0 = time.perf_counter()
            q = Q.quantize_int8(model, calib, args.target, region=quantisable[k : n - j], calibration_cache=cache,
                                threads=args.threads)
            s = Q.cpu_session(q, args.threads)
            shift, scatter = Q.score_shift(ref_check, Q.raw_scores(s, check), std)
            got = Q.raw_scores(s, test)
            good, bad = labels == 0, labels == 1
            auroc = evaluate(labels, got, types)["overall"]["image_auroc"]
            row = {"float_prefix": k, "float_suffix": j, "holdout_shift_std": shift, "holdout_scatter_std": scatter,
                   "test_good_scatter_std": Q.score_shift(ref_test[good], got[good], std)[1],
                   "test_defective_scatter_std": Q.score_shift(ref_test[bad], got[bad], std)[1],
                   "image_auroc": auroc, "loss_points": 100 * (auroc0 - auroc),
                   "accepted_now": Q.int8_within_bounds(shift, scatter)}
            rows.append(row)
            print(f"  first {k} / last {j} float: holdout shift {row['holdout_shift_std']:+.3f} scatter "
                  f"{row['holdout_scatter_std']:.3f}, test good {row['test_good_scatter_std']:.3f}; AUROC "
                  f"{auroc:.4f} ({row['loss_points']:+.2f} points) [{time.perf_counter() - t0:.0f} s]", file=sys.stderr)
    import onnxruntime as ort

    report = {"name": args.name, "bundle": str(args.bundle), "data": str(args.data), "target": args.target,
              "onnxruntime": ort.__version__, "date": time.strftime("%Y-%m-%d %H:%M"), "quantisable_nodes": n,
              "holdout_checked": len(check), "test_images": len(test), "fp32_image_auroc": auroc0,
              "bounds": {"max_shift_std": Q.INT8_MAX_SHIFT_STD, "max_scatter_std": Q.INT8_MAX_SCATTER_STD},
              "splits": rows}
    out = args.out or HERE / "results" / f"int8_search_{args.name}"
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# INT8 split search, every split: {args.name} (target `{args.target}`)", "",
             f"Regenerate: `python benchmarks/int8_search.py {args.bundle} {args.data} --target {args.target} "
             f"--name {args.name}`. ONNX Runtime {ort.__version__}, {report['date']}. fp32 image AUROC "
             f"{auroc0:.4f} on {len(test)} test images; holdout: the {len(check)} held-out normal training images "
             f"`choose_int8` checks. Scatter and shift are in calibration score std ({std:.4g}). *accepted*: "
             f"within today's bounds (shift ≤ {Q.INT8_MAX_SHIFT_STD}, scatter ≤ {Q.INT8_MAX_SCATTER_STD}); "
             "the search keeps the first accepted split in this order.", "",
             "| float prefix | float suffix | holdout shift | holdout scatter | test good scatter | "
             "test defective scatter | image AUROC | loss points | accepted |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['float_prefix']} | {r['float_suffix']} | {r['holdout_shift_std']:+.3f} | "
                     f"{r['holdout_scatter_std']:.3f} | {r['test_good_scatter_std']:.3f} | "
                     f"{r['test_defective_scatter_std']:.3f} | {r['image_auroc']:.4f} | {r['loss_points']:+.2f} | "
                     f"{'yes' if r['accepted_now'] else ''} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
