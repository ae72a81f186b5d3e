"""The records of the observe layer, and the one JSON encoding of a prediction record.

Three typed records, each with one job:

* :class:`FinishedCall`: one call to a handle (``predict``, ``predict_batch``,
  ``apredict``), filled in stage by stage by the handle's call path and handed to
  ``Observer.end`` when it is over, whether it succeeded or raised;
* :class:`PredictionRecord`: what a record sink (a log, a callable) receives per call,
  built from a finished call on the sink's own thread;
* :class:`RowBatch`: what a row sink (:class:`~embedml.DriftMonitor`) receives: the rows
  of successful model calls, without the per-call envelope.

:meth:`PredictionRecord.to_dict` is the record format (``JsonlSink`` and ``LoggingSink``
write it with :func:`encode_json`; ``read_jsonl`` reads it back).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .quality import QualityTracker

__all__ = [
    "FinishedCall",
    "PredictionRecord",
    "RowBatch",
    "Source",
    "encode_json",
    "json_bytes",
    "jsonable",
    "new_request_id",
]

#: What every call of one loaded version shares: ``(model, version, input_names)``;
#: ``input_names`` are the field names of a record schema's rows, else ``None``.
Source = tuple[str, str, "tuple[str, ...] | None"]

_ID_PREFIX = os.urandom(4).hex()  # drawn again in a forked child (see new_id_prefix)
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A process-unique request id (cheap: a random per-process prefix and a counter)."""
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


def new_id_prefix() -> None:
    """Draw a new request-id prefix (a forked child must not repeat its parent's ids)."""
    global _ID_PREFIX
    _ID_PREFIX = os.urandom(4).hex()


@dataclass(slots=True, eq=False)
class FinishedCall:
    """One call to a handle, as the handle hands it to ``Observer.end``.

    The handle's call path creates it when the call starts and fills it in as the stages
    run; a field left at its default means the stage was not reached (validation failed:
    no ``inputs``; the model raised: no ``outputs``). Stamps are ``time.perf_counter()``
    seconds.
    """

    source: Source
    started: float
    #: The call's own rows (1 for ``predict``).
    rows: int = 0
    #: The validated input batch (``None`` if validation failed).
    inputs: Any = None
    validated: float = 0.0
    #: The raw outputs of the call's rows (``None`` if the call failed).
    outputs: Any = None
    #: Stamp when the outputs came back (the batching queue's wait included).
    answered: float = 0.0
    ended: float = 0.0
    #: Seconds waited in the batching queue until a batch took the call.
    queue: float = 0.0
    #: Rows of the model call that served it: the joined batch with batching (0: ``rows``).
    batch_size: int = 0
    #: Its rows came first in that model call, so it counts the model call in the
    #: batch-size distribution (each joined batch is counted once).
    counts_batch: bool = True
    error: BaseException | None = None
    #: Set when the caller sees the id (``details=True``): its outputs are then kept for
    #: ``log_outcome``. Otherwise the observer makes one only if a record sink takes the call.
    request_id: str | None = None
    #: A batcher already offered the call's rows to the row sinks (once per model call).
    rows_offered: bool = False
    # -- set by the observer for the record sinks that take the call
    #: Unix seconds at the start of the call.
    timestamp: float = 0.0
    #: The sink (the first taker that shows ids) that keeps the outputs for
    #: ``log_outcome`` on its own thread, just before writing, in ``memory``: so an id read
    #: from a sink is always known, and a record the sink dropped keeps nothing.
    kept_by: object | None = None
    memory: QualityTracker | None = None

    def durations(self) -> tuple[float, float, float, float]:
        """Seconds of ``(validation, queue, model, total)``; a stage not reached is 0.
        ``model`` is the wait for the outputs after the queue: preprocess, model and
        postprocess."""
        start = self.started
        validated = self.validated or start
        model = (self.answered or validated) - validated - self.queue
        return validated - start, self.queue, model if model > 0.0 else 0.0, self.ended - start


