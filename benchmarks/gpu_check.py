"""The real thing on a machine with an NVIDIA GPU: TensorRT engines, parity, latency — and what
runs without TensorRT. Two steps:

    python benchmarks/gpu_check.py prepare --out gpu_bundles       # here (torch): one bundle per method
    python benchmarks/gpu_check.py run --bundles gpu_bundles        # on the GPU machine, one command

``prepare`` trains every registered method for a few steps at 128×128 on a generated dataset and
exports it with fp16 and int8 (tensorrt target) models, plus ``images.npy`` (uint8 test images for
parity): a folder of well under 50 MB to carry to the GPU machine. ``run`` needs only numpy, onnx
and onnxruntime there (no torch, no pip install: it imports adrt from this checkout), and per bundle:

- ``adrt check`` (TensorRT 8.6 / 10 / latest rules, and the installed TensorRT's) on every model (8.6:
  on the opset-17 copies, made here as ``adrt build-engine`` makes them on a TensorRT 8.x device);
- ONNX Runtime CPU: reference outputs and batch-1 latency per precision;
- ``tensorrt`` (TensorRT installed): ``adrt build-engine`` into a copy of the bundle per precision
  (profile 1/1/8; the parity check against ONNX Runtime CPU on ``images.npy`` with the tolerances of
  adrt.export.engine; a plan outside them is kept and marked), then the native backend's latency
  (pycuda or cuda-python); on a device with DLA cores, fp16 and int8 on DLA core 0 with GPU
  fallback (static batch 1);
- ``ort-cuda`` / ``ort-trt`` where onnxruntime-gpu provides them;
- once: the cuda-python memory path the backend uses without pycuda (pinned and device buffers,
  async copies both ways), where cuda-python is present.

What cannot run (no TensorRT, no onnxruntime-gpu, no CUDA binding, the time budget spent) is listed
with the reason; the rest still runs. ``--budget-s`` (default 360) bounds the engine builds so the
whole run stays within 8 minutes on one GPU. Writes benchmarks/results/gpu_check_<gpu>.{json,md}
(``--out-dir DIR``: into DIR).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]    # benchmarks/_results.py; adrt from this checkout, installed or not
from _results import write_report  # noqa: E402

PRECISIONS = ("fp32", "fp16", "int8")
TARGETS = ("8.6", "10", "latest")
# Few training steps (engines and parity do not need trained weights); PaDiM with 40 of its 100 random
# channels, since its per-position covariances (in every variant) are most of a bundle's size.
QUICK = {"memae": {"iterations": 20}, "vae": {"iterations": 20}, "inpaint": {"iterations": 20},
         "efficientad": {"teacher_steps": 20, "steps": 20},
         "students": {"teacher_steps": 20, "student_steps": 10, "bank_size": 256}, "padim": {"n_features": 40}}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- prepare (CPU, torch) --------------------------------------------------------------------------

def prepare(out: Path, size: int = 128, methods=None) -> list:
    """One bundle per registered method (fp16 and int8 models) under ``out``, and test images."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from adrt.data import Dataset, load_images
    from adrt.export.pipeline import export_run
    from adrt.export.quantize import add_variant
    from adrt.synth import make_dataset
    from adrt.train.fit import train
    from adrt.train.registry import available

    out.mkdir(parents=True, exist_ok=True)
    work = out / ".work"
    data = make_dataset(work / "data", size=size, n_train=24, n_test_good=4, n_test_defect=4, seed=0)
    made = []
    for m in methods or available():
        run = train(m, data, work / m, size=size, seed=0, options=QUICK.get(m), log=lambda *a, **k: None)
        # No opset-17 copies: build-engine makes them on a TensorRT 8.x device (halves the folder).
        b = export_run(run, out / f"{m}_bundle", data, trt86=False)
        add_variant(b, "fp16", threads=1)
        add_variant(b, "int8", calib=data, threads=1)
        made.append(b)
        log(f"prepared {b}")
    images = load_images([s.path for s in Dataset.open(data).test], size, size)
    np.save(out / "images.npy", images)
    shutil.rmtree(work)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log(f"{len(made)} bundles + images.npy: {total / 2**20:.1f} MiB in {out}")
    return made


# --- run (GPU machine) -----------------------------------------------------------------------------

