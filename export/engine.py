"""`adrt build-engine`: a TensorRT plan for this GPU, built from a bundle's ONNX and stored in it.

Build on the device that will run it (a plan is tied to one GPU model and one TensorRT build); the
runtime refuses a plan made elsewhere. Torch-free: a runtime install plus TensorRT, pycuda (or
cuda-python) and onnx (the conformance check; the ``tensorrt`` extra) is enough, as on a Jetson.

Precisions and the graph each one is built from:

==========  =========================  ========================================================
precision   graph (TensorRT 10/11;     TensorRT 8.6 / 10 / 11
            8.x: its ``.trt86`` copy)
==========  =========================  ========================================================
fp32        model.onnx                 TF32 off, so fp32 means fp32 (parity with ONNX Runtime CPU)
fp16        model.fp16.onnx            8.6: FP16 flag, fp32 layers pinned; 10/11: strongly typed
int8        model.int8.onnx            explicit quantisation (QDQ); 8.6: INT8 flag; 10/11: strongly
                                       typed. The QDQ graph must be the symmetric ``tensorrt`` target.
==========  =========================  ========================================================

TensorRT 8.x builds from the opset-17 copy (``model*.trt86.onnx``, adrt.export.trt86), made here
if the bundle lacks it. Before parsing, the graph is checked against the installed version's parser
rules (adrt.export.trt_check): a violation is an error naming node, rule and source. After the build
the plan is run on sample images and compared with ONNX Runtime CPU on the same graph
(:func:`engine_parity`): every output's name, shape and dtype, NaN where ONNX Runtime has NaN, and
values within :data:`PARITY_TOLERANCE` — raw outputs relative to their range, calibrated outputs
absolute (fp32 1e-3 / 1e-3; fp16 2e-2 / 2e-2; int8 5e-2 / 5e-2: reduced-precision kernels round
differently from ONNX Runtime's float emulation of the same graph). A plan outside them is not
stored (``keep_failed`` stores it and records the failure in the manifest).

DLA (``dla_core``; Jetson Orin NX/AGX): fp16 or int8 only, a static batch (min = opt = max),
TensorRT 8.x or 10.0–10.7 (NVIDIA: 10.7 was the last 10.x release with DLA; 11.0–11.4.0 have none on
JetPack). Layers DLA cannot run fail the build unless ``gpu_fallback``. The scoring tail stays fp32
in every precision (see adrt.export.quantize for why), so on DLA it runs on the GPU.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adrt._version import __version__
from adrt.errors import BackendError, BundleError, InputError
from adrt.export.dla import DlaOptions, check_dla_request
from adrt.outputs import write_bytes_atomic
from adrt.runtime.bundle import open_bundle, write_manifest
from adrt.runtime.cuda import open_cuda
from adrt.runtime.tensorrt import INPUT, TensorRTBackend, import_tensorrt, make_logger, plan_tag, trt_major

PRECISIONS = ("fp32", "fp16", "int8")
MODEL_FOR = {"fp32": "fp32", "fp16": "fp16", "int8": "int8"}   # precision -> bundle model variant
# Lowest compute capability with fast arithmetic of each precision (used where TensorRT has no
# platform_has_fast_* query any more, i.e. 11.x).
MIN_CAPABILITY = {"fp16": (5, 3), "int8": (6, 1)}
# Engine vs ONNX Runtime CPU on the same graph variant, checked after every build: raw outputs
# (raw_map, raw_score) by max |Δ| relative to their range, calibrated outputs (anomaly_map, score,
# in [0, 1]) by max |Δ|. fp16/int8 kernels round differently from ONNX Runtime's emulation of them.
PARITY_TOLERANCE = {"fp32": {"raw_rtol": 1e-3, "normalised_atol": 1e-3},
                    "fp16": {"raw_rtol": 2e-2, "normalised_atol": 2e-2},
                    "int8": {"raw_rtol": 5e-2, "normalised_atol": 5e-2}}
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
                 device_info: tuple[str, tuple[int, int]] | None = None, trt=None,
                 dla: DlaOptions | None = None) -> tuple[bytes, dict]:
    """Build a serialised TensorRT plan from ``onnx_path``. Returns (plan bytes, build facts).

    ``timing_cache``: read if it exists (a cache from another device or version is ignored by
    TensorRT's check, then rebuilt) and written back after the build. ``dla``: build for a DLA
    core (:func:`check_dla_request` first).
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
    if dla is not None:
        check_dla_request(dla, precision, profile, str(trt.__version__))
        cores = int(getattr(builder, "num_DLA_cores", 0))
        if not dla.core < cores:
            raise BackendError(f"DLA core {dla.core} does not exist: {gpu} has {cores} DLA core(s)"
                               + (" (DLA cores are on Jetson Orin NX/AGX and Xavier)" if not cores else ""))
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
    if dla is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla.core)
        if dla.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    opt_profile = builder.create_optimization_profile()
    lo, opt, hi = profile.shapes(height, width, channels)
    # Every uint8 input of the graph (image, and reference for a change-detection graph) has the
    # same shape and batch.
    for i in range(network.num_inputs):
        opt_profile.set_shape(network.get_input(i).name, lo, opt, hi)
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
    if dla is not None:
        facts.update({"dla_core": int(dla.core), "gpu_fallback": bool(dla.gpu_fallback)})
    return plan, facts


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)


