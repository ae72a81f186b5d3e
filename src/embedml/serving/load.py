"""Where the store and handles meet: :class:`ModelStore` is the store with ``load``.

The store layer (:class:`embedml.store.Store`) keeps versions, aliases and signatures and
never loads a model; the serving layer builds pipelines and handles and never writes the
store. This module joins them, in one direction: it resolves a version in the store, takes
its loaded model from a :class:`~embedml.ModelCache` (or loads it), builds the handle's
pipeline on it, opens the handle and, for ``follow=True``, starts its alias follower.

``embedml.ModelStore`` is :class:`ModelStore` below, a subclass of the store layer's
:class:`~embedml.store.Store`: every store method is there, plus :meth:`ModelStore.load`.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidNameError
from ..store import RemoteStore, Store
from ..store.versions import parse_ref
from .cache import ModelCache, default_cache
from .handle import ModelHandle
from .options import LoadOptions
from .pipeline import build_pipeline

__all__ = ["ModelStore", "RemoteModelStore", "as_model_store", "open_handle"]


class ModelStore(Store):
    """A directory of models, each with immutable PEP 440 versions and movable aliases,
    and :meth:`load` to open a :class:`~embedml.ModelHandle` on one of them.

    Every method of :class:`embedml.store.Store` (save, resolve, aliases, promote, sign,
    verify...) is documented there; ``ModelStore(root)`` takes the same arguments.
    """

    def load(
        self,
        name: str,
        version: str | int = "latest",
        options: LoadOptions | None = None,
        *,
        cache: ModelCache | bool = False,
        **kwargs: Any,
    ) -> ModelHandle:
        """Resolve ``version`` and open a :class:`~embedml.ModelHandle` on it.

        The options are those of :class:`~embedml.serving.options.LoadOptions`, given as
        keywords (``method="predict_proba"``, ``batching=True``, ``hooks=[sink]``,
        ``follow=True``...) or built once and passed as ``options`` (keywords win). An
        unknown option is a ``TypeError``; a bad value a :class:`ConfigurationError`.

        ``cache``: ``False`` (the default here) loads a private copy of the model;
        ``True`` takes it from the process-wide :func:`~embedml.default_cache` (what
        :func:`embedml.load` does by default), or pass a :class:`~embedml.ModelCache`. The
        cache key leaves out the per-handle options (``batching``, ``hooks``, ``follow``,
        ``poll_s``): handles that differ only in those share one loaded model.

        ``name`` may carry its spec as the command line does (``"churn@production"``,
        ``"churn@1.2"``); then ``version`` must be left out.

        Raises the errors of :meth:`resolve` and :meth:`read_artifact`,
        :class:`UnsupportedFormatError`, :class:`ConfigurationError` for a bad option,
        and (per the options) :class:`SignatureError`, :class:`UntrustedArtifactError`,
        :class:`FrameworkVersionError`.
        """
        return open_handle(self, name, version, LoadOptions.of(options, **kwargs), cache)


class RemoteModelStore(ModelStore, RemoteStore, remote=True):
    """What ``ModelStore("s3://bucket/prefix")`` makes: the remote store
    (:class:`~embedml.store.RemoteStore`) with :meth:`~ModelStore.load`. Loads go through
    the verified local cache (see ``docs/remote-stores.md``)."""


def as_model_store(store: Store) -> ModelStore:
    """``store`` itself if it can load, else a :class:`ModelStore` on the same store."""
    if isinstance(store, ModelStore):
        return store
    if isinstance(store, RemoteStore):
        return store.as_class(RemoteModelStore)  # type: ignore[return-value]
    return ModelStore(store.root, store_id=store.store_id)


def open_handle(
    store: Store,
    name: str,
    version: str | int,
    options: LoadOptions,
    cache: ModelCache | bool = False,
) -> ModelHandle:
    """Resolve ``name`` at ``version`` in ``store`` and open a handle on it with
    ``options``, its model from ``cache`` (``True``: :func:`default_cache`). See
    :meth:`ModelStore.load`."""
    if isinstance(name, str) and "@" in name:
        if version != "latest":
            raise InvalidNameError(
                f"{name!r} already says which version to load; do not pass version={version!r} too"
            )
        name, version = parse_ref(name)
    if cache is True:
        cache = default_cache()
    # Not `cache or None`: an empty ModelCache has len() 0.
    shared = None if cache is False else cache
    mv = store.resolve(name, version, **options.resolve_options())
    pipe = shared.pipeline(store, mv, options) if shared is not None else None
    if pipe is None:  # uncached, or options that cannot be a cache key
        pipe = build_pipeline(store, mv, options)
    follow = str(version) if options.follow else None
    return ModelHandle(pipe, options, store=store, cache=shared, follow=follow)
