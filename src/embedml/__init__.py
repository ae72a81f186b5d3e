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
    MissingExtraError,
    ModelNotFoundError,
    NotFoundError,
    OverloadedError,
    PredictionError,
    PredictionTimeoutError,
    RequestNotFoundError,
    SchemaError,
    SignatureError,
    StoreError,
    UnsupportedFormatError,
    UntrustedArtifactError,
    VersionExistsError,
    VersionNotFoundError,
)

if TYPE_CHECKING:
    from .batching import Batching, BatchingStats
    from .cache import ModelCache, default_cache
    from .drift import DriftMonitor, DriftReport
    from .formats import FormatOptions, ModelFormat, Runtime, available_formats, register_format
    from .handle import HandleState, ModelHandle, Prediction
    from .hooks import PredictionRecord, Sink
    from .jsonable import to_jsonable
    from .manifest import Manifest
    from .profile import ReferenceProfile
    from .promotion import Gate
    from .routing import ABTest, Canary
    from .schema import RecordSchema, TensorSchema, TensorSpec
    from .scoring import ScoreSummary, score
    from .shadow import Shadow
    from .sinks import CallableSink, JsonlSink, LoggingSink, read_jsonl
    from .store import ModelStore, ModelVersion

# Public names served from submodules on first use (PEP 562), so ``import embedml`` does not
# pay for numpy and pydantic until they are needed.
_LAZY = {
    "Batching": "batching",
    "BatchingStats": "batching",
    "ModelCache": "cache",
    "default_cache": "cache",
    "Gate": "promotion",
    "ABTest": "routing",
    "Canary": "routing",
    "Shadow": "shadow",
    "FormatOptions": "formats",
    "ModelFormat": "formats",
    "Runtime": "formats",
    "available_formats": "formats",
    "register_format": "formats",
    "HandleState": "handle",
    "ModelHandle": "handle",
    "Prediction": "handle",
    "to_jsonable": "jsonable",
    "PredictionRecord": "hooks",
    "Sink": "hooks",
    "DriftMonitor": "drift",
    "DriftReport": "drift",
    "ReferenceProfile": "profile",
    "CallableSink": "sinks",
    "JsonlSink": "sinks",
    "LoggingSink": "sinks",
    "read_jsonl": "sinks",
    "Manifest": "manifest",
    "RecordSchema": "schema",
    "TensorSchema": "schema",
    "TensorSpec": "schema",
    "ScoreSummary": "scoring",
    "score": "scoring",
    "ModelStore": "store",
    "ModelVersion": "store",
}

__all__ = [
    "ABTest",
    "Batching",
    "BatchingStats",
    "CallableSink",
    "Canary",
    "ConfigurationError",
    "DriftMonitor",
    "DriftReport",
    "EmbedMLError",
    "FormatOptions",
    "FrameworkVersionError",
    "FrameworkVersionWarning",
    "Gate",
    "GateFailedError",
    "HandleClosedError",
    "HandleState",
    "IntegrityError",
    "InvalidNameError",
    "JsonlSink",
    "LoggingSink",
    "Manifest",
    "MissingExtraError",
    "ModelCache",
    "ModelFormat",
    "ModelHandle",
    "ModelNotFoundError",
    "ModelStore",
    "ModelVersion",
    "NotFoundError",
    "OverloadedError",
    "Prediction",
    "PredictionError",
    "PredictionRecord",
    "PredictionTimeoutError",
    "RecordSchema",
    "ReferenceProfile",
    "RequestNotFoundError",
    "Runtime",
    "SchemaError",
    "ScoreSummary",
    "Shadow",
    "SignatureError",
    "Sink",
    "StoreError",
    "TensorSchema",
    "TensorSpec",
    "UnsupportedFormatError",
    "UntrustedArtifactError",
    "VersionExistsError",
    "VersionNotFoundError",
    "__version__",
    "available_formats",
    "default_cache",
    "default_store",
    "export",
    "load",
    "read_jsonl",
    "register_format",
    "score",
    "to_jsonable",
]


# Public submodules, imported on first attribute access (``embedml.export.to_onnx``).
_SUBMODULES = ("export",)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
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
    cache: ModelCache | bool = True,
    **options: Any,
) -> ModelHandle:
    """Load ``name`` at ``version`` from ``store`` (see :func:`default_store`).

    The loaded model comes from the process-wide :func:`default_cache` (``cache=False`` loads
    a private copy; or pass a :class:`ModelCache`), so loading the same version again is
    nearly free. ``options`` are those of :meth:`ModelStore.load`; an unknown one is a
    ``TypeError``.
    """
    return default_store(store).load(name, version, cache=cache, **options)
