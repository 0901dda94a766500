"""What a benchmark run times: its configurations (bundle × backend × precision × threads, torch eager
beside), how timed runs split into rounds, and the ``--frame``/``--torch-run`` inputs of `adrt bench`."""
from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence


from adrt.errors import InputError
from adrt.runtime.bundle import open_bundle


TORCH = "torch-eager"           # torch eager on the CPU
TORCH_CUDA = "torch-cuda"       # torch eager on a CUDA device
TORCH_BACKENDS = {"cpu": TORCH, "cuda": TORCH_CUDA}
GPU_BACKENDS = ("ort-cuda", "ort-trt", "tensorrt", TORCH_CUDA)
BLAS_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
# How bench's in-graph profile splits a batch-1 run (ORT CPU), recorded in every report's settings.
GRAPH_SPLIT_RULE = (
    "ONNX Runtime node profiler, execution order: 'pre' = the leading cast/scale/normalise/transpose nodes "
    "(shape arithmetic among them included); 'post' = from the first node that outputs a one-channel map at the "
    "input's H×W (upsampling) to the end (blur, calibration, and any scoring nodes scheduled after it); 'model' = "
    "the nodes in between; 'ort_overhead' = model_run time not spent in nodes; 'host' = wall time of the ONNX "
    "Runtime call outside model_run (binding, input and output copies)")
PROTOCOL = ("batch 1, host uint8 image in -> anomaly map and score back on the host; untimed warm-up, then timed "
            "runs in interleaved rounds (round-robin over all configurations, order rotated each round, one untimed "
            "run at the start of each round); throughput = batch / median batch time, timed in a second set of rounds "
            "after all batch-1 rounds, so no larger batch has run in a process while its batch 1 is timed; each "
            "configuration in its own process")


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


def split_runs(n: int, rounds: int) -> list[int]:
    """``n`` runs over at most ``rounds`` rounds, as evenly as possible (sums to ``n``)."""
    r = max(1, min(rounds, n))
    return [n // r + (1 if i < n % r else 0) for i in range(r)]


def log_stderr(msg: str) -> None:
    """The default progress log of a benchmark run."""
    print(msg, file=sys.stderr, flush=True)


def bundle_name(path: Path) -> str:
    """A bundle's short name: its folder name, or the zip file's stem."""
    p = Path(path)
    return p.stem if p.suffix.lower() == ".zip" else p.name


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
        return [b for b in bundles if key in (str(b), bundle_name(b)) or Path(key).resolve() == b.resolve()]

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


def recorded_torch_runs(bundles: Sequence, paired: dict, log: Callable[[str], None] | None = log_stderr) -> dict:
    """Run folders recorded by ``adrt export`` (manifest ``training.run_folder``) for the bundles that
    ``paired`` (from ``--torch-run``) leaves out, where torch is installed and the folder still holds the
    run: ``adrt bench`` then times torch eager in the same run without being told. A bundle whose run is
    gone (another machine) is noted and benchmarked without torch."""
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
