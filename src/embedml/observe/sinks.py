"""Built-in sinks for prediction records: a JSON Lines file, the ``logging`` module, a callable.

Each is a :class:`~embedml.observe.hooks.Sink`: records are queued by the caller in O(1) and
written by the sink's own background thread. Pass them to ``store.load(..., hooks=[...])``
or ``handle.add_hook(...)``; a plain callable given there is wrapped in a
:class:`CallableSink`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no fork, no other process rotating
    fcntl = None  # type: ignore[assignment]

from ..errors import ConfigurationError
from .hooks import PredictionRecord, Sink

__all__ = ["CallableSink", "JsonlSink", "LoggingSink", "as_sink", "read_jsonl"]

log = logging.getLogger("embedml.observe.sinks")
# Built once: ``json.dumps(value, default=str)`` builds a new encoder on every call, which
# costs as much as encoding a short list.
_json_encode = json.JSONEncoder(default=str).encode


def _encode(value: Any) -> str:
    """Compact JSON text of a JSON-ready value. pydantic-core (a pydantic dependency)
    formats floats about 10x faster than the ``json`` module, which calls ``float.__repr__``
    per number; values it cannot serialise go through ``json`` with ``default=str``. NaN and
    infinity are written as ``NaN`` / ``Infinity``, as ``json`` writes them."""
    # imported here: a process whose handles write no JSON never pays for pydantic-core
    from pydantic_core import to_json

    try:
        return to_json(value).decode()
    except Exception:  # PydanticSerializationError: an unknown type; json handles it
        return _json_encode(value)


class JsonlSink(Sink):
    """Append one JSON object per prediction to ``path`` (JSON Lines).

    ``rotate_bytes``: when the file reaches this size it is renamed ``path.1`` (older ones
    shift to ``path.2`` ...) and a new file is started; ``keep`` rotated files are kept.
    The file is flushed after every write batch, on :meth:`close` and at interpreter exit.
    ``arrays="list"`` writes inputs and outputs as compact JSON lists (readable; the arrays
    of a write batch are encoded together, without redaction, by pydantic-core's encoder:
    about 0.05 µs per number, a tenth of the ``json`` module's cost; float32 values are
    written as the doubles they widen to); ``arrays="base64"`` writes numeric arrays
    as ``{"dtype", "shape", "base64"}`` objects (lossless and much cheaper; :func:`read_jsonl`
    turns them back into arrays). Other options are those of :class:`~embedml.observe.hooks.Sink`. Raises
    :class:`ConfigurationError` for invalid options.

    Several processes may append to the same path (a sink created before ``os.fork()``
    keeps working in every child): each write batch is one ``write()`` of whole lines to
    a file opened with ``O_APPEND``, so lines of different processes never interleave, and
    rotation is done by one process at a time (``flock``); a process whose file another
    one rotated writes at most one more batch there, then follows to the new file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        rotate_bytes: int | None = None,
        keep: int = 5,
        sample: float = 1.0,
        redact: Mapping[str, str] | Iterable[str] | None = None,
        max_queue: int = 10_000,
        policy: str = "drop",
        arrays: str = "list",
    ) -> None:
        if arrays not in ("list", "base64"):
            raise ConfigurationError(f"arrays must be 'list' or 'base64', got {arrays!r}")
        if rotate_bytes is not None and int(rotate_bytes) < 1:
            raise ConfigurationError(f"rotate_bytes must be >= 1 or None, got {rotate_bytes!r}")
        if int(keep) < 0:
            raise ConfigurationError(f"keep must be >= 0, got {keep!r}")
        super().__init__(
            sample=sample, redact=redact, max_queue=max_queue, policy=policy,
            name=f"jsonl:{Path(path).name}",
        )  # fmt: skip
        self.path = Path(path)
        self.rotate_bytes = None if rotate_bytes is None else int(rotate_bytes)
        self.keep = int(keep)
        self.arrays = arrays
        self._file: Any = None
        self._heads: dict[Any, str] = {}  # by Source (model, version, input names)

    def write(self, records: list[PredictionRecord]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Unbuffered: a batch is one write() of whole lines (see the class docstring),
            # and a forked child inherits no half-written buffer of the parent's.
            self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - held open
            if not _ends_with_newline(self.path):
                # A process killed mid-write left a torn last line: end it, or the first
                # record appended now would be glued to it and lost with it.
                _write_all(self._file, b"\n")
        if self.arrays == "list" and self._redact is None:
            ins = _json_arrays([r._raw_inputs for r in records], records)
            outs = _json_arrays([r._raw_outputs for r in records])
            lines = [self._line(r, i, o) for r, i, o in zip(records, ins, outs)]
        else:
            lines = [self._line(r) for r in records]
        try:
            _write_all(self._file, "".join(lines).encode())
        except OSError:
            # Disk full, file gone...: drop the file object and what its buffer holds
            # (these records are counted as errors), and reopen on the next write.
            self._discard_file()
            raise
        if self.rotate_bytes is not None and self._file.tell() >= self.rotate_bytes:
            self._rotate()

    def _payload(self, record: PredictionRecord, which: str) -> str:
        raw = record.raw_inputs if which == "inputs" else record.raw_outputs
        if self.arrays == "base64" and not (which == "inputs" and self._redact is not None):
            packed = _pack_json(raw)
            if packed is not None:
                return packed
        value = record.inputs if which == "inputs" else record.outputs
        return _encode(self.redact(value))

    def _line(self, r: PredictionRecord, inputs: str | None = None, outputs: str | None = None) -> str:
        # The envelope is formatted directly: json.dumps of a whole dict costs more than
        # the record's other work. Only strings that may need escaping go through json.
        source = r._source
        head = self._heads.get(source)
        if head is None:
            head = self._heads[source] = (
                f'"model":{json.dumps(source[0])},"version":{json.dumps(source[1])}'
            )
        t = r._timings
        error = "null" if r._error is None else json.dumps(r.error)
        return (
            f'{{"request_id":"{r.request_id}",{head},"timestamp":{r.timestamp!r},'
            f'"rows":{r.rows},"batch_size":{r.batch_size},"latency_ms":{t[3] * 1e3:.4f},'
            f'"validation_ms":{t[0] * 1e3:.4f},"queue_ms":{t[1] * 1e3:.4f},'
            f'"model_ms":{t[2] * 1e3:.4f},"error":{error},'
            f'"inputs":{inputs or self._payload(r, "inputs")},'
            f'"outputs":{outputs or self._payload(r, "outputs")}}}\n'
        )

    def _rotate(self) -> None:
        file, self._file = self._file, None
        try:
            if fcntl is not None:  # one process rotates at a time; the others wait here
                fcntl.flock(file.fileno(), fcntl.LOCK_EX)
            if _is_current(file, self.path):  # else another process rotated it: follow
                self._shift()
        finally:
            file.close()  # (releases the lock)

    def _shift(self) -> None:
        if self.keep == 0:
            self.path.unlink()
            return
        oldest = self.path.with_name(f"{self.path.name}.{self.keep}")
        if oldest.exists():
            oldest.unlink()
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.rename(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.rename(self.path.with_name(f"{self.path.name}.1"))

    def files(self) -> list[Path]:
        """The current file and the rotated ones, oldest first."""
        rotated = [self.path.with_name(f"{self.path.name}.{i}") for i in range(self.keep, 0, -1)]
        return [p for p in [*rotated, self.path] if p.exists()]

    def _discard_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            # the buffer may not flush (disk full): those records were counted as errors
            with contextlib.suppress(OSError):
                file.close()

    def _release(self) -> None:
        self._discard_file()

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        # The parent's file object holds no buffered bytes (unbuffered): closing the
        # child's copy of the descriptor loses nothing; the next write opens the path.
        self._discard_file()
        self._heads = {}


def _write_all(file: Any, data: bytes) -> None:
    """Write all of ``data`` to an unbuffered file (one ``write()`` unless it is short)."""
    view = memoryview(data)
    while view:
        view = view[file.write(view) :]


def _is_current(file: Any, path: Path) -> bool:
    """Whether ``file`` is still the file at ``path`` (no other process rotated it)."""
    try:
        mine, there = os.fstat(file.fileno()), os.stat(path)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def _ends_with_newline(path: Path) -> bool:
    """Whether a regular, non-empty file's last byte is a newline (``True`` otherwise)."""
    if not path.is_file() or path.stat().st_size == 0:
        return True
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _json_arrays(
    values: list[Any], records: list[PredictionRecord] | None = None
) -> list[str | None]:
    """JSON text of each 1-D or 2-D numeric array in ``values`` (``None`` for other values,
    and for inputs that a record schema turns into ``{field: value}`` rows), as
    ``_encode(array.tolist())`` writes it, but with one ``concatenate``, one ``tolist``
    and one encoder call for all the arrays of the same row shape: the per-call overhead of
    those is most of the cost for the small arrays of single predictions. Numbers never
    contain ``"["``, ``"]"`` or ``","``, so the joined text splits back into rows safely.
    """
    out: list[str | None] = [None] * len(values)
    groups: dict[Any, list[int]] = {}
    for i, v in enumerate(values):
        if (
            type(v) is np.ndarray and 1 <= v.ndim <= 2 and v.dtype.kind in "iuf"
            and (records is None or records[i]._source[2] is None)
        ):  # fmt: skip
            groups.setdefault((v.shape[1:], v.dtype), []).append(i)
    for (trailing, _), idx in groups.items():
        arrays = [values[i] for i in idx]
        text = _encode(np.concatenate(arrays).tolist())
        two_d = len(trailing) == 1
        parts = (text[2:-2].split("],[") if two_d else text[1:-1].split(",")) if len(text) > 2 else []
        sep, head, tail = ("],[", "[[", "]]") if two_d else (",", "[", "]")
        start = 0
        for i, a in zip(idx, arrays):
            end = start + len(a)
            out[i] = head + sep.join(parts[start:end]) + tail if end > start else "[]"
            start = end
    return out


def _pack_json(value: Any) -> str | None:
    """A numeric array (or a dict of them) as the JSON of ``{"dtype", "shape", "base64"}``
    objects, formatted directly; ``None`` if not applicable."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None and dtype.kind in "biuf" and hasattr(value, "tobytes"):
        shape = ",".join(map(str, value.shape))
        data = base64.b64encode(value.tobytes()).decode("ascii")
        return f'{{"dtype":"{dtype.str}","shape":[{shape}],"base64":"{data}"}}'
    if isinstance(value, dict):
        parts = []
        for k, v in value.items():
            packed = _pack_json(v)
            if packed is None:
                return None
            parts.append(f"{json.dumps(str(k))}:{packed}")
        return "{" + ",".join(parts) + "}"
    return None


def _unpack(value: Any) -> Any:
    import numpy as np

    if isinstance(value, dict):
        if set(value) == {"dtype", "shape", "base64"}:
            raw = base64.b64decode(value["base64"])
            return np.frombuffer(raw, dtype=np.dtype(value["dtype"])).reshape(value["shape"])
        return {k: _unpack(v) for k, v in value.items()}
    return value


def read_jsonl(path: str | os.PathLike[str], *, rotated: bool = True) -> list[dict[str, Any]]:
    """Read prediction records written by :class:`JsonlSink` (oldest first).

    With ``rotated=True`` the rotated files ``path.N`` ... ``path.1`` are read before
    ``path``. A truncated line (a crash mid-write) is skipped with a warning on the
    ``embedml.observe.sinks`` logger naming the file and line. Arrays written with
    ``arrays="base64"`` come back as numpy arrays.
    """
    return list(iter_jsonl(path, rotated=rotated))


def iter_jsonl(path: str | os.PathLike[str], *, rotated: bool = True) -> Iterator[dict[str, Any]]:
    """Like :func:`read_jsonl`, one record at a time."""
    path = Path(path)
    files = []
    if rotated:
        numbered = []
        for p in path.parent.glob(f"{path.name}.*"):
            suffix = p.name[len(path.name) + 1 :]
            if suffix.isdigit():
                numbered.append((int(suffix), p))
        files = [p for _, p in sorted(numbered, reverse=True)]
    if path.exists():
        files.append(path)
    for p in files:
        with open(p, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                try:
                    d = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s line %d is not a complete JSON record (torn by a crash?); skipped", p, number)
                    continue
                for key in ("inputs", "outputs"):
                    if isinstance(d.get(key), dict):
                        d[key] = _unpack(d[key])
                yield d


class LoggingSink(Sink):
    """Log each record through the stdlib ``logging`` module.

    The message is the record as one JSON line; the record's dict is also attached as
    ``extra={"prediction": ...}`` for structured handlers. ``logger`` is a
    ``logging.Logger`` or a logger name (default ``"embedml.predictions"``).
    """

    def __init__(
        self,
        logger: logging.Logger | str | None = None,
        *,
        level: int = logging.INFO,
        sample: float = 1.0,
        redact: Mapping[str, str] | Iterable[str] | None = None,
        max_queue: int = 10_000,
        policy: str = "drop",
    ) -> None:
        super().__init__(
            sample=sample, redact=redact, max_queue=max_queue, policy=policy, name="logging"
        )
        if logger is None or isinstance(logger, str):
            logger = logging.getLogger(logger or "embedml.predictions")
        self.logger = logger
        self.level = level

    def write(self, records: list[PredictionRecord]) -> None:
        if not self.logger.isEnabledFor(self.level):
            return
        for r in records:
            d = self.record_dict(r)
            self.logger.log(self.level, _encode(d), extra={"prediction": d})


class CallableSink(Sink):
    """Call ``fn(record)`` for every record, on the sink's background thread.

    An exception from ``fn`` is logged once and counted; the other records still go through.
    """

    def __init__(
        self,
        fn: Callable[[PredictionRecord], Any],
        *,
        sample: float = 1.0,
        max_queue: int = 10_000,
        policy: str = "drop",
    ) -> None:
        if not callable(fn):
            raise ConfigurationError(f"a hook must be callable or a Sink, got {fn!r}")
        name = getattr(fn, "__qualname__", None) or type(fn).__name__
        super().__init__(sample=sample, max_queue=max_queue, policy=policy, name=name)
        self.fn = fn

    def write(self, records: list[PredictionRecord]) -> None:
        for r in records:
            try:
                self.fn(r)
            except Exception as exc:
                self._skipped += 1  # counted as an error, not as written
                self._failed(exc, 1)


def as_sink(hook: Sink | Callable[[PredictionRecord], Any]) -> Sink:
    """A sink as is; a plain callable wrapped in :class:`CallableSink`."""
    if isinstance(hook, Sink):
        return hook
    return CallableSink(hook)
