"""The Python side of libadrt: the bodies of the ``adrt__py_*`` functions behind adrt.h.

Runs inside the interpreter that libadrt embeds; :func:`bind` registers the functions with the
library's cffi ``ffi`` (``ffi.def_extern``). Everything is done by the runtime itself
(``adrt.runtime.load`` and ``Session.run``); this module only turns C arguments into numpy views
of the caller's memory, keeps the handle table, and turns exceptions into status codes and
messages. Imports numpy and adrt.runtime only, never torch.
"""
from __future__ import annotations

import os
import threading

import numpy as np

from adrt.errors import AdrtError, BackendError, BundleError, ClosedError, DataError, InputError, ResultError

# Status codes: the values of adrt_status in adrt.h.
OK, E_NULL, E_ARGUMENT, E_HANDLE, E_BUNDLE, E_BACKEND, E_INPUT, E_BUFFER, E_PYTHON, E_INTERNAL, E_OUTPUT = range(11)
RAN = 0x100  # set on every return from Python, see _internal.h

# Every adrt error type -> its status (the first match wins; AdrtError itself is E_INTERNAL).
_ERRORS = ((BundleError, E_BUNDLE), (BackendError, E_BACKEND), (InputError, E_INPUT), (DataError, E_INPUT),
           (ResultError, E_OUTPUT), (ClosedError, E_HANDLE))