@dataclass(slots=True, eq=False)
class RowBatch:
    """The rows of successful calls, as a row sink (:class:`~embedml.DriftMonitor`)
    receives them: once per model call on a batched handle, else once per call."""

    #: Field names of the input rows (record schemas), else ``None``.
    input_names: tuple[str, ...] | None
    #: The validated input batch and the raw output batch (arrays; copies the sink owns).
    inputs: Any
    outputs: Any
    rows: int


_UNSET: Any = object()


@dataclass(slots=True, eq=False, repr=False)
class PredictionRecord:
    """One call to a handle, as record sinks (hooks) see it.

    ``request_id`` is the id ``predict(..., details=True)`` returns and the key of
    ``log_outcome``; ``timestamp`` is Unix seconds at the start of the call; ``rows`` the
    call's own rows; ``batch_size`` the rows of the model call that served it (with
    batching the joined batch, else ``rows``; a call that failed reports its own rows).
    ``latency_ms`` is the whole call; ``validation_ms``, ``queue_ms`` (the wait in the
    batching queue until taken into a batch; 0 without batching or when the call ran at
    once) and ``model_ms`` (the rest of the wait for the result: preprocess + model +
    postprocess) its stages. ``error`` is ``"TypeName: message"`` or ``None``.
    ``raw_inputs`` / ``raw_outputs`` are the arrays (copies; do not modify them);
    ``inputs`` / ``outputs`` the same as JSON-ready values, built on first access (a list
    of ``{field: value}`` rows for record schemas).
    """

    request_id: str
    model: str
    version: str
    timestamp: float
    rows: int
    batch_size: int
    latency_ms: float
    validation_ms: float
    queue_ms: float
    model_ms: float
    error: str | None
    error_type: str | None
    raw_inputs: Any
    raw_outputs: Any
    #: Field names of the input rows (record schemas), else ``None``.
    input_names: tuple[str, ...] | None = None
    # the JSON-ready values, built on first access (see inputs, outputs)
    _inputs: Any = field(default=_UNSET, init=False, repr=False)
    _outputs: Any = field(default=_UNSET, init=False, repr=False)

    @classmethod
    def of(cls, call: FinishedCall) -> PredictionRecord:
        """The record of a finished call (the call must have a ``request_id``)."""
        v, q, m, t = call.durations()
        model, version, names = call.source
        error = call.error
        # positional: this runs once per record on the sink's thread, and keywords cost
        # about a third more for 15 fields (Python 3.11)
        return cls(
            call.request_id,  # type: ignore[arg-type]
            model,
            version,
            call.timestamp,
            call.rows,
            (call.batch_size or call.rows) if error is None else call.rows,
            t * 1e3,  # latency_ms
            v * 1e3,  # validation_ms
            q * 1e3,  # queue_ms
            m * 1e3,  # model_ms
            None if error is None else f"{type(error).__name__}: {error}",
            None if error is None else type(error).__name__,
            call.inputs,
            call.outputs,
            names,
        )

    @property
    def inputs(self) -> Any:
        """The validated inputs as JSON-ready values (``None`` if validation failed)."""
        if self._inputs is _UNSET:
            self._inputs = self._json_inputs()
        return self._inputs

    @property
    def outputs(self) -> Any:
        """The outputs as JSON-ready values (``None`` if the call failed)."""
        if self._outputs is _UNSET:
            self._outputs = jsonable(self.raw_outputs)
        return self._outputs

    def _json_inputs(self) -> Any:
        """The inputs as JSON-ready values, built afresh (see :attr:`inputs`)."""
        raw, names = self.raw_inputs, self.input_names
        if names is not None and getattr(raw, "ndim", 0) == 2:
            return [dict(zip(names, row)) for row in raw.tolist()]
        return jsonable(raw)

    def to_dict(self, arrays: str = "list") -> dict[str, Any]:
        """All fields as one JSON-ready dict: the record format that
        :class:`~embedml.JsonlSink` writes and :func:`~embedml.read_jsonl` reads.

        ``arrays="base64"`` gives numeric input and output arrays (and dicts of them) as
        ``{"dtype", "shape", "base64"}`` objects instead of lists: lossless, and cheaper to
        encode."""
        inputs = outputs = None
        if arrays == "base64":
            inputs, outputs = packed(self.raw_inputs), packed(self.raw_outputs)
        # Built for the dict alone, not cached on the record (unless already there): a
        # sink encodes each dict and drops it, and so these lists die with it rather than
        # live with every record of the write batch, making the garbage collector run (a
        # JsonlSink writing 1,700 single-row records at once: 10.7 -> 9.3 µs a record;
        # young collections per 20,000 records 156 -> 15).
        if inputs is None:
            inputs = self._json_inputs() if self._inputs is _UNSET else self._inputs
        if outputs is None:
            outputs = jsonable(self.raw_outputs) if self._outputs is _UNSET else self._outputs
        return {
            "request_id": self.request_id,
            "model": self.model,
            "version": self.version,
            "timestamp": self.timestamp,
            "rows": self.rows,
            "batch_size": self.batch_size,
            "latency_ms": round(self.latency_ms, 4),
            "validation_ms": round(self.validation_ms, 4),
            "queue_ms": round(self.queue_ms, 4),
            "model_ms": round(self.model_ms, 4),
            "error": self.error,
            "inputs": inputs,
            "outputs": outputs,
        }

    def __repr__(self) -> str:
        status = self.error or "ok"
        return (
            f"<PredictionRecord {self.request_id} {self.model}@{self.version} "
            f"n={self.rows}/{self.batch_size} {status}>"
        )


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (lists, dicts, str, int, float, bool, None).

    numpy arrays become nested lists, pydantic models dicts, DataFrames lists of records;
    anything else unknown becomes its ``repr``.
    """
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "to_dict") and hasattr(value, "columns"):
        return value.to_dict(orient="records")
    return repr(value)


def packed(value: Any) -> Any:
    """A numeric array as ``{"dtype", "shape", "base64"}`` (a dict of them as a dict of
    such objects); ``None`` for anything else."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None and dtype.kind in "biuf" and hasattr(value, "tobytes"):
        data = base64.b64encode(value.tobytes()).decode("ascii")
        return {"dtype": dtype.str, "shape": list(value.shape), "base64": data}
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            p = packed(v)
            if p is None:
                return None
            out[str(k)] = p
        return out
    return None


