"""Built-in sinks for prediction records: a JSON Lines file, the ``logging`` module, a callable.

Each is a :class:`~embedml.observe.hooks.Sink`: records are queued by the caller in O(1) and
written by the sink's own background thread. Pass them to ``store.load(..., hooks=[...])``
or ``handle.add_hook(...)``; a plain callable given there is wrapped in a
:class:`CallableSink`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no fork, no other process rotating
    fcntl = None  # type: ignore[assignment]

from ..errors import ConfigurationError
from .hooks import Sink
from .records import PredictionRecord, encode_json, json_lines, unpacked

__all__ = ["CallableSink", "JsonlSink", "LoggingSink", "as_sink", "read_jsonl"]

log = logging.getLogger("embedml.observe.sinks")


class JsonlSink(Sink):
    """Append one JSON object per prediction to ``path`` (JSON Lines).

    ``rotate_bytes``: when the file reaches this size it is renamed ``path.1`` (older ones
    shift to ``path.2`` ...) and a new file is started; ``keep`` rotated files are kept.
    A write batch is cut where the file reaches the size, so a file holds at most
    ``rotate_bytes`` plus one line, however many records the sink writes at once.
    The file is flushed after every write batch, on :meth:`close` and at interpreter exit.
    Each line is :meth:`PredictionRecord.to_dict` encoded by pydantic-core's encoder
    (:func:`~embedml.observe.records.encode_json`: about 0.05 µs per number, a tenth of
    the ``json`` module's cost).
    ``arrays="list"`` writes inputs and outputs as compact JSON lists (readable; float32
    values are written as the doubles they widen to); ``arrays="base64"`` writes numeric arrays
    as ``{"dtype", "shape", "base64"}`` objects (lossless and much cheaper; :func:`read_jsonl`
    turns them back into arrays). Other options are those of :class:`~embedml.observe.hooks.Sink`. Raises
    :class:`ConfigurationError` for invalid options.

    Several processes may append to the same path (a sink created before ``os.fork()``
    keeps working in every child): each piece of a write batch is one ``write()`` of whole lines to
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

    def write(self, records: list[PredictionRecord]) -> None:
        if self._file is None:
            self._open()
        # a generator: each record's dict is encoded and dropped before the next is built
        # (see PredictionRecord.to_dict)
        lines = json_lines(self.record_dict(r, self.arrays) for r in records)
        for chunk in self._chunks(lines):
            if self._file is None:  # rotated after the previous chunk
                self._open()
            try:
                _write_all(self._file, chunk)
            except OSError:
                # Disk full, file gone...: drop the file object and what its buffer holds
                # (these records are counted as errors), and reopen on the next write.
                self._discard_file()
                raise
            if self.rotate_bytes is not None and self._file.tell() >= self.rotate_bytes:
                self._rotate()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: a chunk is one write() of whole lines (see the class docstring),
        # and a forked child inherits no half-written buffer of the parent's.
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - held open
        if not _ends_with_newline(self.path):
            # A process killed mid-write left a torn last line: end it, or the first
            # record appended now would be glued to it and lost with it.
            _write_all(self._file, b"\n")

    def _chunks(self, lines: list[bytes]) -> Iterator[bytes]:
        """The lines of a write batch, cut where the file reaches ``rotate_bytes``.

        A large batch (a sink catching up after a burst) would otherwise make one file
        many times ``rotate_bytes``.
        """
        if self.rotate_bytes is None:
            yield b"".join(lines)
            return
        room = self.rotate_bytes - self._file.tell()
        start = 0
        for i, line in enumerate(lines):
            room -= len(line)
            if room <= 0:
                yield b"".join(lines[start : i + 1])
                start, room = i + 1, self.rotate_bytes
        if start < len(lines):
            yield b"".join(lines[start:])

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
        """``path.N`` -> ``path.N+1`` for the rotated files there are (the one past ``keep``
        deleted), then ``path`` -> ``path.1``. Looks only as far as the files go: checking
        every index up to ``keep`` made each rotation cost ``keep`` stat calls (a sink
        with keep=10,000 and 75 rotations took twice as long to write its records)."""
        if self.keep == 0:
            self.path.unlink()
            return
        n = 0  # rotated files present: path.1 ... path.n
        while n < self.keep and self._rotated(n + 1).exists():
            n += 1
        if n == self.keep:
            self._rotated(n).unlink()
            n -= 1
        for i in range(n, 0, -1):
            self._rotated(i).rename(self._rotated(i + 1))
        self.path.rename(self._rotated(1))

    def _rotated(self, i: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{i}")

    def files(self) -> list[Path]:
        """The current file and the rotated ones, oldest first."""
        rotated = [self._rotated(i) for i in range(self.keep, 0, -1)]
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
                    log.warning(
                        "%s line %d is not a complete JSON record (torn by a crash?); skipped",
                        p,
                        number,
                    )
                    continue
                for key in ("inputs", "outputs"):
                    if isinstance(d.get(key), dict):
                        d[key] = unpacked(d[key])
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
            self.logger.log(self.level, encode_json(d), extra={"prediction": d})


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