def engine_parity(backend, onnx_path: Path, images: np.ndarray) -> dict:
    """The engine against ONNX Runtime CPU on the same graph, per output: shape and dtype (both
    recorded), non-finite values where ONNX Runtime has them, max |Δ| and max |Δ| / range over the
    rest. An output whose shape, dtype or NaN pattern differs, or that is missing or extra, gets a
    ``problem``."""
    import onnxruntime as ort

    ref = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    from adrt.export.feeds import sample_feeds

    feeds = sample_feeds([i.name for i in ref.get_inputs()], images)
    want = dict(zip([o.name for o in ref.get_outputs()], ref.run(None, feeds)))
    got = backend.run(feeds)
    out = {}
    for name, r in want.items():
        rec = {"shape": list(r.shape), "dtype": str(r.dtype)}
        out[name] = rec
        if name not in got:
            rec["problem"] = "missing from the engine's outputs"
            continue
        g = np.asarray(got[name])
        if g.shape != r.shape or g.dtype != r.dtype:
            rec["problem"] = f"engine gives {g.dtype} {list(g.shape)}, ONNX Runtime {r.dtype} {list(r.shape)}"
            continue
        bad_r, bad_g = ~np.isfinite(r), ~np.isfinite(g)
        if (bad_r != bad_g).any():
            rec["problem"] = (f"{int((bad_r != bad_g).sum())} value(s) finite in one and NaN/Inf in the other "
                              f"(ONNX Runtime {int(bad_r.sum())} non-finite, engine {int(bad_g.sum())})")
        fin = ~bad_r & ~bad_g
        err = float(np.abs(g[fin] - r[fin]).max()) if fin.any() else 0.0
        scale = (float(np.abs(r[fin]).max()) if fin.any() else 0.0) or 1.0
        rec.update({"max_abs": err, "max_rel": err / scale})
    for name in set(got) - set(want):
        out[name] = {"problem": "not an output of the ONNX graph"}
    return out


def parity_failures(report: dict, precision: str) -> list:
    """What breaks :data:`PARITY_TOLERANCE` in an :func:`engine_parity` report, one line each."""
    tol = PARITY_TOLERANCE[precision]
    bad = []
    for name, r in report.items():
        if "problem" in r:
            bad.append(f"{name}: {r['problem']}")
        elif name.startswith("raw") and r["max_rel"] > tol["raw_rtol"]:
            bad.append(f"{name}: max |Δ| {r['max_rel']:.2e} of its range > {tol['raw_rtol']:g}")
        elif not name.startswith("raw") and r["max_abs"] > tol["normalised_atol"]:
            bad.append(f"{name}: max |Δ| {r['max_abs']:.2e} > {tol['normalised_atol']:g}")
    return bad


