"""Built-in sinks for prediction records: a JSON Lines file, the ``logging`` module, a callable.

Each is a :class:`~embedml.hooks.Sink`: records are queued by the caller in O(1) and
written by the sink's own background thread. Pass them to ``store.load(..., hooks=[...])``
or ``handle.add_hook(...)``; a plain callable given there is wrapped in a
:class:`CallableSink`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigurationError
from .hooks import PredictionRecord, Sink

__all__ = ["CallableSink", "JsonlSink", "LoggingSink", "as_sink", "read_jsonl"]


class JsonlSink(Sink):
    """Append one JSON object per prediction to ``path`` (JSON Lines).

    ``rotate_bytes``: when the file reaches this size it is renamed ``path.1`` (older ones
    shift to ``path.2`` ...) and a new file is started; ``keep`` rotated files are kept.
    The file is flushed after every write batch, on :meth:`close` and at interpreter exit.
    Other options are those of :class:`~embedml.hooks.Sink`. Raises
    :class:`ConfigurationError` for invalid options.
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
    ) -> None:
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
        self._file: Any = None

    def write(self, records: list[PredictionRecord]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open
        dumps = json.dumps
        text = "".join([dumps(self.record_dict(r), default=str) + "\n" for r in records])
        self._file.write(text)
        self._file.flush()
        if self.rotate_bytes is not None and self._file.tell() >= self.rotate_bytes:
            self._rotate()

    def _rotate(self) -> None:
        self._file.close()
        self._file = None
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

    def _release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_jsonl(path: str | os.PathLike[str], *, rotated: bool = True) -> list[dict[str, Any]]:
    """Read prediction records written by :class:`JsonlSink` (oldest first).

    With ``rotated=True`` the rotated files ``path.N`` ... ``path.1`` are read before
    ``path``. A truncated last line (a crash mid-write) is skipped.
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
        with open(p, encoding="utf-8") as f:
            for line in f:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue


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
            self.logger.log(self.level, json.dumps(d, default=str), extra={"prediction": d})


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
                self._failed(exc, 1)


def as_sink(hook: Sink | Callable[[PredictionRecord], Any]) -> Sink:
    """A sink as is; a plain callable wrapped in :class:`CallableSink`."""
    if isinstance(hook, Sink):
        return hook
    return CallableSink(hook)
