"""Load options: one frozen dataclass, validated when built, shared by every entry point
that loads a model (:meth:`ModelStore.load`, :func:`embedml.load`, swaps, caches)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import (
    ConfigurationError,
)
from ..formats import FormatOptions
from ..observe.hooks import Sink
from ..schema.core import (
    SchemaOptions,
)

if TYPE_CHECKING:
    from .batching import Batching


__all__ = ["LoadOptions"]


@dataclass(frozen=True)
class LoadOptions:
    """Options of :meth:`ModelStore.load`, validated when built (see its docstring)."""

    method: str | None = None
    session_options: Any = None
    outputs: str | list[str] | tuple[str, ...] | None = None
    preprocess: Callable[[Any], Any] | str | None = None
    postprocess: Callable[[Any], Any] | str | None = None
    strict: bool = True
    allow_extra: bool = False
    batching: Batching | bool | None = None
    hooks: tuple[Any, ...] = ()
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

    def resolve_options(self) -> dict[str, Any]:
        """The options of :meth:`ModelStore.resolve` that make a swap or a follower resolve
        through the signed store record, as the load did."""
        return {"require_signature": self.require_signature, "signing_key": self.signing_key}

    def __post_init__(self) -> None:
        if self.batching is not None and self.batching is not False:
            from .batching import Batching

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
