"""Latency, throughput, memory and FLOPs of bundles across backends and thread counts, in one run.

Protocol (as in the EfficientAD paper, so figures compare with published tables): batch-1 latency
from a host uint8 image in to the anomaly map and score back on the host, after ``warmup`` untimed
runs, over ``runs`` timed runs; throughput at a larger ``batch``; mean, p50, p90, p99, min, max,
std and IQR. Every configuration (bundle × backend × precision × threads, plus torch eager where a run folder
is given) runs in its own process, and the timed runs are interleaved: ``rounds`` rounds, each
visiting every configuration in turn (the order rotated each round), so machine noise hits all
alike. Each round starts with one untimed run, since the other configurations have used the caches.
The batch-B rounds come after all batch-1 rounds: a larger batch leaves the process in another
state (with glibc malloc, torch eager stops paying ~4 000 page faults per batch-1 run after one
batch-8 run, a third of its PatchCore latency), and a batch-1 figure should be what a batch-1 loop
gets. Minor page faults per timed run are recorded for each phase.

Pre- and post-processing are timed apart: outside the graph, ``Session.prepare`` of a camera frame
of another size (``frame``, default 480×640) to the bundle's size; inside the graph, ONNX Runtime's
node profiler splits a run into the cast/normalise prefix, the model, and upsampling + blur +
calibration (CPU backend only).

Per process: peak RSS after the batch-1 runs and after the batch-B runs (its own, as each
configuration has a fresh process) and, on GPU backends,
device memory from nvidia-smi. Per bundle: FLOPs and parameters from the ONNX graph
(:mod:`adrt.runtime.flops`), and achieved FLOP/s against numpy's float32 GEMM rate measured in
the same run at the same thread count.

The report is a JSON object (``"format": "adrt-bench"``, ``"format_version": 1``) with Markdown
(:func:`to_markdown`) and HTML (:mod:`adrt.runtime.report_html`) views; :func:`compare` sets it
against an earlier report.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from adrt._version import __version__
from adrt.errors import AdrtError, BackendError, InputError
from adrt.runtime._bench_worker import GRAPH_SPLIT_RULE, peak_rss_mb  # noqa: F401 - peak_rss_mb is public API

FORMAT = "adrt-bench"
FORMAT_VERSION = 1
TORCH = "torch-eager"           # torch eager on the CPU
TORCH_CUDA = "torch-cuda"       # torch eager on a CUDA device
TORCH_BACKENDS = {"cpu": TORCH, "cuda": TORCH_CUDA}
GPU_BACKENDS = ("ort-cuda", "ort-trt", "tensorrt", TORCH_CUDA)
BLAS_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
PROTOCOL = ("batch 1, host uint8 image in -> anomaly map and score back on the host; untimed warm-up, then timed "
            "runs in interleaved rounds (round-robin over all configurations, order rotated each round, one untimed "
            "run at the start of each round); throughput = batch / median batch time, timed in a second set of rounds "
            "after all batch-1 rounds, so no larger batch has run in a process while its batch 1 is timed; each "
            "configuration in its own process")


class BenchReportError(AdrtError):
    """A benchmark report file that cannot be read or is of another format."""


@dataclass(frozen=True)
class Config:
    """One benchmarked configuration: a bundle on a backend (or torch eager) at a thread count."""

    bundle: Path
    backend: str
    threads: int | None
    run: Path | None = None
    precision: str = "fp32"

    @property
    def gpu(self) -> bool:
        return self.backend in GPU_BACKENDS


def stats_ms(t) -> dict:
    """Summary of durations ``t`` in seconds, in milliseconds."""
    ms = np.asarray(t, dtype=float) * 1e3
    q25, q75 = np.percentile(ms, [25, 75])
    return {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "min": float(ms.min()), "max": float(ms.max()),
            "std": float(ms.std()), "iqr": float(q75 - q25), "runs": int(len(ms))}


def split_runs(n: int, rounds: int) -> list[int]:
    """``n`` runs over at most ``rounds`` rounds, as evenly as possible (sums to ``n``)."""
    r = max(1, min(rounds, n))
    return [n // r + (1 if i < n % r else 0) for i in range(r)]


# --------------------------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _blas() -> str | None:
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{cfg.get('name')} {cfg.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - older numpy has no dict mode; the field is informative only
        return None


def _nvidia_smi(args: list[str]) -> list[list[str]] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        p = subprocess.run([exe, *args, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    return [[c.strip() for c in line.split(",")] for line in p.stdout.strip().splitlines() if line.strip()]


def machine_info(gpus: bool = False) -> dict:
    """Machine, library versions and load; ``gpus`` adds nvidia-smi's GPU list."""
    import onnxruntime as ort

    try:
        import onnx
        onnx_version = onnx.__version__
    except ImportError:
        onnx_version = None
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu": _cpu_model(),
            "cpus": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gb": _memory_gb(), "python": platform.python_version(), "numpy": np.__version__,
            "blas": _blas(), "onnxruntime": ort.__version__, "ort_providers": ort.get_available_providers(),
            "onnx": onnx_version, "adrt": __version__,
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    if gpus:
        rows = _nvidia_smi(["--query-gpu=name,memory.total,driver_version"])
        info["gpus"] = None if rows is None else [{"name": r[0], "memory_mb": _num(r[1]), "driver": r[2]}
                                                  for r in rows if len(r) >= 3]
    return info


