"""TensorRT-readiness of every registered method's bundle, before and after the TensorRT-ready graphs.

For each method (size as in the README's figures: 256 for PatchCore, PaDiM, EfficientAD and the
students, 128 for the generative and inpainting methods; a few training steps, since the graphs,
not the weights, are compared), one run is trained with this checkout and exported twice, with
fp16 and int8 (tensorrt target) models:

- *old*: by another checkout's Python (``--old-python``, default main's venv; its commit is
  recorded), which writes the graphs as they were;
- *new*: by this checkout (plus the opset-17 ``*.trt86`` copies for TensorRT 8.6).

Then, per method × precision:

- violations of TensorRT's ONNX-parser rules (``adrt check``, adrt.export.trt_check) per target,
  8.6 / 10 / latest, old → new (old bundles have no opset-17 copy: 8.6 gets their opset-18 graph);
- parity of the new graph against the old one on ONNX Runtime CPU (test images): max |Δ| of the raw
  scores and raw maps, absolute and relative to their range; and of each opset-17 copy against its
  opset-18 source (as recorded at export);
- ONNX Runtime CPU latency old vs new: batch 1, one intra-op thread, the two graphs interleaved over
  ``--rounds`` rounds; medians of wall time and of the process's CPU time (less sensitive to other
  jobs on the machine), ratio new / old.

    python benchmarks/trt_ready.py                        # train, export (old and new), check, time
    python benchmarks/trt_ready.py --reuse --rounds 40    # re-time existing bundles (quiet machine)

Writes benchmarks/results/trt_ready.{json,md}. Needs torch (training, new export), onnx, onnxruntime.
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

import numpy as np

from _results import write_report  # benchmarks/_results.py (this folder is on sys.path)

HERE = Path(__file__).resolve().parent
SIZES = {"patchcore": 256, "padim": 256, "efficientad": 256, "students": 256, "inpaint": 128, "memae": 128,
         "vae": 128}
# Few training steps: the graphs' structure, not their accuracy, is measured.
QUICK = {"memae": {"iterations": 20}, "vae": {"iterations": 20}, "inpaint": {"iterations": 20},
         "efficientad": {"teacher_steps": 20, "steps": 20},
         "students": {"teacher_steps": 20, "student_steps": 10, "bank_size": 256}}
PRECISIONS = ("fp32", "fp16", "int8")
TARGETS = ("8.6", "10", "latest")
OLD_EXPORT = r"""
import json, sys, traceback
from pathlib import Path
args = json.loads(sys.argv[1])
from adrt.export.pipeline import export_run
from adrt.export.quantize import add_variant
out = {}
b = export_run(Path(args["run"]), Path(args["out"]), Path(args["data"]))
for p, kw in (("fp16", {}), ("int8", {"calib": args["data"]})):
    try:
        add_variant(b, p, threads=1, **kw)
    except Exception as e:
        out[p] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train_runs(work: Path, methods, reuse: bool) -> dict:
    from adrt.synth import make_dataset
    from adrt.train.fit import train

    data = work / "data"
    if not data.exists():
        make_dataset(data, size=256, n_train=24, n_test_good=4, n_test_defect=4, seed=0)
    runs = {}
    for m in methods:
        run = work / "runs" / m
        if not (reuse and run.exists()):
            t0 = time.perf_counter()
            train(m, data, run, size=SIZES[m], seed=0, options=QUICK.get(m), log=lambda *a, **k: None)
            log(f"trained {m} in {time.perf_counter() - t0:.0f} s")
        runs[m] = run
    return {"data": data, "runs": runs}


def export_new(run: Path, out: Path, data: Path) -> dict:
    from adrt.export.pipeline import export_run, record_conformance
    from adrt.export.quantize import add_variant
    from adrt.export.trt86 import add_trt86_variants

    errors = {}
    b = export_run(run, out, data)
    for p, kw in (("fp16", {}), ("int8", {"calib": data})):
        try:
            add_variant(b, p, threads=1, **kw)
        except Exception as e:     # recorded in the report, as for the old export
            errors[p] = f"{type(e).__name__}: {e}"
    add_trt86_variants(b)
    record_conformance(b)
    return errors