def model_for(b, precision: str, major: int, log=lambda m: None) -> tuple:
    """(variant key, entry) of the bundle model a ``precision`` engine is built from with TensorRT
    ``major``: 8.x takes the opset-17 copy (made now, with its parity check, if missing or stale)."""
    variant = MODEL_FOR[precision]
    models = b.manifest["models"]
    if variant not in models:
        hint = ("adrt export RUN --out BUNDLE --precision int8 --calib DIR" if variant == "int8"
                else f"adrt export RUN --out BUNDLE --precision {variant}")
        raise BundleError(f"{b.root}: a {precision} engine is built from the bundle's {variant} model, which it lacks "
                          f"(it has: {', '.join(k for k in models if not k.endswith('.trt86'))}); make one with: {hint}")
    entry = models[variant]
    if precision == "int8" and entry.get("int8_target", "tensorrt") != "tensorrt":
        raise BundleError(f"{b.root}: its int8 model was quantised for {entry.get('int8_target')!r} (uint8 asymmetric "
                          f"activations), which TensorRT does not take; re-export with --int8-target tensorrt")
    if major >= 10:
        return variant, entry
    from adrt.export.trt86 import SUFFIX, add_trt86_variants
    from adrt.export.trt_check import import_onnx
    from adrt.runtime.bundle import read_manifest

    import_onnx()       # a clear error naming the extra where onnx is missing
    if add_trt86_variants(b.root, keys=[variant], log=log):
        log(f"TensorRT 8.x parses opsets up to 17: made {variant}{SUFFIX} from {entry['file']} (checked on ONNX Runtime)")
        b.manifest = read_manifest(b.root)
    key = variant + SUFFIX
    return key, b.manifest["models"][key]


def build_into_bundle(bundle: str | os.PathLike, precision: str = "fp16", profile: BatchProfile = BatchProfile(),
                      workspace_mib: int = 1024, timing_cache: Path | None | bool = True, device: int = 0,
                      check: bool = True, trt=None, cuda=None, log=lambda m: None, dla: DlaOptions | None = None,
                      keep_failed: bool = False, conformance: bool = True) -> dict:
    """Build a plan for this GPU from ``bundle``'s model of ``precision`` and store it in the bundle
    (``engines/<gpu>-sm<cc>-trt<version>-<precision>[-dla<core>].plan``, recorded in the manifest with
    its sha256). Replaces a plan with the same tag. Nothing is left in the bundle if any step fails
    (neither the plan nor an opset-17 copy made or renewed for this build).

    ``timing_cache``: True for the default per-device cache file, a path, or None/False for none.
    ``conformance``: refuse a graph that breaks the installed TensorRT's parser rules before parsing.
    ``check``: run the new engine on sample images against ONNX Runtime CPU (:func:`engine_parity`);
    a plan outside :data:`PARITY_TOLERANCE` raises and is not stored, unless ``keep_failed``
    (stored, the failure recorded in the manifest). ``dla``: build for a DLA core.
    """
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; available: {', '.join(PRECISIONS)}")
    b = open_bundle(bundle)
    if b.is_zip:
        b.cleanup()
        raise BundleError(f"{bundle}: build-engine stores the plan in the bundle and needs a bundle folder, not a .zip")
    trt = trt or import_tensorrt()
    version = str(trt.__version__)
    if dla is not None:
        check_dla_request(dla, precision, profile, version)
    # What model_for may change (an opset-17 copy made or renewed for TensorRT 8.x), to undo it if
    # the build fails: nothing is left of a failed build.
    saved = {p: p.read_bytes() if p.is_file() else None for p in
             (b.root / "manifest.json", b.root / _trt86_file(b, precision))}
    key, entry = model_for(b, precision, trt_major(trt), log)
    try:
        return _build_checked(b, precision, profile, workspace_mib, timing_cache, device, check, trt, cuda, log, dla,
                              keep_failed, conformance, key, entry)
    except BaseException:
        for p, data in saved.items():
            if data is None:
                p.unlink(missing_ok=True)
            elif not p.is_file() or p.read_bytes() != data:
                p.write_bytes(data)
        raise


def _trt86_file(b, precision: str) -> str:
    from adrt.export.trt86 import variant_file   # (imports no onnx)

    entry = b.manifest["models"].get(MODEL_FOR[precision])
    return variant_file(entry["file"]) if entry else "model.none.trt86.onnx"


