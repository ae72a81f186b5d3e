"""The registry of model formats.

Built-ins: ``joblib`` (default for Python objects), ``pickle``, ``skops``, ``onnx``,
``torchscript`` and ``torch_export``. A new format plugs in by registering one :class:`ModelFormat`
subclass::

    @embedml.register_format
    class MyFormat(embedml.ModelFormat):
        name = "myformat"
        suffixes = (".my",)
        ...

Registering a name twice raises unless ``replace=True``; an unknown name raises
:class:`~embedml.UnsupportedFormatError` listing the registered ones.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

from ..errors import UnsupportedFormatError
from .base import FormatOptions, ModelFormat, Runtime
from .onnx import OnnxFormat
from .pickle import JoblibFormat, PickleFormat
from .skops import SkopsFormat
from .torch import TorchExportFormat, TorchScriptFormat

__all__ = [
    "FormatOptions",
    "ModelFormat",
    "Runtime",
    "available_formats",
    "format_for_object",
    "format_for_path",
    "get_format",
    "register_format",
    "unregister_format",
]

_REGISTRY: dict[str, ModelFormat] = {}
F = TypeVar("F", bound=type[ModelFormat])


def register_format(cls: F, *, replace: bool = False) -> F:
    """Register a :class:`ModelFormat` subclass under its ``name``; usable as a decorator.

    Raises ``ValueError`` if the name is taken (unless ``replace=True``) or the class is
    missing ``name`` / ``suffixes``.
    """
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or not getattr(cls, "suffixes", None):
        raise ValueError(f"{cls.__name__} must set class attributes 'name' and 'suffixes'")
    if name in _REGISTRY and not replace:
        raise ValueError(
            f"format {name!r} is already registered ({type(_REGISTRY[name]).__name__}); pass replace=True to override"
        )
    _REGISTRY[name] = cls()
    return cls


def unregister_format(name: str) -> None:
    """Remove a format from the registry (mainly for tests of plug-ins)."""
    _REGISTRY.pop(name, None)


def available_formats() -> list[str]:
    """Names of the registered formats."""
    return sorted(_REGISTRY)


def get_format(name: str) -> ModelFormat:
    """The registered format ``name``; raises :class:`UnsupportedFormatError` if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnsupportedFormatError(
            f"unknown model format {name!r}; registered formats: {', '.join(available_formats())}"
        ) from None


def format_for_path(path: str | os.PathLike[str]) -> ModelFormat:
    """The format whose suffixes match a file name; raises :class:`UnsupportedFormatError`."""
    suffix = Path(path).suffix.lower()
    for fmt in _REGISTRY.values():
        if suffix in fmt.suffixes:
            return fmt
    known = sorted(s for f in _REGISTRY.values() for s in f.suffixes)
    raise UnsupportedFormatError(
        f"cannot tell the format of {os.fspath(path)!r} from its suffix {suffix!r}; known suffixes: {', '.join(known)} (or pass format=)"
    )


def format_for_object(obj: Any) -> ModelFormat:
    """The format that claims an in-memory model; ``joblib`` is the fallback for objects."""
    for name, fmt in _REGISTRY.items():
        if name != "joblib" and fmt.claims(obj):
            return fmt
    return get_format("joblib")


for _cls in (
    JoblibFormat,
    PickleFormat,
    SkopsFormat,
    OnnxFormat,
    TorchScriptFormat,
    TorchExportFormat,
):
    register_format(_cls)
