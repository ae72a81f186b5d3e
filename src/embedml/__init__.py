"""embedml: run machine-learning inference in your own process.

``import embedml`` is cheap: onnxruntime and torch are imported the first time a model of
that format is loaded. The public API is exactly what ``__all__`` lists.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from . import _compat
from ._version import __version__
from .errors import (
    AliasMovedError,
    BrokerError,
    BrokerUnavailableError,
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
    from .formats import FormatOptions, ModelFormat, Runtime, available_formats, register_format
    from .jsonable import to_jsonable
    from .observe.drift import DriftMonitor, DriftReport
    from .observe.hooks import PredictionRecord, Sink
    from .observe.sinks import CallableSink, JsonlSink, LoggingSink, read_jsonl
    from .offline.broker import StreamRunner
    from .offline.redis_streams import RedisStreamSink, RedisStreamSource
    from .offline.scoring import ScoreSummary, score
    from .rollout.promotion import Gate
    from .rollout.routing import ABTest, Canary
    from .rollout.shadow import Shadow
    from .schema import RecordSchema, TensorSchema, TensorSpec
    from .schema.profile import ReferenceProfile
    from .serving.batching import Batching, BatchingStats
    from .serving.cache import ModelCache, default_cache
    from .serving.handle import HandleState, ModelHandle, Prediction
    from .serving.load import ModelStore
    from .serving.options import LoadOptions
    from .store import ModelVersion
    from .store.manifest import Manifest

_compat.install()  # old module paths (embedml.handle, embedml.batching, ...) keep working

# Public names served from submodules on first use (PEP 562), so ``import embedml`` does not
# pay for numpy and pydantic until they are needed.
_LAZY = {
    "Batching": "serving.batching",
    "BatchingStats": "serving.batching",
    "ModelCache": "serving.cache",
    "default_cache": "serving.cache",
    "Gate": "rollout.promotion",
    "ABTest": "rollout.routing",
    "Canary": "rollout.routing",
    "Shadow": "rollout.shadow",
    "FormatOptions": "formats",
    "ModelFormat": "formats",
    "Runtime": "formats",
    "available_formats": "formats",
    "register_format": "formats",
    "HandleState": "serving.handle",
    "ModelHandle": "serving.handle",
    "Prediction": "serving.handle",
    "to_jsonable": "jsonable",
    "PredictionRecord": "observe.hooks",
    "Sink": "observe.hooks",
    "DriftMonitor": "observe.drift",
    "DriftReport": "observe.drift",
    "ReferenceProfile": "schema.profile",
    "CallableSink": "observe.sinks",
    "JsonlSink": "observe.sinks",
    "LoggingSink": "observe.sinks",
    "read_jsonl": "observe.sinks",
    "Manifest": "store.manifest",
    "RecordSchema": "schema",
    "TensorSchema": "schema",
    "TensorSpec": "schema",
    "ScoreSummary": "offline.scoring",
    "StreamRunner": "offline.broker",
    "RedisStreamSource": "offline.redis_streams",
    "RedisStreamSink": "offline.redis_streams",
    "score": "offline.scoring",
    "ModelStore": "serving.load",
    "LoadOptions": "serving.options",
    "ModelVersion": "store",
}

__all__ = [
    "ABTest",
    "AliasMovedError",
    "Batching",
    "BatchingStats",
    "BrokerError",
    "BrokerUnavailableError",
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
    "LoadOptions",
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
    "RedisStreamSink",
    "RedisStreamSource",
    "ReferenceProfile",
    "RequestNotFoundError",
    "Runtime",
    "SchemaError",
    "ScoreSummary",
    "Shadow",
    "SignatureError",
    "Sink",
    "StoreError",
    "StreamRunner",
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
    "testing",
    "to_jsonable",
]


# Public submodules, imported on first attribute access (``embedml.export.to_onnx``);
# ``embedml.testing`` holds test helpers (FakeClock, the format conformance kit).
_SUBMODULES = ("export", "testing")


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


# The two functions below are the lazy face of the serving layer: they import it when called.
def default_store(store: ModelStore | str | os.PathLike[str] | None = None) -> ModelStore:
    """The store to use: the argument, else ``$EMBEDML_STORE``, else ``./models``.

    A store layer :class:`embedml.store.Store` is given as a :class:`ModelStore` on the
    same folder."""
    from .serving.load import ModelStore, as_model_store
    from .store import Store

    if isinstance(store, Store):
        return as_model_store(store)
    return ModelStore(store if store is not None else os.environ.get("EMBEDML_STORE", "models"))


def load(
    name: str,
    version: str | int = "latest",
    options: LoadOptions | None = None,
    *,
    store: ModelStore | str | os.PathLike[str] | None = None,
    cache: ModelCache | bool = True,
    **kwargs: Any,
) -> ModelHandle:
    """Load ``name`` at ``version`` from ``store`` (see :func:`default_store`).

    The same as :meth:`ModelStore.load` (the same :class:`LoadOptions`, as keywords or as
    ``options``; an unknown one is a ``TypeError``) with one other default: the loaded
    model comes from the process-wide :func:`default_cache` (``cache=True``), so loading
    the same version again is nearly free; ``cache=False`` loads a private copy, or pass a
    :class:`ModelCache`. See ``docs/concepts.md`` for both entry points' defaults.
    """
    return default_store(store).load(name, version, options, cache=cache, **kwargs)
