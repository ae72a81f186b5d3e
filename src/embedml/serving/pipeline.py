"""``Pipeline``: one loaded version behind its fixed stages.

Every call runs, in this order::

    validate input (schema) -> preprocess -> model -> postprocess -> validate output

:func:`load_model` verifies an artifact and loads it with its format into a
:class:`LoadedModel` (what a :class:`~embedml.ModelCache` shares between handles);
:func:`build_pipeline` puts a pipeline of one handle on it. Handles and batchers call the
pipeline's stages. See :mod:`embedml.serving.handle`.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from operator import attrgetter
from typing import Any, Protocol

import numpy as np

from ..errors import (
    ConfigurationError,
    EmbedMLError,
    PredictionError,
    SchemaError,
    UnsupportedFormatError,
    UntrustedArtifactError,
)
from ..formats import Runtime, get_format
from ..formats.signature import input_schema_for
from ..schema import (
    NoSchema,
    RecordSchema,
    Schema,
    TensorSchema,
    schema_from_dict,
)
from ..store import ModelVersion, Store
from ..store.manifest import Manifest, method_problem
from ..tensors import ClassProbabilities, concat, n_rows, take
from .batching import Batcher, Request
from .isolation import bisect_failures
from .options import LoadOptions
from .trust import check_before_load

__all__ = [
    "BatchItem",
    "LoadedModel",
    "Pipeline",
    "Versioned",
    "build_pipeline",
    "load_model",
    "passes_through",
    "pipeline_on",
]

_log = logging.getLogger("embedml.serving.pipeline")

# Live pipelines and handles: a forked child gets fresh locks for them (a thread of the
# parent, such as an alias follower swapping, may have held one at the fork).
_LIVE: weakref.WeakSet[Any] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for obj in list(_LIVE):
        obj._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def passes_through(exc: BaseException) -> bool:
    """Whether an exception from model code must reach the caller unchanged: Ctrl-C
    (``KeyboardInterrupt``), ``GeneratorExit`` and asyncio cancellation. Everything else,
    ``SystemExit`` included, becomes a :class:`PredictionError`."""
    if isinstance(exc, KeyboardInterrupt | GeneratorExit):
        return True
    # looked up, not imported: if asyncio was never imported, nothing was cancelled by it
    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)


@dataclasses.dataclass(slots=True, eq=False)
class BatchItem(Request):
    """One call's validated rows (``rows`` of them), as the batcher queues them for
    :meth:`Pipeline.run_items`, and, once its model call ran, that call's share of it.

    Made once per batched call, positionally: ``BatchItem(batch, obs, rows)`` costs 160 ns
    and the same with keywords 330 ns (``timeit``, CPython 3.11 here)."""

    batch: Any
    obs: Any  # the caller's hooks.Observer: its row sinks see the rows of each model call
    rows: int = 1
    unchecked: bool = False  # from Pipeline.quick_one: the NaN/inf check is made on its batch
    out: Any = dataclasses.field(default=None, init=False)  # outputs of its model call
    offset: int = dataclasses.field(default=0, init=False)  # where its rows start in them
    size: int = dataclasses.field(default=0, init=False)  # the rows of that model call


_ROWS, _OBS = attrgetter("rows"), attrgetter("obs")


def _not_quick(record: Any) -> None:
    """``Pipeline.quick_one`` of inputs that are not one tensor: never quick."""
    return None


def _join_key(batch: Any) -> Any:
    """What must match for batches to be joined: trailing shapes and dtypes (``None``: never)."""
    if type(batch) is np.ndarray:
        return (batch.shape[1:], batch.dtype)
    if isinstance(batch, dict):
        try:
            return tuple((k, v.shape[1:], v.dtype) for k, v in batch.items())
        except AttributeError:
            return None
    if isinstance(batch, tuple):
        try:
            return tuple((v.shape[1:], v.dtype) for v in batch)
        except AttributeError:
            return None
    if hasattr(batch, "iloc") and hasattr(batch, "dtypes"):  # records by feature name
        return ("frame", tuple(zip(map(str, batch.columns), map(str, batch.dtypes))))
    return None


def _isolable(exc: Exception) -> Exception | None:
    """A model call's error that one bad row may explain (bisect to find it); an output of
    the wrong length is about the whole call, not a row."""
    return exc if isinstance(exc, PredictionError) and exc.stage != "output" else None


def _import_callable(path: str, what: str) -> Callable[[Any], Any]:
    module, _, attr = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"cannot import {what} {path!r}: {exc}") from exc
    if not callable(fn):
        raise ConfigurationError(f"{what} {path!r} is not callable")
    return fn


class Versioned(Protocol):
    """What a pipeline reads of its version: a stored :class:`~embedml.store.ModelVersion`,
    or a candidate not saved yet (:mod:`embedml.offline.export` measures one before it
    saves it)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def manifest(self) -> Manifest: ...


