"""`adrt build-engine`: a TensorRT plan for this GPU, built from a bundle's ONNX and stored in it.

Build on the device that will run it (a plan is tied to one GPU model and one TensorRT build); the
runtime refuses a plan made elsewhere. Torch-free and onnx-free: a runtime install plus TensorRT
and pycuda (or cuda-python) is enough, as on a Jetson.

Precisions and the graph each one is built from:

==========  ====================  =============================================================
precision   graph                 TensorRT 8.6 / 10 / 11
==========  ====================  =============================================================
fp32        model.onnx            TF32 off, so fp32 means fp32 (parity with ONNX Runtime CPU)
fp16        model.fp16.onnx       8.6: FP16 flag, fp32 layers pinned; 10/11: strongly typed
int8        model.int8.onnx       explicit quantisation (QDQ); 8.6: INT8 flag; 10/11: strongly
                                  typed. The QDQ graph must be the symmetric ``tensorrt`` target.
==========  ====================  =============================================================

The scoring tail stays fp32 in every precision (see adrt.export.quantize for why).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from adrt._version import __version__
from adrt.errors import BackendError, BundleError, InputError
from adrt.outputs import write_bytes_atomic
from adrt.runtime.bundle import open_bundle, write_manifest
from adrt.runtime.tensorrt import (INPUT, TensorRTBackend, import_tensorrt, make_logger, open_cuda, plan_tag,
                                   trt_major)

PRECISIONS = ("fp32", "fp16", "int8")
MODEL_FOR = {"fp32": "fp32", "fp16": "fp16", "int8": "int8"}   # precision -> bundle model variant
# Lowest compute capability with fast arithmetic of each precision (used where TensorRT has no
# platform_has_fast_* query any more, i.e. 11.x).
MIN_CAPABILITY = {"fp16": (5, 3), "int8": (6, 1)}
# Engine vs ONNX Runtime CPU on the same graph variant, checked after every build. Raw outputs
# relative to their scale; fp16/int8 kernels differ from ORT's float emulation of them.
PARITY_RTOL = {"fp32": 1e-3, "fp16": 2e-2, "int8": 5e-2}


@dataclass(frozen=True)
class BatchProfile:
    """TensorRT optimisation profile for the batch dimension: min ≤ opt ≤ max images."""

    min: int = 1
    opt: int = 1
    max: int = 8

    def __post_init__(self):
        if not 1 <= self.min <= self.opt <= self.max:
            raise InputError(f"batch profile must satisfy 1 ≤ min ≤ opt ≤ max, got min={self.min} "
                             f"opt={self.opt} max={self.max}")

    def shapes(self, height: int, width: int, channels: int = 3) -> tuple[tuple, tuple, tuple]:
        return tuple((b, height, width, channels) for b in (self.min, self.opt, self.max))


def default_timing_cache(gpu: str, capability: tuple[int, int], trt_version: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "adrt"
    return base / f"timing-{plan_tag(gpu, capability, trt_version, 'any')}.cache"


def check_precision_supported(trt, builder, precision: str, capability: tuple[int, int], gpu: str) -> None:
    if precision == "fp32":
        return
    query = {"fp16": "platform_has_fast_fp16", "int8": "platform_has_fast_int8"}[precision]
    if hasattr(builder, query):            # 8.x, 10.x
        ok = bool(getattr(builder, query))
    else:                                  # 11.x removed the queries
        ok = tuple(capability) >= MIN_CAPABILITY[precision]
    if not ok:
        raise BackendError(f"{gpu} (compute capability {capability[0]}.{capability[1]}) has no fast {precision} "
                           f"support in TensorRT {trt.__version__}; build fp32 or fp16 instead")


def _network_flags(trt, major: int) -> int:
    flags = trt.NetworkDefinitionCreationFlag
    if major < 10:
        return 1 << int(flags.EXPLICIT_BATCH)
    # Strong typing: the graph's own types decide each layer's precision (fp16 region and QDQ).
    # 11.x always types strongly; the flag may be gone there.
    if hasattr(flags, "STRONGLY_TYPED"):
        return 1 << int(flags.STRONGLY_TYPED)
    return 0


def _pin_fp32_layers(trt, network) -> int:
    """TensorRT 8.x, fp16: keep the layers whose outputs the graph types float32 in float32."""
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if outs and all(o.dtype == trt.DataType.FLOAT for o in outs):
            layer.precision = trt.DataType.FLOAT
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.DataType.FLOAT)
            pinned += 1
    return pinned


def build_engine(onnx_path: str | os.PathLike, precision: str, profile: BatchProfile, height: int, width: int,
                 channels: int = 3, workspace_mib: int = 1024, timing_cache: Path | None = None,
                 device_info: tuple[str, tuple[int, int]] | None = None, trt=None) -> tuple[bytes, dict]:
    """Build a serialised TensorRT plan from ``onnx_path``. Returns (plan bytes, build facts).

    ``timing_cache``: read if it exists (a cache from another device or version is ignored by
    TensorRT's check, then rebuilt) and written back after the build.
    """
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; available: {', '.join(PRECISIONS)}")
    if workspace_mib < 1:
        raise InputError(f"workspace must be at least 1 MiB, got {workspace_mib}")
    trt = trt or import_tensorrt()
    major = trt_major(trt)
    gpu, cc = device_info if device_info is not None else ("unknown GPU", (0, 0))
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    if builder is None:
        raise BackendError(f"TensorRT could not create a builder: {logger.errors()}")
    check_precision_supported(trt, builder, precision, cc, gpu)
    network = builder.create_network(_network_flags(trt, major))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or logger.errors()
        raise BackendError(f"TensorRT {trt.__version__} could not parse {Path(onnx_path).name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    pinned = 0
    if major < 10:
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            pinned = _pin_fp32_layers(trt, network)
        elif precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
    opt_profile = builder.create_optimization_profile()
    lo, opt, hi = profile.shapes(height, width, channels)
    opt_profile.set_shape(INPUT, lo, opt, hi)
    if config.add_optimization_profile(opt_profile) < 0:
        raise BackendError(f"TensorRT refused the optimisation profile min {lo} opt {opt} max {hi}")
    cache_state = "off"
    if timing_cache is not None:
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        if not config.set_timing_cache(cache, False):
            # A cache from another device or TensorRT version: start a fresh one.
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, False)
            cache_state = "mismatched, rebuilt"
        else:
            cache_state = "reused" if blob else "new"
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        raise BackendError(f"TensorRT {trt.__version__} failed to build the {precision} engine: {logger.errors()}")
    plan = bytes(serialized)
    if timing_cache is not None:
        _write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    facts = {"tensorrt": str(trt.__version__), "api": "bindings (8.x)" if major < 10 else "tensor names (10.x+)",
             "network": "explicit batch" if major < 10 else "strongly typed",
             "profile": {"input": INPUT, "min": list(lo), "opt": list(opt), "max": list(hi)},
             "workspace_mib": int(workspace_mib), "timing_cache": cache_state, "build_seconds": round(seconds, 2)}
    if pinned:
        facts["fp32_pinned_layers"] = pinned
    return plan, facts


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)


def engine_parity(backend, onnx_path: Path, images: np.ndarray) -> dict:
    """Max differences between the engine and ONNX Runtime CPU on the same graph."""
    import onnxruntime as ort

    ref = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in ref.get_outputs()], ref.run(None, {INPUT: images})))
    got = backend.run({INPUT: images})
    out = {}
    for name, r in want.items():
        err = float(np.abs(got[name] - r).max())
        out[name] = {"max_abs": err, "max_rel": err / (float(np.abs(r).max()) or 1.0)}
    return out


def build_into_bundle(bundle: str | os.PathLike, precision: str = "fp16", profile: BatchProfile = BatchProfile(),
                      workspace_mib: int = 1024, timing_cache: Path | None | bool = True, device: int = 0,
                      check: bool = True, trt=None, cuda=None, log=lambda m: None) -> dict:
    """Build a plan for this GPU from ``bundle``'s model of ``precision`` and store it in the bundle
    (``engines/<gpu>-sm<cc>-trt<version>-<precision>.plan``, recorded in the manifest with its
    sha256). Replaces a plan with the same tag. Nothing is left in the bundle if any step fails.

    ``timing_cache``: True for the default per-device cache file, a path, or None/False for none.
    ``check``: run the new engine on sample images and compare with ONNX Runtime CPU.
    """
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; available: {', '.join(PRECISIONS)}")
    b = open_bundle(bundle)
    if b.is_zip:
        b.cleanup()
        raise BundleError(f"{bundle}: build-engine stores the plan in the bundle and needs a bundle folder, not a .zip")
    variant = MODEL_FOR[precision]
    models = b.manifest["models"]
    if variant not in models:
        hint = ("adrt export RUN --out BUNDLE --precision int8 --calib DIR" if variant == "int8"
                else f"adrt export RUN --out BUNDLE --precision {variant}")
        raise BundleError(f"{bundle}: a {precision} engine is built from the bundle's {variant} model, which it lacks "
                          f"(it has: {', '.join(models)}); make one with: {hint}")
    entry = models[variant]
    if precision == "int8" and entry.get("int8_target", "tensorrt") != "tensorrt":
        raise BundleError(f"{bundle}: its int8 model was quantised for {entry.get('int8_target')!r} (uint8 asymmetric "
                          f"activations), which TensorRT does not take; re-export with --int8-target tensorrt")
    onnx_path = b.model_path(variant)
    spec = b.input
    h, w, c = int(spec["height"]), int(spec["width"]), int(spec["channels"])
    trt = trt or import_tensorrt()
    cuda = cuda or open_cuda(device)
    try:
        gpu, cc = cuda.device_info()
        version = str(trt.__version__)
        if timing_cache is True:
            timing_cache = default_timing_cache(gpu, cc, version)
        cache = Path(timing_cache) if timing_cache else None
        log(f"building {precision} engine for {gpu} (sm {cc[0]}{cc[1]}), TensorRT {version}, batch "
            f"{profile.min}/{profile.opt}/{profile.max} …")
        plan, facts = build_engine(onnx_path, precision, profile, h, w, c, workspace_mib, cache, (gpu, cc), trt)
        tag = plan_tag(gpu, cc, version, precision)
        rel = f"engines/{tag}.plan"
        parity = None
        if check:
            backend = TensorRTBackend(plan, device, cuda=_Borrowed(cuda), trt=trt)
            try:
                rng = np.random.default_rng(0)
                n = min(max(profile.opt, 2), profile.max)
                images = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
                parity = engine_parity(backend, onnx_path, images)
            finally:
                backend.close()
            worst = max(v["max_rel"] for k, v in parity.items() if k.startswith("raw"))
            if worst > PARITY_RTOL[precision]:
                log(f"warning: the engine's raw outputs differ from ONNX Runtime CPU by {worst:.2%} of their range "
                    f"(tolerance {PARITY_RTOL[precision]:.1%})")
        (b.root / "engines").mkdir(exist_ok=True)
        final = b.root / rel
        try:
            write_bytes_atomic(final, plan)
            record = {"file": rel, "precision": precision, "gpu": gpu, "compute_capability": f"{cc[0]}.{cc[1]}",
                      "onnx": entry["file"], "cuda_binding": getattr(cuda, "binding", "?"), "adrt_version": __version__,
                      "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **facts}
            if parity is not None:
                record["parity_vs_ort_cpu"] = parity
                record["parity_rtol"] = PARITY_RTOL[precision]
            manifest = b.manifest
            manifest.setdefault("engines", {})[tag] = record
            manifest["files"][rel] = {}
            write_manifest(b.root, manifest)
        except BaseException:
            final.unlink(missing_ok=True)
            raise
    finally:
        cuda.close()
    return record


class _Borrowed:
    """The builder's CUDA handle lent to the parity-check backend. Closing stays with the builder,
    which owns the CUDA context and frees every buffer, the backend's too, when it is done."""

    def __init__(self, cuda):
        self._cuda = cuda

    def __getattr__(self, name):
        return getattr(self._cuda, name)

    def close(self) -> None:
        pass


@click.command("build-engine")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp16", show_default=True,
              help="fp16 needs the bundle's fp16 model, int8 its int8 (QDQ) model (adrt export --precision).")
