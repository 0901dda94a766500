"""The bundle contract, in one torch-free place: graph I/O, precisions, backends, the input spec,
the calibration record and the manifest (schema, types, ranges, known values).

Every reader and writer of ``manifest.json`` goes through :meth:`Manifest.from_dict` /
:meth:`Manifest.to_dict`, so a manifest the runtime accepts is one it can honour: a value the
runtime does not implement (a ``resize`` rule, a colour order, a layout) is refused, never ignored.

Forward compatibility inside format version 1: model and engine entries may carry fields this
version does not know (a graph variant's ``opset``, an engine's DLA core, ...); they are kept as
they are. The ``input`` record may not: an unknown preprocessing field would be silently skipped.

Imports only the standard library and adrt.errors (runs on Python 3.10 with any numpy).
"""
from __future__ import annotations

import copy
import enum
import re
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from adrt._checks import (_show, check_choice, check_dict, check_float, check_int, check_relative_path,  # noqa: F401
                          check_str)
from adrt.errors import BundleError, InputError

FORMAT = "adrt-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

# --- the fused graph ---------------------------------------------------------------------------

INPUT_NAME = "image"
#: The second uint8 input of methods that compare a frame with a golden reference (same shape).
REFERENCE_NAME = "reference"
INPUT_NAMES = (INPUT_NAME, REFERENCE_NAME)
OUTPUT_NAMES = ("anomaly_map", "score", "raw_map", "raw_score")
#: Output name -> its dimensions after the batch: maps are H×W, scores scalars.
OUTPUT_DIMS = {"anomaly_map": ("height", "width"), "score": (), "raw_map": ("height", "width"), "raw_score": ()}


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Backend(str, enum.Enum):
    ORT_CPU = "ort-cpu"
    ORT_CUDA = "ort-cuda"
    ORT_TRT = "ort-trt"
    TENSORRT = "tensorrt"  # native TensorRT plan from the bundle (adrt.runtime.tensorrt)


# What the runtime implements (adrt.runtime.image): anything else is refused at load.
RESIZE_RULES = ("bilinear",)
COLORS = ("rgb",)
CHANNELS = (3,)
LAYOUTS = ("NHWC",)
DTYPES = ("uint8",)
BATCH = ("dynamic",)
INT8_TARGETS = ("tensorrt", "cpu")
MAX_SIDE = 16384          # a model input side beyond this is a corrupt manifest, not a camera
MAX_FILES = 1000

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CAPABILITY = re.compile(r"^[0-9]{1,2}\.[0-9]{1,2}$")


# --- input spec and calibration ----------------------------------------------------------------

def _triple(name: str, v: Any, positive: bool) -> tuple[float, ...]:
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != 3:
        raise InputError(f"{name}={_show(v)}: expected 3 numbers (one per RGB channel)")
    return tuple(check_float(f"{name}[{i}]", x, 0.0 if positive else None, lo_open=positive) for i, x in enumerate(v))


