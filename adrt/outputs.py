"""Writing outputs without losing anything: one rule for every command that writes a folder.

* A folder is only ever *replaced* when it is recognised as the kind the command writes (a run, a
  bundle, an eval or demo folder, ...) and the caller asked for it (``overwrite=True``,
  ``--overwrite``). A missing or empty folder is simply written. Anything else (a folder holding
  anything adrt did not write, a file) is refused, never deleted.
* Never an input: an output that is, or contains, one of the command's inputs is refused.
* Atomic: the new folder is written beside the target (``.NAME.adrt-tmp-XXXX`` in the same parent,
  so the final rename cannot cross file systems) and swapped in only once complete; on any error,
  Ctrl-C included, the temporary folder is removed and the old folder is left as it was.
* Normal permissions: folders are made with ``os.mkdir`` and files with ``open``, so the umask
  applies (``tempfile.mkdtemp``/``mkstemp`` would make them private to the user, 0700/0600).

How a folder is recognised (:func:`recognise`): a run has ``detector.json`` with a method and
checkpoint version; a bundle has ``manifest.json`` of format ``adrt-bundle``; an eval folder
``metrics.json`` with an ``overall`` entry; infer's overlay folder only ``NNNNN_*.png`` files; a
demo folder and a synthetic dataset a marker file (``.adrt-demo``, ``.adrt-synth.json``). In each
case every entry of the folder must be one the command writes: a run folder where someone
has put their notes is not replaced.

Imports only the standard library, adrt.contract and adrt.errors (the contract layer).
"""
from __future__ import annotations

import contextlib
import enum
import errno
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from adrt.contract import FORMAT, MANIFEST
from adrt.errors import OutputError

DEMO_MARKER = ".adrt-demo"
SYNTH_MARKER = ".adrt-synth.json"
_TMP_TAG = ".adrt-tmp-"
_OLD_TAG = ".adrt-old-"
# Write errors that are the environment's, not a bug: reported as OutputError with the path.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


class Kind(str, enum.Enum):
    RUN = "run folder"
    BUNDLE = "bundle"
    EVAL = "eval folder"
    OVERLAYS = "overlay folder"
    DEMO = "demo folder"
    DATASET = "synthetic dataset"


def _read_json(path: Path, limit: int = 16 << 20):
    try:
        if not path.is_file() or path.stat().st_size > limit:
            return None
        return json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def _is_run(p: Path) -> bool:
    d = _read_json(p / "detector.json")
    return isinstance(d, dict) and "checkpoint_version" in d and "method" in d and \
        _entries(p) <= {"detector.json", "weights.pt"}


def _is_bundle(p: Path) -> bool:
    d = _read_json(p / MANIFEST)
    if not isinstance(d, dict) or d.get("format") != FORMAT or not isinstance(d.get("files"), dict):
        return False
    own = {MANIFEST} | {str(name).split("/")[0] for name in d["files"]}
    return _entries(p) <= own


def _is_eval(p: Path) -> bool:
    d = _read_json(p / "metrics.json")
    return isinstance(d, dict) and "overall" in d and _entries(p) <= {"metrics.json", "metrics.txt", "overlays"}


_OVERLAY_NAME = re.compile(r"^\d{5}_.*\.png$")


def _is_overlays(p: Path) -> bool:
    return all(q.is_file() and _OVERLAY_NAME.match(q.name) for q in p.iterdir())


_DEMO_ENTRIES = {DEMO_MARKER, "data", "run", "bundle", "eval", "bench.json", "bench.md", "bench.html"}


def _is_demo(p: Path) -> bool:
    if not _entries(p) <= _DEMO_ENTRIES:
        return False
    # Demo folders written before the marker existed: a run and a bundle where the demo puts them.
    return (p / DEMO_MARKER).is_file() or ((p / "run").is_dir() and _is_run(p / "run") and
                                           (p / "bundle").is_dir() and _is_bundle(p / "bundle"))


def _is_dataset(p: Path) -> bool:
    # Only with the marker: a real MVTec category looks the same without it.
    return (p / SYNTH_MARKER).is_file() and _entries(p) <= {SYNTH_MARKER, "train", "test", "ground_truth", "reference", "golden.png"}


_RECOGNISERS: dict[Kind, Callable[[Path], bool]] = {
    Kind.RUN: _is_run, Kind.BUNDLE: _is_bundle, Kind.EVAL: _is_eval, Kind.OVERLAYS: _is_overlays,
    Kind.DEMO: _is_demo, Kind.DATASET: _is_dataset,
}


def recognise(path: str | os.PathLike, kind: Kind) -> bool:
    """True when ``path`` is a folder of ``kind`` that adrt wrote, holding nothing else."""
    p = Path(path)
    try:
        return p.is_dir() and not p.is_symlink() and _RECOGNISERS[kind](p)
    except OSError:
        return False


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_parent(out: str | os.PathLike, option: str = "--out") -> None:
    """Refuse ``out`` up front when the folder that would hold it cannot be made: its nearest
    existing ancestor is a file (``--out notes.txt/run``) or not writable. Creates nothing."""
    out = Path(out)
    ancestor = out.absolute().parent
    while not ancestor.exists() and not ancestor.is_symlink() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{option} {out}: cannot create its folder, {ancestor} is not a folder (expected a path "
                          f"whose existing part is a folder)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {out}: cannot create it, the folder {ancestor} is not writable")