@click.option("--min-batch", type=click.IntRange(min=1), default=1, show_default=True, help="Profile: smallest batch.")
@click.option("--opt-batch", type=click.IntRange(min=1), default=1, show_default=True, help="Profile: batch tuned for.")
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True, help="Profile: largest batch.")
@click.option("--workspace-mib", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Builder workspace limit.")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="Timing cache file to reuse and update (default: one per GPU and TensorRT version under ~/.cache/adrt).")
@click.option("--no-timing-cache", is_flag=True, help="Build without a timing cache.")
@click.option("--device", type=click.IntRange(min=0), default=0, show_default=True, help="CUDA device index.")
@click.option("--no-check", is_flag=True, help="Skip the parity check of the new engine against ONNX Runtime CPU.")
def build_engine_cmd(bundle, precision, min_batch, opt_batch, max_batch, workspace_mib, timing_cache, no_timing_cache,
                     device, no_check):
    """Build a TensorRT engine for this GPU from BUNDLE's ONNX and store it in BUNDLE."""
    profile = BatchProfile(min_batch, opt_batch, max_batch)
    cache = None if no_timing_cache else (timing_cache or True)
    record = build_into_bundle(bundle, precision, profile, workspace_mib, cache, device, not no_check,
                               log=lambda m: click.echo(m, err=True))
    click.echo(f"engine: {Path(bundle) / record['file']}  ({record['gpu']}, TensorRT {record['tensorrt']}, "
               f"{record['precision']}, built in {record['build_seconds']} s, timing cache {record['timing_cache']})")
    if "parity_vs_ort_cpu" in record:
        click.echo("parity vs ONNX Runtime CPU: " + json.dumps({k: round(v["max_rel"], 6)
                                                                for k, v in record["parity_vs_ort_cpu"].items()}))