def machine_facts() -> dict:
    """What the machine has, each missing part with the reason."""
    facts = {"python": platform.python_version(), "machine": platform.machine(), "numpy": np.__version__}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        facts["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
    except (OSError, subprocess.SubprocessError) as e:
        facts["nvidia_smi"] = f"not available ({e})"
    for name in ("tensorrt", "pycuda.driver", "cuda.bindings.runtime", "onnx", "torch"):
        try:
            mod = __import__(name, fromlist=["_"])
            facts[name] = str(getattr(mod, "__version__", "present"))
        except ImportError as e:
            facts[name] = f"missing ({e})"
    import onnxruntime as ort

    facts["onnxruntime"] = f"{ort.__version__}, providers {ort.get_available_providers()}"
    return facts


def gpu_slug(facts: dict) -> str:
    smi = facts.get("nvidia_smi", "")
    name = smi.split(",")[0] if smi and not smi.startswith("not available") else "no-gpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-") or "gpu"


def timed(run, h: int, w: int, runs: int, batch: int = 8) -> dict:
    x1 = np.random.default_rng(3).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    xb = np.random.default_rng(4).integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
    for _ in range(5):
        run(x1)
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run(x1)
        t.append(time.perf_counter() - t0)
    run(xb)
    tb = []
    for _ in range(max(3, runs // 8)):
        t0 = time.perf_counter()
        run(xb)
        tb.append(time.perf_counter() - t0)
    ms = np.array(t) * 1e3
    return {"p50_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "runs": runs,
            "throughput_ips": float(batch / np.median(tb)), "batch": batch}


def cuda_memory_path() -> dict:
    """The cuda-python path of the TensorRT backend on the real device (round trips of pinned buffers)."""
    from adrt.runtime.cuda import _CudaPython

    cuda = _CudaPython(0)
    try:
        name, cc = cuda.device_info()
        stream, handle = cuda.stream()
        checks = []
        for shape, dtype in [((1, 256, 256, 3), np.uint8), ((8, 256, 256), np.float32), ((7,), np.float32)]:
            src, dst = cuda.pinned(shape, dtype), cuda.pinned(shape, dtype)
            src[...] = np.random.default_rng(0).integers(0, 255, shape).astype(dtype)
            dst[...] = 0
            dev = cuda.device(src.nbytes)
            cuda.to_device(dev, src, stream)
            cuda.to_host(dst, dev, stream)
            cuda.synchronize(stream)
            checks.append({"shape": list(shape), "dtype": np.dtype(dtype).name, "equal": bool(np.array_equal(src, dst))})
        return {"gpu": name, "compute_capability": list(cc), "stream_handle_is_int": isinstance(handle, int),
                "checks": checks, "ok": all(c["equal"] for c in checks) and isinstance(handle, int)}
    finally:
        cuda.close()


def check_rules(bundle: Path, trt_version: str | None, work: Path) -> dict:
    """``adrt check`` on a copy of the bundle with its opset-17 copies made (as build-engine makes them
    on a TensorRT 8.x device; prepare leaves them out to keep the folder small)."""
    from adrt.export.trt86 import add_trt86_variants
    from adrt.export.trt_check import check_bundle, parse_target

    targets = list(TARGETS)
    if trt_version:
        installed = parse_target(trt_version)
        targets = list(dict.fromkeys(targets + [installed]))
    dst = work / "rules" / bundle.name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(bundle, dst)
    add_trt86_variants(dst)
    report = check_bundle(dst, targets)
    return {t: {k: [v.line() for v in vs if v.fatal] for k, vs in per.items()} for t, per in report.items()}


def ort_reference(bundle: Path, precision: str, images: np.ndarray, runs: int) -> tuple:
    import onnxruntime as ort

    m = json.loads((bundle / "manifest.json").read_text())
    s = ort.InferenceSession(str(bundle / m["models"][precision]["file"]), providers=["CPUExecutionProvider"])
    h, w = images.shape[1:3]
    ref = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"image": images})))
    return ref, timed(lambda x: s.run(None, {"image": x}), h, w, max(10, runs // 5))


def tensorrt_rows(src: Path, work: Path, precision: str, images: np.ndarray, runs: int, dla: bool, log) -> dict:
    """Build into a copy of the bundle (parity inside build_into_bundle), then time the native backend."""
    from adrt.export.engine import BatchProfile, DlaOptions, build_into_bundle
    from adrt.runtime.bundle import open_bundle
    from adrt.runtime.tensorrt import open_tensorrt

    dst = work / (src.name + ("-dla" if dla else ""))
    if not dst.exists():
        shutil.copytree(src, dst)
    profile = BatchProfile(1, 1, 1) if dla else BatchProfile(1, 1, 8)
    rec = build_into_bundle(dst, precision, profile, keep_failed=True, log=log,
                            dla=DlaOptions(0, gpu_fallback=True) if dla else None)
    row = {"build": {k: rec.get(k) for k in ("file", "onnx", "gpu", "compute_capability", "tensorrt", "build_seconds",
                                             "parity_ok", "parity_failures", "dla_core")},
           "parity": rec.get("parity_vs_ort_cpu"), "parity_ok": rec.get("parity_ok")}
    b = open_bundle(dst)
    be = open_tensorrt(b, precision)
    try:
        h, w = images.shape[1:3]
        got = be.run({"image": images[: be.max_batch]})
        row["outputs"] = {k: [list(v.shape), str(v.dtype)] for k, v in got.items()}
        if not dla:
            row["latency"] = timed(lambda x: be.run({"image": x}), h, w, runs)
    finally:
        be.close()
    return row


def ort_gpu_rows(src: Path, precision: str, ref: dict, images: np.ndarray, runs: int) -> dict:
    from adrt.errors import AdrtError
    from adrt.runtime.backends import BackendName, OrtBackend

    m = json.loads((src / "manifest.json").read_text())
    rows = {}
    for name in (BackendName.ORT_CUDA, BackendName.ORT_TRT):
        try:
            be = OrtBackend(src / m["models"][precision]["file"], name)
        except AdrtError as e:
            rows[name.value] = {"skipped": str(e)}
            continue
        got = be.run({"image": images})
        rows[name.value] = {"parity": {k: float(np.nanmax(np.abs(got[k] - ref[k]))) for k in ref},
                            "latency": timed(lambda x: be.run({"image": x}), *images.shape[1:3], runs)}
        be.close()
    return rows


def run_check(bundles: list, out: Path | None, runs: int, budget_s: float, work: Path,
              out_dir: Path | None = None) -> dict:
    facts = machine_facts()
    log(json.dumps(facts, indent=1))
    trt_version = None if facts["tensorrt"].startswith("missing") else facts["tensorrt"]
    report = {"machine": facts, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "bundles": {}, "skipped": []}
    if facts["cuda.bindings.runtime"].startswith("missing"):
        report["skipped"].append(f"cuda-python memory path: {facts['cuda.bindings.runtime']}")
    else:
        try:
            report["cuda_memory_path"] = cuda_memory_path()
        except Exception as e:        # no device, no driver: reported, the rest runs
            report["skipped"].append(f"cuda-python memory path: {type(e).__name__}: {e}")
    if trt_version is None:
        report["skipped"].append(f"tensorrt engines: {facts['tensorrt']} (pip install 'adrt[tensorrt]' or JetPack)")
    dla_cores = 0
    if trt_version:
        import tensorrt as trt

        from adrt.runtime.tensorrt import make_logger

        dla_cores = int(getattr(trt.Builder(make_logger(trt)), "num_DLA_cores", 0))
        report["dla_cores"] = dla_cores
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for src in bundles:
        src = Path(src).resolve()
        images_path = src.parent / "images.npy"
        images = np.load(images_path)[:4] if images_path.is_file() else None
        m = json.loads((src / "manifest.json").read_text())
        h, w = int(m["input"]["height"]), int(m["input"]["width"])
        if images is None or images.shape[1:3] != (h, w):
            images = np.random.default_rng(0).integers(0, 256, (4, h, w, 3), dtype=np.uint8)
        entry = {"method": m["method"], "rules": check_rules(src, trt_version, work), "precisions": {}}
        for p in (p for p in PRECISIONS if p in m["models"]):
            ref, cpu = ort_reference(src, p, images, runs)
            row = {"ort-cpu": {"latency": cpu}}
            for dla in ([False, True] if dla_cores and p != "fp32" else [False]):
                key = "tensorrt-dla0" if dla else "tensorrt"
                if trt_version is None:
                    continue
                if time.perf_counter() - start > budget_s:
                    row[key] = {"skipped": f"time budget of {budget_s:.0f} s spent"}
                    continue
                try:
                    row[key] = tensorrt_rows(src, work, p, images, runs, dla, log)
                except Exception as e:    # one failed build must not hide the others
                    row[key] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            row.update(ort_gpu_rows(src, p, ref, images, runs))
            entry["precisions"][p] = row
            log(f"{src.name} {p}: " + ", ".join(f"{k}: {_short(v)}" for k, v in row.items()))
        report["bundles"][src.name] = entry
    report["seconds"] = round(time.perf_counter() - start, 1)
    out = out or (out_dir or HERE / "results") / f"gpu_check_{gpu_slug(facts)}"
    write_report(out, report, to_markdown(report))
    return report


def _short(row: dict) -> str:
    if "skipped" in row or "error" in row:
        return ("skipped: " + row["skipped"]) if "skipped" in row else "ERROR"
    lat = row.get("latency", {}).get("p50_ms")
    ok = row.get("parity_ok")
    return (f"p50 {lat:.2f} ms" if lat is not None else "built") + ("" if ok is None else
                                                                     " parity ok" if ok else " PARITY FAILED")


def to_markdown(report: dict) -> str:
    f = report["machine"]
    lines = ["# GPU check", "", "Regenerate on the GPU machine: `python benchmarks/gpu_check.py run --bundles DIR` "
             "(bundles from `python benchmarks/gpu_check.py prepare --out DIR`).", "",
             f"Machine: {f.get('nvidia_smi')}; TensorRT: {f.get('tensorrt')}; pycuda: {f.get('pycuda.driver')}; "
             f"cuda-python: {f.get('cuda.bindings.runtime')}; ONNX Runtime: {f.get('onnxruntime')}; "
             f"{report.get('seconds')} s. {report['when']}.", ""]
    if report["skipped"]:
        lines += ["Could not run:", ""] + [f"- {s}" for s in report["skipped"]] + [""]
    if "cuda_memory_path" in report:
        c = report["cuda_memory_path"]
        trips = ", ".join(f"{x['dtype']} {x['shape']}: {'equal' if x['equal'] else 'DIFFERENT'}" for x in c["checks"])
        lines += [f"cuda-python memory path on {c['gpu']}: {'ok' if c['ok'] else 'FAILED'} ({trips})", ""]
    lines += ["## TensorRT parser rules (`adrt check`)", "", "| bundle | " + " | ".join(TARGETS) + " |",
              "|---|" + "---|" * len(TARGETS)]
    for name, b in report["bundles"].items():
        cells = []
        for t in TARGETS:
            per = b["rules"].get(t, {})
            n = sum(len(v) for v in per.values())
            cells.append("ok" if not n else f"**{n} violation(s)**")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Engines and latency", "", "Tolerances against ONNX Runtime CPU on the same graph: those of "
              "`adrt build-engine` (adrt.export.engine.PARITY_TOLERANCE).", "",
              "| bundle | precision | backend | p50 ms (batch 1) | images/s (batch 8) | parity | note |",
              "|---|---|---|---|---|---|---|"]
    # A backend skipped for one and the same reason in every row is said once, under the table.
    reasons = {}
    for b in report["bundles"].values():
        for row in b["precisions"].values():
            for backend, r in row.items():
                reasons.setdefault(backend, set()).add(r.get("skipped") if "skipped" in r else None)
    everywhere = {k: next(iter(v)) for k, v in reasons.items() if len(v) == 1 and None not in v}
    for name, b in report["bundles"].items():
        for p, row in b["precisions"].items():
            for backend, r in row.items():
                if backend in everywhere:
                    continue
                if "skipped" in r or "error" in r:
                    lines.append(f"| {name} | {p} | {backend} | - | - | - | {r.get('skipped') or r.get('error')[:300]} |")
                    continue
                lat = r.get("latency") or {}
                par = "-" if r.get("parity_ok") is None else ("ok" if r["parity_ok"] else "**failed**: "
                                                              + "; ".join(r["build"].get("parity_failures") or []))
                note = (r.get("build") or {}).get("file") or ""
                lines.append(f"| {name} | {p} | {backend} | {lat.get('p50_ms', float('nan')):.2f} | "
                             f"{lat.get('throughput_ips', float('nan')):.0f} | {par} | {note} |")
    if everywhere:
        lines += [""] + [f"- `{k}` skipped for every bundle and precision: {v}" for k, v in everywhere.items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="Train and export one small bundle per method (needs torch).")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--methods", nargs="*", default=None)
    r = sub.add_parser("run", help="Check, build, compare and time on this machine (no torch needed).")
    r.add_argument("--bundles", nargs="+", type=Path, required=True,
                   help="Bundle folders, or a folder of them (from prepare).")
    r.add_argument("--runs", type=int, default=50)
    r.add_argument("--budget-s", type=float, default=360.0, help="Stop starting engine builds after this long.")
    r.add_argument("--work", type=Path, default=Path("/tmp/adrt-gpu-check"))
    r.add_argument("--out", type=Path, default=None, help="Report path without suffix (default results/gpu_check_<gpu>).")
    r.add_argument("--out-dir", type=Path, default=None, help="Folder for gpu_check_<gpu>.{json,md} instead.")
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        prepare(args.out, args.size, args.methods)
        return 0
    bundles = []
    for b in args.bundles:
        bundles += [b] if (b / "manifest.json").is_file() else sorted(x for x in b.iterdir() if (x / "manifest.json").is_file())
    if not bundles:
        log("no bundles found: pass bundle folders or the folder `prepare` wrote")
        return 2
    report = run_check(bundles, args.out, args.runs, args.budget_s, args.work, args.out_dir)
    bad = [1 for b in report["bundles"].values() for row in b["precisions"].values() for r in row.values()
           if r.get("parity_ok") is False or "error" in r]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
