"""embedml: run machine-learning inference in your own process.

``import embedml`` is cheap: onnxruntime and torch are imported the first time a model of
that format is loaded. The public API is exactly what ``__all__`` lists.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    ConfigurationError,
    EmbedMLError,
    FrameworkVersionError,
    FrameworkVersionWarning,
    GateFailedError,
    HandleClosedError,
    IntegrityError,
    InvalidNameError,
    ModelNotFoundError,
    NotFoundError,
    OverloadedError,
    PredictionError,
    PredictionTimeoutError,
    SchemaError,
    SignatureError,
    StoreError,
    UnsupportedFormatError,
    UntrustedArtifactError,
    VersionExistsError,
    VersionNotFoundError,
)

if TYPE_CHECKING:
    from .formats import FormatOptions, ModelFormat, Runtime, available_formats, register_format
    from .handle import HandleState, ModelHandle, Prediction
    from .manifest import Manifest
    from .schema import RecordSchema, TensorSchema, TensorSpec
    from .store import ModelStore, ModelVersion

# Public names served from submodules on first use (PEP 562), so ``import embedml`` does not
# pay for numpy and pydantic until they are needed.
_LAZY = {
    "FormatOptions": "formats",
    "ModelFormat": "formats",
    "Runtime": "formats",
    "available_formats": "formats",
    "register_format": "formats",
    "HandleState": "handle",
    "ModelHandle": "handle",
    "Prediction": "handle",
    "Manifest": "manifest",
    "RecordSchema": "schema",
    "TensorSchema": "schema",
    "TensorSpec": "schema",
    "ModelStore": "store",
    "ModelVersion": "store",
}

__all__ = [
    "ConfigurationError",
    "EmbedMLError",
    "FormatOptions",
    "FrameworkVersionError",
    "FrameworkVersionWarning",
    "GateFailedError",
    "HandleClosedError",
    "HandleState",
    "IntegrityError",
    "InvalidNameError",
    "Manifest",
    "ModelFormat",
    "ModelHandle",
    "ModelNotFoundError",
    "ModelStore",
    "ModelVersion",
    "NotFoundError",
    "OverloadedError",
    "Prediction",
    "PredictionError",
    "PredictionTimeoutError",
    "RecordSchema",
    "Runtime",
    "SchemaError",
    "SignatureError",
    "StoreError",
    "TensorSchema",
    "TensorSpec",
    "UnsupportedFormatError",
    "UntrustedArtifactError",
    "VersionExistsError",
    "VersionNotFoundError",
    "__version__",
    "available_formats",
    "default_store",
    "load",
    "register_format",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'embedml' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


def default_store(store: ModelStore | str | os.PathLike[str] | None = None) -> ModelStore:
    """The store to use: the argument, else ``$EMBEDML_STORE``, else ``./models``."""
    from .store import ModelStore

    if isinstance(store, ModelStore):
        return store
    return ModelStore(store if store is not None else os.environ.get("EMBEDML_STORE", "models"))


def load(
    name: str,
    version: str | int = "latest",
    *,
    store: ModelStore | str | os.PathLike[str] | None = None,
    **options: Any,
) -> ModelHandle:
    """Load ``name`` at ``version`` from ``store`` (see :func:`default_store`).

    ``options`` are those of :meth:`ModelStore.load`; an unknown one is a ``TypeError``.
    """
    return default_store(store).load(name, version, **options)
