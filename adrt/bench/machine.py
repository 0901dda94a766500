"""The machine a benchmark ran on (CPU, memory, BLAS, GPUs) and the numpy GEMM rate that achieved FLOP/s
are set against."""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from adrt._version import __version__
from adrt.bench.plan import BLAS_THREAD_VARS


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
    p = subprocess.run([sys.executable, "-m", "adrt.bench.worker", "--gemm", str(n), str(seconds)],
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return {"gflops": None, "reason": f"GEMM process failed: {p.stderr.strip()[-300:]}"}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["threads"] = threads
    return out
