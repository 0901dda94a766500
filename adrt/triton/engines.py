"""TensorRT plans for the tensorrt_plan form: which engine of each bundle a repository serves.

A plan runs on one GPU type with one TensorRT version; its target is the engine tag without the
precision (``nvidia-h200-sm90-trt10.3.0``, as ``adrt build-engine`` names the file). One Triton
server runs on one target, so every model of a repository is served from plans of the same one.
"""
from __future__ import annotations

from adrt.errors import BundleError, InputError
from adrt.runtime.tensorrt import plan_tag


def engine_target(record: dict) -> str:
    """A plan record's target: its tag without the precision (``nvidia-h200-sm90-trt10.3.0``)."""
    cc = str(record.get("compute_capability", "")).split(".")
    try:
        capability = (int(cc[0]), int(cc[1]) if len(cc) > 1 else 0)
    except ValueError:
        raise BundleError(f"engine {record.get('file')}: compute capability {record.get('compute_capability')!r} in "
                          f"the manifest, expected MAJOR.MINOR") from None
    tag = plan_tag(str(record.get("gpu", "")), capability, str(record.get("tensorrt", "")),
                   str(record.get("precision", "")))
    return tag[: -len(str(record.get("precision", ""))) - 1]


def choose_engines(bundles: dict, precision: str, target: str | None) -> tuple[str, dict]:
    """The target and, per model name, the manifest's engine record of ``precision`` built for it.

    One Triton server runs on one kind of GPU with one TensorRT, so every model of a repository is
    served from plans of the same target: mixing them is refused.
    """
    have = {}
    for name, b in bundles.items():
        recs = {engine_target(r): r for r in (b.manifest.get("engines") or {}).values() if r.get("precision") == precision}
        if not recs:
            listed = ", ".join(sorted(b.manifest.get("engines") or {})) or "none"
            raise BundleError(f"{b.root}: no {precision} TensorRT engine to serve as {name!r} (engines: {listed}); "
                              f"build one on the serving GPU: adrt build-engine BUNDLE --precision {precision}")
        have[name] = recs
    if target is None:
        common = set.intersection(*(set(r) for r in have.values()))
        if len(common) != 1:
            listed = "; ".join(f"{n}: {', '.join(sorted(r))}" for n, r in have.items())
            why = "no target common to all bundles" if not common else "more than one target in every bundle"
            raise BundleError(f"{why} ({listed}); one Triton server runs one GPU type and TensorRT version, so "
                              f"mixing engine tags is refused: pick one with --target")
        target = common.pop()
    chosen = {}
    for name, recs in have.items():
        if target not in recs:
            raise BundleError(f"{bundles[name].root}: no {precision} engine for target {target!r} to serve as "
                              f"{name!r} (it has: {', '.join(sorted(recs))}); mixing engine tags is refused")
        chosen[name] = recs[target]
    return target, chosen


def check_profile(name: str, rec: dict, max_batch: int) -> None:
    prof = rec.get("profile") or {}
    lo, hi = (prof.get("min") or [None])[0], (prof.get("max") or [None])[0]
    if lo is None or hi is None:
        raise BundleError(f"engine {rec.get('file')} of {name!r}: its manifest record has no batch profile")
    if int(lo) != 1:
        raise BundleError(f"engine {rec.get('file')} of {name!r}: profile starts at batch {lo}, but Triton sends "
                          f"batches of 1..max_batch_size; rebuild it with --min-batch 1")
    if max_batch > int(hi):
        raise InputError(f"--max-batch {max_batch} exceeds the largest batch of engine {rec.get('file')} of "
                         f"{name!r} ({hi}); lower --max-batch or rebuild with adrt build-engine --max-batch {max_batch}")
