"""The model behind the Python-backend form of ``adrt triton``: a bundle run by adrt.runtime.

Runs inside Triton's Python-backend stub, on a serving host that may have only the runtime: numpy
and adrt.runtime, never torch, Python 3.10 compatible. The version folder is the bundle itself
(manifest.json and every file it lists), so opening it verifies every checksum.

With dynamic batching Triton hands ``execute`` several requests at once: their images are run as
one batch. A request whose images the runtime refuses (non-finite outputs) gets its own error
response and the others their results: the requests are then run one by one.
"""
from __future__ import annotations

import json
import os

import numpy as np

from adrt.errors import AdrtError, ResultError


class BundleModel:
    """Triton's ``TritonPythonModel`` interface over an adrt bundle. ``pb`` is Triton's
    ``triton_python_backend_utils`` module, set by the generated model.py."""

    pb = None

    def initialize(self, args: dict) -> None:
        import adrt.runtime as rt

        cfg = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in (cfg.get("parameters") or {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        threads = int(params["adrt_threads"]) if params.get("adrt_threads") else None
        self.session = rt.load(folder, backend=params.get("adrt_backend", "ort-cpu"), threads=threads,
                               precision=params.get("adrt_precision", "fp32"))
        self.inputs = [t["name"] for t in cfg["input"]]
        self.outputs = [t["name"] for t in cfg["output"]]

    def _run(self, feeds: dict) -> dict:
        s = self.session
        for name, arr in feeds.items():
            feeds[name] = s.check_batch(arr)
        out = s.backend.run(feeds)
        # As Session.run: a non-finite output is refused, never handed back as a result.
        bad = np.zeros(len(next(iter(feeds.values()))), dtype=bool)
        for arr in out.values():
            if np.issubdtype(arr.dtype, np.floating):
                bad |= ~np.isfinite(arr.reshape(len(arr), -1)).all(1)
        if bad.any():
            raise ResultError(f"{s.method}: the model produced NaN/Inf for image(s) {np.flatnonzero(bad).tolist()} "
                              f"of this request; no result is returned")
        return out

    def _response(self, out: dict, lo: int, hi: int):
        pb = self.pb
        return pb.InferenceResponse(output_tensors=[pb.Tensor(name, np.ascontiguousarray(out[name][lo:hi]))
                                                    for name in self.outputs])

    def _error(self, e: Exception):
        return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(str(e)))

    def execute(self, requests: list) -> list:
        pb = self.pb
        feeds = [{n: pb.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests]
        counts = [len(f[self.inputs[0]]) for f in feeds]
        try:
            batch = feeds[0] if len(feeds) == 1 else {n: np.concatenate([f[n] for f in feeds]) for n in self.inputs}
            out = self._run(batch)
        except AdrtError as e:
            if len(requests) == 1:
                return [self._error(e)]
            return [self._execute_one(f) for f in feeds]
        except Exception as e:  # the stub must answer every request; the error goes to the clients
            return [self._error(e) for _ in requests]
        ends = np.cumsum(counts)
        return [self._response(out, int(e - c), int(e)) for c, e in zip(counts, ends)]

    def _execute_one(self, feed: dict):
        try:
            return self._response(self._run(feed), 0, len(feed[self.inputs[0]]))
        except Exception as e:
            return self._error(e)

    def finalize(self) -> None:
        session = getattr(self, "session", None)
        if session is not None:
            session.close()
            self.session = None
