"""Real-GPU check of the CUDA memory path that the native TensorRT backend uses without pycuda.

Exercises ``adrt.runtime.cuda._CudaPython`` (NVIDIA's cuda-python runtime bindings) on a real
device: properties, stream, pinned host buffers, device buffers, async copies both ways, sync and
release — the calls whose conventions the unit tests can only check against fakes. TensorRT
itself is not needed. Writes JSON to the path given (default benchmarks/results/cuda_bindings.json).

    python benchmarks/cuda_bindings_check.py [OUT.json]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def main(out: str | None = None) -> int:
    from adrt.runtime.cuda import _CudaPython, open_cuda

    report: dict = {}
    cuda = _CudaPython(0)
    name, cc = cuda.device_info()
    report["gpu"], report["compute_capability"] = name, list(cc)
    stream, handle = cuda.stream()
    report["stream_handle_is_int"] = isinstance(handle, int)
    rng = np.random.default_rng(0)
    checks = []
    for shape, dtype in [((1, 256, 256, 3), np.uint8), ((8, 256, 256), np.float32), ((7,), np.float32)]:
        src = cuda.pinned(shape, dtype)
        dst = cuda.pinned(shape, dtype)
        src[...] = rng.integers(0, 255, shape).astype(dtype)
        dst[...] = 0
        dev = cuda.device(src.nbytes)
        cuda.to_device(dev, src, stream)
        cuda.to_host(dst, dev, stream)
        cuda.synchronize(stream)
        checks.append({"shape": list(shape), "dtype": np.dtype(dtype).name, "bytes": int(src.nbytes),
                       "roundtrip_equal": bool(np.array_equal(src, dst))})
    # Copy rate of the float32 map buffer (the size of a batch-8 anomaly map), pinned, async + sync.
    big = cuda.pinned((8, 256, 256), np.float32)
    dev = cuda.device(big.nbytes)
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        cuda.to_device(dev, big, stream)
        cuda.to_host(big, dev, stream)
        cuda.synchronize(stream)
        times.append(time.perf_counter() - t0)
    report["roundtrip_2MiB_ms_median"] = float(np.median(times) * 1e3)
    report["checks"] = checks
    cuda.close()
    report["closed_cleanly"] = True
    chosen = open_cuda(0)
    report["open_cuda_picks"] = chosen.binding
    chosen.close()
    report["ok"] = all(c["roundtrip_equal"] for c in checks) and report["stream_handle_is_int"]
    text = json.dumps(report, indent=2)
    print(text)
    path = Path(out) if out else Path(__file__).resolve().parent / "results" / "cuda_bindings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else None))
