"""``ModelHandle``: one loaded model version behind a fixed pipeline, and its lifecycle.

Every call runs the same stages, in this order::

    validate input (schema) -> preprocess -> model -> postprocess -> validate output

A :class:`Pipeline` holds one loaded version and runs those stages on a batch; the handle
owns a pipeline, exposes ``predict`` / ``predict_batch`` / ``apredict``, and is closed with
``close()`` or ``with``. Errors: :class:`SchemaError` (bad input, the model is not called),
:class:`PredictionError` (a stage raised; the original is chained), :class:`HandleClosedError`.
"""

from __future__ import annotations

import enum
import importlib
import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import (
    ConfigurationError,
    EmbedMLError,
    HandleClosedError,
    PredictionError,
    SchemaError,
)
from .formats import FormatOptions, Runtime, get_format
from .manifest import Manifest
from .schema import NoSchema, RecordSchema, SchemaOptions, TensorSchema, schema_from_dict
from .tensors import n_rows, take
from .trust import check_before_load

if TYPE_CHECKING:
    from .store import ModelStore, ModelVersion

__all__ = ["HandleState", "LoadOptions", "ModelHandle", "Pipeline", "Prediction", "new_request_id"]

_ID_PREFIX = os.urandom(4).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A process-unique request id (cheap: a random per-process prefix and a counter)."""
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


@dataclass(frozen=True)
class Prediction:
    """What ``predict(..., details=True)`` returns: the output and where it came from.

    ``request_id`` identifies the call in prediction records (and for ``log_outcome``);
    ``version`` is the version that actually produced ``output`` (it can differ from the
    handle's current version during a hot swap).
    """

    output: Any
    request_id: str
    model: str
    version: str


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
    # hardening (docs/security.md)
    allow_nan: bool = False
    max_batch_rows: int | None = None
    max_string_length: int | None = None
    require_signature: bool = False
    signing_key: str | bytes | None = field(default=None, repr=False)
    restricted: bool = False
    trusted_types: tuple[Any, ...] | list[Any] = ()
    strict_versions: bool = False

    def __post_init__(self) -> None:
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
        extra = {"restricted": True, "trusted_types": self.trusted_types} if self.restricted else {}
        return FormatOptions(
            method=self.method, session_options=self.session_options, outputs=outputs, extra=extra
        )

    def schema_options(self) -> SchemaOptions:
        return SchemaOptions(
            strict=self.strict, allow_extra=self.allow_extra, allow_nan=self.allow_nan,
            max_batch_rows=self.max_batch_rows, max_string_length=self.max_string_length,
        )  # fmt: skip


def _import_callable(path: str, what: str) -> Callable[[Any], Any]:
    module, _, attr = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"cannot import {what} {path!r}: {exc}") from exc
    if not callable(fn):
        raise ConfigurationError(f"{what} {path!r} is not callable")
    return fn


class Pipeline:
    """One loaded version: validates, runs the stages, and shapes results. Thread-safe.

    ``prepare_one`` / ``prepare_many`` validate input into a batch; ``run`` takes a batch of
    ``n`` rows to raw outputs (checking one output per row); ``rows`` / ``row`` turn raw
    outputs into what callers get. Batchers call ``run`` on joined batches.
    """

    def __init__(
        self, mv: ModelVersion, runtime: Runtime, options: LoadOptions, load_seconds: float
    ) -> None:
        self.mv = mv
        self.runtime = runtime
        self.label = f"{mv.name}@{mv.version}"
        self.load_seconds = load_seconds
        m = mv.manifest
        declared = schema_from_dict(m.input_schema)  # type: ignore[arg-type]
        runtime_specs = runtime.input_specs
        if declared is None and runtime_specs:
            declared = TensorSchema(runtime_specs)
        self.input_schema: RecordSchema | TensorSchema | NoSchema = declared or NoSchema()
        # Record or schemaless inputs still meet the model's own dtypes (e.g. float32 ONNX).
        self._cast = (
            TensorSchema(runtime_specs)
            if runtime_specs and not isinstance(self.input_schema, TensorSchema)
            else None
        )
        self.output_schema = schema_from_dict(m.output_schema)  # type: ignore[arg-type]
        self.schema_options = options.schema_options()
        pre = options.preprocess if options.preprocess is not None else m.preprocess
        post = options.postprocess if options.postprocess is not None else m.postprocess
        self.preprocess = _import_callable(pre, "preprocess") if isinstance(pre, str) else pre
        self.postprocess = _import_callable(post, "postprocess") if isinstance(post, str) else post

    def _context(self, exc: SchemaError) -> SchemaError:
        exc.model, exc.version = self.mv.name, self.mv.version
        return exc

    def prepare_one(self, record: Any) -> Any:
        """Validate one record into a batch of one row; raises :class:`SchemaError`."""
        try:
            batch = self.input_schema.one(record, self.schema_options)
            return batch if self._cast is None else self._cast.many(batch, self.schema_options)
        except SchemaError as exc:
            raise self._context(exc) from None

    def prepare_many(self, records: Any) -> Any:
        """Validate a batch of records; raises :class:`SchemaError` naming the bad record."""
        try:
            batch = self.input_schema.many(records, self.schema_options)
            return batch if self._cast is None else self._cast.many(batch, self.schema_options)
        except SchemaError as exc:
            raise self._context(exc) from None

    def run(self, batch: Any, n: int) -> Any:
        """preprocess -> model -> postprocess on a validated batch of ``n`` rows."""
        if self.preprocess is not None:
            try:
                batch = self.preprocess(batch)
            except Exception as exc:
                raise PredictionError(
                    f"preprocess of {self.label} raised {type(exc).__name__}: {exc}",
                    stage="preprocess",
                ) from exc
        try:
            out = self.runtime.predict(batch)
        except Exception as exc:
            raise PredictionError(
                f"model {self.label} raised {type(exc).__name__}: {exc}", stage="model"
            ) from exc
        if self.postprocess is not None:
            try:
                out = self.postprocess(out)
            except Exception as exc:
                raise PredictionError(
                    f"postprocess of {self.label} raised {type(exc).__name__}: {exc}",
                    stage="postprocess",
                ) from exc
        got = n_rows(out)
        if got != n:
            raise PredictionError(
                f"model {self.label} returned {got} output rows for {n} input rows", stage="output"
            )
        return out

    def rows(self, out: Any, n: int) -> Any:
        """Raw batch outputs -> the caller's result (output-schema instances when declared)."""
        schema = self.output_schema
        if schema is None:
            return out
        try:
            if isinstance(schema, RecordSchema):
                return schema.outputs(out, n)
            return schema.check_output(out, n)
        except SchemaError as exc:
            raise self._context(exc) from None

    def row(self, out: Any, i: int = 0) -> Any:
        """Row ``i`` of raw batch outputs, as the caller's result for one record."""
        if isinstance(self.output_schema, RecordSchema):
            return self.rows(take(out, slice(i, i + 1)), 1)[0]
        if self.output_schema is not None:
            self.rows(out, n_rows(out))
        return take(out, i)

    def close(self) -> None:
        self.runtime.close()


class HandleState(enum.Enum):
    """Lifecycle of a handle: ``OPEN`` until ``close()``, then ``CLOSED`` for good."""

    OPEN = "open"
    CLOSED = "closed"


class ModelHandle:
    """A loaded model version you can call: ``predict``, ``predict_batch``, ``apredict``.

    Get one from :meth:`ModelStore.load` or :func:`embedml.load`. Safe to share between
    threads and asyncio tasks. Close it (or use ``with``) when done; a closed handle raises
    :class:`HandleClosedError`.
    """

    def __init__(self, pipeline: Pipeline, options: LoadOptions) -> None:
        self._pipe = pipeline
        self._options = options
        self._state = HandleState.OPEN
        self._lock = threading.Lock()

    @classmethod
    def open(cls, store: ModelStore, mv: ModelVersion, options: LoadOptions) -> ModelHandle:
        """Verify the artifact of ``mv``, load it with its format, and wrap it in a handle."""
        start = time.perf_counter()
        check_before_load(mv, options)  # signature and framework versions, before any byte is read
        fmt = get_format(mv.manifest.format)
        data = store.read_artifact(mv)  # hash checked before any byte is deserialised
        try:
            runtime = fmt.load(data, options.format_options())
        except EmbedMLError:
            raise
        except Exception as exc:
            from .errors import UnsupportedFormatError

            raise UnsupportedFormatError(
                f"could not load {mv} as {fmt.name}: {type(exc).__name__}: {exc}"
            ) from exc
        return cls(Pipeline(mv, runtime, options, time.perf_counter() - start), options)

    # -- identity
    @property
    def name(self) -> str:
        """The model's name."""
        return self._pipe.mv.name

    @property
    def version(self) -> str:
        """The version being served."""
        return self._pipe.mv.version

    @property
    def format(self) -> str:
        """The artifact's format name (``"onnx"``, ``"joblib"``, ...)."""
        return self._pipe.mv.manifest.format

    @property
    def manifest(self) -> Manifest:
        """The manifest of the version being served."""
        return self._pipe.mv.manifest

    @property
    def input_schema(self) -> RecordSchema | TensorSchema | NoSchema:
        """The input schema enforced on every call."""
        return self._pipe.input_schema

    @property
    def state(self) -> HandleState:
        """``HandleState.OPEN`` or ``HandleState.CLOSED``."""
        return self._state

    def __repr__(self) -> str:
        return f"<ModelHandle {self._pipe.label} ({self.format}, {self._state.value})>"

    # -- calls
    def _pipeline(self) -> Pipeline:
        if self._state is not HandleState.OPEN:
            raise HandleClosedError(f"the handle for {self._pipe.label} is closed")
        return self._pipe

    def predict(self, record: Any, *, details: bool = False) -> Any:
        """Predict one record (dict, pydantic instance, or array without the batch axis).

        Returns the model's output for that record (output-schema instance when declared),
        or a :class:`Prediction` with ``details=True``. Raises :class:`SchemaError`,
        :class:`PredictionError`, :class:`HandleClosedError`.
        """
        pipe = self._pipeline()
        batch = pipe.prepare_one(record)
        out = pipe.row(pipe.run(batch, 1), 0)
        return Prediction(out, new_request_id(), pipe.mv.name, pipe.mv.version) if details else out

    def predict_batch(self, records: Any, *, details: bool = False) -> Any:
        """Predict many records: a list of records, a 2-D array, a DataFrame, or a dict of
        arrays for multi-input models. Returns the batch of outputs (a list of output-schema
        instances when declared), or a :class:`Prediction` with ``details=True`` (one request
        id for the whole batch). A bad record raises :class:`SchemaError` with its index.
        """
        pipe = self._pipeline()
        batch = pipe.prepare_many(records)
        n = n_rows(batch)
        out = pipe.rows(pipe.run(batch, n), n)
        return Prediction(out, new_request_id(), pipe.mv.name, pipe.mv.version) if details else out

    async def apredict(self, record: Any, *, details: bool = False) -> Any:
        """``predict`` for asyncio code: the model runs in a worker thread, not on the loop."""
        import asyncio

        self._pipeline()
        return await asyncio.to_thread(self.predict, record, details=details)

    # -- lifecycle
    def close(self) -> None:
        """Stop serving and release the runtime. Idempotent."""
        with self._lock:
            if self._state is HandleState.CLOSED:
                return
            self._state = HandleState.CLOSED
        self._pipe.close()

    def __enter__(self) -> ModelHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
