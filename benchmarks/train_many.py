"""Wall time of `adrt train-many` for 4 products on a local Ray with 1 and with 2 workers.

Four generated MVTec-style products (two textures, different seeds), each trained, exported and
evaluated as one Ray task asking for 1 CPU (torch at 1 thread). The local Ray gets 1 CPU (one
product at a time) or 2 CPUs (two at a time); everything else is the same. Reported: the wall
time of the tasks (first submitted to last finished) and of the whole call including Ray's start
and shutdown, and each product's own seconds.

    python benchmarks/train_many.py                      # patchcore, 256 px, 40 training images
    python benchmarks/train_many.py --method padim --size 256

Two rounds by default, the order of the worker counts alternating. Writes
benchmarks/results/train_many.{json,md}. Needs ``pip install -e ".[train,cluster]"``.
Timing-sensitive (this 2-core machine is shared): rerun on a quiet machine.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

from _results import write_report  # benchmarks/_results.py (this folder is on sys.path)

HERE = Path(__file__).resolve().parent
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def make_products(work: Path, n: int, method: str, size: int, n_train: int):
    from adrt.cluster.products import Product
    from adrt.synth import make_dataset

    out = []
    for i in range(n):
        texture = ("weave", "grain")[i % 2]
        data = make_dataset(work / "data" / f"p{i}", size=size, n_train=n_train, n_test_good=5, n_test_defect=6,
                            seed=i, texture=texture, overwrite=True)
        out.append(Product(name=f"p{i}_{texture}", data=str(data), method=method, size=size, cpus=1, threads=1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--products", type=int, default=4)
    ap.add_argument("--method", default="patchcore")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--train-images", type=int, default=40)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="CPUs of the local Ray, one run each.")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", type=Path, default=HERE.parent / "runs" / "train_many_bench")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "train_many")
    args = ap.parse_args()

    from adrt.cluster.train_many import run_many

    products = make_products(args.work, args.products, args.method, args.size, args.train_images)
    runs = []
    for rnd in range(args.rounds):
        # Alternate the order each round (1, 2, then 2, 1, ...): this VM's speed drifts.
        for w in args.workers if rnd % 2 == 0 else list(reversed(args.workers)):
            out = args.work / f"out_{w}"
            shutil.rmtree(out, ignore_errors=True)
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            rep = run_many(products, out, local_cpus=w, local_gpus=0, progress=print)
            total = time.perf_counter() - t0
            failed = [r["name"] for r in rep["products"] if r["status"] != "ok"]
            if failed:
                raise SystemExit(f"products failed with {w} worker(s): {failed}; see {out / 'results.md'}")
            runs.append({"round": rnd + 1, "workers": w, "tasks_wall_s": rep["wall_seconds"],
                         "call_wall_s": round(total, 2),
                         "load_avg_1min_before_after": [round(load0, 2), round(os.getloadavg()[0], 2)],
                         "product_seconds": {r["name"]: r["seconds"] for r in rep["products"]},
                         "image_auroc": {r["name"]: r["metrics"]["image_auroc"] for r in rep["products"]}})
            print(f"round {rnd + 1}, {w} worker(s): tasks {rep['wall_seconds']:.1f} s, whole call {total:.1f} s")
    report = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
              "settings": {"products": args.products, "method": args.method, "size": args.size,
                           "train_images": args.train_images, "cpus_per_product": 1, "torch_threads": 1},
              "rounds": args.rounds, "runs": runs}
    median = {w: statistics.median(r["tasks_wall_s"] for r in runs if r["workers"] == w) for w in args.workers}
    report["median_tasks_wall_s"] = {str(w): v for w, v in median.items()}
    base = median[args.workers[0]]
    lines = ["# adrt train-many on a local Ray", "",
             f"{report['created']}, {report['machine']}. {args.products} generated products, {args.method} at "
             f"{args.size}×{args.size}, {args.train_images} training images each; every product is one Ray task "
             f"(train, export, evaluate) asking for 1 CPU, torch at 1 thread. {args.rounds} rounds, the order of "
             f"the worker counts alternating.", "",
             "| Ray workers (CPUs) | tasks wall s (median) | speed-up | runs: tasks wall s / whole call s incl. Ray "
             "start and stop / load average before–after |", "|---|---|---|---|"]
    for w in args.workers:
        each = "; ".join(f"{r['tasks_wall_s']:.1f} / {r['call_wall_s']:.1f} / {r['load_avg_1min_before_after'][0]}–"
                         f"{r['load_avg_1min_before_after'][1]}" for r in runs if r["workers"] == w)
        lines.append(f"| {w} | {median[w]:.1f} | {base / median[w]:.2f}× | {each} |")
    lines += ["", "Timing-sensitive (a shared 2-core machine): rerun on a quiet one with "
              "`python benchmarks/train_many.py`."]
    write_report(args.out, report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
