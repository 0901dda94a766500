"""One benchmark configuration in its own process, driven by :mod:`adrt.bench.harness` over a pipe.

A fresh process per configuration makes its peak RSS its own (a process-wide peak would carry the
largest model into every later row) and keeps torch out of the parent. The parent sends one JSON
object per line on stdin and reads one JSON object per line back:

    {"cmd": "init", "kind": "ort"|"torch", "bundle", "backend", "threads", "batch", "frame", "warmup", "run"}
    {"cmd": "round", "n": batch-1 runs, "nb": batch runs, "np": prepare runs}   -> seconds per run, and
                                                                                   minor page faults per run
    {"cmd": "stats"}                                                            -> peak RSS
    {"cmd": "profile", "runs": k}                                               -> in-graph split (ORT CPU)
    {"cmd": "exit"}

The bundle target lives here; torch eager (``"kind": "torch"``) is :mod:`adrt.bench.torch_eager`.

``python -m adrt.bench.worker --gemm N SECONDS`` prints the float32 N×N matmul rate of
numpy under the BLAS thread settings of its environment.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time

import numpy as np

from adrt.bench import torch_eager
from adrt.bench.torch_eager import Unusable
from adrt.errors import AdrtError

# Leading graph ops that only cast, scale, normalise or re-lay-out the uint8 input.
PRE_OPS = frozenset({"Cast", "Transpose", "Mul", "Sub", "Div", "Add", "Reshape", "Unsqueeze", "Identity"})


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this process image. Not
    ``ru_maxrss``: Linux carries that across fork and exec, so a worker started by a large parent
    (one that had imported torch, say) would report the parent's size. Elsewhere ``ru_maxrss``
    (macOS reports bytes)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def images(h: int, w: int, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _minor_faults() -> int:
    """Minor page faults of this process so far: first touches of freshly mapped memory. An
    allocator that returns large buffers to the OS after every run pays them again on the next."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


class Target:
    """What one configuration times: ``run1``/``runb`` (batch 1 / batch B, host in → host out) and ``prep``."""

    def __init__(self, msg: dict):
        self.kind = msg["kind"]
        self.batch = int(msg["batch"])
        self.info: dict = {"base_rss_mb": round(peak_rss_mb(), 1)}
        self.largest_batch = 1   # the largest batch this process has run so far
        t0 = time.perf_counter()
        if self.kind == "ort":
            from adrt.runtime.session import load

            self.session = load(msg["bundle"], backend=msg["backend"], threads=msg["threads"],
                                precision=msg.get("precision") or "fp32")
            h, w = self.session.height, self.session.width
            self.info["method"] = self.session.method
            ort_session = getattr(self.session.backend, "session", None)   # None for native TensorRT
            if ort_session is not None:
                self.info.update(providers=ort_session.get_providers(),
                                 intra_op_threads=ort_session.get_session_options().intra_op_num_threads or None)
            self._run = self.session.run
            self._prepare = self.session.prepare
        elif self.kind == "torch":
            self._run, self._prepare, (h, w), cuda_peak = torch_eager.load(msg, self.info)
            if cuda_peak is not None:
                self._cuda_peak = cuda_peak
        else:
            raise ValueError(f"unknown kind {self.kind!r}")
        self.info["load_s"] = round(time.perf_counter() - t0, 3)
        self.size = (h, w)
        self.info["size"] = [h, w]
        fh, fw = msg["frame"]
        self.x1 = images(h, w, 1)
        self.xb = images(h, w, self.batch, seed=1)
        self.frame = images(fh, fw, 1, seed=2)[0]
        # No batch-B run here: the parent times batch 1 before any larger batch has run in this
        # process (see bench.PROTOCOL), and warms the batch up itself when it gets to throughput.
        for _ in range(int(msg["warmup"])):
            self.run1()
        self.prep()

    def run1(self):
        return self._run(self.x1)

    def runb(self):
        self.largest_batch = max(self.largest_batch, len(self.xb))
        return self._run(self.xb)

    def prep(self):
        return self._prepare(self.frame)

    def round(self, n: int, nb: int, np_: int) -> dict:
        out = {"largest_batch_before": self.largest_batch}
        for key, fn, k in (("lat", self.run1, n), ("batch", self.runb, nb), ("prep", self.prep, np_)):
            if k:
                fn()   # one untimed run: the configurations before this one have used the caches
            f0 = _minor_faults()
            out[key] = _timed(fn, k)
            out[key + "_faults"] = (_minor_faults() - f0) / k if k else None
        return out

    def profile(self, runs: int) -> dict:
        """Split batch-1 time into host / ORT overhead / in-graph pre, model and post (ORT CPU only)."""
        ort_session = getattr(self.session.backend, "session", None) if self.kind == "ort" else None
        if ort_session is None or ort_session.get_providers()[0] != "CPUExecutionProvider":
            return {"graph_ms": None, "graph_reason": "the in-graph split uses ONNX Runtime's CPU node profiler; "
                                                       "on GPU providers and in torch it does not time kernels"}
        import onnxruntime as ort

        src = ort_session
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so = src.get_session_options()
        if so.intra_op_num_threads:
            opts.intra_op_num_threads = so.intra_op_num_threads
            opts.inter_op_num_threads = 1
        with tempfile.TemporaryDirectory() as tmp:
            opts.enable_profiling = True
            opts.profile_file_prefix = os.path.join(tmp, "prof")
            sess = ort.InferenceSession(str(self.session.bundle.model_path(self.session.precision)), sess_options=opts,
                                        providers=["CPUExecutionProvider"])
            feed = {"image": self.x1}
            for _ in range(2):
                sess.run(None, feed)
            walls = []
            for _ in range(runs):
                t0 = time.perf_counter()
                sess.run(None, feed)
                walls.append(time.perf_counter() - t0)
            with open(sess.end_profiling()) as f:
                events = json.load(f)
        return {"graph_ms": split_profile(events, self.size, skip_runs=2, walls=walls), "graph_reason": None}


