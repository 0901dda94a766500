"""Regenerate benchmarks/results/bench.{json,md,html}: `adrt bench` over every bundle foundation.py made.

Finds ``*_bundle`` folders in ``--work`` (default runs/foundation, where foundation.py writes them),
pairs each with its run folder (the same name without ``_bundle``) for torch eager when torch is
installed, and runs one interleaved `adrt bench` over all of them:

    python benchmarks/foundation.py --reuse                 # bundles (and eval results in their manifests)
    python benchmarks/report.py                             # ORT CPU at 1 and all CPU threads, + torch eager
    python benchmarks/report.py --backend ort-cpu --backend ort-cuda --backend ort-trt --threads 4
    python benchmarks/report.py --compare benchmarks/results/bench.json --out /tmp/bench-new

The accuracy-vs-latency plot needs eval results in the bundles' manifests (`adrt eval --record`).
foundation.py writes them to ``<name>_eval/metrics.json`` beside each bundle; ``--record-evals``
stores those in the manifests that have none first (the manifest carries no checksum of itself).

Arguments after ``--`` go to `adrt bench` as they are (e.g. ``-- --frame 1080x1920``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def find_bundles(work: Path) -> list[Path]:
    bundles = sorted(p for p in work.glob("*_bundle") if (p / "manifest.json").is_file())
    if not bundles:
        raise SystemExit(f"no bundles (*_bundle/manifest.json) in {work}; run benchmarks/foundation.py first")
    return bundles


def record_evals(bundles: list[Path]) -> None:
    """Store foundation.py's ``<name>_eval/metrics.json`` in each bundle manifest that has no metrics."""
    from adrt.evaluate import record_metrics

    for b in bundles:
        manifest = json.loads((b / "manifest.json").read_text())
        ev = b.with_name(b.name[: -len("_bundle")] + "_eval") / "metrics.json"
        if manifest.get("metrics") or not ev.is_file():
            continue
        result = json.loads(ev.read_text())
        data = result.get("data")
        data = data.get("root") if isinstance(data, dict) else data
        record_metrics(b, data or manifest["training"]["dataset"], result)   # keyed by the dataset folder's name
        print(f"recorded {ev} in {b / 'manifest.json'}", file=sys.stderr)


def bench_command(args, extra: list[str]) -> list[str]:
    bundles = find_bundles(args.work)
    cmd = [sys.executable, "-m", "adrt.cli", "bench", *map(str, bundles)]
    for b in args.backend or ["ort-cpu"]:
        cmd += ["--backend", b]
    for t in args.threads or sorted({1, os.cpu_count() or 1}):
        cmd += ["--threads", str(t)]
    if not args.no_torch and importlib.util.find_spec("torch") is not None:
        for b in bundles:
            run = b.with_name(b.name[: -len("_bundle")])
            if (run / "detector.json").is_file():
                cmd += ["--torch-run", f"{b}={run}"]
    cmd += ["--runs", str(args.runs), "--rounds", str(args.rounds), "--warmup", str(args.warmup),
            "--batch", str(args.batch), "--out", str(args.out), "--overwrite"]
    if args.compare:
        cmd += ["--compare", str(args.compare)]
    return cmd + extra


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/foundation"), help="Folder holding *_bundle folders.")
    ap.add_argument("--backend", action="append", help="Repeatable (default: ort-cpu).")
    ap.add_argument("--threads", action="append", type=int, help="Repeatable (default: 1 and all CPUs).")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--no-torch", action="store_true", help="Leave torch eager out even where torch is installed.")
    ap.add_argument("--compare", type=Path, help="An earlier bench.json to set this run against.")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench")
    ap.add_argument("--record-evals", action="store_true",
                    help="First store <name>_eval/metrics.json in the manifests of bundles that have no metrics.")
    args = ap.parse_args(argv)
    if args.record_evals:
        record_evals(find_bundles(args.work))
    cmd = bench_command(args, extra)
    print("$ " + shlex.join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main())
