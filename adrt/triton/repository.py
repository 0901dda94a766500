"""Triton model repositories written from adrt bundles (``adrt triton``), and their check.

Layout (one model per bundle; version folders as Triton numbers them)::

    REPO/
      adrt-triton-repository.json      what adrt wrote here (Triton ignores files at the top)
      bottle/
        config.pbtxt                   shared by every version of the model
        1/
          manifest.json                the bundle's manifest, verbatim: sha256 of every bundle file
          adrt-triton.json             which bundle file each served file is, and how it is served
          model.onnx | model.plan | model.py + the whole bundle

Every bundle is verified before anything is written; the repository is assembled beside ``out``
and moved into place at the end, so a failed call leaves nothing half-written. A new version
(``add=True``) appears in one rename, which is what Triton's repository polling expects.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from adrt._version import __version__
from adrt.errors import BundleError, InputError, ServingError
from adrt.runtime.bundle import MANIFEST, Bundle, open_bundle, read_manifest, sha256_file, verify_files
from adrt.triton.config import (Form, ModelIO, ServeOptions, Tensor, build_config, check_model_name, check_schema,
                                model_io, schema_version, to_pbtxt)
from adrt.triton.engines import check_profile, choose_engines

REPO_RECORD = "adrt-triton-repository.json"
VERSION_RECORD = "adrt-triton.json"
REPO_FORMAT = "adrt-triton-repository"
REPO_FORMAT_VERSION = 1
CONFIG = "config.pbtxt"
MODEL_PY_FILE = "model.py"

# The Python-backend model: a thin shim over adrt.triton.python_model, run by Triton's stub under
# the first python3 on tritonserver's PATH (or the model's EXECUTION_ENV_PATH).
MODEL_PY = '''"""Triton Python-backend model written by `adrt triton`: runs the adrt bundle in this folder with
adrt.runtime (numpy + ONNX Runtime, no torch). Settings come from config.pbtxt's parameters."""
import sys

import triton_python_backend_utils as pb_utils

try:
    from adrt.triton.python_model import BundleModel
except ImportError as e:
    raise ImportError(f"adrt is not importable by Triton's Python backend stub ({sys.executable}, Python "
                      f"{sys.version.split()[0]}): install adrt in the environment whose python3 is first on "
                      f"tritonserver's PATH, or point the model's EXECUTION_ENV_PATH at one ({e})") from e


class TritonPythonModel(BundleModel):
    pb = pb_utils