def split_profile(events: list, size, skip_runs: int, walls: list[float]) -> dict:
    """Mean ms per run of each stage, from an ONNX Runtime profile (see :data:`adrt.bench.plan.GRAPH_SPLIT_RULE`)."""
    h, w = size
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    runs = runs[skip_runs:]
    if not runs:
        raise ValueError("the profile holds no model_run events")
    stages = {"pre": 0.0, "model": 0.0, "post": 0.0}
    in_graph = 0.0
    for r in runs:
        t0, t1 = r["ts"], r["ts"] + r["dur"]
        nodes = sorted((e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
                        and t0 <= e["ts"] <= t1), key=lambda e: e["ts"])
        stage = "pre"
        for e in nodes:
            args = e.get("args", {})
            op = args.get("op_name", "")
            if stage == "pre" and op not in PRE_OPS and not _shape_arithmetic(args.get("output_type_shape")):
                stage = "model"
            if stage == "model" and _is_full_map(args.get("output_type_shape"), h, w):
                stage = "post"
            stages[stage] += e["dur"]
        in_graph += r["dur"]
    n = len(runs)
    kernels = sum(stages.values())
    out = {k: v / n / 1e3 for k, v in stages.items()}
    out["ort_overhead"] = max(0.0, (in_graph - kernels) / n / 1e3)
    out["host"] = max(0.0, float(np.mean(walls)) * 1e3 - in_graph / n / 1e3)
    out["runs"] = n
    return out


def _shape_arithmetic(shapes) -> bool:
    """True for nodes computing shapes (integer or boolean outputs only): they do not end the 'pre' stage."""
    dtypes = [k for s in shapes or [] for k in s]
    return bool(dtypes) and all(k in ("int64", "int32", "bool") for k in dtypes)


def _is_full_map(shapes, h: int, w: int) -> bool:
    for s in shapes or []:
        for dims in s.values():
            if len(dims) == 3 and dims[1:] == [h, w]:
                return True
            if len(dims) == 4 and dims[1] == 1 and dims[2:] == [h, w]:
                return True
    return False


def gemm_rate(n: int, seconds: float) -> dict:
    """float32 n×n matmul rate of numpy: best and median GFLOP/s over repeats filling ``seconds``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    for _ in range(2):
        np.matmul(a, b, out=c)
    t = []
    t_end = time.perf_counter() + seconds
    while len(t) < 3 or (time.perf_counter() < t_end and len(t) < 200):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        t.append(time.perf_counter() - t0)
    flop = 2.0 * n ** 3
    return {"n": n, "dtype": "float32", "repeats": len(t), "gflops": flop / min(t) / 1e9,
            "gflops_median": flop / float(np.median(t)) / 1e9}


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--gemm":
        print(json.dumps(gemm_rate(int(sys.argv[2]), float(sys.argv[3]))))
        return 0
    # The protocol owns the real stdout; library prints go to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    target = None
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg.get("cmd")
        try:
            if cmd == "init":
                target = Target(msg)
                reply({"ok": True, "info": target.info})
            elif cmd == "round":
                reply({"ok": True, **target.round(int(msg["n"]), int(msg["nb"]), int(msg["np"]))})
            elif cmd == "stats":
                cuda_peak = getattr(target, "_cuda_peak", None)
                reply({"ok": True, "peak_rss_mb": round(peak_rss_mb(), 1),
                       "torch_cuda_peak_mb": round(cuda_peak(), 1) if cuda_peak else None})
            elif cmd == "profile":
                reply({"ok": True, **target.profile(int(msg.get("runs", 10)))})
            elif cmd == "exit":
                reply({"ok": True})
                return 0
            else:
                reply({"ok": False, "error": f"unknown command {cmd!r}"})
        except Exception as e:  # noqa: BLE001 - every failure goes back to the parent as a reason
            own = isinstance(e, (Unusable, AdrtError))
            reply({"ok": False, "error": str(e) if own else f"{type(e).__name__}: {e}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
