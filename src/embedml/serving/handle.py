"""``ModelHandle``: one loaded model version behind a fixed pipeline, and its lifecycle.

Every call runs the same stages, in this order::

    validate input (schema) -> preprocess -> model -> postprocess -> validate output

A :class:`Pipeline` holds one loaded version and runs those stages on a batch; the handle
owns a pipeline, exposes ``predict`` / ``predict_batch`` / ``apredict``, and is closed with
``close()`` or ``with``. Errors: :class:`SchemaError` (bad input, the model is not called),
:class:`PredictionError` (a stage raised; the original is chained), :class:`HandleClosedError`.

Hot swap: ``handle.swap(spec)`` builds and warms up the new pipeline before replacing the
handle's pipeline in one assignment. Each call holds a use of the pipeline it started on, and
a pipeline closes when its last use is released, so calls in flight finish on the old version
and no call ever waits for a swap.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import (
    ConfigurationError,
    EmbedMLError,
    HandleClosedError,
    PredictionError,
    SchemaError,
    UntrustedArtifactError,
)
from ..formats import FormatOptions, Runtime, get_format
from ..formats.signature import input_schema_for
from ..observe.hooks import Observer, Sink, new_request_id
from ..schema.core import (
    NoSchema,
    RecordSchema,
    Schema,
    SchemaOptions,
    TensorSchema,
    schema_from_dict,
)
from ..schema.frames import is_frame, output_frame
from ..schema.synthetic import synthetic_batch
from ..store.manifest import Manifest, method_problem
from ..tensors import ClassProbabilities, n_rows, take
from .trust import check_before_load

if TYPE_CHECKING:
    from ..store.model_store import ModelStore, ModelVersion
    from .batching import Batcher, Batching, BatchingStats
    from .cache import ModelCache
    from .follow import Follower

__all__ = ["HandleState", "LoadOptions", "ModelHandle", "Pipeline", "Prediction", "new_request_id"]

_log = logging.getLogger("embedml.serving.handle")

# Live pipelines and handles: a forked child gets fresh locks for them (a thread of the
# parent, such as an alias follower swapping, may have held one at the fork).
_LIVE: weakref.WeakSet[Any] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for obj in list(_LIVE):
        obj._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


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


def passes_through(exc: BaseException) -> bool:
    """Whether an exception from model code must reach the caller unchanged: Ctrl-C
    (``KeyboardInterrupt``), ``GeneratorExit`` and asyncio cancellation. Everything else,
    ``SystemExit`` included, becomes a :class:`PredictionError`."""
    if isinstance(exc, KeyboardInterrupt | GeneratorExit):
        return True
    # looked up, not imported: if asyncio was never imported, nothing was cancelled by it
    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)


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

    ``row_wise`` (see ``docs/concepts.md``): ``False`` when the model's outputs are not one
    per input row (``row_wise_reason`` says why). Calls then take ``prepare_whole``: the
    tensors go to the model whole and its outputs come back whole, and batching is refused.
    """

    def __init__(
        self, mv: ModelVersion, runtime: Runtime, options: LoadOptions, load_seconds: float
    ) -> None:
        self.mv = mv
        self.runtime = runtime
        self.label = f"{mv.name}@{mv.version}"
        self.load_seconds = load_seconds
        m = mv.manifest
        signature = m.signature or {}
        pre = options.preprocess if options.preprocess is not None else m.preprocess
        post = options.postprocess if options.postprocess is not None else m.postprocess
        declared = schema_from_dict(m.input_schema)  # type: ignore[arg-type]
        output_schema = schema_from_dict(m.output_schema)  # type: ignore[arg-type]
        self.row_wise_reason = _not_row_wise(runtime, m, declared, output_schema)
        self.row_wise = rows = not self.row_wise_reason
        # by the model's own names (signature.input_schema_for); refuses a schema naming others
        self.input_schema: Schema = _rows(
            input_schema_for(declared, runtime, signature, self.label, preprocessed=pre is not None),
            rows,
        )
        # Record or schemaless inputs still meet the model's own dtypes (e.g. float32 ONNX);
        # column inputs are cast per column already.
        runtime_specs = runtime.input_specs
        self._cast = (
            TensorSchema(runtime_specs, rows=rows)
            if runtime_specs and type(self.input_schema) in (RecordSchema, NoSchema)
            else None
        )
        self.output_schema = _rows(output_schema, rows)
        if options.batching is not None and not rows:
            raise ConfigurationError(
                f"{self.label} cannot be loaded with batching=: it is not row-wise "
                f"({self.row_wise_reason}). Batching joins the rows of concurrent calls into "
                "one model call and splits its outputs back by row, which is only right when "
                "each output row comes from its input row alone; load it without batching="
            )
        if options.batching is not None and signature.get("batch_invariant") is False:
            raise ConfigurationError(
                f"{self.label} cannot be loaded with batching=: its outputs for a row depend on the"
                " other rows of the batch (checked on the input example at save: predicting the"
                " rows one at a time gave other outputs), so joining callers' rows would change"
                " their answers"
            )
        self.schema_options = options.schema_options()
        self.preprocess = _import_callable(pre, "preprocess") if isinstance(pre, str) else pre
        self.postprocess = _import_callable(post, "postprocess") if isinstance(post, str) else post
        # A classifier's probabilities come with its class labels (see Pipeline.rows), unless
        # a postprocess step or an output schema says what the outputs are.
        probabilities = runtime.method in ("predict_proba", "predict_log_proba")
        self.classes = (
            list(runtime.classes)
            if probabilities and runtime.classes and self.output_schema is None and post is None
            else None
        )
        #: Raw outputs are what callers get (no output schema, no class labels to attach).
        self.plain = self.output_schema is None and self.classes is None
        # field names of a validated matrix, for prediction records (hooks)
        names = self.input_schema.names if type(self.input_schema) is RecordSchema else None
        self.source = (mv.name, mv.version, names)  # a hooks.Source
        # Dynamic batching (embedml.serving.batching): joins concurrent calls on this pipeline.
        self.batcher: Batcher | None = None
        if options.batching is not None:
            from .batching import Batcher

            self.batcher = Batcher(self, options.batching)  # type: ignore[arg-type]

        # Uses: one for the owner (a handle or the cache) plus one per call in flight. The
        # pipeline closes when the count drops to zero; no lock is held around the model.
        self._uses = 1
        self._uses_lock = threading.Lock()
        self._released = threading.Event()  # set once the runtime is released (see close)
        _LIVE.add(self)

    def _after_fork_in_child(self) -> None:
        self._uses_lock = threading.Lock()

    # acquire/release run on every call: the lock's methods are called directly (half the
    # cost of ``with``), with try/finally so that it is released whatever happens.
    def acquire(self) -> bool:
        """Take one use; ``False`` if the pipeline has already been released for good."""
        lock = self._uses_lock
        lock.acquire()
        try:
            uses = self._uses
            if uses <= 0:
                return False
            self._uses = uses + 1
            return True
        finally:
            lock.release()

    def release(self) -> bool:
        """Give back one use; the last one closes the pipeline (after its calls finished)
        and returns ``True``."""
        lock = self._uses_lock
        lock.acquire()
        try:
            uses = self._uses = self._uses - 1
        finally:
            lock.release()
        if uses == 0:
            self.close()
            return True
        return False

    @property
    def unused(self) -> bool:
        """Whether the last use was given back: the pipeline is closed, or closing."""
        return self._uses <= 0

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

    def quick_one(self, record: Any) -> Any:
        """``record`` as a batch of one row *without* the NaN/inf check, when it is exactly
        one float row of the single input tensor (shape and dtype); else ``None``. The
        batcher then checks the rows of a whole batch at once (:meth:`rows_ok`) and gives
        a call whose row fails the error :meth:`prepare_one` gives."""
        schema = self.input_schema
        return schema.unchecked_one(record) if type(schema) is TensorSchema else None

    def rows_ok(self, batch: Any) -> bool:
        """Whether a batch of rows from :meth:`quick_one` passes the NaN/inf check."""
        return TensorSchema.rows_finite(batch, self.schema_options)

    def prepare_many(self, records: Any) -> Any:
        """Validate a batch of records; raises :class:`SchemaError` naming the bad record."""
        try:
            batch = self.input_schema.many(records, self.schema_options)
            return batch if self._cast is None else self._cast.many(batch, self.schema_options)
        except SchemaError as exc:
            raise self._context(exc) from None

    def prepare_whole(self, inputs: Any, one: bool) -> tuple[Any, bool]:
        """Validate the inputs of a model that is not row-wise; returns the model's feed and
        whether it is whole (``False``: ``predict`` got one example, to which a batch axis of
        1 was added; take row 0 of the outputs). Raises :class:`SchemaError`."""
        opts = self.schema_options
        schema = self.input_schema
        try:
            if isinstance(schema, TensorSchema):
                return schema.whole(inputs, opts, one=one)
            # records and schemaless arrays are validated as always (predict: a batch of one)
            batch = schema.one(inputs, opts) if one else schema.many(inputs, opts)
            if self._cast is not None:
                batch = self._cast.whole(batch, opts)[0]
            return batch, not one
        except SchemaError as exc:
            raise self._context(exc) from None

    def run(self, batch: Any, n: int, whole: bool = False) -> Any:
        """preprocess -> model -> postprocess on a validated batch of ``n`` rows (``whole``:
        on tensors passed whole, whose outputs are not counted in rows).

        Whatever those stages raise becomes :class:`PredictionError` (``SystemExit`` too),
        except the interrupts of :func:`passes_through`, which propagate as they are."""
        stage = "preprocess"
        try:
            if self.preprocess is not None:
                batch = self.preprocess(batch)
            stage = "model"
            out = self.runtime.predict(batch)
            if self.postprocess is not None:
                stage = "postprocess"
                out = self.postprocess(out)
        except BaseException as exc:
            if passes_through(exc):
                raise
            what = f"model {self.label}" if stage == "model" else f"{stage} of {self.label}"
            raise PredictionError(
                f"{what} raised {type(exc).__name__}: {exc}", stage=stage
            ) from exc
        if whole:
            return out
        got = n_rows(out)
        if got != n:
            raise PredictionError(
                f"model {self.label} returned {got} output rows for {n} input rows", stage="output"
            )
        if not self.row_wise:  # one example with a batch axis added: every output needs it
            for name, part in _parts(out):
                if n_rows(part) != n:
                    raise PredictionError(
                        f"model {self.label} returned output {name} of shape "
                        f"{getattr(part, 'shape', None)} for one example: no first axis of 1 to take its "
                        "row from; pass the tensors whole with predict_batch",
                        stage="output",
                    )
        return out

    def rows(self, out: Any, n: int) -> Any:
        """Raw batch outputs -> the caller's result (output-schema instances when declared;
        ``{"probabilities": (n, k) array, "classes": [k labels]}`` for a classifier's
        probabilities)."""
        if self.classes is not None:
            return ClassProbabilities(out, list(self.classes))
        schema = self.output_schema
        if schema is None:
            return out
        try:
            if isinstance(schema, RecordSchema):
                return schema.outputs(out, n, self.schema_options)
            return schema.check_output(out, n)
        except SchemaError as exc:
            raise self._context(exc) from None

    def row(self, out: Any, i: int = 0) -> Any:
        """Row ``i`` of raw batch outputs, as the caller's result for one record."""
        if self.classes is not None:
            return ClassProbabilities(take(out, i), list(self.classes))
        if self.output_schema is None:
            return take(out, i)
        if isinstance(self.output_schema, RecordSchema):
            return self.rows(take(out, slice(i, i + 1)), 1)[0]
        if self.output_schema is not None:
            self.rows(out, n_rows(out))
        return take(out, i)

    def close(self) -> None:
        """Close the batcher (queued calls still run, new ones raise HandleClosedError) and
        release the runtime once it is idle. Never waits for the model: a batch still
        running (one whose callers stopped waiting, in a model that hangs) releases the
        runtime from its own thread when the model returns; :meth:`wait_closed` waits for
        that. Safe to call more than once (e.g. by a hot swap)."""
        if self.batcher is None or self.batcher.close(self._release_runtime):
            self._release_runtime()

    def _release_runtime(self) -> None:
        self.runtime.close()
        self._released.set()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout`` seconds) until a closed pipeline released its runtime
        and its batcher's worker thread ended; returns whether it did."""
        end = None if timeout is None else time.monotonic() + timeout
        if not self._released.wait(timeout):
            return False
        left = None if end is None else max(0.0, end - time.monotonic())
        return self.batcher is None or self.batcher.join(left)