@dataclass(frozen=True)
class InputSpec:
    """What the graph takes: uint8 N×H×W×C (NHWC, RGB); resizing to H×W is the runtime's job, by
    the rule ``resize``. ``mean``/``std`` are applied to pixel/255 inside the graph."""

    height: int
    width: int
    channels: int = 3
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    resize: str = "bilinear"
    color: str = "rgb"

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "height", check_int("input.height", self.height, 1, MAX_SIDE))
        set_(self, "width", check_int("input.width", self.width, 1, MAX_SIDE))
        if isinstance(self.channels, bool) or self.channels not in CHANNELS:
            raise InputError(f"input.channels={_show(self.channels)}: expected 3 (the runtime converts every "
                             f"image to RGB)")
        set_(self, "channels", int(self.channels))
        set_(self, "mean", _triple("input.mean", self.mean, positive=False))
        set_(self, "std", _triple("input.std", self.std, positive=True))
        check_choice("input.resize", self.resize, RESIZE_RULES)
        check_choice("input.color", self.color, COLORS)

    def to_dict(self) -> dict:
        return {f.name: list(getattr(self, f.name)) if isinstance(getattr(self, f.name), tuple) else getattr(self, f.name)
                for f in fields(self)}

    def to_manifest(self) -> dict:
        """The manifest's ``input`` record: this spec plus the graph's fixed dtype, layout and batch."""
        return {**self.to_dict(), "dtype": DTYPES[0], "layout": LAYOUTS[0], "batch": BATCH[0]}

    @classmethod
    def from_dict(cls, d: Any, manifest: bool = False) -> "InputSpec":
        """From a run's ``input`` record, or (``manifest=True``) a manifest's, which also states the
        dtype, layout and batch. Unknown keys are refused: they would be preprocessing this runtime
        does not do."""
        check_dict("input", d)
        fixed = {"dtype": DTYPES, "layout": LAYOUTS, "batch": BATCH} if manifest else {}
        names = {f.name for f in fields(cls)}
        # A letterbox bundle also names its geometry here (checked against the manifest's geometry
        # record): an adrt that predates geometries refuses such a manifest's input as an unknown
        # field instead of silently squashing the frames.
        unknown = sorted(set(d) - names - set(fixed) - ({"geometry"} if manifest else set()))
        if unknown:
            raise InputError(f"input: unknown field(s) {', '.join(map(repr, unknown))}; this adrt implements "
                             f"{', '.join(sorted(names | set(fixed)))}")
        for key, allowed in fixed.items():
            if key not in d:
                raise InputError(f"input: lacks {key!r} (expected {allowed[0]!r})")
            check_choice(f"input.{key}", d[key], allowed)
        for key in ("height", "width"):
            if key not in d:
                raise InputError(f"input: lacks {key!r}")
        if "geometry" in d:
            check_choice("input.geometry", d["geometry"], ("letterbox",))
        return cls(**{k: v for k, v in d.items() if k in names})