def _num(s: str):
    try:
        return float(s)
    except ValueError:
        return None


def gpu_memory_mb(pid: int) -> tuple[float | None, str | None]:
    """Device memory held by process ``pid`` (nvidia-smi), or None and why not."""
    rows = _nvidia_smi(["--query-compute-apps=pid,used_memory"])
    if rows is None:
        return None, "nvidia-smi is not available"
    for r in rows:
        if len(r) >= 2 and r[0] == str(pid):
            return _num(r[1]), None
    return None, "nvidia-smi does not list the worker process (another PID namespace, or a Jetson)"


# Torch eager paying this many minor page faults per batch-1 run or more gets a note in the Markdown,
# with the glibc settings under which it keeps its temporaries (its best case on glibc: pass them as
# bench(..., worker_env=TUNED_MALLOC) or put them in the environment).
FAULTS_NOTE = 1000
# glibc: serve allocations up to 64 MiB from the heap and keep up to 128 MiB of free heap.
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(128 << 20)}
# A GEMM rate that changes by more than this between the start and the end of a run means the
# machine's speed drifted (other jobs, a VM's host): absolute times are then not comparable across
# runs, only the ratios measured interleaved within the run.
GEMM_DRIFT_WARN = 0.15


def gemm_drift(g: dict) -> float | None:
    """Relative change of the GEMM rate from the start to the end of a run (None if not measured)."""
    a, b = g.get("gflops_start"), g.get("gflops_end")
    return None if not a or not b else round(b / a - 1.0, 3)