def _not_row_wise(runtime: Runtime, m: Manifest, inputs: Any, outputs: Any) -> str:
    """Why a version is not row-wise ("" when it is): its runtime (an ONNX graph's declared
    shapes), ``row_wise=False`` at save, or a declared tensor schema without a batch axis."""
    if not runtime.row_wise:
        return runtime.row_wise_reason or "its runtime says so"
    if m.row_wise is False:
        return "it was saved with row_wise=False"
    for what, schema in (("input", inputs), ("output", outputs)):
        if isinstance(schema, TensorSchema) and not schema.rows:
            flat = next(s.name for s in schema.specs if not s.shape)
            return f"the {what} schema's tensor {flat!r} has no first dimension"
    return ""


def _rows(schema: Any, rows: bool) -> Any:
    """A tensor schema taken whole when the version is not row-wise."""
    if isinstance(schema, TensorSchema) and schema.rows and not rows:
        return TensorSchema(schema.specs, rows=False)
    return schema


def _parts(out: Any) -> list[tuple[str, Any]]:
    """The named parts of raw outputs (an array, a list, a dict or a tuple of them)."""
    if isinstance(out, dict):
        return [(repr(k), v) for k, v in out.items()]
    if isinstance(out, tuple):
        return [(str(i), v) for i, v in enumerate(out)]
    return [("0", out)]


