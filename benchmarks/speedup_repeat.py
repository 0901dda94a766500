"""How robust is ONNX Runtime's lead over torch eager? `adrt bench` repeated on the same bundles.

One `adrt bench` run gives one ORT/torch ratio, and on a shared 2-core VM one run's latencies move
by ±25 % with the host's memory traffic. This script repeats the paired bench (ORT CPU and torch
eager, each in its own process, interleaved) ``--repeats`` times per bundle, in two torch states:

* ``default``: torch eager as a batch-1 loop runs it in a fresh process (glibc returns its large
  temporaries to the OS and faults them in again on every forward);
* ``tuned``: glibc told to keep them (:data:`adrt.bench.machine.TUNED_MALLOC`), torch eager's best case.

Within a repeat every bundle is benched in both states before the next repeat starts, so host drift
spreads over all rows. Reports the ratio of means and of medians per repeat, and their minimum,
median and maximum. Writes benchmarks/results/speedup_repeat.{json,md}.

    python benchmarks/speedup_repeat.py BUNDLE [BUNDLE ...] --repeats 3    # torch from each manifest's run folder
    python benchmarks/speedup_repeat.py A B --torch-run A=RUN_A --torch-run B=RUN_B

Needs `pip install -e ".[train]"` (torch for the eager side) and the training run of every bundle
(found as `adrt bench` finds it: `--torch-run`, else the run folder its manifest records).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from _results import write_report  # benchmarks/_results.py (this folder is on sys.path)
from adrt.bench.machine import TUNED_MALLOC

HERE = Path(__file__).resolve().parent
STATES = {"default": None, "tuned": TUNED_MALLOC}


def summary(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# ORT CPU vs torch eager, {s['repeats']} paired `adrt bench` runs per bundle and torch state "
             f"({report['machine']})", "",
             f"Batch 1 at the bundle's size, {s['runs']} timed runs per configuration and bench, {s['threads']} "
             "threads; ratio = torch / ORT. `default`: torch eager as a batch-1 loop runs it; `tuned`: glibc "
             f"malloc kept its temporaries ({', '.join(f'{k}={v}' for k, v in TUNED_MALLOC.items())}), torch's "
             f"best case. Wall time {report['wall_seconds']:.0f} s.", "",
             "| bundle | torch state | ratio of means, per run | min / median / max | ratio of medians, min / median / max "
             "| ORT mean ms, median run | torch mean ms, median run | torch faults/run |",
             "|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        rm, rp = row["ratio_mean"], row["ratio_p50"]
        lines.append(
            f"| {row['bundle']} | {row['state']} | {', '.join(f'{v:.2f}' for v in row['ratios_mean'])} "
            f"| {rm['min']:.2f} / {rm['median']:.2f} / {rm['max']:.2f} "
            f"| {rp['min']:.2f} / {rp['median']:.2f} / {rp['max']:.2f} "
            f"| {statistics.median(row['ort_ms']):.1f} | {statistics.median(row['torch_ms']):.1f} "
            f"| {statistics.median(row['torch_faults']):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", type=Path, metavar="BUNDLE")
    ap.add_argument("--torch-run", action="append", default=[], metavar="[BUNDLE=]RUN",
                    help="A bundle's training run, as for `adrt bench` (default: the run folder its manifest records).")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "speedup_repeat")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.runs < 1:
        raise SystemExit("--repeats and --runs: expected positive numbers")

    from adrt.bench.harness import bench
    from adrt.bench.machine import machine_info
    from adrt.bench.plan import pair_torch_runs, recorded_torch_runs

    paired = pair_torch_runs(args.bundles, args.torch_run)
    torch_runs = {**recorded_torch_runs(args.bundles, paired, log=None), **paired}
    missing = [str(b) for b in args.bundles if b not in torch_runs]
    if missing:
        raise SystemExit(f"no training run for {', '.join(missing)}: torch eager needs one (--torch-run BUNDLE=RUN)")
    todo = [(b, torch_runs[b]) for b in args.bundles]
    for b, r in todo:
        print(f"{b}: torch eager from {r}", flush=True)

    t0 = time.perf_counter()
    got: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.repeats):
        for bundle, run in todo:
            for state, env in STATES.items():
                rep = bench(bundle, threads=args.threads, runs=args.runs, torch_run=run, worker_env=env)
                ort, tch = rep["results"]
                got.setdefault((bundle.name, state), []).append({
                    "ort": ort["latency_ms"], "torch": tch["latency_ms"], "speedup": rep["speedup_vs_torch"],
                    "torch_faults": tch["page_faults_per_run"].get("lat")})
                print(f"repeat {r + 1}/{args.repeats} {bundle.name} {state}: ORT {ort['latency_ms']['mean']:.2f} ms, "
                      f"torch {tch['latency_ms']['mean']:.2f} ms, {rep['speedup_vs_torch']:.2f}×", flush=True)
    rows = []
    for (name, state), reps in got.items():
        r_mean = [e["speedup"] for e in reps]   # adrt bench's ratio: torch mean / ORT mean
        r_p50 = [e["torch"]["p50"] / e["ort"]["p50"] for e in reps]
        rows.append({"bundle": name, "state": state, "ratios_mean": r_mean, "ratios_p50": r_p50,
                     "ratio_mean": summary(r_mean), "ratio_p50": summary(r_p50),
                     "ort_ms": [e["ort"]["mean"] for e in reps], "torch_ms": [e["torch"]["mean"] for e in reps],
                     "torch_faults": [e["torch_faults"] or 0 for e in reps], "runs": reps})
    info = machine_info()
    report = {"machine": f"{info.get('cpu', '?')}, {info.get('cpus', '?')} CPUs", "machine_info": info,
              "settings": {"repeats": args.repeats, "runs": args.runs, "threads": args.threads,
                           "tuned_malloc": TUNED_MALLOC, "torch_runs": {str(b): str(r) for b, r in todo}},
              "wall_seconds": time.perf_counter() - t0, "rows": rows}
    write_report(args.out, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