class _Failure(Exception):
    """A refused call: status code and message for the caller."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Entry:
    def __init__(self, session):
        self.session = session
        self.in_flight = 0


class HandleTable:
    """Open sessions by handle number. Numbers start at 1 and are never reused, so a closed or
    made-up handle is refused by number rather than reaching a freed session."""

    def __init__(self):
        self._cond = threading.Condition()
        self._open: dict[int, _Entry] = {}
        self._next = 1

    def add(self, session) -> int:
        with self._cond:
            h = self._next
            self._next += 1
            self._open[h] = _Entry(session)
            return h

    def acquire(self, handle: int, fn: str) -> _Entry:
        """The entry of an open handle, counted as in use until :meth:`release`."""
        with self._cond:
            entry = self._open.get(handle)
            if entry is None:
                raise _Failure(E_HANDLE, self._why_not_open(handle, fn))
            entry.in_flight += 1
            return entry

    def release(self, entry: _Entry) -> None:
        with self._cond:
            entry.in_flight -= 1
            self._cond.notify_all()

    def close(self, handle: int) -> None:
        """Refuse new calls on ``handle`` at once, wait for the ones in flight, then close it."""
        with self._cond:
            entry = self._open.pop(handle, None)
            if entry is None:
                raise _Failure(E_HANDLE, self._why_not_open(handle, "adrt_close"))
            self._cond.wait_for(lambda: entry.in_flight == 0)
        entry.session.close()

    def _why_not_open(self, handle: int, fn: str) -> str:
        if 1 <= handle < self._next:
            return f"{fn}: handle {handle} was closed; expected an open handle from adrt_open"
        return (f"{fn}: handle {handle} was never opened; expected a handle set by a successful "
                f"adrt_open (0 is never valid)")


def bind(ffi, lib, built_for: str) -> None:
    """Register the adrt__py_* functions with libadrt's ``ffi``.

    ``built_for`` is the adrt version the library was compiled from; an installed adrt of another
    version is refused (the C and Python halves must come from the same build).
    """
    from adrt._version import __version__
    from adrt.runtime import backend_names, load
    from adrt.runtime.session import check_threshold
    from adrt.runtime.limits import check_threads, max_threads

    if __version__ != built_for:
        raise ImportError(f"libadrt was built from adrt {built_for}, but this Python imports adrt "
                          f"{__version__}; rebuild it with `adrt build-capi`")
    table = HandleTable()

    def fail(status: int, message: str) -> int:
        lib.adrt__set_error(message.encode("utf-8", "replace"))
        return RAN | status

    def guarded(fn):
        """Any exception becomes a status and a message: nothing reaches cffi's stderr printer."""
        name = "adrt_" + fn.__name__

        def call(*args):
            try:
                fn(*args)
                return RAN | OK
            except _Failure as e:
                return fail(e.status, str(e))
            except AdrtError as e:
                status = next((s for t, s in _ERRORS if isinstance(e, t)), E_INTERNAL)
                return fail(status, f"{name}: {e}")
            except BaseException as e:  # a host must never be brought down by an exception here
                return fail(E_INTERNAL, f"{name}: unexpected {type(e).__name__}: {e}")

        ffi.def_extern(name="adrt__py_" + fn.__name__, error=RAN | E_INTERNAL)(call)
        return fn

    @guarded
    def open(path_p, backend_p, threads, handle_p):  # noqa: A001 - the C name
        path = os.fsdecode(ffi.string(path_p))
        backend = "ort-cpu" if backend_p == ffi.NULL else ffi.string(backend_p).decode("utf-8", "replace")
        if backend not in backend_names():
            raise _Failure(E_ARGUMENT, f"adrt_open: backend {backend!r} is unknown; expected one of "
                                       f"{', '.join(backend_names())} (or NULL for ort-cpu)")
        try:
            threads = check_threads(threads or None)
        except InputError:
            raise _Failure(E_ARGUMENT, f"adrt_open: threads = {threads}; expected 0 (ONNX Runtime's "
                                       f"default) or a thread count from 1 to {max_threads()} (4 per CPU)") from None
        if not path:
            raise _Failure(E_BUNDLE, "adrt_open: bundle_path is empty; expected the path of a bundle folder or .zip")
        session = load(path, backend=backend, threads=threads)
        handle_p[0] = table.add(session)

    @guarded
    def input_size(handle, height_p, width_p, channels_p):
        entry = table.acquire(handle, "adrt_input_size")
        try:
            s = entry.session
            height_p[0], width_p[0], channels_p[0] = s.height, s.width, s.channels
        finally:
            table.release(entry)

    @guarded
    def precision(handle, buffer, size):
        entry = table.acquire(handle, "adrt_precision")
        try:
            # Validated at open (adrt.contract): the entry exists and its precision is known.
            value = entry.session.bundle.contract.models["fp32"].precision.value
            data = value.encode("utf-8") + b"\0"
            if size < len(data):
                raise _Failure(E_BUFFER, f"adrt_precision: size = {size}; expected at least {len(data)} "
                                         f"(the precision {value!r} and its NUL)")
            ffi.memmove(buffer, data, len(data))
        finally:
            table.release(entry)

    def _read(handle, name: str, out_p) -> None:
        entry = table.acquire(handle, "adrt_" + name)
        try:
            out_p[0] = getattr(entry.session, name)
        finally:
            table.release(entry)

    @guarded
    def threshold(handle, threshold_p):
        _read(handle, "threshold", threshold_p)

    @guarded
    def pixel_threshold(handle, pixel_threshold_p):
        _read(handle, "pixel_threshold", pixel_threshold_p)

    @guarded
    def set_thresholds(handle, threshold, pixel_threshold):
        entry = table.acquire(handle, "adrt_set_thresholds")
        try:
            try:
                check_threshold("threshold", float(threshold))
                check_threshold("pixel_threshold", float(pixel_threshold))
            except InputError as e:
                raise _Failure(E_ARGUMENT, f"adrt_set_thresholds: {e} (the calibrated scale; 0.5 is the "
                                           f"bundle's threshold)") from None
            entry.session.set_threshold(float(threshold), float(pixel_threshold))
        finally:
            table.release(entry)

    def view(buf, need: int, shape) -> np.ndarray:
        # A view of the caller's bytes, not a copy; the runtime checks it against the bundle.
        a = np.frombuffer(ffi.buffer(buf, need), dtype=np.uint8).reshape(shape)
        a.flags.writeable = False
        return a

    def _run(fn, handle, images, images_len, references, references_len, n, height, width, channels, outs):
        """Run the images (with ``references``, one per image, for a paired bundle; None for
        adrt_run/adrt_run_outputs); ``outs``: (name, pointer, length, per, unit) with per = "image"
        or "pixel"."""
        shape = (n, height, width, channels)
        if min(shape) < 1:
            raise _Failure(E_ARGUMENT, f"{fn}: n, height, width, channels = {n}, {height}, {width}, "
                                       f"{channels}; expected all ≥ 1")
        need = n * height * width * channels
        for what, length in (("images_len", images_len), ("references_len", references_len)):
            if length is not None and length != need:
                raise _Failure(E_BUFFER, f"{fn}: {what} = {length}; expected n*height*width*channels "
                                         f"= {n}*{height}*{width}*{channels} = {need}")
        entry = table.acquire(handle, fn)
        try:
            s = entry.session
            if s.paired != (references is not None):
                raise _Failure(E_INPUT, f"{fn}: this {s.method} bundle takes {2 if s.paired else 1} image buffer(s) "
                                        f"per run (adrt_input_count); use "
                                        f"{'adrt_run_pair with one reference per image' if s.paired else 'adrt_run'}")
            batch = view(images, need, shape)
            refs = None if references is None else view(references, need, shape)
            s.feeds(batch, refs)
            sizes = {"image": (n, "n"), "pixel": (n * s.height * s.width, f"n*H*W = {n}*{s.height}*{s.width}")}
            for name, ptr, length, per, unit in outs:
                want, how = sizes[per]
                if ptr != ffi.NULL and length < want:
                    raise _Failure(E_BUFFER, f"{fn}: {name}_len = {length}; expected at least {how} = {want} {unit}")
            r = s.run(batch, refs)
            # The one copy: the runtime's output arrays into the caller's buffers.
            for name, ptr, _, per, unit in outs:
                if ptr != ffi.NULL:
                    a = getattr(r, name)
                    a = np.ascontiguousarray(a, dtype=np.uint8 if unit == "bytes" else np.float32)
                    ffi.memmove(ptr, a, a.nbytes)
        finally:
            table.release(entry)

    @guarded
    def prepare(handle, image, image_len, height, width, channels, out, out_len):
        if min(height, width) < 1 or channels not in (1, 3, 4):
            raise _Failure(E_ARGUMENT, f"adrt_prepare: height, width, channels = {height}, {width}, {channels}; "
                                       f"expected height, width ≥ 1 and 1, 3 or 4 channels")
        need = height * width * channels
        if image_len != need:
            raise _Failure(E_BUFFER, f"adrt_prepare: image_len = {image_len}; expected height*width*channels = "
                                     f"{height}*{width}*{channels} = {need}")
        entry = table.acquire(handle, "adrt_prepare")
        try:
            s = entry.session
            need_out = s.height * s.width * 3
            if out_len < need_out:
                raise _Failure(E_BUFFER, f"adrt_prepare: out_len = {out_len}; expected at least H*W*3 = "
                                         f"{s.height}*{s.width}*3 = {need_out}")
            src = np.frombuffer(ffi.buffer(image, need), dtype=np.uint8).reshape(height, width, channels)
            ffi.memmove(out, np.ascontiguousarray(s.prepare(src)), need_out)
        finally:
            table.release(entry)

    @guarded
    def run(handle, images, images_len, n, height, width, channels, maps, maps_len, scores, scores_len):
        _run("adrt_run", handle, images, images_len, None, None, n, height, width, channels,
             [("maps", maps, maps_len, "pixel", "floats"), ("scores", scores, scores_len, "image", "floats")])

    @guarded
    def run_pair(handle, images, images_len, references, references_len, n, height, width, channels, maps,
                 maps_len, scores, scores_len):
        _run("adrt_run_pair", handle, images, images_len, references, references_len, n, height, width, channels,
             [("maps", maps, maps_len, "pixel", "floats"), ("scores", scores, scores_len, "image", "floats")])

    @guarded
    def run_outputs(handle, images, images_len, n, height, width, channels, maps, maps_len, scores, scores_len,
                    raw_maps, raw_maps_len, raw_scores, raw_scores_len, labels, labels_len, masks, masks_len):
        _run("adrt_run_outputs", handle, images, images_len, None, None, n, height, width, channels,
             [("maps", maps, maps_len, "pixel", "floats"), ("scores", scores, scores_len, "image", "floats"),
              ("raw_maps", raw_maps, raw_maps_len, "pixel", "floats"),
              ("raw_scores", raw_scores, raw_scores_len, "image", "floats"),
              ("labels", labels, labels_len, "image", "bytes"), ("masks", masks, masks_len, "pixel", "bytes")])

    @guarded
    def input_count(handle, count_p):
        entry = table.acquire(handle, "adrt_input_count")
        try:
            count_p[0] = 2 if entry.session.paired else 1
        finally:
            table.release(entry)

    @guarded
    def close(handle):
        table.close(handle)