'''


@dataclass(frozen=True)
class Source:
    """A bundle to serve and the model name it is served under."""

    name: str
    path: Path


@dataclass
class Prepared:
    """One model, checked and ready to write: which bundle files go into the version folder."""

    source: Source
    bundle: Bundle
    form: Form
    io: ModelIO
    config: str
    files: dict  # name in the version folder -> bundle file name
    record: dict = field(default_factory=dict)


def parse_sources(items: Sequence[str]) -> list[Source]:
    """``BUNDLE`` or ``NAME=BUNDLE`` each; the default name is the bundle's folder name (a .zip's stem)."""
    if not items:
        raise InputError("no bundle given: adrt triton BUNDLE... --out REPO")
    out: list[Source] = []
    for item in items:
        name, sep, rest = str(item).partition("=")
        if sep and not Path(item).exists():
            path = Path(rest)
        else:
            path = Path(item)
            base = path.resolve().name
            name = base[:-4] if base.endswith(".zip") else base
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".-") or "model"
        out.append(Source(check_model_name(name), path))
    seen: dict[str, Path] = {}
    for s in out:
        if s.name in seen:
            raise InputError(f"two bundles would be served as model {s.name!r} ({seen[s.name]} and {s.path}); "
                             f"name them: NAME=BUNDLE")
        seen[s.name] = s.path
    return out


# --- preparing ----------------------------------------------------------------------------------

def prepare(sources: Sequence[Source], form: Form, opts: ServeOptions, log=lambda m: None) -> list[Prepared]:
    """Open and verify every bundle and build its config; nothing is written."""
    opts.check(form)
    bundles: dict = {}
    try:
        for s in sources:
            bundles[s.name] = open_bundle(s.path)
        engines: dict = {}
        target = None
        if form is Form.TENSORRT:
            target, engines = choose_engines(bundles, opts.precision, opts.target)
        out = []
        for s in sources:
            b = bundles[s.name]
            record = {"form": form.value, "bundle": str(Path(s.path).resolve()), "method": b.method,
                      "precision": opts.precision}
            if form is Form.TENSORRT:
                rec = engines[s.name]
                check_profile(s.name, rec, opts.max_batch)
                onnx = b.root / rec["onnx"] if rec.get("onnx") else b.model_path(opts.precision)
                files = {"model.plan": rec["file"]}
                record.update(engine=rec["file"], target=target, gpu=rec.get("gpu"), tensorrt=rec.get("tensorrt"))
                model_file = "model.plan"
            else:
                onnx = b.model_path(opts.precision)
                rel = onnx.relative_to(b.root).as_posix()
                if form is Form.ONNXRUNTIME:
                    files, model_file = {rel: rel}, rel
                else:
                    files, model_file = {n: n for n in b.manifest["files"]}, MODEL_PY_FILE
                    record["runtime_backend"] = opts.python_backend
            io = model_io(onnx, b.manifest)
            text = to_pbtxt(build_config(s.name, form, io, opts, model_file))
            if schema_version():
                check_schema(text, f"{s.name}/{CONFIG}")
            log(f"{s.name}: {b.method} bundle {s.path} -> {form.value} ({model_file})")
            out.append(Prepared(s, b, form, io, text, files, record))
        return out
    except BaseException:
        for b in bundles.values():
            b.cleanup()
        raise


# --- writing ----------------------------------------------------------------------------------

def _io_record(io: ModelIO) -> dict:
    def t(x: Tensor) -> dict:
        return {"name": x.name, "data_type": x.data_type, "dims": list(x.dims)}

    return {"inputs": [t(x) for x in io.inputs], "outputs": [t(x) for x in io.outputs]}


def _write_version(p: Prepared, folder: Path, version: int) -> None:
    folder.mkdir(parents=True)
    served = {}
    for dst, src in p.files.items():
        target = folder / dst
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p.bundle.root / src, target)
        served[dst] = {"bundle_file": src, "sha256": p.bundle.manifest["files"][src]["sha256"]}
    shutil.copyfile(p.bundle.root / MANIFEST, folder / MANIFEST)
    if p.form is Form.PYTHON:
        (folder / MODEL_PY_FILE).write_text(MODEL_PY)
    record = {**p.record, "model": p.source.name, "version": version, "served": served,
              "adrt_version": __version__, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (folder / VERSION_RECORD).write_text(json.dumps(record, indent=2))


def _write_model(p: Prepared, folder: Path, version: int) -> None:
    folder.mkdir(parents=True)
    (folder / CONFIG).write_text(p.config)
    _write_version(p, folder / str(version), version)


def read_repo_record(repo: Path) -> dict | None:
    """The record adrt left at the top of a repository, or None where there is none."""
    path = repo / REPO_RECORD
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ServingError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(rec, dict) or rec.get("format") != REPO_FORMAT:
        raise ServingError(f"{path}: not an adrt Triton repository record")
    if rec.get("format_version") != REPO_FORMAT_VERSION:
        raise ServingError(f"{path}: repository record version {rec.get('format_version')!r}; this adrt writes "
                           f"version {REPO_FORMAT_VERSION}")
    return rec


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def write_repository(sources: Sequence[Source], out: str | os.PathLike, form: Form | str = Form.PYTHON,
                     opts: ServeOptions = ServeOptions(), *, overwrite: bool = False, add: bool = False,
                     version: int | None = None, log=lambda m: None) -> dict:
    """Write a Triton model repository at ``out`` serving each bundle of ``sources`` as one model.

    ``out`` must be new or empty, unless it is a repository written by adrt triton and either
    ``overwrite`` (replace it whole) or ``add`` (each bundle becomes the next version of the model
    of its name, or a new model; an existing model keeps its config.pbtxt, and its inputs and
    outputs must match). ``version`` numbers the version folders (default 1, or the next with
    ``add``). Returns the repository record.
    """
    form = Form(form) if not isinstance(form, Form) else form
    out = Path(out)
    if overwrite and add:
        raise InputError("--overwrite and --add exclude each other: replace the repository or add to it")
    if version is not None and version < 1:
        raise InputError(f"--version {version}: expected >= 1 (Triton's version folders are 1, 2, ...)")
    if out.exists() and not out.is_dir():
        raise ServingError(f"{out}: is a file, not a model repository folder")
    existing = out.is_dir() and any(out.iterdir())
    record = read_repo_record(out) if existing else None
    if existing and record is None:
        raise ServingError(f"{out}: folder is not empty and was not written by adrt triton (no {REPO_RECORD}); "
                           f"choose a new or empty folder")
    if existing and not (overwrite or add):
        raise ServingError(f"{out}: already an adrt Triton repository (models: {', '.join(record['models']) or 'none'});"
                           f" --overwrite replaces it, --add adds the bundles as new versions")
    if add and not existing:
        raise ServingError(f"{out}: --add needs an existing adrt Triton repository")
    prepared = prepare(sources, form, opts, log)
    try:
        if add:
            return _add(prepared, out, record, version, log)
        return _replace(prepared, out, form, version or 1, log)
    finally:
        for p in prepared:
            p.bundle.cleanup()


def _new_record() -> dict:
    return {"format": REPO_FORMAT, "format_version": REPO_FORMAT_VERSION, "models": {}}


def _note(record: dict, p: Prepared, version: int) -> None:
    m = record["models"].setdefault(p.source.name, {"form": p.form.value, **_io_record(p.io), "versions": {}})
    m["versions"][str(version)] = {k: p.record[k] for k in ("bundle", "method", "precision")}
    record.update(adrt_version=__version__, written=time.strftime("%Y-%m-%dT%H:%M:%S%z"), schema=schema_version())


def _replace(prepared: list, out: Path, form: Form, version: int, log) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    trash = None
    try:
        repo = staging / "repo"
        repo.mkdir()
        record = _new_record()
        for p in prepared:
            _write_model(p, repo / p.source.name, version)
            _note(record, p, version)
        _write_json_atomic(repo / REPO_RECORD, record)
        check_repository(repo)
        if out.exists():
            trash = staging / "old"
            os.replace(out, trash)
        os.replace(repo, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"wrote {out}: {', '.join(f'{p.source.name}/{version}' for p in prepared)} ({form.value})")
    return record


def _add(prepared: list, out: Path, record: dict, version: int | None, log) -> dict:
    plans = []
    for p in prepared:
        name, model_dir = p.source.name, out / p.source.name
        known = record["models"].get(name)
        if model_dir.exists():
            if known is None:
                raise ServingError(f"{model_dir}: a model folder adrt did not write; choose another name (NAME=BUNDLE)")
            if known["form"] != p.form.value:
                raise ServingError(f"model {name!r} is served as {known['form']}, not {p.form.value}; versions of one "
                                   f"model share one config, so its form cannot change")
            new = _io_record(p.io)
            if {k: known[k] for k in new} != new:
                raise ServingError(f"model {name!r}: bundle {p.source.path} has inputs/outputs {new}, but the model's "
                                   f"config serves {({k: known[k] for k in new})}; versions of one model share one "
                                   f"config: serve this bundle under another name (NAME=BUNDLE)")
            taken = _versions(model_dir)
            v = version if version is not None else (max(taken) + 1 if taken else 1)
            if v in taken:
                raise ServingError(f"model {name!r} already has version {v} ({model_dir / str(v)}); versions are "
                                   f"never rewritten in place: choose another --version")
        else:
            v = version or 1
        plans.append((p, v, model_dir.exists()))
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for i, (p, v, exists) in enumerate(plans):
            dst = staging / str(i)
            if exists:
                _write_version(p, dst, v)
                check_version(dst, Form(p.form))
            else:
                _write_model(p, dst, v)
                check_version(dst / str(v), Form(p.form))
        # Each version or model folder appears in one rename, so a polling Triton never sees half of one.
        for i, (p, v, exists) in enumerate(plans):
            os.replace(staging / str(i), out / p.source.name / str(v) if exists else out / p.source.name)
            _note(record, p, v)
            log(f"added {p.source.name}/{v} to {out}")
        _write_json_atomic(out / REPO_RECORD, record)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record


# --- checking ---------------------------------------------------------------------------------

def check_version(folder: Path, form: Form | None = None) -> dict:
    """Verify one version folder: its record, the bundle manifest and the sha256 of every served
    file (the whole bundle for the python form). Returns the version record."""
    path = folder / VERSION_RECORD
    if not path.is_file():
        raise ServingError(f"{folder}: no {VERSION_RECORD}; not a version folder written by adrt triton")
    try:
        rec = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ServingError(f"{path}: not valid JSON ({e})") from None
    manifest = read_manifest(folder)
    if form is not None and rec.get("form") != form.value:
        raise ServingError(f"{folder}: written for the {rec.get('form')} form, the model serves {form.value}")
    for dst, s in rec.get("served", {}).items():
        want = manifest["files"].get(s["bundle_file"], {}).get("sha256")
        p = folder / dst
        if not p.is_file():
            raise BundleError(f"{folder}: served file {dst} is missing")
        if want is None or sha256_file(p) != want:
            raise BundleError(f"{folder}: {dst} does not match the sha256 the bundle's manifest records for "
                              f"{s['bundle_file']}: modified or corrupt")
    if rec.get("form") == Form.PYTHON.value:
        verify_files(folder, manifest)
        if not (folder / MODEL_PY_FILE).is_file():
            raise ServingError(f"{folder}: {MODEL_PY_FILE} is missing")
    return rec


def check_repository(repo: str | os.PathLike) -> list[dict]:
    """Verify a repository written by adrt triton: every model's config against Triton's schema
    (when tritonclient is installed) and every version folder's files against the bundle's
    checksums. Returns one row per model version; raises on the first problem."""
    repo = Path(repo)
    if not repo.is_dir():
        raise ServingError(f"{repo}: no such repository folder")
    record = read_repo_record(repo)
    if record is None:
        raise ServingError(f"{repo}: not written by adrt triton (no {REPO_RECORD})")
    schema = schema_version()
    rows = []
    for name, m in sorted(record["models"].items()):
        model_dir = repo / name
        cfg = model_dir / CONFIG
        if not cfg.is_file():
            raise ServingError(f"{model_dir}: {CONFIG} is missing")
        if schema:
            parsed = check_schema(cfg.read_text(), str(cfg))
            if parsed.get("name", name) != name:
                raise ServingError(f"{cfg}: name {parsed.get('name')!r} differs from its folder {name!r}")
        versions = _versions(model_dir) if model_dir.is_dir() else []
        if not versions:
            raise ServingError(f"{model_dir}: no version folder (1, 2, ...)")
        for v in versions:
            rec = check_version(model_dir / str(v), Form(m["form"]))
            rows.append({"model": name, "version": v, "form": m["form"], "method": rec.get("method"),
                         "files": len(rec.get("served", {})), "schema": schema or "not checked (no tritonclient)"})
    return rows
