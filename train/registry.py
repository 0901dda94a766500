"""Method registry: one line per built-in method in ``BUILTIN`` (name → ``module:Class``), imported on
first use; every method class is checked against the :class:`Method` protocol when it is registered.
Duplicates, unknown names and incomplete classes fail loudly.

Adding a method is one folder under train/ (``__init__.py`` with the method class, ``model.py``,
``fit.py`` where it trains) and one line in ``BUILTIN``. Methods do not import this module, so the
registry and the methods form no import cycle.
"""
from __future__ import annotations

import importlib
from typing import Callable, ClassVar, Protocol, TypeVar

from adrt.errors import AdrtError

BUILTIN: dict[str, str] = {
    "padim": "adrt.train.padim:PaDiM",
    "patchcore": "adrt.train.patchcore:PatchCore",
    "inpaint": "adrt.train.inpaint:Inpaint",
    "memae": "adrt.train.memae:MemAE",
    "vae": "adrt.train.vae:VAE",
    "efficientad": "adrt.train.efficientad:EfficientAD",
    "students": "adrt.train.students:Students",
    "reference": "adrt.train.reference:Reference",
}


class Method(Protocol):
    """What a training method provides (static methods and class attributes of one class).

    ``Config``: frozen dataclass of its options, checked in ``__post_init__``. ``build(cfg)``: the
    untrained scorer (an ``nn.Module`` whose eval forward is the exported graph); ``fit(cfg, images,
    preprocess, seed, log)``: the trained one. ``TEST_TIME_OPTIONS``: options a derived run may change
    without retraining (``adrt.train.derive``), through ``derive(scorer, cfg, spec, seed)``.
    ``absent``: options newer than some saved runs, with the value those runs were trained without.
    ``needs_references(cfg)``: every image comes with a reference image (two graph inputs);
    ``check_training(cfg, geometry, defects)``: refuses what the method cannot train with.
    :class:`MethodBase` gives the defaults (no test-time options, nothing absent).
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    TEST_TIME_OPTIONS: ClassVar[tuple[str, ...]]
    absent: ClassVar[dict]

    @staticmethod
    def build(cfg, pretrained: bool = False): ...

    @staticmethod
    def fit(cfg, images, preprocess, seed: int = 0, log=print): ...

    @staticmethod
    def derive(scorer, cfg, spec, seed: int): ...

    @staticmethod
    def needs_references(cfg) -> bool: ...

    @staticmethod
    def check_training(cfg, geometry, defects) -> None: ...


MEMBERS = ("Config", "TEST_TIME_OPTIONS", "absent", "build", "fit", "derive", "needs_references", "check_training")


class MethodBase:
    """Defaults of :class:`Method`: no test-time options, no options absent from older runs."""

    TEST_TIME_OPTIONS: ClassVar[tuple[str, ...]] = ()
    absent: ClassVar[dict] = {}

    @staticmethod
    def derive(scorer, cfg, spec, seed: int):
        raise AdrtError("this method has no test-time options: a derived run would equal its source")

    @staticmethod
    def needs_references(cfg) -> bool:
        """True when every image comes with its own reference image (a two-input graph)."""
        return False

    @staticmethod
    def check_training(cfg, geometry, defects) -> None:
        """Raise AdrtError for an input geometry or calibration the method cannot train with."""


_METHODS: dict[str, type] = {}
T = TypeVar("T", bound=type)


def check_method(name: str, cls) -> None:
    """Raise AdrtError naming what ``cls`` lacks of the :class:`Method` protocol."""
    missing = [m for m in MEMBERS if not hasattr(cls, m)]
    if missing:
        raise AdrtError(f"method {name!r} ({getattr(cls, '__qualname__', cls)!r}) lacks {', '.join(missing)} "
                        "of the Method protocol (adrt.train.registry)")
    if not set(cls.TEST_TIME_OPTIONS) <= {f for f in getattr(cls.Config, "__dataclass_fields__", {})}:
        raise AdrtError(f"method {name!r}: TEST_TIME_OPTIONS {cls.TEST_TIME_OPTIONS} are not all options")


def register(name: str) -> Callable[[T], T]:
    """Register a method class under ``name`` (methods outside ``BUILTIN``); it is checked against
    :class:`Method`, and registering a name that is taken (a built-in one included) raises."""

    def deco(cls: T) -> T:
        if name in BUILTIN:
            _load_builtin(name)
        _add(name, cls)
        return cls

    return deco


def _add(name: str, cls) -> None:
    if name in _METHODS:
        raise AdrtError(f"method {name!r} is already registered by {_METHODS[name].__qualname__}")
    check_method(name, cls)
    cls.name = name
    _METHODS[name] = cls


def _load_builtin(name: str) -> None:
    if name not in _METHODS:
        module, _, attr = BUILTIN[name].partition(":")
        _add(name, getattr(importlib.import_module(module), attr))


def available() -> list[str]:
    return sorted(set(BUILTIN) | set(_METHODS))


def get_method(name: str) -> type[Method]:
    """The method class for ``name``; an unknown name raises listing the available ones."""
    if name in BUILTIN:
        _load_builtin(name)
    try:
        return _METHODS[name]
    except KeyError:
        raise AdrtError(f"unknown method {name!r}; available: {', '.join(available())}") from None
