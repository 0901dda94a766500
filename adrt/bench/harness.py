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
(:mod:`adrt.bench.flops`), and achieved FLOP/s against numpy's float32 GEMM rate measured in
the same run at the same thread count.

The report is a JSON object (``"format": "adrt-bench"``, ``"format_version": 1``) with Markdown
(:mod:`adrt.bench.report_md`) and HTML (:mod:`adrt.bench.report_html`) views; :func:`adrt.bench.report.compare`
sets it against an earlier report.

Layout of :mod:`adrt.bench`: :mod:`~adrt.bench.plan` (what to run: configurations, ``--torch-run`` pairing),
this module (the interleaved rounds over one worker process per configuration), :mod:`~adrt.bench.worker`
(the process itself) with :mod:`~adrt.bench.torch_eager` (the one place that loads a training run),
:mod:`~adrt.bench.machine` (CPU/GPU facts, the GEMM reference), :mod:`~adrt.bench.flops`, and the report
modules, which never import the harness.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from adrt._version import __version__
from adrt.bench.flops import count
from adrt.bench.machine import gemm_drift, gpu_memory_mb, machine_info, measure_gemm
from adrt.bench.plan import (BLAS_THREAD_VARS, GPU_BACKENDS, GRAPH_SPLIT_RULE, PROTOCOL, TORCH, TORCH_BACKENDS,
                             TORCH_CUDA, Config, bundle_name, log_stderr, split_runs)
from adrt.bench.report import FORMAT, FORMAT_VERSION
from adrt.errors import AdrtError, BackendError
from adrt.runtime.bundle import open_bundle


def stats_ms(t) -> dict:
    """Summary of durations ``t`` in seconds, in milliseconds."""
    ms = np.asarray(t, dtype=float) * 1e3
    q25, q75 = np.percentile(ms, [25, 75])
    return {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "min": float(ms.min()), "max": float(ms.max()),
            "std": float(ms.std()), "iqr": float(q75 - q25), "runs": int(len(ms))}


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
        self.proc = subprocess.Popen([sys.executable, "-m", "adrt.bench.worker"], stdin=subprocess.PIPE,
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


def bundle_info(path: Path) -> dict:
    """Verify a bundle and summarise it: method, size, model size, FLOPs/parameters, recorded metrics."""
    info: dict = {"path": str(path), "name": bundle_name(path)}
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


def bench_many(bundles: Sequence, backends: Sequence[str] = ("ort-cpu",), threads: Sequence[int | None] = (None,),
               torch_runs: dict | None = None, runs: int = 50, warmup: int = 5, rounds: int = 5, batch: int = 8,
               frame: tuple[int, int] = (480, 640), profile_runs: int = 10, gemm: bool = True,
               torch_devices: Sequence[str] = ("cpu",), precisions: Sequence[str] = ("fp32",),
               log: Callable[[str], None] | None = log_stderr, worker_env: dict | None = None) -> dict:
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
            log(f"load {entries[c]['name']} ({bundle_name(c.bundle)}, threads {c.threads or 'default'})")
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
    key = f"{bundle_name(c.bundle)}|{c.backend}|{c.precision}|{_tkey(c.threads)}"
    head = {"key": key, "name": f"{method} {be}", "bundle": str(c.bundle), "bundle_name": bundle_name(c.bundle),
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
