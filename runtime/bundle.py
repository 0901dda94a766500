"""Bundle format: a folder (or a .zip of one) with manifest.json and the files it lists.

manifest.json holds the format version, adrt version, method and hyper-parameters, input spec
(H, W, channels, resize rule, normalisation), calibration, training summary, metrics and a
sha256 for every file; its schema is adrt.contract.Manifest. Loading validates all of it before
any model is opened: every file the runtime opens is listed, relative, inside the bundle (no
absolute path, no '..', no symlink out of it), a regular file of the recorded size, and has the
recorded sha256 (paths and sizes are checked before anything is hashed).

A .zip is extracted to a private temporary folder, within bounds (adrt.runtime.limits: total
size, member count, compression ratio), and that folder is removed on every path: a failed
open, ``close()``, or the Bundle being garbage-collected without either.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import weakref
import zipfile
import zlib
from pathlib import Path

from adrt.contract import FORMAT, FORMAT_VERSION, MANIFEST, Manifest, check_relative_path
from adrt.errors import BundleError, InputError
from adrt.outputs import write_bytes_atomic
from adrt.runtime import limits

__all__ = ["Bundle", "FORMAT", "FORMAT_VERSION", "MANIFEST", "open_bundle", "read_manifest", "sha256_file",
           "verify_files", "write_manifest"]

MAX_MANIFEST_BYTES = 16 << 20


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class Bundle:
    """A verified bundle on disk. ``root`` is the folder holding manifest.json; ``manifest`` the
    validated manifest as a dict, ``contract`` the same as an adrt.contract.Manifest."""

    def __init__(self, root: Path, manifest: dict, _tmp: str | None = None):
        self.root = Path(root)
        self.contract = Manifest.from_dict(manifest, str(self.root / MANIFEST))
        self.manifest = manifest
        self._tmp = _tmp
        # A zip's extracted copy goes with the Bundle, also when nobody calls cleanup().
        self._finalizer = weakref.finalize(self, shutil.rmtree, _tmp, True) if _tmp else None

    def __repr__(self) -> str:
        return f"Bundle(root={str(self.root)!r}, method={self.method!r})"

    @property
    def method(self) -> str:
        return self.contract.method

    @property
    def input(self) -> dict:
        return self.manifest["input"]

    @property
    def is_zip(self) -> bool:
        return self._tmp is not None

    def model_path(self, variant: str = "fp32") -> Path:
        models = self.contract.models
        if not isinstance(variant, str) or variant not in models:
            raise BundleError(f"{self.root}: no {variant!r} model in this bundle; it has: {', '.join(models) or 'none'}")
        return self.root / models[variant].file

    def cleanup(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._tmp = None


def read_manifest(root: Path) -> dict:
    """The validated manifest of the bundle folder ``root`` (BundleError naming what is wrong)."""
    path = root / MANIFEST
    try:
        st = path.stat()
    except OSError:
        raise BundleError(f"{root}: not an adrt bundle ({MANIFEST} missing)") from None
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{path}: not a regular file")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path}: {st.st_size} bytes; a manifest is at most {MAX_MANIFEST_BYTES} bytes")
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    return Manifest.from_dict(raw, str(path)).to_dict()


def _member(root: Path, name: str, expect_bytes: int | None = None) -> Path:
    """The listed file ``name`` after checking that it stays inside ``root`` (symlinks resolved),
    is a regular file and, when given, has the recorded size."""
    check_relative_path(f"file {name!r}", name)
    p = root / name
    real_root = root.resolve()
    try:
        real = p.resolve(strict=True)
    except (OSError, RuntimeError):
        raise BundleError(f"{root}: file {name} listed in the manifest is missing") from None
    if real_root not in real.parents:
        raise BundleError(f"{root}: file {name} listed in the manifest leads outside the bundle (a symlink to "
                          f"{real}); every file must be inside the bundle")
    st = real.stat()
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{root}: file {name} listed in the manifest is not a regular file")
    if expect_bytes is not None and st.st_size != expect_bytes:
        raise BundleError(f"{root}: file {name} is {st.st_size} bytes, the manifest records {expect_bytes}: "
                          f"the bundle was modified or is corrupt")
    return p


def verify_files(root: Path, manifest: dict) -> None:
    """Every listed file is inside the bundle, regular, of the recorded size and sha256. Paths and
    sizes of all files are checked before any is hashed."""
    records = Manifest.from_dict(manifest, str(root / MANIFEST)).files
    paths = {name: _member(root, name, rec.bytes) for name, rec in records.items()}
    for name, rec in records.items():
        got = sha256_file(paths[name])
        if got != rec.sha256:
            raise BundleError(f"{root}: checksum mismatch for {name} (manifest {rec.sha256[:12]}…, "
                              f"file {got[:12]}…): the bundle was modified or is corrupt")


def _check_zip(path: Path, infos: list) -> None:
    """Refuse a zip whose members could escape the folder, or whose size would be unbounded."""
    if len(infos) > limits.MAX_ZIP_MEMBERS:
        raise BundleError(f"{path}: {len(infos)} members; a bundle zip has at most {limits.MAX_ZIP_MEMBERS}")
    seen, total = set(), 0
    for info in infos:
        name = info.filename.rstrip("/") if info.is_dir() else info.filename
        try:
            check_relative_path("member", name)
        except BundleError:
            raise BundleError(f"{path}: unsafe member name {info.filename!r} (expected relative names inside "
                              f"the bundle, no '..' or absolute paths)") from None
        if name in seen:
            raise BundleError(f"{path}: member {name!r} appears twice")
        seen.add(name)
        kind = (info.external_attr >> 16) & 0o170000
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise BundleError(f"{path}: member {name!r} is a link or special file; a bundle zip holds "
                              f"regular files only")
        total += info.file_size
        if total > limits.MAX_ZIP_BYTES:
            raise BundleError(f"{path}: members add up to more than {limits.MAX_ZIP_BYTES} bytes uncompressed "
                              f"(the limit for a bundle zip)")
        if info.file_size > limits.ZIP_RATIO_MIN_BYTES and \
                info.file_size > limits.MAX_ZIP_RATIO * max(info.compress_size, 1):
            raise BundleError(f"{path}: member {name!r} expands {info.compress_size} bytes to {info.file_size} "
                              f"(more than {limits.MAX_ZIP_RATIO}:1); refusing a likely zip bomb")
    # The whole zip too: many members each below ZIP_RATIO_MIN_BYTES (1000 × 1 MiB of zeros, ~1 MB
    # zipped) pass the per-member check but still expand ~1000:1.
    packed = sum(info.compress_size for info in infos)
    if total > limits.ZIP_RATIO_MIN_BYTES and total > limits.MAX_ZIP_RATIO * max(packed, 1):
        raise BundleError(f"{path}: its {len(infos)} members expand {packed} bytes to {total} (more than "
                          f"{limits.MAX_ZIP_RATIO}:1); refusing a likely zip bomb")


def _extract(z: zipfile.ZipFile, infos: list, dest: Path, path: Path) -> None:
    written = 0
    for info in infos:
        target = dest / info.filename
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        n = 0
        with z.open(info) as src, open(target, "xb") as out:
            while block := src.read(1 << 20):
                n += len(block)
                written += len(block)
                # The header's sizes bound what zipfile reads; count anyway, headers can lie.
                if n > info.file_size or written > limits.MAX_ZIP_BYTES:
                    raise BundleError(f"{path}: member {info.filename!r} is larger than its header says")
                out.write(block)


def _open_zip(path: Path) -> tuple[str, Path]:
    tmp = tempfile.mkdtemp(prefix="adrt-bundle-")
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            _check_zip(path, infos)
            _extract(z, infos, Path(tmp), path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError,
                          OSError)):
            raise BundleError(f"{path}: corrupt or unreadable zip ({type(e).__name__}: {e})") from None
        raise
    root = Path(tmp)
    subs = [p for p in root.iterdir() if p.is_dir()]
    if not (root / MANIFEST).exists() and len(subs) == 1:
        root = subs[0]
    return tmp, root


def open_bundle(path: str | os.PathLike, verify: bool = True) -> Bundle:
    """Open and verify a bundle folder or .zip. A zip is extracted to a temporary folder that is
    removed by ``Bundle.cleanup()`` or when the Bundle is garbage-collected."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"bundle path {path!r}: expected a str or os.PathLike (a bundle folder or .zip)")
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle")
    tmp = None
    root = path
    if not path.is_dir():
        if not path.is_file() or not zipfile.is_zipfile(path):
            raise BundleError(f"{path}: not a bundle folder or .zip")
        tmp, root = _open_zip(path)
    try:
        manifest = read_manifest(root)
        if verify:
            verify_files(root, manifest)
        return Bundle(root=root, manifest=manifest, _tmp=tmp)
    except BaseException:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(root: Path, manifest: dict | Manifest) -> dict:
    """Fill in sha256/size of every file in ``manifest['files']``, validate the whole manifest
    (adrt.contract) and write manifest.json atomically. Returns the manifest written."""
    root = Path(root)
    d = manifest.to_dict() if isinstance(manifest, Manifest) else manifest
    files = d.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{root}: manifest 'files' must be an object naming every file, got {type(files).__name__}")
    for name in list(files):
        p = _member(root, name)
        files[name] = {**(files[name] or {}), "sha256": sha256_file(p), "bytes": p.stat().st_size}
    checked = Manifest.from_dict(d, str(root / MANIFEST)).to_dict()
    write_bytes_atomic(root / MANIFEST, json.dumps(checked, indent=2))
    return checked
