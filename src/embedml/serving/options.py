"""Load options: one frozen dataclass, validated when built, shared by every entry point
that loads a model (:meth:`ModelStore.load <embedml.ModelStore.load>`, :func:`embedml.load`,
:class:`~embedml.Gate`, the Ray integration, the command line, swaps and caches)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError
from ..formats import FormatOptions
from ..observe.hooks import Sink
from ..schema import SchemaOptions
from .batching import Batching

__all__ = ["PER_HANDLE", "LoadOptions"]

#: Options of one handle, not of the loaded model: they are not part of the cache key, so
#: handles that differ only in these share one loaded model (see :class:`~embedml.ModelCache`).
PER_HANDLE = ("batching", "hooks", "follow", "poll_s")


@dataclass(frozen=True)
class LoadOptions:
    """How to load a version and open a handle on it; validated when built.

    Pass them as keywords to :meth:`ModelStore.load <embedml.ModelStore.load>` and
    :func:`embedml.load` (``store.load("m", method="predict_proba")``), or build one and
    pass it as ``options=`` (also to :class:`~embedml.Gate` and the Ray integration). An
    unknown option is a ``TypeError``; a bad value a :class:`ConfigurationError`.

    The loaded model:

    - ``method``: the method of sklearn-style objects (``"predict"``, ``"predict_proba"``...);
      default the one saved with the version, else ``predict``.
    - ``session_options``: ONNX Runtime session options (a dict or ``SessionOptions``; a
      dict cannot be a cache key, so such a load is never cached).
    - ``outputs``: ONNX output name or names to return.
    - ``preprocess`` / ``postprocess``: callables on a batch, or ``"module:function"``
      paths; they override the manifest's.
    - ``strict`` (``True``: only lossless casts), ``allow_extra`` (``False``: unknown fields
      are a :class:`SchemaError`).

    Hardening (``docs/security.md``): ``allow_nan`` (default ``False``: NaN/inf in numeric
    inputs is a :class:`SchemaError`), ``max_batch_rows``, ``max_string_length``;
    ``require_signature`` with ``signing_key`` (or ``$EMBEDML_SIGNING_KEY``) resolves the
    version through the signed store record and refuses unsigned or wrongly signed
    versions, aliases and version sets (:class:`SignatureError`) before the artifact is
    read; ``restricted=True`` unpickles pickle/joblib with an allow-list plus
    ``trusted_types``, refuses callables held by the model and manifest import paths not in
    ``trusted_callables`` (:class:`UntrustedArtifactError` names what it refused; the
    ``skops`` format always checks ``trusted_types``); ``strict_versions=True`` turns a
    framework version skew warning into :class:`FrameworkVersionError`.

    The handle (:data:`PER_HANDLE`: not part of the loaded-model cache key):

    - ``batching``: an :class:`~embedml.Batching`, or ``True`` for its defaults: concurrent
      calls on the handle are joined into batched model calls.
    - ``hooks``: sinks or callables that receive a :class:`~embedml.PredictionRecord` per
      call (``docs/observability.md``).
    - ``follow`` / ``poll_s``: keep the handle on whatever the version spec resolves to
      (an alias such as ``"@production"``), re-resolved every ``poll_s`` seconds by a
      background thread that hot-swaps the handle when it changed; ``close()`` stops it.
    """

    method: str | None = None
    session_options: Any = None
    outputs: str | list[str] | tuple[str, ...] | None = None
    preprocess: Callable[[Any], Any] | str | None = None
    postprocess: Callable[[Any], Any] | str | None = None
    strict: bool = True
    allow_extra: bool = False
    # hardening (docs/security.md)
    allow_nan: bool = False
    max_batch_rows: int | None = None
    max_string_length: int | None = None
    require_signature: bool = False
    signing_key: str | bytes | None = field(default=None, repr=False)
    restricted: bool = False
    trusted_types: tuple[Any, ...] | list[Any] = ()
    trusted_callables: tuple[Any, ...] | list[Any] = ()
    strict_versions: bool = False
    # per handle (PER_HANDLE)
    batching: Batching | bool | None = None
    hooks: tuple[Any, ...] | list[Any] = ()
    follow: bool = False
    poll_s: float = 1.0

    @classmethod
    def of(
        cls, options: LoadOptions | Mapping[str, Any] | None = None, /, **kwargs: Any
    ) -> LoadOptions:
        """``options`` (a :class:`LoadOptions` or a mapping of its fields) with ``kwargs``
        on top. Raises ``TypeError`` naming an unknown option, :class:`ConfigurationError`
        for a bad value."""
        if options is None:
            base: dict[str, Any] = {}
        elif isinstance(options, LoadOptions):
            if not kwargs:
                return options
            base = {f.name: getattr(options, f.name) for f in dataclasses.fields(cls)}
        elif isinstance(options, Mapping):
            base = dict(options)
        else:
            raise ConfigurationError(
                f"load options must be an embedml LoadOptions or a dict of them, got {options!r}"
            )
        base.update(kwargs)
        unknown = sorted(set(base) - _FIELDS)
        if unknown:
            raise TypeError(
                f"unknown load option(s) {', '.join(map(repr, unknown))}; "
                f"the options are: {', '.join(sorted(_FIELDS))}"
            )
        return cls(**base)

    def for_model(self) -> LoadOptions:
        """These options without the per-handle ones (:data:`PER_HANDLE`): what the loaded
        model depends on, and so the loaded-model cache key."""
        if self.batching is None and not self.hooks and not self.follow and self.poll_s == 1.0:
            return self
        return dataclasses.replace(self, batching=None, hooks=(), follow=False, poll_s=1.0)

    def resolve_options(self) -> dict[str, Any]:
        """The options of :meth:`ModelStore.resolve` that make a swap or a follower resolve
        through the signed store record, as the load did."""
        return {"require_signature": self.require_signature, "signing_key": self.signing_key}

    def __post_init__(self) -> None:
        if self.batching is not None and self.batching is not False:
            if self.batching is True:
                object.__setattr__(self, "batching", Batching())
            elif not isinstance(self.batching, Batching):
                raise ConfigurationError(
                    f"batching must be an embedml.Batching(...), True or None, got {self.batching!r}"
                )
        elif self.batching is False:
            object.__setattr__(self, "batching", None)
        object.__setattr__(self, "hooks", tuple(self.hooks or ()))
        for hook in self.hooks:
            if not callable(hook) and not isinstance(hook, Sink):
                raise ConfigurationError(f"a hook must be a Sink or a callable, got {hook!r}")
        for what in ("max_batch_rows", "max_string_length"):
            value = getattr(self, what)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigurationError(f"{what} must be a positive int or None, got {value!r}")
        if isinstance(self.trusted_types, str) or not isinstance(
            self.trusted_types, list | tuple | set | frozenset
        ):
            raise ConfigurationError(
                f"trusted_types must be a list of types or 'module.Name' strings, got {self.trusted_types!r}"
            )
        object.__setattr__(self, "trusted_types", tuple(self.trusted_types))
        entries = self.trusted_callables
        if not isinstance(entries, list | tuple | set | frozenset) or not all(
            c.strip(".:") if isinstance(c, str) else callable(c) for c in entries
        ):
            raise ConfigurationError(
                "trusted_callables must be a list of functions or classes, or "
                f"'module:function' strings, got {self.trusted_callables!r}"
            )
        object.__setattr__(self, "trusted_callables", tuple(self.trusted_callables))
        if not isinstance(self.poll_s, int | float) or not self.poll_s > 0:
            raise ConfigurationError(f"poll_s must be a number of seconds > 0, got {self.poll_s!r}")
        if self.method is not None and not isinstance(self.method, str):
            raise ConfigurationError(
                f"method must be a method name such as 'predict_proba', got {self.method!r}"
            )
        for what in ("preprocess", "postprocess"):
            value = getattr(self, what)
            if value is not None and not callable(value) and not isinstance(value, str):
                raise ConfigurationError(
                    f"{what} must be a callable or an import path 'module:function', got {value!r}"
                )

    def format_options(self) -> FormatOptions:
        outputs = tuple(self.outputs) if isinstance(self.outputs, list | tuple) else self.outputs
        extra = {
            "restricted": self.restricted,
            "trusted_types": self.trusted_types,
            "trusted_callables": self.trusted_callables,
        }
        return FormatOptions(
            method=self.method, session_options=self.session_options, outputs=outputs, extra=extra
        )

    def schema_options(self) -> SchemaOptions:
        return SchemaOptions(
            strict=self.strict, allow_extra=self.allow_extra, allow_nan=self.allow_nan,
            max_batch_rows=self.max_batch_rows, max_string_length=self.max_string_length,
        )  # fmt: skip


_FIELDS = frozenset(f.name for f in dataclasses.fields(LoadOptions))
