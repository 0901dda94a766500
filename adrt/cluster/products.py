"""The products of ``adrt train-many``: read from a JSON or TOML file, or found in a folder of
MVTec-style categories. No Ray and no torch here.

A file names ``defaults`` and a list of ``products``::

    [defaults]                        # JSON: {"defaults": {...}, "products": [{...}, ...]}
    method = "patchcore"
    size = 256
    cpus = 2

    [[products]]
    name = "bottle"
    data = "mvtec/bottle"             # relative to the file's folder
    options = { coreset_ratio = 0.05 }

Each product's own keys win, then options given on the command line, then the file's defaults.
Data paths are not checked here: on a cluster they name the workers' (shared) storage, and a
missing folder is that product's failure, reported with the others.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from adrt.errors import InputError

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Product:
    """One training job: a dataset, a method and its options, and what it asks of the cluster."""

    name: str
    data: str
    method: str = "patchcore"
    size: int = 256
    seed: int = 0
    holdout: float = 0.1
    options: dict = field(default_factory=dict)
    cpus: float = 1.0
    gpus: float = 0.0
    memory_mb: int | None = None
    threads: int | None = None
    evaluate: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


KEYS = [f.name for f in fields(Product)]
_TYPES = {"name": str, "data": str, "method": str, "size": int, "seed": int, "holdout": (int, float),
          "options": dict, "cpus": (int, float), "gpus": (int, float), "memory_mb": (int, type(None)),
          "threads": (int, type(None)), "evaluate": bool}


def read_config(path: Path) -> dict:
    """A JSON (.json) or TOML (.toml) file as a dict."""
    if not path.is_file():
        raise InputError(f"{path}: no such config file (a .json or .toml file, or a folder of categories)")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise InputError(f"{path}: expected a .json or .toml config file, or a folder of categories")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a UTF-8 text file ({e})") from None
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON ({e})") from None
    else:
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib
            except ImportError:
                raise InputError(f"{path}: reading TOML on Python 3.10 needs tomli (pip install tomli); or write "
                                 f"the config as JSON") from None
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise InputError(f"{path}: not valid TOML ({e})") from None


def _check_entry(entry, where: str) -> dict:
    if not isinstance(entry, dict):
        raise InputError(f"{where}: expected a table of settings, got {type(entry).__name__}")
    for k, v in entry.items():
        if k not in _TYPES:
            raise InputError(f"{where}: unknown key {k!r}; keys: {', '.join(KEYS)}")
        want = _TYPES[k]
        if isinstance(v, bool) and want is not bool or not isinstance(v, want):
            names = " or ".join(t.__name__ for t in (want if isinstance(want, tuple) else (want,)))
            raise InputError(f"{where}: {k} = {v!r}: expected {names.replace('NoneType', 'null')}")
    return entry


def _merge(*layers: dict) -> dict:
    out: dict = {}
    for layer in layers:
        for k, v in layer.items():
            out[k] = {**out.get(k, {}), **v} if k == "options" else v
    return out


def _product(settings: dict, where: str) -> Product:
    for k in ("name", "data"):
        if k not in settings:
            raise InputError(f"{where}: {k!r} is missing")
    if not _NAME.match(settings["name"]):
        raise InputError(f"{where}: name {settings['name']!r}: expected letters, digits, '_', '.', '-' "
                         f"(it names the product's folders)")
    p = Product(**settings)
    if p.size < 32:
        raise InputError(f"{where}: size {p.size}: expected >= 32")
    if not 0 < p.holdout < 1:
        raise InputError(f"{where}: holdout {p.holdout}: expected between 0 and 1")
    if p.cpus <= 0 or p.gpus < 0:
        raise InputError(f"{where}: cpus {p.cpus} / gpus {p.gpus}: expected cpus > 0 and gpus >= 0")
    if p.memory_mb is not None and p.memory_mb <= 0 or p.threads is not None and p.threads < 1:
        raise InputError(f"{where}: memory_mb {p.memory_mb} / threads {p.threads}: expected positive values")
    return p


def products_from_config(path: Path, overrides: dict | None = None) -> list[Product]:
    """The products a config file lists; ``overrides`` (command-line options) sit between the
    file's defaults and each product's own keys."""
    cfg = read_config(path)
    if not isinstance(cfg, dict):
        raise InputError(f"{path}: expected a table with 'defaults' and 'products'")
    unknown = set(cfg) - {"defaults", "products"}
    if unknown:
        raise InputError(f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}; expected defaults, products")
    defaults = _check_entry(cfg.get("defaults", {}), f"{path}: defaults")
    if "name" in defaults or "data" in defaults:
        raise InputError(f"{path}: defaults cannot set name or data (they are per product)")
    items = cfg.get("products")
    if not isinstance(items, list) or not items:
        raise InputError(f"{path}: expected a non-empty list 'products' ([[products]] in TOML)")
    out = []
    for i, entry in enumerate(items):
        where = f"{path}: products[{i}]" + (f" ({entry.get('name')})" if isinstance(entry, dict) and "name" in entry else "")
        entry = dict(_check_entry(entry, where))
        if "data" in entry and not Path(entry["data"]).is_absolute():
            entry["data"] = str((path.parent / entry["data"]).resolve())
        out.append(_product(_merge(defaults, overrides or {}, entry), where))
    return _unique(out)


def products_from_folder(folder: Path, overrides: dict | None = None) -> list[Product]:
    """One product per MVTec-style category (a subfolder with train/good) of ``folder``, or the
    folder itself when it is one category."""
    if (folder / "train" / "good").is_dir():
        cats = [folder]
    else:
        cats = sorted(p for p in folder.iterdir() if p.is_dir() and (p / "train" / "good").is_dir())
    if not cats:
        raise InputError(f"{folder}: no MVTec-style categories (subfolders with train/good) found")
    settings = overrides or {}
    _check_entry(settings, "command-line options")
    return _unique([_product(_merge(settings, {"name": c.name, "data": str(c.resolve())}), str(c)) for c in cats])


def _unique(products: list) -> list:
    seen = set()
    for p in products:
        if p.name in seen:
            raise InputError(f"product name {p.name!r} appears twice; names must be unique (they name folders)")
        seen.add(p.name)
    return products


def load_products(source: str | Path, overrides: dict | None = None) -> list[Product]:
    """Products from a config file or a folder of categories."""
    source = Path(source)
    if source.is_dir():
        return products_from_folder(source, overrides)
    return products_from_config(source, overrides)