#: Input geometries (the manifest's ``geometry.mode``): how a camera frame becomes the model's input.
GEOMETRY_MODES = ("resize", "letterbox", "tile")
BLENDS = ("linear",)
MIN_TILE = 32             # a tile smaller than this has no room for a backbone's receptive field
MAX_TILES = 1024          # tiles per frame: beyond this the fused graph is unreasonably large


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the tiles along one axis of ``size`` pixels: every ``tile - overlap``
    pixels from 0, the last tile aligned with the far edge (so it may overlap its neighbour by
    more than ``overlap``). One tile when ``size == tile``."""
    stride = tile - overlap
    n = max(1, -(-(size - tile) // stride) + 1)
    return [min(i * stride, size - tile) for i in range(n)]


@dataclass(frozen=True)
class Geometry:
    """How a frame becomes the model's input (the manifest's ``geometry`` record).

    * ``resize``: the runtime resizes any frame to the input size (bilinear; today's rule).
    * ``letterbox``: the runtime scales the frame to fit the input size keeping its aspect ratio
      (bilinear), centred, and fills the rest with ``pad_value`` (one uint8 per RGB channel).
    * ``tile``: the graph takes the full frame (input height × width, fixed at export), cuts it into
      ``tile`` = (height, width) tiles at the offsets :func:`tile_starts` gives for ``overlap``, runs
      them as one batch and stitches the map in the graph, overlaps blended by ``blend`` (linear
      ramps across each overlap, normalised to sum to 1 at every pixel). The image score is the
      maximum of the stitched map.
    """

    mode: str = "resize"
    pad_value: tuple[int, int, int] | None = None
    tile: tuple[int, int] | None = None
    overlap: int | None = None
    blend: str | None = None

    def __post_init__(self):
        set_ = object.__setattr__
        check_choice("geometry.mode", self.mode, GEOMETRY_MODES)
        own = {"resize": (), "letterbox": ("pad_value",), "tile": ("tile", "overlap", "blend")}[self.mode]
        for name in ("pad_value", "tile", "overlap", "blend"):
            if name not in own and getattr(self, name) is not None:
                raise InputError(f"geometry.{name}={_show(getattr(self, name))}: not a field of mode "
                                 f"{self.mode!r} (it has: {', '.join(own) or 'no other field'})")
        if self.mode == "letterbox":
            v = (0, 0, 0) if self.pad_value is None else self.pad_value
            if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != 3:
                raise InputError(f"geometry.pad_value={_show(v)}: expected 3 integers 0..255 (one per RGB channel)")
            set_(self, "pad_value", tuple(check_int(f"geometry.pad_value[{i}]", x, 0, 255) for i, x in enumerate(v)))
        if self.mode == "tile":
            t = self.tile
            if isinstance(t, (str, bytes)) or not hasattr(t, "__len__") or len(t) != 2:
                raise InputError(f"geometry.tile={_show(t)}: expected [height, width] of a tile in pixels")
            t = tuple(check_int(f"geometry.tile[{i}]", x, MIN_TILE, MAX_SIDE) for i, x in enumerate(t))
            set_(self, "tile", t)
            o = check_int("geometry.overlap", 0 if self.overlap is None else self.overlap, 0)
            if 2 * o > min(t):
                raise InputError(f"geometry.overlap={o}: expected at most half the tile's side ({min(t) // 2}), "
                                 f"so that each overlap's ramps stay inside one tile")
            set_(self, "overlap", o)
            set_(self, "blend", check_choice("geometry.blend", self.blend or BLENDS[0], BLENDS))

    @property
    def tiled(self) -> bool:
        return self.mode == "tile"

    def grid(self, height: int, width: int) -> tuple[list[int], list[int]]:
        """Tile start offsets (rows, columns) for a ``height`` × ``width`` frame."""
        return tile_starts(height, self.tile[0], self.overlap), tile_starts(width, self.tile[1], self.overlap)

    def check_frame(self, height: int, width: int) -> None:
        """A tiled geometry's frame: at least one tile, at most MAX_TILES tiles."""
        if not self.tiled:
            return
        th, tw = self.tile
        if height < th or width < tw:
            raise InputError(f"geometry.tile={list(self.tile)}: larger than the input {height}×{width}; expected "
                             f"tiles no larger than the frame")
        ys, xs = self.grid(height, width)
        if len(ys) * len(xs) > MAX_TILES:
            raise InputError(f"geometry: {len(ys)}×{len(xs)} tiles of {th}×{tw} over {height}×{width}; expected at "
                             f"most {MAX_TILES} (use larger tiles or a smaller overlap)")

    def input_fields(self) -> dict:
        """What this geometry adds to the manifest's ``input`` record (a letterbox names itself
        there, so that an adrt without geometries refuses the bundle rather than squash frames)."""
        return {"geometry": "letterbox"} if self.mode == "letterbox" else {}

    def to_dict(self) -> dict:
        out = {"mode": self.mode}
        if self.mode == "letterbox":
            out.update(pad_value=list(self.pad_value), align="center")
        if self.mode == "tile":
            out.update(tile=list(self.tile), overlap=self.overlap, blend=self.blend)
        return out

    def to_manifest(self, height: int, width: int) -> dict:
        """The record with what follows from the frame size, for people reading it (tile offsets)."""
        out = self.to_dict()
        if self.tiled:
            ys, xs = self.grid(height, width)
            out["grid"] = {"rows": ys, "columns": xs, "tiles": len(ys) * len(xs)}
        return out

    @classmethod
    def from_dict(cls, d: Any, height: int | None = None, width: int | None = None) -> "Geometry":
        """From a ``geometry`` record; with the frame's ``height``/``width`` the tiling is checked
        against it (and a recorded ``grid`` against the rule). Unknown fields are refused."""
        check_dict("geometry", d)
        if "mode" not in d:
            raise InputError(f"geometry: lacks 'mode' (expected one of {', '.join(GEOMETRY_MODES)})")
        known = {"mode", "pad_value", "align", "tile", "overlap", "blend", "grid"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"geometry: unknown field(s) {', '.join(map(repr, unknown))}; this adrt implements "
                             f"{', '.join(sorted(known))}")
        if "align" in d:
            if d.get("mode") != "letterbox":
                raise InputError(f"geometry.align: only a letterbox geometry has it (mode {_show(d.get('mode'))})")
            check_choice("geometry.align", d["align"], ("center",))
        g = cls(**{k: d[k] for k in ("mode", "pad_value", "tile", "overlap", "blend") if k in d})
        if "grid" in d and not g.tiled:
            raise InputError(f"geometry.grid: only a tile geometry has it (mode {g.mode!r})")
        if height is not None:
            g.check_frame(height, width)
            if "grid" in d and d["grid"] != g.to_manifest(height, width)["grid"]:
                raise InputError(f"geometry.grid={_show(d['grid'])}: does not follow from the tile, overlap and "
                                 f"the input {height}×{width} (expected {g.to_manifest(height, width)['grid']})")
        return g


RESIZE = Geometry()
DECISION_RULES = ("std", "fpr", "f1")


@dataclass(frozen=True)
class Decision:
    """How one threshold (image score or map pixel) was chosen and what it is expected to do
    (``calibration.image`` / ``calibration.pixel``; adrt.thresholds writes them).

    ``rule``: std (mean + ``k``·std), fpr (``target_fpr``) or f1 (``n_defect`` labelled defect
    images, ``f1`` reached). ``holdout_fpr``: the fraction of held-out normal images (pixels) at or
    above the threshold; ``fpr_interval``: the ``confidence`` interval of the FPR on new normal
    images, computed as ``interval`` says. ``attainable``: False when ``target_fpr`` needs more
    held-out images than there were.
    """

    rule: str
    n_normal: int
    holdout_fpr: float
    fpr_interval: tuple[float, float]
    confidence: float
    interval: str
    attainable: bool = True
    k: float | None = None
    target_fpr: float | None = None
    n_defect: int = 0
    f1: float | None = None

    def __post_init__(self):
        set_ = object.__setattr__
        check_choice("rule", self.rule, DECISION_RULES)
        set_(self, "n_normal", check_int("n_normal", self.n_normal, 1))
        set_(self, "holdout_fpr", check_float("holdout_fpr", self.holdout_fpr, 0.0, 1.0))
        v = self.fpr_interval
        if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != 2:
            raise InputError(f"fpr_interval={_show(v)}: expected [low, high]")
        lo, hi = (check_float(f"fpr_interval[{i}]", x, 0.0, 1.0) for i, x in enumerate(v))
        if lo > hi:
            raise InputError(f"fpr_interval={_show(v)}: expected low <= high")
        set_(self, "fpr_interval", (lo, hi))
        set_(self, "confidence", check_float("confidence", self.confidence, 0.0, 1.0, lo_open=True, hi_open=True))
        check_str("interval", self.interval)
        if not isinstance(self.attainable, bool):
            raise InputError(f"attainable={_show(self.attainable)}: expected true or false")
        if self.k is not None:
            set_(self, "k", check_float("k", self.k, 0.0))
        if self.target_fpr is not None:
            set_(self, "target_fpr", check_float("target_fpr", self.target_fpr, 0.0, 1.0, lo_open=True, hi_open=True))
        set_(self, "n_defect", check_int("n_defect", self.n_defect, 0))
        if self.f1 is not None:
            set_(self, "f1", check_float("f1", self.f1, 0.0, 1.0))
        need = {"std": ("k", self.k), "fpr": ("target_fpr", self.target_fpr), "f1": ("f1", self.f1)}[self.rule]
        if need[1] is None:
            raise InputError(f"rule {self.rule!r} without {need[0]!r}")

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["fpr_interval"] = list(self.fpr_interval)
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_dict(cls, d: Any, where: str = "decision") -> "Decision":
        try:
            check_dict(where, d)
            names = {f.name for f in fields(cls)}
            unknown = sorted(set(d) - names)
            if unknown:
                raise InputError(f"unknown field(s) {', '.join(map(repr, unknown))}")
            return cls(**d)
        except TypeError as e:          # a required field missing
            raise InputError(f"{where}: {e}") from None
        except InputError as e:
            raise InputError(f"{where}: {e}") from None


@dataclass(frozen=True)
class Calibration:
    """Statistics of raw outputs on held-out normal images, and the thresholds derived from them.

    ``image``/``pixel``: how each threshold was chosen (:class:`Decision`); absent in bundles made
    before adrt recorded it (their rule is mean + 3·std, stated in ``rule``).
    """

    n_images: int
    score_mean: float
    score_std: float
    score_max: float
    score_threshold: float
    score_scale: float
    map_mean: float
    map_std: float
    map_q999: float
    map_threshold: float
    map_scale: float
    rule: str
    image: Decision | None = None
    pixel: Decision | None = None

    def __post_init__(self):
        object.__setattr__(self, "n_images", check_int("calibration.n_images", self.n_images, 1))
        for f in fields(self):
            if f.name in ("n_images", "rule", "image", "pixel"):
                continue
            positive = f.name.endswith(("_std", "_scale"))
            object.__setattr__(self, f.name, check_float(f"calibration.{f.name}", getattr(self, f.name),
                                                         0.0 if positive else None, lo_open=positive))
        check_str("calibration.rule", self.rule)
        for name in ("image", "pixel"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, Decision):
                object.__setattr__(self, name, Decision.from_dict(v, f"calibration.{name}"))

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("image", "pixel"):
            if d[name] is None:
                del d[name]
            else:
                d[name] = d[name].to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "Calibration":
        check_dict("calibration", d)
        optional = ("image", "pixel")
        missing = [f.name for f in fields(cls) if f.name not in d and f.name not in optional]
        if missing:
            raise InputError(f"calibration: lacks {', '.join(map(repr, missing))}")
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


# --- manifest entries --------------------------------------------------------------------------

def _check_known(where: str, d: dict, known: Mapping[str, Any]) -> None:
    """Type-check the optional fields this version knows; unknown ones are left alone."""
    for key, check in known.items():
        if key in d:
            check(f"{where}.{key}", d[key])


def _strlist(name, v):
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise InputError(f"{name}={_show(v)}: expected a list of strings")


# The optional fields this version knows, by type ("?": null allowed too).
_OPT = {"str": lambda n, v: check_str(n, v, empty=True), "dict": check_dict, "strlist": _strlist,
        "dict?": lambda n, v: v is None or check_dict(n, v), "int>=0": lambda n, v: check_int(n, v, 0),
        "int>=0?": lambda n, v: v is None or check_int(n, v, 0), "int>=1": lambda n, v: check_int(n, v, 1),
        "number>=0": lambda n, v: check_float(n, v, 0.0)}


def _opt(kind):
    return _OPT[kind]


_MODEL_FIELDS = {
    "opset": _opt("int>=1"), "format": _opt("str"), "float_parts": _opt("str"), "weights": _opt("str"),
    "activations": _opt("str"), "quantized_op_types": _opt("strlist"), "reduced_ops": _opt("dict"),
    "float_ops": _opt("dict"), "parity_vs_fp32": _opt("dict"), "parity_tolerance": _opt("dict"),
    "calibration": _opt("dict?"), "float_prefix": _opt("dict"),
    "int8_target": lambda n, v: check_choice(n, v, INT8_TARGETS),
}
_ENGINE_FIELDS = {
    "onnx": _opt("str"), "profile": _opt("dict"), "built": _opt("str"), "parity_vs_ort_cpu": _opt("dict"),
    "parity_rtol": _opt("number>=0"), "workspace_mib": _opt("int>=1"), "build_seconds": _opt("number>=0"),
    "timing_cache": _opt("str"), "api": _opt("str"), "network": _opt("str"), "cuda_binding": _opt("str"),
    "adrt_version": _opt("str"), "fp32_pinned_layers": _opt("int>=0"), "dla_core": _opt("int>=0?"),
}


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    bytes: int
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"sha256": self.sha256, "bytes": self.bytes, **copy.deepcopy(self.extra)}

    @classmethod
    def from_dict(cls, name: str, d: Any) -> "FileRecord":
        check_dict(f"files[{name!r}]", d)
        for key in ("sha256", "bytes"):
            if key not in d:
                raise InputError(f"files[{name!r}]: lacks {key!r} (expected its sha256 and size in bytes)")
        sha = d["sha256"]
        if not isinstance(sha, str) or not _SHA256.match(sha):
            raise InputError(f"files[{name!r}].sha256={_show(sha)}: expected 64 lower-case hex digits")
        size = check_int(f"files[{name!r}].bytes", d["bytes"], 0)
        return cls(sha, size, {k: v for k, v in d.items() if k not in ("sha256", "bytes")})