class LoadedModel:
    """One version's runtime, loaded once: the thing a :class:`~embedml.ModelCache` keeps and
    shares between the pipelines of several handles. Counted uses (one for its owner, one
    per pipeline on it); the runtime is closed when the last use is given back.

    ``options`` are the load options it was loaded with, without the per-handle ones
    (:meth:`LoadOptions.for_model`)."""

    def __init__(
        self, mv: Versioned, runtime: Runtime, options: LoadOptions, load_seconds: float
    ) -> None:
        self.mv = mv
        self.runtime = runtime
        self.options = options.for_model()
        self.load_seconds = load_seconds
        self._uses = 1
        self._uses_lock = threading.Lock()
        _LIVE.add(self)

    def _after_fork_in_child(self) -> None:
        self._uses_lock = threading.Lock()

    def acquire(self) -> bool:
        """Take one use; ``False`` if the runtime has already been closed for good."""
        with self._uses_lock:
            if self._uses <= 0:
                return False
            self._uses += 1
            return True

    def release(self) -> bool:
        """Give back one use; the last one closes the runtime and returns ``True``."""
        with self._uses_lock:
            self._uses -= 1
            last = self._uses == 0
        if last:
            self.runtime.close()
        return last


class Pipeline:
    """One loaded version: validates, runs the stages, and shapes results. Thread-safe.

    ``prepare_one`` / ``prepare_many`` validate input into a batch; ``run`` takes a batch of
    ``n`` rows to raw outputs (checking one output per row); ``rows`` / ``row`` turn raw
    outputs into what callers get. With batching, calls go to ``batcher`` as
    :class:`BatchItem` s, and it runs ``run_items`` (join, run, isolate a bad row) over the
    calls it joins; each item gets its share of the outputs.

    ``row_wise`` (see ``docs/concepts.md``): ``False`` when the model's outputs are not one
    per input row (``row_wise_reason`` says why). Calls then take ``prepare_whole``: the
    tensors go to the model whole and its outputs come back whole, and batching is refused.
    """

    def __init__(self, model: LoadedModel, options: LoadOptions) -> None:
        """A pipeline on ``model`` with the handle's ``options``; it owns one use of
        ``model`` (taken by the caller), given back when the pipeline closes."""
        self.model = model
        self.mv = mv = model.mv
        self.runtime = runtime = model.runtime
        self.label = f"{mv.name}@{mv.version}"
        self.load_seconds = model.load_seconds
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
        #: ``quick_one(record)``: ``record`` as a batch of one row *without* the NaN/inf
        #: check, when it is exactly one float row of the single input tensor (shape and
        #: dtype); else ``None``. The batcher then checks the rows of a whole batch at once
        #: (:meth:`rows_ok`) and gives a call whose row fails the error :meth:`prepare_one`
        #: gives. The tensor schema's own method, bound here rather than wrapped in one:
        #: ``apredict`` calls it on every call (see ModelHandle._joined for the figures).
        inputs = self.input_schema
        self.quick_one: Callable[[Any], Any] = (
            inputs.unchecked_one if type(inputs) is TensorSchema else _not_quick
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
        # Dynamic batching (embedml.serving.batching): joins concurrent calls on this
        # pipeline; the batcher runs run_items over the items of the calls it joins.
        self.batcher: Batcher | None = None
        if options.batching is not None:
            self.batcher = Batcher(self.run_items, options.batching, self.label)  # type: ignore[arg-type]

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

    def rows_ok(self, batch: Any) -> bool:
        """Whether a batch of rows from ``quick_one`` passes the NaN/inf check."""
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

    # ------------------------------------------------------------------ batched calls
    def run_items(self, items: list[BatchItem]) -> list[Any]:
        """The batcher's batch function: one outcome per item, the item with its outputs or the
        error for that call alone (the batcher raises it to that caller).

        Items whose batches have the same trailing shapes and dtypes are joined into one
        model call (others run in groups of their own); rows left unchecked by
        ``quick_one`` are checked for NaN/inf a batch at once; when a model call
        fails, its items are bisected so that only the calls whose rows make the model
        fail get the :class:`PredictionError`; an output with the wrong number of rows
        fails every call of that model call (none is given rows that may be another's).
        """
        if len(items) == 1 and (not items[0].unchecked or self.rows_ok(items[0].batch)):
            # a call that ran alone (its row checked here, if quick_one left it unchecked)
            try:
                return self._model_call(items, items[0].batch, False)
            except PredictionError as exc:
                return [exc]
        batches = [i.batch for i in items]
        first = batches[0]
        if len(batches) > 1 and set(map(type, batches)) == {np.ndarray}:
            # _join_key's common case, checked by the join itself (no Python step per item):
            # another trailing shape raises ValueError, another dtype TypeError (casting="no")
            try:
                joined = np.concatenate(batches, axis=0, dtype=first.dtype, casting="no")
            except (ValueError, TypeError):
                pass
            else:
                return self._run_joined(items, joined)
        keys = [_join_key(b) for b in batches]
        if keys[0] is not None and keys.count(keys[0]) == len(keys):  # all alike: one call
            return self._run_joined(items)
        groups: dict[Any, list[int]] = {}
        for k, key in enumerate(keys):
            groups.setdefault(key if key is not None else ("alone", k), []).append(k)
        results: list[Any] = [None] * len(items)
        for members in groups.values():
            for k, outcome in zip(members, self._run_joined([items[k] for k in members])):
                results[k] = outcome
        return results

    def _run_joined(self, items: list[BatchItem], batch: Any = None) -> list[Any]:
        """Items of one join key (``batch``: their rows joined, if already done): NaN/inf
        screening, one model call, bad rows isolated."""
        if batch is None:
            batch = items[0].batch if len(items) == 1 else concat([i.batch for i in items])
        refused: dict[int, SchemaError] = {}
        if any(i.unchecked for i in items) and not self.rows_ok(batch):
            for k, item in enumerate(items):  # the rare case: find the bad rows, one by one
                if item.unchecked:
                    try:
                        self.prepare_one(item.batch[0])
                    except SchemaError as exc:
                        refused[k] = exc
            good = [item for k, item in enumerate(items) if k not in refused]
            outcomes = iter(self._run_isolating(good, None) if good else ())
            return [refused[k] if k in refused else next(outcomes) for k in range(len(items))]
        return self._run_isolating(items, batch)

    def _run_isolating(self, items: list[BatchItem], joined: Any) -> list[Any]:
        """One model call for ``items`` (on ``joined``, their joined batch, if given); if it
        fails, halves of it again (:func:`~embedml.serving.isolation.bisect_failures`)."""
        reruns = 0

        def run(part: list[BatchItem]) -> list[BatchItem]:
            nonlocal reruns
            rerun, reruns = reruns > 0, reruns + 1
            if joined is not None and not rerun:
                return self._model_call(part, joined, False)
            try:
                batch = concat([i.batch for i in part])
            except (ValueError, TypeError):  # not joinable after all: one model call each
                return [self._model_call([i], i.batch, rerun)[0] for i in part]
            return self._model_call(part, batch, rerun)

        try:
            return bisect_failures(items, run, _isolable)
        except PredictionError as exc:  # the wrong number of output rows: every call fails
            if len(items) > 1:
                error = PredictionError(
                    f"{exc}; the batch joined {len(items)} calls, so all of them fail (no "
                    "call is given rows that may belong to another)",
                    stage="output",
                )
                error.__cause__ = exc.__cause__ or exc
                exc = error
            return [exc] * len(items)

    def _model_call(self, items: list[BatchItem], batch: Any, rerun: bool) -> list[BatchItem]:
        """Run the model on ``batch``, the joined rows of ``items``; offer the rows to the
        callers' row sinks (once per model call, not once per call)."""
        if len(items) == 1:  # a call alone (every lone call): its own rows, all of them
            item = items[0]
            n = item.rows
            self.batcher.count_model_call(n, rerun)  # type: ignore[union-attr]
            item.out = out = self.run(batch, n)
            item.offset, item.size = 0, n
            if item.obs is not None and item.obs.row_sinks:  # the caller's own array: copied
                item.obs.rows(self.source, batch, out, n, copy=True)
            return items
        # map over attrgetters, not generators: no Python step per item (a batch of 64)
        n = sum(map(_ROWS, items))
        self.batcher.count_model_call(n, rerun)  # type: ignore[union-attr]
        out = self.run(batch, n)
        obs = items[0].obs
        if list(map(_OBS, items)).count(obs) == len(items):  # (observers compare by identity)
            if obs is not None and obs.row_sinks:  # a joined batch: the pipeline's own array
                obs.rows(self.source, batch, out, n, copy=False)
        else:  # handles sharing this pipeline: each offers its own calls' rows
            off = 0
            for i in items:
                if i.obs is not None and i.obs.row_sinks:
                    part = slice(off, off + i.rows)
                    i.obs.rows(self.source, take(batch, part), take(out, part), i.rows, copy=True)
                off += i.rows
        off = 0
        for i in items:
            i.out, i.offset, i.size = out, off, n
            off += i.rows
        return items

    def close(self) -> None:
        """Close the batcher (queued calls still run, new ones raise HandleClosedError) and
        release the runtime once it is idle. Never waits for the model: a batch still
        running (one whose callers stopped waiting, in a model that hangs) releases the
        runtime from its own thread when the model returns; :meth:`wait_closed` waits for
        that. Safe to call more than once (e.g. by a hot swap)."""
        if self.batcher is None or self.batcher.close(self._release_runtime):
            self._release_runtime()

    def _release_runtime(self) -> None:
        self.model.release()
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


def load_model(store: Store, mv: ModelVersion, options: LoadOptions) -> LoadedModel:
    """Verify the artifact of ``mv`` and load it with its format.

    The method called is ``options.method``, else the one saved with the version; under
    ``options.restricted`` a saved method outside ``STANDARD_METHODS`` raises
    :class:`UntrustedArtifactError`. Raises the errors of :func:`check_before_load` and
    :meth:`Store.read_artifact <embedml.store.Store.read_artifact>`, and
    :class:`UnsupportedFormatError` when the format cannot load the bytes."""
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
        raise UnsupportedFormatError(
            f"could not load {mv} as {fmt.name}: {type(exc).__name__}: {exc}"
        ) from exc
    return LoadedModel(mv, runtime, options, time.perf_counter() - start)


def pipeline_on(model: LoadedModel, options: LoadOptions) -> Pipeline:
    """A new pipeline on ``model``, which gives it the use the caller took; the use is
    given back if the pipeline is refused (e.g. ``batching=`` on a model that is not
    row-wise: :class:`ConfigurationError`)."""
    try:
        return Pipeline(model, options)
    except BaseException:
        model.release()
        raise


def build_pipeline(store: Store, mv: ModelVersion, options: LoadOptions) -> Pipeline:
    """Load ``mv`` (:func:`load_model`) into a pipeline of its own."""
    return pipeline_on(load_model(store, mv, options), options)
