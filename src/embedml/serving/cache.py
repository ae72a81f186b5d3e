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
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..store.model_store import ModelStore, ModelVersion
    from .handle import LoadOptions, Pipeline

__all__ = ["ModelCache", "default_cache"]


def artifact_size(pipe: Pipeline) -> int:
    """The default size estimate of a loaded model: its artifact's bytes on disk."""
    return max(1, int(pipe.mv.manifest.size))


class _Pending:
    """A load in progress that other threads wait for."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.pipe: Pipeline | None = None
        self.error: BaseException | None = None


class ModelCache:
    """A thread-safe LRU of loaded models; see the module docstring.

    ``max_models``: most models kept loaded; ``max_bytes``: most approximate bytes (``None``:
    no byte bound); ``sizeof(pipeline) -> int``: the estimate (default: artifact size).
    Counters ``hits``, ``misses`` and ``evictions`` and :meth:`stats` show how it does.
    Raises :class:`ConfigurationError` for bounds below 1.
    """

    def __init__(
        self,
        max_models: int = 32,
        max_bytes: int | None = None,
        *,
        sizeof: Callable[[Pipeline], int] = artifact_size,
    ) -> None:
        from cachetools import LRUCache

        if not isinstance(max_models, int) or max_models < 1:
            raise ConfigurationError(f"max_models must be an integer >= 1, got {max_models!r}")
        if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 1):
            raise ConfigurationError(f"max_bytes must be an integer >= 1 or None, got {max_bytes!r}")
        self.max_models = max_models
        self.max_bytes = max_bytes
        self.hits = self.misses = self.evictions = 0
        self._lock = threading.Lock()
        self._loading: dict[Any, _Pending] = {}
        self._evicted: list[Pipeline] = []
        evicted = self._evicted

        class _LRU(LRUCache):  # type: ignore[misc,type-arg]
            def popitem(self) -> tuple[Any, Any]:
                key, pipe = super().popitem()
                evicted.append(pipe)
                return key, pipe

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

    def _take_evicted(self) -> list[Pipeline]:
        out = list(self._evicted)
        self._evicted.clear()
        self.evictions += len(out)
        return out

    def pipeline(self, store: ModelStore, mv: ModelVersion, options: LoadOptions) -> Pipeline | None:
        """The loaded pipeline of ``mv`` with one use taken for the caller (release it).

        Loads it on a miss (once, however many threads ask). Returns ``None`` when the
        options cannot be a cache key (e.g. a ``session_options`` dict): load it yourself.
        Raises what loading raises.
        """
        from .handle import build_pipeline

        key = (str(store.root), mv.name, mv.version, mv.manifest.sha256, options)
        try:
            hash(key)
        except TypeError:
            return None
        while True:
            with self._lock:
                pipe = self._lru.get(key)
                if pipe is not None and pipe.acquire():
                    self.hits += 1
                    return pipe
                pending = self._loading.get(key)
                loader = pending is None
                if loader:
                    pending = self._loading[key] = _Pending()
            assert pending is not None
            if not loader:
                pending.done.wait()
                if pending.error is not None:
                    raise pending.error
                if pending.pipe is not None and pending.pipe.acquire():
                    with self._lock:
                        self.hits += 1
                    return pending.pipe
                continue  # evicted and closed before we got it: look again
            return self._load(key, pending, build_pipeline, store, mv, options)

    def _load(self, key: Any, pending: _Pending, build: Any, store: Any, mv: Any, options: Any) -> Pipeline:
        try:
            pipe = build(store, mv, options)
        except BaseException as exc:
            with self._lock:
                del self._loading[key]
            pending.error = exc
            pending.done.set()
            raise
        pipe.acquire()  # the caller's use; the cache keeps the one the pipeline was born with
        with self._lock:
            del self._loading[key]
            self.misses += 1
            try:
                self._lru[key] = pipe
            except ValueError:  # larger than max_bytes on its own: serve it uncached
                self._evicted.append(pipe)
            while len(self._lru) > self.max_models:
                self._lru.popitem()
            evicted = self._take_evicted()
            pending.pipe = pipe
        pending.done.set()
        for old in evicted:
            old.release()  # closes it now, or when its last handle / call lets go
        return pipe

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