def export_old(python: str, run: Path, out: Path, data: Path) -> dict:
    args = json.dumps({"run": str(run), "out": str(out), "data": str(data)})
    # cwd "/": `python -c` puts the working directory first on sys.path, and adrt imports a source
    # checkout it finds there; the old Python must import its own.
    r = subprocess.run([python, "-c", OLD_EXPORT, args], capture_output=True, text=True, cwd="/",
                       env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    if r.returncode != 0:
        raise RuntimeError(f"old export of {run.name} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def old_commit(python: str) -> dict:
    code = "import adrt, pathlib; print(pathlib.Path(adrt.__file__).resolve().parents[1])"
    src = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd="/").stdout.strip()
    commit = subprocess.run(["git", "-C", src, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"python": python, "source": src, "commit": commit}


def violations(bundle: Path) -> dict:
    """{target: {precision: {"count": n, "rules": {rule: n}, "model": key}}}."""
    from collections import Counter

    from adrt.export.trt_check import check_bundle

    manifest = json.loads((bundle / "manifest.json").read_text())
    out = {}
    for target, per in check_bundle(bundle, TARGETS).items():
        out[target] = {}
        for key, vs in per.items():
            fatal = [v for v in vs if v.fatal]
            out[target][manifest["models"][key]["precision"]] = {
                "model": key, "count": len(fatal), "rules": dict(Counter(v.rule for v in fatal))}
    return out


def test_images(data: Path, size: int) -> np.ndarray:
    from adrt.data import Dataset, load_images

    return load_images([s.path for s in Dataset.open(data).test], size, size)


def parity(old: Path, new: Path, images: np.ndarray) -> dict:
    import onnxruntime as ort

    out = {}
    so, sn = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (old, new))
    for name in ("raw_score", "raw_map"):
        a = np.concatenate([so.run([name], {"image": images[i:i + 4]})[0] for i in range(0, len(images), 4)])
        b = np.concatenate([sn.run([name], {"image": images[i:i + 4]})[0] for i in range(0, len(images), 4)])
        err = float(np.abs(a - b).max())
        out[name] = {"max_abs": err, "max_rel": err / (float(np.abs(a).max()) or 1.0)}
    return out


def latency(old: Path, new: Path, size: int, rounds: int, runs: int) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = {k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for k, p in
            (("old", old), ("new", new))}
    x = np.random.default_rng(3).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    wall = {k: [] for k in sess}
    cpu = {k: [] for k in sess}
    for s in sess.values():
        for _ in range(3):
            s.run(None, {"image": x})
    for r in range(rounds):
        for k in (("old", "new") if r % 2 == 0 else ("new", "old")):
            for _ in range(runs):
                t0, c0 = time.perf_counter(), time.process_time()
                sess[k].run(None, {"image": x})
                cpu[k].append(time.process_time() - c0)
                wall[k].append(time.perf_counter() - t0)
    res = {f"{k}_{what}_ms": float(np.median(v[k]) * 1e3) for what, v in (("wall", wall), ("cpu", cpu)) for k in sess}
    res["ratio_wall"] = res["new_wall_ms"] / res["old_wall_ms"]
    res["ratio_cpu"] = res["new_cpu_ms"] / res["old_cpu_ms"]
    res["runs_each"] = rounds * runs
    return res


def to_markdown(report: dict) -> str:
    old = report["old"]
    lines = ["# TensorRT-ready graphs: before and after", "",
             f"Regenerate: `python benchmarks/trt_ready.py` (old = {old['source']} at {old['commit'][:7]}, new = this "
             f"checkout at {report['new_commit'][:7]}); re-time only: `python benchmarks/trt_ready.py --reuse`. "
             f"Measured {report['when']} on {report['machine']}. Each method trained once (a few steps; "
             "sizes below) and exported by both; fp16 and int8 (tensorrt target) models added as "
             "`adrt export --precision fp16 --precision int8` does.", "",
             "## Violations of TensorRT's ONNX-parser rules (`adrt check`), old → new", "",
             "8.6 checks the model TensorRT 8.6 would build from: old bundles have only their opset-18 graphs, new "
             "ones the opset-17 copies (`*.trt86`).", "",
             "| method | precision | 8.6 | 10 | latest | rules the old graph breaks (8.6 / 10) |", "|---|---|---|---|---|---|"]
    for m, r in report["methods"].items():
        for p in PRECISIONS:
            cells, rules = [], []
            for t in TARGETS:
                o, n = r["violations"]["old"].get(t, {}).get(p), r["violations"]["new"].get(t, {}).get(p)
                cells.append(f"{o['count'] if o else '–'} → {n['count'] if n else '–'}")
            for t in ("8.6", "10"):
                o = r["violations"]["old"].get(t, {}).get(p)
                if o and o["rules"]:
                    rules.append(f"{t}: " + ", ".join(f"{k} {v}" for k, v in sorted(o["rules"].items())))
            lines.append(f"| {m} | {p} | " + " | ".join(cells) + f" | {'; '.join(rules) or '–'} |")
    lines += ["", "## Parity of the new graphs with the old ones (ONNX Runtime CPU, test images)", "",
              "Max |Δ| (and relative to the old output's range). int8 differs where the quantised region "
              "changed (the students' max-pool convs stay float), not through the graph rewrite.", "",
              "| method | precision | raw score | raw map | opset-17 copy vs its source (max abs diff: raw / range, "
              "calibrated) |",
              "|---|---|---|---|---|"]
    for m, r in report["methods"].items():
        for p in PRECISIONS:
            q = r["parity"].get(p)
            copy = r.get("trt86_parity", {}).get(p)
            if q is None:
                lines.append(f"| {m} | {p} | – | – | – |")
                continue
            lines.append(f"| {m} | {p} | {q['raw_score']['max_abs']:.2e} ({q['raw_score']['max_rel']:.1e}) | "
                         f"{q['raw_map']['max_abs']:.2e} ({q['raw_map']['max_rel']:.1e}) | "
                         + ("– |" if copy is None else
                            f"raw {copy['raw_max_rel']:.1e}, calibrated {copy['normalised_max_abs']:.1e} |"))
    lines += ["", "## ONNX Runtime CPU latency, old vs new graph (timing-sensitive)", "",
              f"Batch 1, 1 intra-op thread, {report['rounds']} interleaved rounds × {report['runs']} runs per graph; "
              "medians. CPU time is the process's (all its threads), which leaves out the time spent waiting for "
              "a core while other jobs run: less sensitive to them than wall time.", "",
              "| method (size) | precision | old ms | new ms | new/old wall | old CPU ms | new CPU ms | new/old CPU |",
              "|---|---|---|---|---|---|---|---|"]
    for m, r in report["methods"].items():
        for p in PRECISIONS:
            t = r["latency"].get(p)
            if t:
                lines.append(f"| {m} ({SIZES[m]}) | {p} | {t['old_wall_ms']:.1f} | {t['new_wall_ms']:.1f} | "
                             f"{t['ratio_wall']:.3f} | {t['old_cpu_ms']:.1f} | {t['new_cpu_ms']:.1f} | "
                             f"{t['ratio_cpu']:.3f} |")
    slow = [f"{m} {p} ({t['ratio_cpu']:.3f})" for m, r in report["methods"].items() for p, t in r["latency"].items()
            if t["ratio_cpu"] > 1.03]
    if slow:
        lines += ["", "Above 3 % (new/old CPU): " + ", ".join(slow) + "."]
        if any(x.startswith("students") for x in slow):
            lines[-1] += (" The students' reduced-precision variants pay for their max-pools as convs "
                          "(`a + relu(b − a)`): the old graphs ran the dilated MaxPool inside the reduced region "
                          "(ONNX Runtime keeps int8 through a MaxPool); the convs run cast-wrapped in fp16 and stay "
                          "float in int8 (exact selections). On ONNX Runtime CPU the students' fp16 and int8 are "
                          "slower than their fp32 before and after (they are for TensorRT and ARM).")
        if any(not x.startswith("students") for x in slow):
            lines[-1] += (" The other methods' graphs differ only in the order of cast and transpose and in what "
                          "their Shape nodes read (microseconds; run-to-run noise on a shared 2-core VM is about "
                          "±3 %).")
    errs = [(m, side, p, e) for m, r in report["methods"].items() for side in ("old", "new")
            for p, e in r["export_errors"][side].items()]
    if errs:
        lines += ["", "Variants an export refused (as `adrt export` would):", ""]
        lines += [f"- {m} {side} {p}: {e[:200]}" for m, side, p, e in errs]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from adrt.train.registry import available

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-python", default="/work/main/.venv/bin/python",
                    help="Python of the checkout whose graphs are the 'old' ones (its adrt is imported).")
    ap.add_argument("--work", type=Path, default=Path("/tmp/adrt-trt-ready"))
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--reuse", action="store_true", help="Reuse runs and bundles in --work; re-check and re-time.")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3, help="Timed runs per graph per round.")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "trt_ready")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    methods = args.methods or available()
    args.work.mkdir(parents=True, exist_ok=True)
    setup = train_runs(args.work, methods, args.reuse)
    data = setup["data"]
    report = {"old": old_commit(args.old_python), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "new_commit": subprocess.run(["git", "-C", str(HERE), "rev-parse", "HEAD"], capture_output=True,
                                           text=True).stdout.strip(),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
              "rounds": args.rounds, "runs": args.runs, "sizes": SIZES, "methods": {}}
    for m in methods:
        run = setup["runs"][m]
        old_b, new_b = args.work / "old" / m, args.work / "new" / m
        errs = {}
        for side, b in (("old", old_b), ("new", new_b)):
            path = args.work / f"{m}_{side}_export_errors.json"
            if not (args.reuse and b.exists() and path.exists()):
                e = export_old(args.old_python, run, b, data) if side == "old" else export_new(run, b, data)
                path.write_text(json.dumps(e))
            errs[side] = json.loads(path.read_text())
        om = json.loads((old_b / "manifest.json").read_text())["models"]
        nm = json.loads((new_b / "manifest.json").read_text())["models"]
        images = test_images(data, SIZES[m])
        r = {"size": SIZES[m], "export_errors": errs,
             "violations": {"old": violations(old_b), "new": violations(new_b)}, "parity": {}, "latency": {},
             "trt86_parity": {e["precision"]: {
                 "raw_max_rel": max(v["max_rel"] for n, v in e["parity_vs_source"].items() if n.startswith("raw")),
                 "normalised_max_abs": max(v["max_abs"] for n, v in e["parity_vs_source"].items()
                                           if not n.startswith("raw"))}
                 for k, e in nm.items() if k.endswith(".trt86")}}
        for p in PRECISIONS:
            if p in om and p in nm:
                r["parity"][p] = parity(old_b / om[p]["file"], new_b / nm[p]["file"], images)
                r["latency"][p] = latency(old_b / om[p]["file"], new_b / nm[p]["file"], SIZES[m], args.rounds,
                                          args.runs)
                log(f"{m} {p}: latency new/old {r['latency'][p]['ratio_cpu']:.3f} (CPU), "
                    f"{r['latency'][p]['ratio_wall']:.3f} (wall)")
        report["methods"][m] = r
    write_report(args.out, report, to_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