def check_output(out: str | os.PathLike, kind: Kind, *, overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike] = (), option: str = "--out") -> Path:
    """Refuse ``out`` before any work is done, unless it can be written under the rules above.

    Returns ``out`` as a Path. Raises OutputError naming the folder and the way out.
    """
    out = Path(out)
    real = out.resolve()
    for given in inputs:
        if given is None:
            continue
        src = Path(given).resolve()
        if _is_within(src, real):
            what = "is" if src == real else "contains"
            raise OutputError(f"{option} {out} {what} the input {given}; writing it would destroy that input "
                              f"(choose another {option})")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        what = "is a symbolic link" if out.is_symlink() else "exists and is not a folder"
        raise OutputError(f"{option} {out} {what}; expected a new or empty folder, or a {kind.value} to "
                          f"replace with --overwrite")
    check_parent(out, option)
    if not out.exists() or not any(out.iterdir()):
        return out
    if not recognise(out, kind):
        raise OutputError(f"{option} {out} is a folder that adrt does not recognise as a {kind.value} (it holds "
                          f"other files); refusing to replace it: choose a new folder")
    if not overwrite:
        raise OutputError(f"{option} {out} already holds a {kind.value}; pass --overwrite (overwrite=True) to "
                          f"replace it, or choose another folder")
    return out


def _sibling(out: Path, tag: str) -> Path:
    return out.parent / f".{out.name}{tag}{secrets.token_hex(4)}"


def make_folder(path: Path) -> Path:
    """mkdir with the umask's permissions (the parents too)."""
    path.mkdir(parents=True, exist_ok=True)
    return path


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def write_error(e: OSError, target) -> OutputError | OSError:
    """An OSError from writing ``target`` as an OutputError (disk full, read-only, permissions)."""
    if e.errno in _WRITE_ERRNOS:
        return OutputError(f"{target}: cannot write ({e.strerror or e}{': ' + str(e.filename) if e.filename else ''}); "
                           f"nothing was replaced")
    return e


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike, kind: Kind, *, overwrite: bool = False,
                  inputs: Sequence[str | os.PathLike] = (), option: str = "--out") -> Iterator[Path]:
    """Yield a new empty folder beside ``out``; when the block ends without error, it replaces
    ``out`` (checked again with :func:`check_output`), else it is removed and ``out`` is untouched.
    """
    out = Path(out)
    check_output(out, kind, overwrite=overwrite, inputs=inputs, option=option)
    try:
        make_folder(out.parent)
        tmp = _sibling(out, _TMP_TAG)
        os.mkdir(tmp)
    except OSError as e:
        # Whatever stops the folder from being made is the environment's (a file on the path, a
        # read-only or pseudo file system), not a bug: one OutputError naming the path.
        raise OutputError(f"{option} {out}: cannot create it ({e.strerror or e}"
                          f"{': ' + str(e.filename) if e.filename else ''}); nothing was replaced") from None
    try:
        try:
            yield tmp
        except OSError as e:
            raise write_error(e, out) from None
        check_output(out, kind, overwrite=overwrite, inputs=inputs, option=option)
        _swap_in(tmp, out)
    except BaseException:
        _remove(tmp)
        raise


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` (already checked) is moved aside first and
    restored if the rename fails."""
    old = None
    try:
        if out.exists():
            if out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            else:
                old = _sibling(out, _OLD_TAG)
                os.rename(out, old)
        try:
            os.rename(tmp, out)
        except BaseException:
            if old is not None:
                os.rename(old, out)
            raise
    except OSError as e:
        raise write_error(e, out) from None
    if old is not None:
        _remove(old)


def write_bytes_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename: the
    file is either the old one or the complete new one; the temporary is removed on any error."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = path.parent / f".{path.name}{_TMP_TAG}{secrets.token_hex(4)}"
    try:
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            raise write_error(e, path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def check_output_file(out: str | os.PathLike, *, overwrite: bool = False, looks_ours: Callable[[Path], bool],
                      what: str, inputs: Iterable[str | os.PathLike] = (), option: str = "--out") -> Path:
    """Like :func:`check_output` for a single result file: an existing file is replaced only with
    ``overwrite`` and only when ``looks_ours(path)`` (a results file adrt wrote)."""
    out = Path(out)
    real = out.resolve()
    for given in inputs:
        src = Path(given).resolve()
        if _is_within(src, real):
            raise OutputError(f"{option} {out} is (or contains) the input {given}; choose another {option}")
    if out.is_dir():
        raise OutputError(f"{option} {out} is a folder; expected a file name for the {what}")
    check_parent(out, option)
    if out.exists():
        if not out.is_file() or not looks_ours(out):
            raise OutputError(f"{option} {out} exists and is not a {what} written by adrt; refusing to replace it")
        if not overwrite:
            raise OutputError(f"{option} {out} exists; pass --overwrite to replace it, or choose another file")
    return out


def ensure_parent(path: Path, option: str = "--out") -> None:
    """Create ``path``'s folder up front, so that a failure shows before the work, not after."""
    try:
        make_folder(path.parent)
    except OSError as e:
        raise OutputError(f"{option} {path}: cannot create its folder {path.parent} ({e.strerror or e})") from None
    if not os.access(path.parent, os.W_OK):
        raise OutputError(f"{option} {path}: its folder {path.parent} is not writable")


__all__ = ["DEMO_MARKER", "Kind", "SYNTH_MARKER", "check_output", "check_output_file", "check_parent",
           "ensure_parent", "make_folder", "recognise", "staged_folder", "write_bytes_atomic", "write_error"]