@dataclass(frozen=True)
class ModelEntry:
    """One graph of the bundle (``models[variant]``): its file and precision; fields this version
    does not know are kept in ``extra``."""

    file: str
    precision: Precision
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"file": self.file, "precision": self.precision.value, **copy.deepcopy(self.extra)}

    @classmethod
    def from_dict(cls, key: str, d: Any) -> "ModelEntry":
        where = f"models[{key!r}]"
        check_dict(where, d)
        for k in ("file", "precision"):
            if k not in d:
                raise InputError(f"{where}: lacks {k!r}")
        prec = Precision(check_choice(f"{where}.precision", d["precision"], [p.value for p in Precision]))
        if key in Precision._value2member_map_ and prec.value != key:
            raise InputError(f"{where}.precision={prec.value!r}: expected {key!r} (the variant's name)")
        _check_known(where, d, _MODEL_FIELDS)
        file = check_relative_path(f"{where}.file", d["file"], InputError)
        return cls(file, prec, {k: v for k, v in d.items() if k not in ("file", "precision")})


@dataclass(frozen=True)
class EngineEntry:
    """A TensorRT plan (``engines[tag]``), tagged with where it was built."""

    file: str
    precision: Precision
    gpu: str
    compute_capability: str
    tensorrt: str
    extra: dict = field(default_factory=dict)

    _KEYS = ("file", "precision", "gpu", "compute_capability", "tensorrt")

    def to_dict(self) -> dict:
        return {"file": self.file, "precision": self.precision.value, "gpu": self.gpu,
                "compute_capability": self.compute_capability, "tensorrt": self.tensorrt,
                **copy.deepcopy(self.extra)}

    @classmethod
    def from_dict(cls, tag: str, d: Any) -> "EngineEntry":
        where = f"engines[{tag!r}]"
        check_dict(where, d)
        for k in cls._KEYS:
            if k not in d:
                raise InputError(f"{where}: lacks {k!r} (an engine records file, precision, gpu, "
                                 f"compute_capability and tensorrt)")
        prec = Precision(check_choice(f"{where}.precision", d["precision"], [p.value for p in Precision]))
        cc = d["compute_capability"]
        if not isinstance(cc, str) or not _CAPABILITY.match(cc):
            raise InputError(f"{where}.compute_capability={_show(cc)}: expected a string like '8.7'")
        gpu = check_str(f"{where}.gpu", d["gpu"])
        trt = check_str(f"{where}.tensorrt", d["tensorrt"])
        _check_known(where, d, _ENGINE_FIELDS)
        file = check_relative_path(f"{where}.file", d["file"], InputError)
        return cls(file, prec, gpu, cc, trt, {k: v for k, v in d.items() if k not in cls._KEYS})