def unpacked(value: Any) -> Any:
    """The inverse of :func:`packed` on decoded JSON: ``{"dtype", "shape", "base64"}``
    objects (also inside a dict) become numpy arrays; other values are returned as they are."""
    if isinstance(value, dict):
        if set(value) == {"dtype", "shape", "base64"}:
            raw = base64.b64decode(value["base64"])
            return np.frombuffer(raw, dtype=np.dtype(value["dtype"])).reshape(value["shape"])
        return {k: unpacked(v) for k, v in value.items()}
    return value


# Built once: ``json.dumps(value, default=str)`` builds a new encoder on every call, which
# costs as much as encoding a short list.
_json_encode = json.JSONEncoder(default=str).encode


def encode_json(value: Any) -> str:
    """Compact JSON text of a JSON-ready value (see :func:`json_bytes`)."""
    return json_bytes(value).decode()


def json_lines(values: Iterable[Any]) -> list[bytes]:
    """Each value as :func:`json_bytes` gives it, plus a newline: the lines of a JSONL
    write batch (pydantic-core is looked up once per batch, not once per line)."""
    from pydantic_core import to_json  # (see json_bytes)

    lines = []
    for value in values:
        try:
            lines.append(to_json(value) + b"\n")
        except Exception:  # PydanticSerializationError: see json_bytes
            lines.append(_json_encode(value).encode() + b"\n")
    return lines


def json_bytes(value: Any) -> bytes:
    """Compact JSON of a JSON-ready value, UTF-8 encoded. pydantic-core (a pydantic
    dependency) formats floats about 10x faster than the ``json`` module, which calls
    ``float.__repr__`` per number; values it cannot serialise go through ``json`` with
    ``default=str``. NaN and infinity are written as ``NaN`` / ``Infinity``, as ``json``
    writes them."""
    # imported here: a process whose handles write no JSON never pays for pydantic-core
    from pydantic_core import to_json

    try:
        return to_json(value)
    except Exception:  # PydanticSerializationError: an unknown type; json handles it
        return _json_encode(value).encode()
