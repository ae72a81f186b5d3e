"""``ModelCache``: loaded models shared by every handle of a process, bounded by count and bytes.

``embedml.load`` (and ``store.load(..., cache=True)``) take the loaded runtime of a version
from the process-wide :func:`default_cache`: loading the same version with the same options
again returns a new handle on the already-loaded model, at once. The cache is an LRU
(``cachetools``) bounded by ``max_models`` and by ``max_bytes`` of approximate memory (by
default the artifact's size on disk; pass ``sizeof`` to measure differently). An evicted
model is closed as soon as no handle and no call in flight uses it any more, so memory does
not grow without bound as versions come and go. Two threads asking for the same model at
once load it once.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from typing import Any

from cachetools import LRUCache

from ..errors import ConfigurationError
from ..store import ModelVersion, Store
from .options import LoadOptions
from .pipeline import LoadedModel, Pipeline, load_model, pipeline_on

__all__ = ["ModelCache", "default_cache"]


def artifact_size(model: LoadedModel) -> int:
    """The default size estimate of a loaded model: its artifact's bytes on disk."""
    return max(1, int(model.mv.manifest.size))


class _Pending:
    """A load in progress that other threads wait for."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.model: LoadedModel | None = None
        self.error: BaseException | None = None


class ModelCache:
    """A thread-safe LRU of loaded models; see the module docstring.

    ``max_models``: most models kept loaded; ``max_bytes``: most approximate bytes (``None``:
    no byte bound); ``sizeof(model) -> int``: the estimate for a
    :class:`~embedml.serving.pipeline.LoadedModel` (its ``mv`` and ``runtime``; default:
    the artifact's size).
    Counters ``hits``, ``misses`` and ``evictions`` and :meth:`stats` show how it does.
    Raises :class:`ConfigurationError` for bounds below 1.
    """

    def __init__(
        self,
        max_models: int = 32,
        max_bytes: int | None = None,
        *,
        sizeof: Callable[[LoadedModel], int] = artifact_size,
    ) -> None:
        if not isinstance(max_models, int) or max_models < 1:
            raise ConfigurationError(f"max_models must be an integer >= 1, got {max_models!r}")
        if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 1):
            raise ConfigurationError(f"max_bytes must be an integer >= 1 or None, got {max_bytes!r}")
        self.max_models = max_models
        self.max_bytes = max_bytes
        self.hits = self.misses = self.evictions = 0
        self._lock = threading.Lock()
        self._loading: dict[Any, _Pending] = {}
        self._evicted: list[LoadedModel] = []
        evicted = self._evicted

        class _LRU(LRUCache):  # type: ignore[misc,type-arg]
            def popitem(self) -> tuple[Any, Any]:
                key, model = super().popitem()
                evicted.append(model)
                return key, model

        self._lru = _LRU(maxsize=max_bytes if max_bytes is not None else math.inf, getsizeof=sizeof)

    def __len__(self) -> int:
        return len(self._lru)

    def __repr__(self) -> str:
        return f"<ModelCache {len(self)}/{self.max_models} models, {self.nbytes} bytes>"

    @property
    def nbytes(self) -> int:
        """Approximate bytes of the models held now."""
        return int(self._lru.currsize)

    def stats(self) -> dict[str, int]:
        """``{"models", "bytes", "hits", "misses", "evictions"}``."""
        with self._lock:
            return {
                "models": len(self._lru), "bytes": self.nbytes, "hits": self.hits,
                "misses": self.misses, "evictions": self.evictions,
            }  # fmt: skip

    def _take_evicted(self) -> list[LoadedModel]:
        out = list(self._evicted)
        self._evicted.clear()
        self.evictions += len(out)
        return out

    def pipeline(self, store: Store, mv: ModelVersion, options: LoadOptions) -> Pipeline | None:
        """A new pipeline with ``options`` on the loaded model of ``mv`` (see
        :meth:`model`), or ``None`` when the options cannot be a cache key (e.g. a
        ``session_options`` dict): load it yourself. Raises what loading raises."""
        model = self.model(store, mv, options)
        return None if model is None else pipeline_on(model, options)

    def model(self, store: Store, mv: ModelVersion, options: LoadOptions) -> LoadedModel | None:
        """The loaded model of ``mv`` with one use taken for the caller (give it back with
        ``release()``, or hand it to a pipeline). The key leaves out the per-handle options.

        Loads it on a miss (once, however many threads ask). Returns ``None`` when the
        options cannot be a cache key. Raises what loading raises.
        """
        options = options.for_model()
        key = (str(store.root), mv.name, mv.version, mv.manifest.sha256, options)
        try:
            hash(key)
        except TypeError:
            return None
        while True:
            with self._lock:
                model = self._lru.get(key)
                if model is not None and model.acquire():
                    self.hits += 1
                    return model
                pending = self._loading.get(key)
                loader = pending is None
                if loader:
                    pending = self._loading[key] = _Pending()
            assert pending is not None
            if not loader:
                pending.done.wait()
                if pending.error is not None:
                    raise pending.error
                if pending.model is not None and pending.model.acquire():
                    with self._lock:
                        self.hits += 1
                    return pending.model
                continue  # evicted and closed before we got it: look again
            return self._load(key, pending, store, mv, options)

    def _load(
        self, key: Any, pending: _Pending, store: Store, mv: ModelVersion, options: LoadOptions
    ) -> LoadedModel:
        try:
            model = load_model(store, mv, options)
        except BaseException as exc:
            with self._lock:
                del self._loading[key]
            pending.error = exc
            pending.done.set()
            raise
        model.acquire()  # the caller's use; the cache keeps the one the model was born with
        with self._lock:
            del self._loading[key]
            self.misses += 1
            try:
                self._lru[key] = model
            except ValueError:  # larger than max_bytes on its own: serve it uncached
                self._evicted.append(model)
            while len(self._lru) > self.max_models:
                self._lru.popitem()
            evicted = self._take_evicted()
            pending.model = model
        pending.done.set()
        for old in evicted:
            old.release()  # closes it now, or when its last pipeline lets go
        return model

    def clear(self) -> None:
        """Drop every model; each closes once no handle or call uses it."""
        with self._lock:
            while len(self._lru):
                self._lru.popitem()
            evicted = self._take_evicted()
        for old in evicted:
            old.release()

    close = clear


_DEFAULT: ModelCache | None = None
_DEFAULT_LOCK = threading.Lock()


def default_cache() -> ModelCache:
    """The process-wide cache used by :func:`embedml.load`.

    Bounded by ``$EMBEDML_CACHE_MODELS`` models (default 32) and ``$EMBEDML_CACHE_BYTES``
    approximate bytes (default: no byte bound), read when it is first used.
    """
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            env_bytes = os.environ.get("EMBEDML_CACHE_BYTES")
            _DEFAULT = ModelCache(
                int(os.environ.get("EMBEDML_CACHE_MODELS", "32")),
                int(env_bytes) if env_bytes else None,
            )
        return _DEFAULT