# --- the manifest ------------------------------------------------------------------------------

# Top-level keys in the order they are written; keys this version does not know follow them.
_ORDER = ("format", "format_version", "adrt_version", "method", "config", "input", "inputs", "geometry", "outputs", "threshold",
          "calibration", "training", "metrics", "export", "models", "files", "engines")
_DICTS = ("config", "outputs", "training", "metrics", "export")


@dataclass
class Manifest:
    """A validated manifest. Build one with :meth:`from_dict` (validates everything) and write it
    with :meth:`to_dict`; ``from_dict(m.to_dict())`` gives the same manifest back."""

    method: str
    input: InputSpec
    threshold: float
    models: dict[str, ModelEntry]
    files: dict[str, FileRecord]
    engines: dict[str, EngineEntry] = field(default_factory=dict)
    calibration: dict | None = None
    adrt_version: str = "?"
    sections: dict = field(default_factory=dict)     # config, outputs, training, metrics, export
    extra: dict = field(default_factory=dict)        # top-level keys this version does not know
    format_version: int = FORMAT_VERSION
    #: The manifest's ``inputs`` as written (None when absent: the graph takes ``image`` alone).
    declared_inputs: tuple | None = None

    @property
    def inputs(self) -> tuple:
        """The graph's uint8 inputs: ("image",), or ("image", "reference") for a method that compares
        each image with a reference given at run time."""
        return self.declared_inputs or (INPUT_NAME,)

    @property
    def paired(self) -> bool:
        """True when every image needs a reference image at run time."""
        return REFERENCE_NAME in self.inputs
    geometry: Geometry = RESIZE                      # absent in a manifest: resize

    def to_dict(self) -> dict:
        out = {"format": FORMAT, "format_version": self.format_version, "adrt_version": self.adrt_version,
               "method": self.method, "input": self.input.to_manifest(), "threshold": self.threshold,
               "models": {k: m.to_dict() for k, m in self.models.items()},
               "files": {k: f.to_dict() for k, f in self.files.items()}}
        if self.declared_inputs is not None:
            out["inputs"] = list(self.declared_inputs)
        if self.engines:
            out["engines"] = {k: e.to_dict() for k, e in self.engines.items()}
        if self.geometry != RESIZE:
            out["geometry"] = self.geometry.to_manifest(self.input.height, self.input.width)
        out["input"].update(self.geometry.input_fields())
        if self.calibration is not None:
            out["calibration"] = copy.deepcopy(self.calibration)
        out.update(copy.deepcopy(self.sections))
        ordered = {k: out[k] for k in _ORDER if k in out}
        ordered.update(copy.deepcopy(self.extra))
        return ordered

    def referenced_files(self) -> list[str]:
        """Every file the runtime may open: the models' and the engines' (all listed in ``files``)."""
        return [m.file for m in self.models.values()] + [e.file for e in self.engines.values()]

    @classmethod
    def from_dict(cls, d: Any, where: str = MANIFEST) -> "Manifest":
        """Validate ``d`` (parsed JSON). Raises BundleError naming ``where``, the field, its value
        and what was expected."""
        try:
            return cls._from_dict(d, where)
        except InputError as e:
            raise BundleError(f"{where}: {e}") from None

    @classmethod
    def _from_dict(cls, d: Any, where: str) -> "Manifest":
        if not isinstance(d, dict):
            raise BundleError(f"{where}: not an adrt bundle manifest (a JSON {type(d).__name__}, expected an object "
                              f"with format {FORMAT!r})")
        if d.get("format") != FORMAT:
            raise BundleError(f"{where}: not an adrt bundle manifest (format {_show(d.get('format'))}, "
                              f"expected {FORMAT!r})")
        version = d.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version != FORMAT_VERSION:
            raise BundleError(f"{where}: bundle format version {_show(version)} (written by adrt "
                              f"{d.get('adrt_version', '?')}); this adrt reads format version {FORMAT_VERSION}")
        for key in ("method", "input", "threshold", "models", "files"):
            if key not in d:
                raise InputError(f"manifest lacks {key!r}")
        adrt_version = check_str("adrt_version", d.get("adrt_version", "?"))
        method = check_str("method", d["method"])
        spec = InputSpec.from_dict(d["input"], manifest=True)
        inputs = d.get("inputs")
        if inputs is not None and (not isinstance(inputs, list) or inputs not in ([INPUT_NAME], list(INPUT_NAMES))):
            raise InputError(f"inputs={_show(inputs)}: expected [{INPUT_NAME!r}] or "
                             f"[{INPUT_NAME!r}, {REFERENCE_NAME!r}] (both uint8 N×H×W×C as 'input' says)")
        geometry = Geometry.from_dict(d["geometry"], spec.height, spec.width) if "geometry" in d else RESIZE
        if d["input"].get("geometry") != geometry.input_fields().get("geometry"):
            raise InputError(f"input.geometry={_show(d['input'].get('geometry'))} and geometry.mode="
                             f"{geometry.mode!r}: a letterbox bundle names 'letterbox' in both, no other bundle "
                             f"has input.geometry")
        # The calibrated outputs are sigmoids in (0, 1): a threshold outside it makes every label equal.
        threshold = check_float("threshold", d["threshold"], 0.0, 1.0, lo_open=True, hi_open=True)
        files_d = check_dict("files", d["files"])
        if len(files_d) > MAX_FILES:
            raise InputError(f"files: {len(files_d)} entries; expected at most {MAX_FILES}")
        files = {}
        for name, rec in files_d.items():
            check_relative_path(f"files[{_show(name)}]", name, InputError)
            if name == MANIFEST:
                raise InputError(f"files[{name!r}]: the manifest cannot list itself")
            files[name] = FileRecord.from_dict(name, rec)
        models_d = check_dict("models", d["models"])
        models = {check_str("models key", k): ModelEntry.from_dict(k, v) for k, v in models_d.items()}
        if Precision.FP32.value not in models:
            raise InputError(f"models: no 'fp32' entry (has: {', '.join(models) or 'none'}); every bundle has its "
                             f"fp32 model")
        engines_d = check_dict("engines", d.get("engines", {}))
        engines = {check_str("engines key", k): EngineEntry.from_dict(k, v) for k, v in engines_d.items()}
        for what, entries in (("models", models), ("engines", engines)):
            for key, e in entries.items():
                if e.file not in files:
                    raise InputError(f"{what}[{key!r}].file={e.file!r} is not listed in files: every file the "
                                     f"runtime opens must be listed with its sha256")
        calibration = None
        if "calibration" in d:
            Calibration.from_dict(d["calibration"])
            calibration = d["calibration"]
        sections = {}
        for key in _DICTS:
            if key in d:
                sections[key] = check_dict(key, d[key])
        extra = {k: v for k, v in d.items() if k not in _ORDER}
        return cls(method=method, input=spec, threshold=threshold, models=models, files=files, engines=engines,
                   calibration=copy.deepcopy(calibration), adrt_version=adrt_version,
                   sections=copy.deepcopy(sections), extra=copy.deepcopy(extra), format_version=version,
                   declared_inputs=None if inputs is None else tuple(inputs), geometry=geometry)


