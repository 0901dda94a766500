"""Explicit method registry: a decorator fills a dict; duplicates and unknown names fail loudly."""
from __future__ import annotations

from typing import Callable, TypeVar

from adrt.errors import AdrtError

_METHODS: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register(name: str) -> Callable[[T], T]:
    """Register a method class under ``name``; registering the same name twice raises."""

    def deco(cls: T) -> T:
        if name in _METHODS:
            raise AdrtError(f"method {name!r} is already registered by {_METHODS[name].__qualname__}")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return deco


def _import_builtin_methods() -> None:
    # Importing the method packages runs their @register decorators.
    from adrt.train import padim, patchcore  # noqa: F401
    from adrt.train import inpaint  # noqa: F401
    from adrt.train import memae, vae  # noqa: F401
    from adrt.train import efficientad, students  # noqa: F401
    from adrt.train import reference  # noqa: F401


def available() -> list[str]:
    _import_builtin_methods()
    return sorted(_METHODS)


def get_method(name: str) -> type:
    """The method class for ``name``; an unknown name raises listing the available ones."""
    _import_builtin_methods()
    try:
        return _METHODS[name]
    except KeyError:
        raise AdrtError(f"unknown method {name!r}; available: {', '.join(sorted(_METHODS))}") from None
