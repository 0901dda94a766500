"""The torch-eager benchmark target: a bundle's training run folder loaded with torch, timed host in -> host out
like the bundle, so `adrt bench` reports the fused graph's speed-up over the model it was exported from.

This is the one place in :mod:`adrt.bench` that loads a training run (``adrt.train.fit.load_run``); it does so
inside :func:`load`, in a worker process of its own, so neither the harness nor a bundle's worker ever imports
torch or the training code.
"""
from __future__ import annotations

from typing import Callable

from adrt.runtime.bundle import open_bundle


class Unusable(Exception):
    """This configuration cannot run here; the message is the reason shown in the report."""


def load(msg: dict, info: dict) -> tuple[Callable, Callable, tuple[int, int], Callable[[], float] | None]:
    """Load the run folder ``msg["run"]`` for bundle ``msg["bundle"]`` on ``msg["device"]`` (cpu/cuda).

    Returns (run: uint8 NHWC batch -> host arrays, prepare: frame -> resized RGB, (height, width),
    peak CUDA memory in MiB or None on the CPU); adds method, torch version, threads (and device) to ``info``.
    Raises :class:`Unusable` when torch is missing, CUDA is absent, or the run does not match the bundle.
    """
    try:
        import torch
    except ImportError:
        raise Unusable("torch is not installed here (pip install -e '.[train]' in the adrt source folder); torch eager needs it") from None

    # Deferred: the training code (and with it torch's models) loads here only, never in a bundle's worker.
    from adrt.runtime.image import resize, to_rgb
    from adrt.train.fit import load_run

    b = open_bundle(msg["bundle"])
    try:
        manifest = b.manifest
    finally:
        b.cleanup()
    if msg["threads"]:
        torch.set_num_threads(int(msg["threads"]))
    device = msg.get("device") or "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise Unusable(f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False)")
    det, meta = load_run(msg["run"])
    want = (manifest["method"], int(manifest["input"]["height"]), int(manifest["input"]["width"]))
    got = (meta["method"], int(meta["input"]["height"]), int(meta["input"]["width"]))
    if want != got:
        raise Unusable(f"torch run {msg['run']} is {got[0]} {got[1]}×{got[2]}, but bundle {msg['bundle']} is "
                       f"{want[0]} {want[1]}×{want[2]}; pass the run folder the bundle was exported from")
    size = got[1:]
    cuda_peak = None
    info.update(method=got[0], torch=torch.__version__, intra_op_threads=torch.get_num_threads())
    if device == "cuda":
        det = det.to(device)
        info["device"] = torch.cuda.get_device_name()
        cuda_peak = lambda: torch.cuda.max_memory_allocated() / 2**20  # noqa: E731

    def run(x):
        # Host uint8 in, maps and scores back on the host (.cpu() waits for the device).
        with torch.inference_mode():
            return [t.cpu().numpy() for t in det(torch.from_numpy(x).to(device))]

    return run, lambda frame: resize(to_rgb(frame), *size), size, cuda_peak

