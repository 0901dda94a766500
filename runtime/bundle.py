"""Bundle format: a folder (or a .zip of one) with manifest.json and the files it lists.

manifest.json holds the format version, adrt version, method and hyper-parameters, input spec
(H, W, channels, resize rule, normalisation), calibration, training summary, metrics and a
sha256 for every file. Loading verifies all of it before any model is opened.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from adrt.errors import BundleError

FORMAT = "adrt-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Bundle:
    """A verified bundle on disk. ``root`` is the folder holding manifest.json."""

    root: Path
    manifest: dict
    _tmp: str | None = field(default=None, repr=False)

    @property
    def method(self) -> str:
        return self.manifest["method"]

    @property
    def input(self) -> dict:
        return self.manifest["input"]

    def model_path(self, variant: str = "fp32") -> Path:
        models = self.manifest.get("models", {})
        if variant not in models:
            raise BundleError(f"{self.root}: no {variant!r} model in this bundle; it has: {', '.join(models) or 'none'}")
        return self.root / models[variant]["file"]

    def cleanup(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{root}: not an adrt bundle ({MANIFEST} missing)")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not an adrt bundle manifest (format {manifest.get('format') if isinstance(manifest, dict) else None!r}, expected {FORMAT!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format version {version!r} (written by adrt "
                          f"{manifest.get('adrt_version', '?')}); this adrt reads format version {FORMAT_VERSION}")
    for key in ("method", "input", "files", "models"):
        if key not in manifest:
            raise BundleError(f"{path}: manifest lacks {key!r}")
    return manifest


def verify_files(root: Path, manifest: dict) -> None:
    """Every listed file exists and has its recorded sha256."""
    for name, rec in manifest["files"].items():
        p = root / name
        if not p.is_file():
            raise BundleError(f"{root}: file {name} listed in the manifest is missing")
        got = sha256_file(p)
        if got != rec["sha256"]:
            raise BundleError(f"{root}: checksum mismatch for {name} (manifest {rec['sha256'][:12]}…, "
                              f"file {got[:12]}…): the bundle was modified or is corrupt")


def open_bundle(path: str | os.PathLike, verify: bool = True) -> Bundle:
    """Open and verify a bundle folder or .zip. A zip is extracted to a temporary folder."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle")
    tmp = None
    root = path
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise BundleError(f"{path}: not a bundle folder or .zip")
        tmp = tempfile.mkdtemp(prefix="adrt-bundle-")
        with zipfile.ZipFile(path) as z:
            for n in z.namelist():
                if n.startswith("/") or ".." in Path(n).parts:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise BundleError(f"{path}: unsafe member name {n!r}")
            z.extractall(tmp)
        root = Path(tmp)
        subs = [p for p in root.iterdir() if p.is_dir()]
        if not (root / MANIFEST).exists() and len(subs) == 1:
            root = subs[0]
    try:
        manifest = read_manifest(root)
        if verify:
            verify_files(root, manifest)
    except BundleError:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Bundle(root=root, manifest=manifest, _tmp=tmp)


def write_manifest(root: Path, manifest: dict) -> None:
    """Fill in sha256/size of every file in ``manifest['files']`` and write manifest.json."""
    for name, rec in manifest["files"].items():
        p = root / name
        rec["sha256"] = sha256_file(p)
        rec["bytes"] = p.stat().st_size
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, root / MANIFEST)