def measure_gemm(threads: int | None, n: int = 1024, seconds: float = 0.5) -> dict:
    """numpy float32 n×n matmul rate in a fresh process whose BLAS uses ``threads`` threads (None: its default)."""
    env = dict(os.environ)
    if threads:
        env.update({k: str(threads) for k in BLAS_THREAD_VARS})
    p = subprocess.run([sys.executable, "-m", "adrt.runtime._bench_worker", "--gemm", str(n), str(seconds)],
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return {"gflops": None, "reason": f"GEMM process failed: {p.stderr.strip()[-300:]}"}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["threads"] = threads
    return out


# --------------------------------------------------------------------------------------------- workers


class _WorkerError(Exception):
    pass


class _Worker:
    """A configuration's process; ``ask`` sends one command and returns the reply (raises on failure)."""

    def __init__(self, cfg: Config, extra_env: dict | None = None):
        self.cfg = cfg
        env = {**os.environ, **(extra_env or {})}
        if cfg.threads:
            env.update({k: str(cfg.threads) for k in BLAS_THREAD_VARS})
        self._err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "adrt.runtime._bench_worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err, env=env, text=True, bufsize=1)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ask(self, msg: dict) -> dict:
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            rc = self.proc.wait()
            self._err.seek(0)
            tail = " ".join(self._err.read().strip().splitlines()[-3:])[-400:]
            raise _WorkerError(f"worker process exited with status {rc}" + (f": {tail}" if tail else ""))
        reply = json.loads(line)
        if not reply.get("ok"):
            raise _WorkerError(" ".join(str(reply.get("error", "unknown error")).split()))
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask({"cmd": "exit"})
                self.proc.wait(timeout=30)
            except (_WorkerError, subprocess.TimeoutExpired, OSError, ValueError):
                self.proc.kill()
                self.proc.wait()
        self._err.close()


# --------------------------------------------------------------------------------------------- bundles


def _bundle_name(path: Path) -> str:
    p = Path(path)
    return p.stem if p.suffix.lower() == ".zip" else p.name


def bundle_info(path: Path) -> dict:
    """Verify a bundle and summarise it: method, size, model size, FLOPs/parameters, recorded metrics."""
    from adrt.runtime.bundle import open_bundle
    from adrt.runtime.flops import count

    info: dict = {"path": str(path), "name": _bundle_name(path)}
    try:
        b = open_bundle(Path(path))
    except AdrtError as e:
        info["error"] = str(e)
        return info
    try:
        m = b.manifest
        model = b.model_path("fp32")
        info.update(method=m["method"], size=[int(m["input"]["height"]), int(m["input"]["width"])],
                    model_mb=round(model.stat().st_size / 2**20, 2), flops=count(model), metrics=_metrics(m))
    except AdrtError as e:
        info["error"] = str(e)
    finally:
        b.cleanup()
    return info


def _metrics(manifest: dict) -> dict:
    out = {}
    for dataset, res in (manifest.get("metrics") or {}).items():
        o = res.get("overall", {}) if isinstance(res, dict) else {}
        keys = ("image_auroc", "pixel_auroc", "aupro", "f1_max")
        vals = {k: o[k] for k in keys if isinstance(o.get(k), (int, float))}
        if vals:
            out[dataset] = vals
    return out


# --------------------------------------------------------------------------------------------- the run


def _log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bench_many(bundles: Sequence, backends: Sequence[str] = ("ort-cpu",), threads: Sequence[int | None] = (None,),
               torch_runs: dict | None = None, runs: int = 50, warmup: int = 5, rounds: int = 5, batch: int = 8,
               frame: tuple[int, int] = (480, 640), profile_runs: int = 10, gemm: bool = True,
               torch_devices: Sequence[str] = ("cpu",), precisions: Sequence[str] = ("fp32",),
               log: Callable[[str], None] | None = _log_stderr, worker_env: dict | None = None) -> dict:
    """Benchmark every (bundle, backend, precision, threads) configuration, interleaved; see the module docstring.

    ``torch_runs`` maps a bundle (as given in ``bundles``) to the run folder it was exported from, adding a
    torch eager configuration per thread count and ``torch_devices`` entry ("cpu": backend ``torch-eager``,
    "cuda": ``torch-cuda``). A configuration that cannot run is reported with
    ``"status": "skipped"`` and the reason; one that fails part-way with ``"status": "failed"``.
    ``worker_env``: extra environment variables for every configuration's process (e.g. glibc's
    ``MALLOC_*`` tunables), recorded in the report's settings.
    """
    log = log or (lambda msg: None)
    bundles = list(dict.fromkeys(Path(b) for b in bundles))
    backends = list(dict.fromkeys(backends)) or ["ort-cpu"]
    threads = list(dict.fromkeys(threads)) or [None]
    precisions = list(dict.fromkeys(precisions)) or ["fp32"]
    torch_runs = {Path(k): Path(v) for k, v in (torch_runs or {}).items()}
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    torch_backends = [TORCH_BACKENDS[d] for d in dict.fromkeys(torch_devices)] if torch_runs else []
    machine = machine_info(gpus=any(b in GPU_BACKENDS for b in backends + torch_backends))

    infos = [bundle_info(b) for b in bundles]
    configs: list[Config] = []
    for b in bundles:
        configs += [Config(b, be, t, precision=p) for be in backends for p in precisions for t in threads]
        if b in torch_runs:
            configs += [Config(b, tb, t, torch_runs[b]) for tb in torch_backends for t in threads]
    info_of = {b: i for b, i in zip(bundles, infos)}

    gemm_rates: dict[str, dict] = {}
    gemm_threads = list(dict.fromkeys(c.threads for c in configs if not c.gpu)) if gemm else []
    for t in gemm_threads:
        log(f"GEMM reference: numpy float32 1024×1024 at {t or 'default'} threads")
        gemm_rates[_tkey(t)] = measure_gemm(t)

    entries: dict[Config, dict] = {}
    workers: dict[Config, _Worker] = {}
    samples: dict[Config, dict] = {}
    per_round = split_runs(runs, rounds)
    schedule: list[list[str]] = []
    try:
        for c in configs:
            entries[c] = _entry_head(c, info_of[c.bundle])
            if "error" in info_of[c.bundle]:
                entries[c].update(status="skipped", reason=info_of[c.bundle]["error"])
                continue
            log(f"load {entries[c]['name']} ({_bundle_name(c.bundle)}, threads {c.threads or 'default'})")
            w = _Worker(c, worker_env)
            try:
                torch_dev = next((d for d, tb in TORCH_BACKENDS.items() if tb == c.backend), None)
                reply = w.ask({"cmd": "init", "kind": "torch" if torch_dev else "ort", "bundle": str(c.bundle),
                               "backend": c.backend, "threads": c.threads, "batch": batch, "frame": list(frame),
                               "warmup": warmup, "run": str(c.run) if c.run else None, "device": torch_dev,
                               "precision": c.precision})
            except _WorkerError as e:
                entries[c].update(status="skipped", reason=str(e))
                w.close()
                log(f"  skipped: {e}")
                continue
            workers[c] = w
            entries[c].update(status="ok", **{k: v for k, v in reply["info"].items() if k != "method"})
            samples[c] = {"lat": [], "batch": [], "prep": [], "round_means": [], "gpu_mem": None, "gpu_reason": None,
                          "faults": {}, "rss1": None, "batch1_after": 1}

        def play(label: str, counts: Callable[[int], dict], batch1: bool) -> None:
            """``per_round`` round-robin rounds over the live workers, each timing ``counts(n)`` runs."""
            for r, n in enumerate(per_round):
                live = [c for c in configs if c in workers]
                if not live:
                    return
                k = r % len(live)
                order = live[k:] + live[:k]
                if batch1:
                    schedule.append([entries[c]["key"] for c in order])
                log(f"{label}, round {r + 1}/{len(per_round)}: {n} runs × {len(live)} configurations")
                for c in order:
                    try:
                        res = workers[c].ask({"cmd": "round", **counts(n)})
                    except _WorkerError as e:
                        entries[c].update(status="failed", reason=f"{label}, round {r + 1}: {e}")
                        workers.pop(c).close()
                        continue
                    s = samples[c]
                    for key in ("lat", "batch", "prep"):
                        s[key] += res[key]
                        if res.get(key + "_faults") is not None:
                            s["faults"].setdefault(key, []).append(res[key + "_faults"])
                    if batch1:
                        s["round_means"].append(float(np.mean(res["lat"])) * 1e3)
                        s["batch1_after"] = max(s["batch1_after"], res["largest_batch_before"])
                    if c.gpu:
                        mb, why = gpu_memory_mb(workers[c].pid)
                        if mb is not None:
                            s["gpu_mem"] = max(mb, s["gpu_mem"] or 0.0)
                        s["gpu_reason"] = why if s["gpu_mem"] is None else None

        def stats(c: Config, when: str) -> dict | None:
            try:
                return workers[c].ask({"cmd": "stats"})
            except _WorkerError as e:
                entries[c].update(status="failed", reason=f"{when}: {e}")
                workers.pop(c).close()
                return None

        # All batch-1 rounds (latency, host prep), then the batch-B rounds (throughput): batch 1 is
        # timed before any larger batch has run in the process. With glibc malloc, one batch-8 run
        # raises the mmap threshold for good, and torch eager's batch-1 runs stop paying the page
        # faults (about 4 000 per run for PatchCore at 256×256) that a batch-1 loop otherwise pays.
        play("batch 1", lambda n: {"n": n, "nb": 0, "np": n}, batch1=True)
        for c in list(workers):
            st = stats(c, "after the batch-1 runs")
            if st is not None:
                samples[c]["rss1"] = st["peak_rss_mb"]
        play(f"batch {batch}", lambda n: {"n": 0, "nb": max(1, math.ceil(n / batch)), "np": 0}, batch1=False)

        for c in list(workers):
            w = workers[c]
            st = stats(c, "after the timed runs")
            if st is None:
                continue
            entries[c]["peak_rss_mb"] = samples[c]["rss1"]
            entries[c]["peak_rss_batch_mb"] = st["peak_rss_mb"]
            if st.get("torch_cuda_peak_mb") is not None:
                entries[c]["torch_cuda_peak_mb"] = st["torch_cuda_peak_mb"]
            entries[c]["graph_ms"], entries[c]["graph_reason"] = None, "not profiled (profile_runs=0)"
            if profile_runs > 0:
                try:   # the split is extra: its failure leaves the timings standing
                    p = w.ask({"cmd": "profile", "runs": profile_runs})
                    entries[c]["graph_ms"], entries[c]["graph_reason"] = p["graph_ms"], p["graph_reason"]
                except _WorkerError as e:
                    entries[c]["graph_reason"] = f"profiling failed: {e}"
    finally:
        for w in workers.values():
            w.close()
    for t in gemm_threads:
        # Measured again after the rounds; the best of both is the reference (noise only slows a GEMM down).
        g, again = gemm_rates[_tkey(t)], measure_gemm(t)
        g["gflops_start"], g["gflops_end"] = g.get("gflops"), again.get("gflops")
        g["gflops"] = max((v for v in (g["gflops_start"], g["gflops_end"]) if v), default=None)
        g["drift"] = gemm_drift(g)

    for c in configs:
        if entries[c]["status"] == "ok":
            _finish_entry(entries[c], samples[c], c, batch, frame, info_of[c.bundle], gemm_rates)
    results = [entries[c] for c in configs]
    _add_speedups(results)
    report = {"format": FORMAT, "format_version": FORMAT_VERSION, "adrt_version": __version__, "created": created,
              "machine": machine,
              "settings": {"runs": runs, "rounds": len(per_round), "warmup": warmup, "batch": batch,
                           "frame": list(frame), "backends": backends, "precisions": precisions, "threads": threads,
                           "torch_runs": {str(k): str(v) for k, v in torch_runs.items()},
                           "torch_devices": list(dict.fromkeys(torch_devices)) if torch_runs else [],
                           "profile_runs": profile_runs, "protocol": PROTOCOL, "graph_split": GRAPH_SPLIT_RULE,
                           "worker_env": dict(worker_env or {})},
              "schedule": schedule, "gemm": gemm_rates if gemm else None,
              "bundles": infos, "results": results}
    report["machine"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if len(bundles) == 1:
        report["bundle"] = str(bundles[0])
    if results and "speedup_vs_torch" in results[0]:
        report["speedup_vs_torch"] = results[0]["speedup_vs_torch"]
    return report


def _tkey(t: int | None) -> str:
    return str(t) if t else "default"


def _entry_head(c: Config, info: dict) -> dict:
    method = info.get("method", "?")
    be = c.backend if c.precision == "fp32" else f"{c.backend} {c.precision}"
    key = f"{_bundle_name(c.bundle)}|{c.backend}|{c.precision}|{_tkey(c.threads)}"
    head = {"key": key, "name": f"{method} {be}", "bundle": str(c.bundle), "bundle_name": _bundle_name(c.bundle),
            "method": method, "backend": c.backend, "precision": c.precision, "threads": c.threads,
            "size": info.get("size")}
    if c.run:
        head["torch_run"] = str(c.run)
    return head


def _finish_entry(e: dict, s: dict, c: Config, batch: int, frame, info: dict, gemm_rates: dict) -> None:
    lat = stats_ms(s["lat"])
    e["latency_ms"] = lat
    e["samples_ms"] = [round(x * 1e3, 4) for x in s["lat"]]
    e["round_means_ms"] = s["round_means"]
    e["page_faults_per_run"] = {k: round(float(np.mean(v)), 1) for k, v in s["faults"].items()}
    e["largest_batch_before_batch1"] = s["batch1_after"]   # 1: batch 1 was timed before any larger batch ran
    e["prepare_ms"] = {**stats_ms(s["prep"]), "frame": list(frame)}
    e["throughput"] = {"batch": batch, "images_per_s": float(batch / np.median(s["batch"])),
                       "batch_ms": stats_ms(s["batch"])}
    if c.gpu:
        e["gpu_mem_mb"], e["gpu_mem_reason"] = s["gpu_mem"], s["gpu_reason"]
    flops = (info.get("flops") or {}).get("flops")
    if flops:
        e["gflops_per_image"] = flops / 1e9
        e["achieved_gflops"] = flops / (lat["mean"] / 1e3) / 1e9
        e["achieved_gflops_batch"] = flops * e["throughput"]["images_per_s"] / 1e9
        g = gemm_rates.get(_tkey(c.threads), {}).get("gflops")
        e["gemm_fraction"] = e["achieved_gflops"] / g if g and not c.gpu else None
    e["accuracy"] = {d: v.get("image_auroc") for d, v in info.get("metrics", {}).items()}


def _add_speedups(results: list[dict]) -> None:
    # ORT on the CPU against torch eager on the CPU; ORT on a GPU against torch eager on CUDA.
    torch = {(e["bundle"], e["threads"], e["backend"]): e for e in results
             if e["backend"] in TORCH_BACKENDS.values() and e["status"] == "ok"}
    for e in results:
        if e["backend"] in TORCH_BACKENDS.values() or e["status"] != "ok" or e["precision"] != "fp32":
            continue
        t = torch.get((e["bundle"], e["threads"], TORCH_CUDA if e["backend"] in GPU_BACKENDS else TORCH))
        if t is not None:
            e["speedup_vs_torch"] = t["latency_ms"]["mean"] / e["latency_ms"]["mean"]


def bench(bundle_path, backend: str = "ort-cpu", threads: int | None = None, runs: int = 50, warmup: int = 5,
          batch: int = 8, torch_run=None, **kw) -> dict:
    """One bundle on one backend (and torch eager when ``torch_run`` is given): ``results[0]`` is the bundle,
    ``results[1]`` torch; ``speedup_vs_torch`` = torch mean / bundle mean. Raises if a configuration cannot run."""
    report = bench_many([bundle_path], [backend], [threads], {bundle_path: torch_run} if torch_run else None,
                        runs=runs, warmup=warmup, batch=batch, **kw)
    for e in report["results"]:
        if e["status"] != "ok":
            raise BackendError(f"{e['name']} ({bundle_path}): {e['status']}: {e['reason']}")
    return report


def parse_frame(text: str) -> tuple[int, int]:
    """``"480x640"`` → (480, 640): the camera frame (height × width) for timing the host-side resize."""
    m = re.fullmatch(r"\s*(\d+)\s*[x×,]\s*(\d+)\s*", str(text))
    if not m or min(int(m.group(1)), int(m.group(2))) < 1:
        raise InputError(f"--frame {text!r}: expected HEIGHTxWIDTH in pixels, e.g. 480x640")
    return int(m.group(1)), int(m.group(2))


def pair_torch_runs(bundles: Sequence, values: Sequence[str]) -> dict:
    """``--torch-run`` values → {bundle: run folder}. ``RUN`` alone pairs with the only bundle; with several
    bundles each value is ``BUNDLE=RUN``, BUNDLE being a bundle path as given or its folder name."""
    bundles = [Path(b) for b in bundles]
    out: dict[Path, Path] = {}

    def match(key: str) -> list[Path]:
        return [b for b in bundles if key in (str(b), _bundle_name(b)) or Path(key).resolve() == b.resolve()]

    for v in values:
        left, eq, right = str(v).partition("=")
        hits = match(left) if eq else []
        if len(hits) == 1 and right:
            bundle, run = hits[0], Path(right)
        elif len(bundles) == 1 and (not eq or not hits):
            bundle, run = bundles[0], Path(v)
        elif len(hits) > 1:
            raise InputError(f"--torch-run {v!r}: {left!r} names several bundles; use the path as given")
        else:
            names = ", ".join(str(b) for b in bundles)
            raise InputError(f"--torch-run {v!r}: with several bundles write BUNDLE=RUN, BUNDLE one of: {names}")
        if bundle in out:
            raise InputError(f"--torch-run: two run folders for bundle {bundle}")
        out[bundle] = run
    return out


def recorded_torch_runs(bundles: Sequence, paired: dict, log: Callable[[str], None] | None = _log_stderr) -> dict:
    """Run folders recorded by ``adrt export`` (manifest ``training.run_folder``) for the bundles that
    ``paired`` (from ``--torch-run``) leaves out, where torch is installed and the folder still holds the
    run: ``adrt bench`` then times torch eager in the same run without being told. A bundle whose run is
    gone (another machine) is noted and benchmarked without torch."""
    import importlib.util

    from adrt.runtime.bundle import open_bundle

    log = log or (lambda msg: None)
    todo = [Path(b) for b in bundles if Path(b) not in paired]
    if not todo or importlib.util.find_spec("torch") is None:
        return {}
    found = {}
    for b in todo:
        try:
            bundle = open_bundle(b, verify=False)
        except Exception:       # noqa: BLE001 - bench_many reports a bad bundle with its own error
            continue
        try:
            run = bundle.manifest.get("training", {}).get("run_folder")
        finally:
            bundle.cleanup()
        if run and (Path(run) / "detector.json").is_file():
            log(f"{b}: also timing torch eager from its recorded run folder {run} (--no-torch skips it)")
            found[b] = Path(run)
        elif run:
            log(f"{b}: no torch eager timing: its run folder {run} is not here (give one with --torch-run)")
    return found


# --------------------------------------------------------------------------------------------- compare


def load_report(path) -> dict:
    """Read and validate an adrt bench report (format ``adrt-bench``, version 1)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchReportError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchReportError(f"{path}: not a JSON file ({e}); expected an `adrt bench --out` report") from None
    if not isinstance(data, dict):
        raise BenchReportError(f"{path}: not an adrt bench report (a JSON {type(data).__name__}, expected an object "
                               f"with \"format\": \"{FORMAT}\")")
    fmt = data.get("format")
    if fmt is None and "results" in data:
        raise BenchReportError(f"{path}: a report from an adrt bench older than format version {FORMAT_VERSION} "
                               f"(no \"format\" key); re-run `adrt bench` to make one to compare with")
    if fmt != FORMAT:
        raise BenchReportError(f"{path}: not an adrt bench report (format {fmt!r}, expected {FORMAT!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise BenchReportError(f"{path}: adrt bench report format version {data.get('format_version')!r} (written "
                               f"by adrt {data.get('adrt_version', '?')}); this adrt reads version {FORMAT_VERSION}")
    if not isinstance(data.get("results"), list):
        raise BenchReportError(f"{path}: adrt bench report without a \"results\" list")
    return data


def compare(new: dict, old: dict, threshold: float = 0.10, against: str | None = None) -> dict:
    """Ratios new/old per configuration (matched by bundle name, backend, precision and threads).

    A row is a regression when the mean batch-1 latency is more than ``threshold`` slower or the
    throughput more than ``threshold`` lower.
    """
    olds = {}
    for e in old["results"]:
        if e.get("status", "ok") == "ok" and "latency_ms" in e and "key" in e:
            olds.setdefault(e["key"], e)
    rows, seen = [], set()
    for e in new["results"]:
        if e.get("status") != "ok":
            continue
        o = olds.get(e["key"])
        if o is None:
            continue
        seen.add(e["key"])
        lat, olat = e["latency_ms"], o["latency_ms"]
        tp = e["throughput"]["images_per_s"] / o["throughput"]["images_per_s"]
        row = {"key": e["key"], "method": e["method"], "backend": e["backend"], "precision": e.get("precision", "fp32"),
               "threads": e["threads"],
               "bundle_name": e["bundle_name"], "old_mean_ms": olat["mean"], "new_mean_ms": lat["mean"],
               "mean_ratio": lat["mean"] / olat["mean"], "p50_ratio": lat["p50"] / olat["p50"],
               "p99_ratio": lat["p99"] / olat["p99"], "throughput_ratio": tp}
        row["regression"] = bool(row["mean_ratio"] > 1 + threshold or tp < 1 / (1 + threshold))
        rows.append(row)
    new_keys = {e["key"] for e in new["results"] if e.get("status") == "ok"}
    om, nm = old.get("machine", {}), new.get("machine", {})
    return {"against": against, "against_created": old.get("created"), "threshold": threshold, "rows": rows,
            "regressions": sum(r["regression"] for r in rows),
            "new_only": sorted(new_keys - seen), "old_only": sorted(set(olds) - new_keys),
            "same_machine": (om.get("cpu"), om.get("cpus"), om.get("platform")) ==
                            (nm.get("cpu"), nm.get("cpus"), nm.get("platform")),
            "same_protocol": old.get("settings", {}).get("protocol") == new.get("settings", {}).get("protocol")}


# --------------------------------------------------------------------------------------------- output


def _f(v, fmt: str = ".1f", none: str = "-") -> str:
    return none if v is None else format(v, fmt)


def _be(e: dict) -> str:
    """Backend as shown in tables: with the precision when it is not fp32."""
    p = e.get("precision", "fp32")
    return e["backend"] if p == "fp32" else f"{e['backend']} · {p}"


def _threads(t) -> str:
    return str(t) if t else "default"


def to_markdown(report: dict) -> str:
    """The report as Markdown tables: latency, efficiency, in-graph split, GEMM reference, skips, comparison."""
    m, s = report["machine"], report["settings"]
    ok = [e for e in report["results"] if e["status"] == "ok"]
    fh, fw = s["frame"]
    lines = [f"# adrt bench: {m.get('cpu', m.get('machine'))}, {m['cpus']} CPUs, ONNX Runtime {m['onnxruntime']} "
             f"({report.get('created', '')})", "",
             f"Batch 1, host uint8 image in → anomaly map and score on the host; {s['warmup']} warm-up runs, then "
             f"{s['runs']} timed runs per configuration in {s['rounds']} interleaved rounds. Host prep = "
             f"`Session.prepare` of a {fh}×{fw} frame (outside the graph; cast, normalisation, upsampling, blur and "
             f"calibration are inside it). Throughput at batch {s['batch']}, timed after all batch-1 runs (a "
             f"larger batch changes what batch 1 costs afterwards). Peak RSS per configuration (each in its own "
             f"process) after the batch-1 runs; page faults: minor faults per timed batch-1 run.", ""]
    if m.get("loadavg") and m.get("loadavg_end"):
        l0, l1 = m["loadavg"][0], m["loadavg_end"][0]
        busy = " — above the CPU count: other work shared the machine" if max(l0, l1) > (m["cpus"] or 1) else ""
        lines += [f"Load average (1 min): {l0:.1f} at the start, {l1:.1f} at the end, on {m['cpus']} CPUs{busy}.", ""]
    lines += ["| method | backend | threads | bundle | size | mean ms | p50 | p90 | p99 | min | std | host prep ms "
              "| img/s (batch) | peak RSS MiB | page faults | vs torch |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in ok:
        lat, size = e["latency_ms"], e.get("size") or ["?", "?"]
        lines.append(f"| {e['method']} | {_be(e)} | {_threads(e['threads'])} | {e['bundle_name']} | "
                     f"{size[0]}×{size[1]} | {lat['mean']:.2f} | {lat['p50']:.2f} | {lat['p90']:.2f} | "
                     f"{lat['p99']:.2f} | {lat['min']:.2f} | {lat['std']:.2f} | {e['prepare_ms']['mean']:.2f} | "
                     f"{e['throughput']['images_per_s']:.1f} ({e['throughput']['batch']}) | "
                     f"{_f(e.get('peak_rss_mb'))} | {_f((e.get('page_faults_per_run') or {}).get('lat'), '.0f')} | "
                     f"{_f(e.get('speedup_vs_torch'), '.2f')}"
                     f"{'×' if e.get('speedup_vs_torch') else ''} |")
    if s.get("worker_env"):
        lines += ["", "Environment of every configuration's process: "
                  + ", ".join(f"`{k}={v}`" for k, v in s["worker_env"].items()) + "."]
    faulty = [e for e in ok if e["backend"] == "torch-eager"
              and ((e.get("page_faults_per_run") or {}).get("lat") or 0) >= FAULTS_NOTE]
    if faulty:
        worst = max(e["page_faults_per_run"]["lat"] for e in faulty)
        lines += ["", f"Torch eager paid up to {worst:.0f} minor page faults per batch-1 run: glibc's malloc hands its "
                  "large temporaries back to the OS after each forward, as in any batch-1 torch loop with glibc's "
                  "defaults. Its best case on glibc, for comparison: the same bench with "
                  f"`{' '.join(f'{k}={v}' for k, v in TUNED_MALLOC.items())}` in the environment (ONNX Runtime "
                  "is not affected)."]
    if ok:
        lines += ["", "## Model and efficiency", "",
                  "| method | backend | threads | bundle | GFLOPs/img | params M | achieved GFLOP/s | % of GEMM "
                  "| GPU MiB | image AUROC |", "|---|---|---|---|---|---|---|---|---|---|"]
        infos = {b["path"]: b for b in report.get("bundles", [])}
        for e in ok:
            fl = (infos.get(e["bundle"], {}).get("flops") or {})
            params = fl.get("params")
            frac = e.get("gemm_fraction")
            auroc = ", ".join(f"{d} {v:.3f}" for d, v in (e.get("accuracy") or {}).items() if v is not None) or "-"
            gpu = "-"
            if e.get("gpu_mem_mb") is not None:
                gpu = f"{e['gpu_mem_mb']:.0f}"
            elif e.get("torch_cuda_peak_mb") is not None:
                gpu = f"{e['torch_cuda_peak_mb']:.0f} (torch allocator)"
            lines.append(f"| {e['method']} | {_be(e)} | {_threads(e['threads'])} | {e['bundle_name']} | "
                         f"{_f(e.get('gflops_per_image'), '.2f')} | {_f(params / 1e6 if params else None, '.2f')} | "
                         f"{_f(e.get('achieved_gflops'))} | {_f(frac * 100 if frac else None, '.0f')} | {gpu} | "
                         f"{auroc} |")
        reasons = {(b.get("flops") or {}).get("reason") for b in report.get("bundles", [])} - {None}
        for r in sorted(reasons):
            lines.append(f"\nFLOPs not counted: {r}")
    split = [e for e in ok if e.get("graph_ms")]
    if split:
        lines += ["", "## Where a batch-1 run goes (ms, ONNX Runtime CPU node profiler)", "",
                  "| method | backend | threads | bundle | host prep (outside) | host call | ORT overhead | "
                  "pre in graph | model | post in graph |", "|---|---|---|---|---|---|---|---|---|---|"]
        for e in split:
            g = e["graph_ms"]
            lines.append(f"| {e['method']} | {_be(e)} | {_threads(e['threads'])} | {e['bundle_name']} | "
                         f"{e['prepare_ms']['mean']:.2f} | {g['host']:.2f} | {g['ort_overhead']:.2f} | "
                         f"{g['pre']:.2f} | "
                         f"{g['model']:.2f} | {g['post']:.2f} |")
        lines += ["", f"Split rule: {GRAPH_SPLIT_RULE}."]
    if report.get("gemm"):
        parts = [f"threads {k}: {_f(v.get('gflops'))} GFLOP/s"
                 for k, v in report["gemm"].items()]
        lines += ["", f"GEMM reference (numpy float32 1024×1024 with {m.get('blas') or 'its BLAS'}, best of the "
                  f"repeats before and after the rounds): "
                  + "; ".join(parts) + "."]
        for k, v in report["gemm"].items():
            d = v.get("drift")
            if d is not None and abs(d) > GEMM_DRIFT_WARN:
                lines += ["", f"**The machine's speed drifted during this run**: the GEMM at {k} thread(s) ran at "
                          f"{_f(v.get('gflops_start'))} GFLOP/s before the rounds and {_f(v.get('gflops_end'))} after "
                          f"({d:+.0%}). Compare the ratios measured within this run, not its absolute times with "
                          f"another run's."]
    bad = [e for e in report["results"] if e["status"] != "ok"]
    if bad:
        lines += ["", "## Skipped or failed", ""]
        lines += [f"- {e['name']} ({e['bundle_name']}, threads {_threads(e['threads'])}): {e['status']}: {e['reason']}"
                  for e in bad]
    if report.get("compare"):
        lines += ["", compare_markdown(report["compare"])]
    return "\n".join(lines)


def compare_markdown(cmp: dict) -> str:
    thr = cmp["threshold"] * 100
    lines = [f"## Compared with {cmp.get('against') or 'an earlier run'} ({cmp.get('against_created') or '?'})", "",
             f"Ratios new/old; a regression is a mean latency more than {thr:.0f} % slower or a throughput more than "
             f"{thr:.0f} % lower.", ""]
    if not cmp.get("same_machine", True):
        lines += ["**The earlier report is from another machine or platform.**", ""]
    if not cmp.get("same_protocol", True):
        lines += ["**The earlier report was timed under another protocol** (see `settings.protocol` in each): "
                  "its figures are not like for like.", ""]
    lines += ["| method | backend | threads | bundle | old mean ms | new mean ms | mean | p50 | p99 | throughput | |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in cmp["rows"]:
        lines.append(f"| {r['method']} | {_be(r)} | {_threads(r['threads'])} | {r['bundle_name']} | "
                     f"{r['old_mean_ms']:.2f} | {r['new_mean_ms']:.2f} | {r['mean_ratio']:.2f}× | "
                     f"{r['p50_ratio']:.2f}× | {r['p99_ratio']:.2f}× | {r['throughput_ratio']:.2f}× | "
                     f"{'**REGRESSION**' if r['regression'] else 'ok'} |")
    if cmp["new_only"]:
        lines.append(f"\nOnly in this run: {', '.join(cmp['new_only'])}")
    if cmp["old_only"]:
        lines.append(f"\nOnly in the earlier run: {', '.join(cmp['old_only'])}")
    lines.append(f"\n{cmp['regressions']} regression(s).")
    return "\n".join(lines)


def write_report(report: dict, out) -> list[Path]:
    """Write ``out`` with suffixes .json, .md and .html (any suffix of ``out`` is replaced)."""
    from adrt.runtime.report_html import to_html

    from adrt.outputs import write_bytes_atomic

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".json"), out.with_suffix(".md"), out.with_suffix(".html")]
    # Each file whole or not at all (a full disk leaves the previous report, not half of one).
    write_bytes_atomic(paths[0], json.dumps(report, indent=1))
    write_bytes_atomic(paths[1], to_markdown(report) + "\n")
    write_bytes_atomic(paths[2], to_html(report))
    return paths