def _build_checked(b, precision, profile, workspace_mib, timing_cache, device, check, trt, cuda, log, dla,
                   keep_failed, conformance, key, entry) -> dict:
    version = str(trt.__version__)
    onnx_path = b.root / entry["file"]
    if conformance:
        from adrt.export.trt_check import require_conformance, target_for_version

        require_conformance(onnx_path, target_for_version(version), dla=dla is not None,
                            gpu_fallback=bool(dla and dla.gpu_fallback), precision=precision,
                            profile=(profile.min, profile.opt, profile.max), trt_version=version)
    spec = b.input
    h, w, c = int(spec["height"]), int(spec["width"]), int(spec["channels"])
    cuda = cuda or open_cuda(device)
    try:
        gpu, cc = cuda.device_info()
        if timing_cache is True:
            timing_cache = default_timing_cache(gpu, cc, version)
        cache = Path(timing_cache) if timing_cache else None
        where = f" on DLA core {dla.core}" + (" with GPU fallback" if dla.gpu_fallback else "") if dla else ""
        log(f"building {precision} engine{where} for {gpu} (sm {cc[0]}{cc[1]}), TensorRT {version}, from "
            f"{entry['file']}, batch {profile.min}/{profile.opt}/{profile.max} …")
        plan, facts = build_engine(onnx_path, precision, profile, h, w, c, workspace_mib, cache, (gpu, cc), trt, dla)
        tag = plan_tag(gpu, cc, version, precision) + (f"-dla{dla.core}" if dla else "")
        parity, failures = None, []
        if check:
            parity = _check_engine(plan, device, cuda, trt, dla, onnx_path, profile, (h, w, c))
            failures = parity_failures(parity, precision)
            if failures and not keep_failed:
                raise BackendError(f"the {precision} engine does not match ONNX Runtime CPU on {entry['file']}: "
                                   + "; ".join(failures) + "; no plan stored (--keep-failed stores it anyway, "
                                   "recorded as failed in the manifest)")
            if failures:
                log("warning: storing an engine that failed its parity check (--keep-failed): " + "; ".join(failures))
        record = {"precision": precision, "gpu": gpu, "compute_capability": f"{cc[0]}.{cc[1]}", "onnx": entry["file"],
                  "model": key, "cuda_binding": getattr(cuda, "binding", "?"), "adrt_version": __version__,
                  "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **facts,
                  "parity_tolerance": PARITY_TOLERANCE[precision], "parity_ok": None if parity is None else not failures}
        if parity is not None:
            record["parity_vs_ort_cpu"] = parity
        if failures:
            record["parity_failures"] = failures
        _store_plan(b, tag, plan, record)
    finally:
        cuda.close()
    return record


def _check_engine(plan: bytes, device: int, cuda, trt, dla, onnx_path: Path, profile: BatchProfile, hwc) -> dict:
    backend = TensorRTBackend(plan, device, cuda=_Borrowed(cuda), trt=trt, dla_core=dla.core if dla else None)
    try:
        n = min(max(profile.opt, 2), profile.max)
        if profile.min > n:
            n = profile.min
        images = np.random.default_rng(0).integers(0, 256, (n, *hwc), dtype=np.uint8)
        return engine_parity(backend, onnx_path, images)
    finally:
        backend.close()


def _store_plan(b, tag: str, plan: bytes, record: dict) -> None:
    rel = f"engines/{tag}.plan"
    record["file"] = rel
    (b.root / "engines").mkdir(exist_ok=True)
    final = b.root / rel
    try:
        write_bytes_atomic(final, plan)
        manifest = b.manifest
        manifest.setdefault("engines", {})[tag] = record
        manifest["files"][rel] = {}
        write_manifest(b.root, manifest)
    except BaseException:
        final.unlink(missing_ok=True)
        raise


class _Borrowed:
    """The builder's CUDA handle lent to the parity-check backend. Closing stays with the builder,
    which owns the CUDA context and frees every buffer, the backend's too, when it is done."""

    def __init__(self, cuda):
        self._cuda = cuda

    def __getattr__(self, name):
        return getattr(self._cuda, name)

    def close(self) -> None:
        pass