# --- the graph's I/O against the manifest ------------------------------------------------------

def check_graph_io(inputs, outputs, spec: InputSpec, what: str, names: tuple | None = None) -> None:
    """Check a loaded graph's I/O against the contract and ``spec`` (and the manifest's input
    ``names`` when given).

    ``inputs``/``outputs``: lists of ``(name, dtype, shape)`` with dtype a numpy-style name
    ('uint8', 'float32') and shape a sequence whose items are ints for fixed dimensions and
    anything else (None, a symbol) for dynamic ones. Raises BundleError naming ``what``.
    """
    expect_in = (spec.height, spec.width, spec.channels)
    expected_names, names = names, [n for n, _, _ in inputs]
    if names not in ([INPUT_NAME], list(INPUT_NAMES)):
        raise BundleError(f"{what}: graph inputs {names}; expected {INPUT_NAME!r}, optionally followed by "
                          f"{REFERENCE_NAME!r}")
    if expected_names is not None and names != list(expected_names):
        raise BundleError(f"{what}: graph inputs {names}; the manifest's inputs are {list(expected_names)}")
    for name, dtype, shape in inputs:
        if dtype != "uint8" or not _shape_fits(shape, expect_in):
            raise BundleError(f"{what}: input {name!r} is {dtype} {_fmt(shape)}; the manifest says "
                              f"uint8 N×{'×'.join(map(str, expect_in))}")
    got = {n: (t, s) for n, t, s in outputs}
    if sorted(got) != sorted(OUTPUT_NAMES):
        raise BundleError(f"{what}: graph outputs {sorted(got)}; expected {list(OUTPUT_NAMES)}")
    for name in OUTPUT_NAMES:
        dtype, shape = got[name]
        want = tuple(getattr(spec, d) for d in OUTPUT_DIMS[name])
        if dtype != "float32" or not _shape_fits(shape, want):
            raise BundleError(f"{what}: output {name!r} is {dtype} {_fmt(shape)}; expected float32 "
                              f"N{''.join('×' + str(x) for x in want)}")


def _shape_fits(shape, want: tuple) -> bool:
    if shape is None:
        return True          # unknown rank: checked on the first run's outputs
    shape = list(shape)
    if len(shape) != len(want) + 1:
        return False
    return all(not isinstance(s, int) or s == w for s, w in zip(shape[1:], want))


def _fmt(shape) -> str:
    return "?" if shape is None else "×".join("N" if not isinstance(s, int) else str(s) for s in shape) or "scalar"