def build_pipeline(store: ModelStore, mv: ModelVersion, options: LoadOptions) -> Pipeline:
    """Verify the artifact of ``mv`` and load it with its format into a new :class:`Pipeline`.

    The method called is ``options.method``, else the one saved with the version; under
    ``options.restricted`` a saved method outside ``STANDARD_METHODS`` raises
    :class:`UntrustedArtifactError`."""
    start = time.perf_counter()
    # signature, import paths and framework versions: before any byte is read
    check_before_load(mv, options)
    format_options = options.format_options()
    if options.method is None and mv.manifest.method is not None:  # the caller's method wins
        problem = method_problem(mv.manifest) if options.restricted else None
        if problem is not None:
            raise UntrustedArtifactError(problem)
        format_options = dataclasses.replace(format_options, method=mv.manifest.method)
    fmt = get_format(mv.manifest.format)
    data = store.read_artifact(mv)  # hash checked before any byte is deserialised
    try:
        runtime = fmt.load(data, format_options)
    except EmbedMLError:
        raise
    except Exception as exc:
        from ..errors import UnsupportedFormatError

        raise UnsupportedFormatError(
            f"could not load {mv} as {fmt.name}: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        return Pipeline(mv, runtime, options, time.perf_counter() - start)
    except BaseException:  # e.g. batching refused: the runtime (an ORT session) is released
        runtime.close()
        raise


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

    def __init__(
        self,
        pipeline: Pipeline,
        options: LoadOptions,
        *,
        store: ModelStore | None = None,
        cache: ModelCache | None = None,
    ) -> None:
        self._pipe = pipeline  # this handle owns one use of it (see Pipeline.acquire)
        self._options = options
        self._state = HandleState.OPEN
        self._lock = threading.Lock()
        self._store = store
        self._cache = cache
        self._sample: Any = None  # the last record predicted: swap's default warm-up input
        self._follower: Follower | None = None
        self._obs = Observer()
        self._warmed = False
        self._abandoned = 0  # model calls close() or swap() stopped waiting for
        _LIVE.add(self)
        try:
            for hook in options.hooks:
                self.add_hook(hook)
        except BaseException:
            self.close()
            raise

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        store: ModelStore,
        mv: ModelVersion,
        options: LoadOptions,
        cache: ModelCache | None = None,
    ) -> ModelHandle:
        """Open ``mv`` (from ``cache`` when given, else loaded now) and wrap it in a handle."""
        pipe = cache.pipeline(store, mv, options) if cache is not None else None
        if pipe is None:
            pipe = build_pipeline(store, mv, options)
        return cls(pipe, options, store=store, cache=cache)

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
    def input_schema(self) -> Schema:
        """The input schema enforced on every call: the declared one, or what the model
        declares (see ``docs/concepts.md``, "How embedml reads a model's interface")."""
        return self._pipe.input_schema

    @property
    def row_wise(self) -> bool:
        """Whether the model's outputs are one per input row (see ``docs/concepts.md``):
        only then are rows validated one by one, calls batched, streams micro-batched."""
        return self._pipe.row_wise

    def check_row_wise(self, what: str) -> None:
        """Raise :class:`ConfigurationError` if the model is not row-wise, for ``what``
        (a feature that cuts inputs into rows or joins them, e.g. ``"predict_stream"``)."""
        pipe = self._pipe
        if not pipe.row_wise:
            raise ConfigurationError(
                f"{what} needs a row-wise model; {pipe.label} is not row-wise "
                f"({pipe.row_wise_reason}): pass its tensors whole to predict_batch"
            )

    @property
    def follower(self) -> Follower | None:
        """The alias follower of a handle loaded with ``follow=True`` (its ``swaps``,
        ``errors``, ``last_error``), else ``None``."""
        return self._follower

    @property
    def state(self) -> HandleState:
        """``HandleState.OPEN`` or ``HandleState.CLOSED``."""
        return self._state

    def __repr__(self) -> str:
        return f"<ModelHandle {self._pipe.label} ({self.format}, {self._state.value})>"

    # -- calls
    def _pipeline(self) -> Pipeline:
        """The current pipeline, with one use taken: give it back with ``release()``."""
        while True:
            if self._state is not HandleState.OPEN:
                raise HandleClosedError(f"the handle for {self._pipe.label} is closed")
            pipe = self._pipe
            if pipe.acquire():
                return pipe
            # Swapped out and drained between the read and the acquire: read again.

    def predict(
        self, record: Any, *, details: bool = False, timeout_ms: float | None = None
    ) -> Any:
        """Predict one record (dict, pydantic instance, or array without the batch axis).

        Returns the model's output for that record (output-schema instance when declared),
        or a :class:`Prediction` with ``details=True``. Raises :class:`SchemaError`,
        :class:`PredictionError`, :class:`HandleClosedError`. With batching, also
        :class:`OverloadedError` (queue full) and :class:`PredictionTimeoutError` (past
        ``timeout_ms``, default ``Batching.timeout_ms``); without batching the call runs at
        once and ``timeout_ms`` is not checked.

        For a model that is not row-wise (:attr:`row_wise`) the inputs are the model's
        tensors whole, as for :meth:`predict_batch`; an example that lacks a first dimension
        the model declares as 1 or dynamic gets one, and loses it again in the outputs.
        """
        pipe = self._pipe  # _pipeline()'s common case, without its frame
        if self._state is not HandleState.OPEN or not pipe.acquire():
            pipe = self._pipeline()
        return self._call(pipe, record, True, timeout_ms, details)

    def predict_batch(
        self,
        records: Any,
        *,
        details: bool = False,
        timeout_ms: float | None = None,
        as_frame: bool = False,
    ) -> Any:
        """Predict many records: a list of records, a 2-D array, a DataFrame, or a dict of
        arrays for multi-input models. Returns the batch of outputs (a list of output-schema
        instances when declared), or a :class:`Prediction` with ``details=True`` (one request
        id for the whole batch). A bad record raises :class:`SchemaError` with its index.
        With batching the rows join other calls' (``timeout_ms`` as in :meth:`predict`).

        ``as_frame=True`` returns the outputs as a pandas DataFrame with the index of the
        input DataFrame (``0..n-1`` for other inputs), columns named as in
        :mod:`embedml.schema.frames`.

        A model that is not row-wise (:attr:`row_wise`) gets the tensors whole and returns
        its outputs whole, checked against every declared dimension; ``as_frame=True`` is
        then a :class:`ConfigurationError`.
        """
        if as_frame:
            self.check_row_wise("as_frame=True (a row of outputs per input row)")
        pipe = self._pipe  # _pipeline()'s common case, without its frame
        if self._state is not HandleState.OPEN or not pipe.acquire():
            pipe = self._pipeline()
        out = self._call(pipe, records, False, timeout_ms, details)
        if not as_frame:
            return out
        index = records.index if is_frame(records) else None
        raw = out.output if details else out
        frame = output_frame(raw, len(index) if index is not None else n_rows(raw), index)
        return dataclasses.replace(out, output=frame) if details else frame

    def _call(
        self, pipe: Pipeline, records: Any, one: bool, timeout_ms: float | None, details: bool
    ) -> Any:
        """validate -> (batcher or model) -> shape, timed per stage and observed."""
        # The per-call path of every prediction: kept flat (few calls, no helper frames).
        obs = self._obs
        obs.metrics.begin()
        clock = time.perf_counter
        t0 = t1 = t2 = clock()
        batch = raw = None
        n = size = off = 0
        queue = 0.0
        try:
            if pipe.row_wise:
                batch = pipe.prepare_one(records) if one else pipe.prepare_many(records)
                n = 1 if one else n_rows(batch)
                whole = False
            else:  # tensors whole; one example may get a batch axis (then whole is False)
                batch, whole = pipe.prepare_whole(records, one)
                n = 1
            t1 = clock()
            if pipe.batcher is None:
                raw = pipe.run(batch, n, whole)
            else:
                joined, off, size, queue = pipe.batcher.submit(batch, n, timeout_ms, obs)
                # a call that ran alone gets its own outputs: no slice to cut
                raw = joined if size == n else take(joined, slice(off, off + n))
            t2 = clock()
            row = one and not whole  # one example: its row of the outputs
            if pipe.plain:  # Pipeline.row / rows without a schema, inlined
                out = take(raw, 0) if row else raw
            else:
                out = pipe.row(raw, 0) if row else pipe.rows(raw, n)
        except BaseException as exc:  # interrupted calls too: each begin() needs its end
            self._observe(pipe, batch, raw, n, t0, t1, t2, exc)
            raise
        finally:
            pipe.release()
        if one:
            self._sample = records  # only records that worked: a bad one must not break swap
        # the request id is made by obs.end only when someone can see it (details or a sink)
        rid = new_request_id() if details else None
        try:
            stamps = (t0, t1, t2, clock())
            obs.end(
                pipe.source, rid, batch, raw, n, stamps, None, queue, size, off == 0, details,
                pipe.batcher is not None,
            )  # fmt: skip
        except Exception:  # pragma: no cover - observability must not break a prediction
            _log.exception("recording prediction %s failed", rid)
        return Prediction(out, rid, pipe.mv.name, pipe.mv.version) if details else out

    async def apredict(
        self, record: Any, *, details: bool = False, timeout_ms: float | None = None
    ) -> Any:
        """``predict`` for asyncio code: the model runs in a worker thread, not on the loop.

        With batching the record is validated on the loop, then waits (without a thread of
        its own) for a batch, run by the batcher's worker thread or, for a model measured
        to take under ``Batching.inline_ms`` per batch, on the loop itself by the task that
        leads it; ``timeout_ms`` as in :meth:`predict`.
        """
        pipe = self._pipeline()
        if pipe.batcher is None:
            import asyncio

            pipe.release()
            return await asyncio.to_thread(self.predict, record, details=details)
        # the same flat path as _call (see there), awaiting the batcher
        obs = self._obs
        obs.metrics.begin()
        clock = time.perf_counter
        t0 = t1 = t2 = clock()
        batch = raw = None
        try:
            batch = pipe.quick_one(record)  # its NaN/inf check is made per batch
            unchecked = batch is not None
            if not unchecked:
                batch = pipe.prepare_one(record)
            t1 = clock()
            joined, off, size, queue = await pipe.batcher.asubmit(
                batch, 1, timeout_ms, obs, unchecked
            )
            raw = take(joined, slice(off, off + 1))
            t2 = clock()
            out = take(raw, 0) if pipe.plain else pipe.row(raw, 0)
        except BaseException as exc:  # a cancelled task too: each begin() needs its end
            self._observe(pipe, batch, raw, 1, t0, t1, t2, exc)
            raise
        finally:
            pipe.release()
        self._sample = record
        rid = new_request_id() if details else None
        try:
            stamps = (t0, t1, t2, clock())
            rid = obs.end(
                pipe.source, rid, batch, raw, 1, stamps, None, queue, size, off == 0, details, True
            )
        except Exception:  # pragma: no cover - observability must not break a prediction
            _log.exception("recording prediction %s failed", rid)
        return Prediction(out, rid, pipe.mv.name, pipe.mv.version) if details else out

    def batching_stats(self) -> BatchingStats | None:
        """Counters of dynamic batching (requests, batches, batch sizes, queue wait), or
        ``None`` when the handle was loaded without ``batching=``."""
        batcher = self._pipe.batcher
        return None if batcher is None else batcher.stats()

    # -- observability (see docs/observability.md)
    def _observe(
        self, pipe: Pipeline, batch: Any, raw: Any, n: int,
        t0: float, t1: float, t2: float, error: BaseException | None = None, queue: float = 0.0,
        size: int = 0, first: bool = True, remember: bool = False,
    ) -> str:  # fmt: skip
        """Report one finished call to metrics, the outcome join and the hooks; returns its
        request id. ``queue``: seconds waited in the batching queue; ``size``: rows of the
        model call that served it (0: ``n``); ``first``: its rows came first in that call
        (see :meth:`Observer.end`); ``remember``: the caller sees the request id
        (``details=True``), so keep the outputs for :meth:`log_outcome`. Never raises."""
        rid = new_request_id()
        try:
            stamps = (t0, t1, t2, time.perf_counter())
            self._obs.end(pipe.source, rid, batch, raw, n, stamps, error, queue, size, first, remember)
        except Exception:  # pragma: no cover - observability must not break a prediction
            _log.exception("recording prediction %s failed", rid)
        return rid

    def add_hook(self, hook: Sink | Callable[[Any], Any]) -> Sink:
        """Attach a hook: a :class:`~embedml.observe.hooks.Sink` (``JsonlSink``, ``LoggingSink``,
        ``DriftMonitor``...) or a callable taking a :class:`~embedml.PredictionRecord`
        (run on a background thread). Returns the sink. Raises :class:`ConfigurationError`
        for anything else, :class:`HandleClosedError` on a closed handle.
        """
        from ..observe.sinks import as_sink

        if self._state is not HandleState.OPEN:
            raise HandleClosedError(f"the handle for {self._pipe.label} is closed")
        if not callable(hook) and not isinstance(hook, Sink):
            raise ConfigurationError(f"a hook must be a Sink or a callable, got {hook!r}")
        sink = as_sink(hook)
        self._obs.add(sink, self)
        return sink

    def remove_hook(self, hook: Sink) -> bool:
        """Detach a sink (closing it if no other handle uses it); ``False`` if not attached."""
        return self._obs.remove(hook, self)

    @property
    def hooks(self) -> tuple[Sink, ...]:
        """The attached sinks."""
        return self._obs.sinks

    def metrics(self) -> dict[str, Any]:
        """A snapshot of this handle's metrics.

        Keys: ``model``, ``version``, ``format``, ``load_seconds``, ``uptime_seconds``,
        ``requests`` (calls), ``rows``, ``errors``, ``errors_by_type``, ``in_flight``,
        ``last_error``, ``latency_ms`` (per stage ``validation`` / ``queue`` / ``model`` /
        ``total``: ``count``, ``mean``, ``p50``, ``p90``, ``p99``), ``throughput``
        (requests and rows per second over the last minute), ``batch_size`` (model calls
        per power-of-two range of rows: with batching, each joined batch counts once, by the
        rows of all the calls it served; without, each call counts by its own rows), ``quality`` (see :meth:`log_outcome`; ``None`` before
        the first outcome), ``hooks`` (per-sink ``accepted`` / ``written`` /
        ``dropped`` / ``errors`` / ``abandoned`` / ``queued``) and ``abandoned`` (model
        calls that :meth:`close` or :meth:`swap` stopped waiting for, their threads left
        to finish on their own).
        """
        pipe = self._pipe
        snap = self._obs.metrics.snapshot()
        return {
            "model": pipe.mv.name, "version": pipe.mv.version, "format": self.format,
            "load_seconds": round(pipe.load_seconds, 6), **snap,
            "quality": self._obs.quality.snapshot(),
            "hooks": [s.stats() for s in self._obs.sinks],
            "abandoned": self._abandoned,
        }  # fmt: skip

    def health(self) -> dict[str, Any]:
        """Readiness for probes: ``ready`` (open, and warmed up or has served a call),
        ``loaded``, ``warmed_up``, ``model``, ``version``, ``requests``, ``errors`` and
        ``last_error`` (``{"type", "message", "time"}`` or ``None``)."""
        m = self._obs.metrics
        loaded = self._state is HandleState.OPEN
        served = m.requests > m.errors
        return {
            "ready": loaded and (self._warmed or served),
            "loaded": loaded,
            "warmed_up": self._warmed,
            "model": self.name,
            "version": self.version,
            "requests": m.requests,
            "errors": m.errors,
            "last_error": None if m.last_error is None else dict(m.last_error),
        }

    def warmup(self, n: int = 1) -> float:
        """Run ``n`` single-row calls on synthetic inputs built from the input schema, so
        the first real call does not pay for lazy initialisation. Warm-up calls are not
        counted in metrics nor sent to hooks. Returns the seconds taken. Raises
        :class:`ConfigurationError` (no schema to build inputs from, or ``n < 1``) and the
        errors of :meth:`predict_batch`.
        """
        if int(n) < 1:
            raise ConfigurationError(f"warmup(n) needs n >= 1, got {n!r}")
        pipe = self._pipeline()
        start = time.perf_counter()
        try:
            records = synthetic_batch(pipe.input_schema, 1)
            for _ in range(int(n)):
                if pipe.row_wise:
                    pipe.rows(pipe.run(pipe.prepare_many(records), 1), 1)
                else:
                    pipe.rows(pipe.run(pipe.prepare_whole(records, False)[0], 1, True), 1)
        finally:
            pipe.release()
        self._warmed = True
        return time.perf_counter() - start

    def log_outcome(self, request_id: str, y_true: Any) -> dict[str, Any]:
        """Join the ground truth of an earlier call with its prediction.

        ``request_id`` is ``predict(..., details=True).request_id`` (also in every
        :class:`~embedml.PredictionRecord`); ``y_true`` is the true value (one per row for
        ``predict_batch``). The result feeds a sliding window of accuracy (classifiers) or
        MAE / RMSE (regressors), shown in ``metrics()["quality"]``. The handle remembers
        the outputs of its last 10,000 predicted rows (a call of more rows is not
        remembered). Raises :class:`RequestNotFoundError` for an unknown,
        forgotten or already joined id, :class:`SchemaError` when ``y_true`` has the wrong
        number of values.
        """
        return self._obs.quality.join(request_id, y_true, self._pipe.label)

    def reference_profile(self) -> Any:
        """The reference profile saved with this version (``store.save(...,
        reference_data=X)``), verified against the manifest's SHA-256, or ``None``."""
        from ..schema.profile import PROFILE_FILE, ReferenceProfile

        mv = self._pipe.mv
        if self._store is None or PROFILE_FILE not in mv.manifest.extra_files:
            return None
        return ReferenceProfile.from_json(self._store.read_extra_file(mv, PROFILE_FILE))

    # -- versions
    def swap(
        self, version: str | int = "latest", *, warmup: Any = None, timeout: float = 30.0
    ) -> str:
        """Serve another version of the same model, without dropping or pausing a call.

        Resolves ``version`` (a spec such as ``"2"``, ``"latest"`` or ``"@production"``),
        loads it fully and warms it up by predicting ``warmup`` (default: the last record
        ``predict`` succeeded on, if any) before switching. Calls already running finish on the
        old version, which is closed once they are done; new calls go to the new one. Use
        ``predict(..., details=True)`` to see which version produced a result. When no call
        is left on the old version but its batcher still runs a batch (for callers who
        stopped waiting), ``swap`` waits at most ``timeout`` seconds for it, then abandons
        it (logged, counted in ``metrics()["abandoned"]``): the old version is released by
        that thread if the model ever returns.

        Returns the version now served. Raises the errors of :meth:`ModelStore.load`, and
        :class:`SchemaError` / :class:`PredictionError` if the warm-up fails, in which case
        the old version keeps serving. Raises :class:`HandleClosedError` on a closed handle.
        """
        if self._store is None:
            raise ConfigurationError("this handle was not opened from a store; it cannot swap")
        if self._state is not HandleState.OPEN:
            raise HandleClosedError(f"the handle for {self._pipe.label} is closed")
        mv = self._store.resolve(self.name, version, **self._options.resolve_options())
        return self._swap_to(mv, warmup, timeout)

    def _swap_to(self, mv: ModelVersion, warmup: Any = None, timeout: float = 30.0) -> str:
        current = self._pipe
        if mv.version == current.mv.version and mv.manifest.sha256 == current.mv.manifest.sha256:
            return mv.version
        new = (
            self._cache.pipeline(self._store, mv, self._options)
            if self._cache is not None
            else None
        )
        if new is None:
            new = build_pipeline(self._store, mv, self._options)  # type: ignore[arg-type]
        try:
            sample = warmup if warmup is not None else self._sample
            if sample is not None and new.row_wise:
                new.row(new.run(new.prepare_one(sample), 1), 0)
            elif sample is not None:
                batch, whole = new.prepare_whole(sample, True)
                new.run(batch, 1, whole)
        except BaseException:
            new.release()
            raise
        with self._lock:
            if self._state is not HandleState.OPEN:
                new.release()
                raise HandleClosedError(f"the handle for {current.label} is closed")
            old, self._pipe = self._pipe, new
        if old.release() and not old.wait_closed(timeout):
            self._abandon(old, "swap", timeout)
        return mv.version

    def _abandon(self, pipe: Pipeline, what: str, timeout: float) -> None:
        """``close`` or ``swap`` stopped waiting for a model call that does not return: a
        thread cannot be stopped, so it is left to finish on its own (counted, logged)."""
        self._abandoned += 1
        _log.error(
            "%s: a model call was still running %s s after %s(); abandoning its thread "
            "(it releases %s if the model ever returns)", pipe.label, timeout, what, pipe.label,
        )  # fmt: skip

    # -- lifecycle
    def close(self, timeout: float = 30.0) -> None:
        """Stop serving: new calls raise :class:`HandleClosedError`, calls already running or
        queued for a batch finish (waiting up to ``timeout`` seconds), every record accepted
        by the hooks is written out (sinks no other handle uses are closed), the alias
        follower of a ``follow=True`` handle stops, and the runtime is released once no call
        uses it. Idempotent. Never waits much longer than ``timeout`` in all: a sink or a
        follower's swap that does not finish by then is abandoned (logged; the sink counts
        the records it discarded), and so is a model call that does not return (logged,
        counted in ``metrics()["abandoned"]``; its thread releases the version if the model
        ever returns)."""
        with self._lock:
            if self._state is HandleState.CLOSED:
                return
            self._state = HandleState.CLOSED
            follower = self._follower
        deadline = time.monotonic() + timeout
        if follower is not None:
            follower.stop(timeout)
        pipe = self._pipe
        last = pipe.release()
        while self._obs.metrics.snapshot()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.002)
        left = max(0.0, deadline - time.monotonic())
        if self._obs.metrics.snapshot()["in_flight"] or (
            (last or pipe.unused) and not pipe.wait_closed(left)
        ):
            self._abandon(pipe, "close", timeout)
        self._obs.close(self, deadline)

    def __enter__(self) -> ModelHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- streaming (see embedml.offline.streaming)
    def predict_stream(
        self,
        records: Any,
        *,
        batch_size: int = 64,
        max_wait_ms: float = 10.0,
        on_error: str = "raise",
    ) -> Any:
        """Yield a result per record of an iterable, in order, scored in micro-batches.

        See :func:`embedml.offline.streaming.predict_stream` (bounded memory, ``on_error``).
        """
        from ..offline.streaming import predict_stream

        return predict_stream(
            self, records, batch_size=batch_size, max_wait_ms=max_wait_ms, on_error=on_error  # type: ignore[arg-type]
        )

    def apredict_stream(
        self,
        records: Any,
        *,
        batch_size: int = 64,
        max_wait_ms: float = 10.0,
        on_error: str = "raise",
    ) -> Any:
        """Async generator of results for an async iterable of records, in order.

        See :func:`embedml.offline.streaming.apredict_stream`.
        """
        from ..offline.streaming import apredict_stream

        return apredict_stream(
            self, records, batch_size=batch_size, max_wait_ms=max_wait_ms, on_error=on_error  # type: ignore[arg-type]
        )
