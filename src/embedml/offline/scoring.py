"""Batch scoring: :func:`score` a CSV, JSON Lines or Parquet file into another, chunk by chunk.

The input is read ``batch_size`` rows at a time and never held whole in memory; each chunk
is validated and predicted with one ``predict_batch`` call. Bad rows do not abort the job:
the chunk is bisected until they are isolated (:func:`embedml.offline.streaming.predict_batch_or_rows`),
the good rows are scored, and each bad row goes to a reject file (JSON Lines, default
``<sink>.rejects.jsonl``) with its 1-based row number and the error message. So does a row
that cannot be read or written: only a file that cannot be read as a whole stops the job.

The output and the reject file are written to temporary files beside them and moved into
place with one ``os.replace`` at the end, so a reader never sees a half-written output and a
job that crashed can simply be run again: the re-run overwrites atomically (idempotent).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigurationError, EmbedMLError, PredictionError, SchemaError
from ..serving.handle import ModelHandle
from ..serving.stream import predict_batch_or_rows, split_rows
from ..tensors import ClassProbabilities

__all__ = ["ScoreSummary", "flatten_output", "score"]

_FORMATS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


@dataclass(frozen=True)
class ScoreSummary:
    """What :func:`score` did: rows ``scored`` and ``rejected``, where it wrote them
    (``rejects`` is ``None`` when no row was rejected), the model version and the time taken."""

    scored: int
    rejected: int
    output: Path
    rejects: Path | None
    model: str
    version: str
    seconds: float

    @property
    def rows(self) -> int:
        """Rows read from the input."""
        return self.scored + self.rejected

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else math.inf


@dataclass
class _Chunk:
    rows: list[int] = field(default_factory=list)  # 1-based row numbers
    ids: list[Any] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)
    bad: list[tuple[int, Any, EmbedMLError]] = field(default_factory=list)  # unreadable rows
    # A vectorised form of ``records`` (a DataFrame or matrix) tried first when present;
    # ``records`` is then only built, by ``slow``, if that batch fails. ``slow`` may give
    # an ``_Unreadable`` in place of a record it could not build.
    batch: Any = None
    slow: Callable[[], list[Any]] | None = None

    def __len__(self) -> int:
        return len(self.rows) + len(self.bad)


@dataclass(frozen=True)
class _Unreadable:
    """A row whose values could not be turned into a record: rejected with ``error``."""

    error: SchemaError


class _BadRow(Exception):
    """Raised by a row parser: the row is rejected with ``error``, under its ``ident`` when
    the id could still be read."""

    def __init__(self, ident: Any, error: SchemaError) -> None:
        super().__init__(str(error))
        self.ident = ident
        self.error = error


def file_format(path: Path) -> str:
    """``"csv"``, ``"jsonl"`` or ``"parquet"`` from the suffix; :class:`ConfigurationError` otherwise."""
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigurationError(
            f"cannot tell the format of {path} from its suffix; use one of {sorted(_FORMATS)}"
        )
    return fmt


# ---------------------------------------------------------------- reading


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)
    return item() if callable(item) and getattr(value, "ndim", 1) == 0 else value


def _cell_parser(kind: str) -> Callable[[str], Any]:
    """Text cell -> typed value; a value that does not parse stays text, so that schema
    validation reports it (with the field name) like any other wrong value."""

    def number(cell: str) -> Any:
        try:
            return float(cell)
        except ValueError:
            return cell

    def integer(cell: str) -> Any:
        try:
            return int(cell)
        except ValueError:
            value = number(cell)
            return int(value) if isinstance(value, float) and value.is_integer() else value

    def boolean(cell: str) -> Any:
        low = cell.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        return cell

    return {"number": number, "integer": integer, "boolean": boolean}.get(kind, str)


def _record_builder(
    handle: ModelHandle, columns: list[str], id_column: str | None
) -> Callable[[list[str]], tuple[Any, Any]]:
    """CSV row (list of cells) -> (id, record), with cells parsed per the input schema.

    A model that takes records by name gets records (cells matched by the header's names);
    one that declares no names gets the row's cells in file order, as an array row."""
    schema = handle.input_schema
    id_at = columns.index(id_column) if id_column is not None else -1
    feature_at = [j for j in range(len(columns)) if j != id_at]
    if schema.records:
        # the model's names without declared types (sklearn feature names): numbers when
        # the cell reads as one, else text
        fields = schema.fields
        kinds = {f.name: f.kind for f in fields} if fields is not None else {}
        unknown = "string" if fields is not None else "number"
        parsers = [
            (columns[j], j, _cell_parser(kinds.get(columns[j], unknown))) for j in feature_at
        ]
        # The common case (every cell a well-formed number) costs one builtin call per cell;
        # empty or odd cells raise ValueError and take the per-cell path.
        fast_conv = {"number": float, "integer": int}
        fast = [(n, j, fast_conv.get(kinds.get(n, ""))) for n, j, _ in parsers]
        fast_ok = all(conv is not None for _, _, conv in fast)

        def build(cells: list[str]) -> tuple[Any, Any]:
            if len(cells) != len(columns):
                raise SchemaError(f"the row has {len(cells)} cells, the header {len(columns)}")
            record = None
            if fast_ok:
                try:
                    record = {name: conv(cells[j]) for name, j, conv in fast}  # type: ignore[misc]
                except ValueError:
                    record = None
            if record is None:
                record = {
                    name: (parse(cells[j]) if cells[j] != "" else None)
                    for name, j, parse in parsers
                }
            return (cells[id_at] if id_at >= 0 else None), record

        return build
    # Tensor or schemaless models: the row's feature cells, as numbers, form one input row.
    parse = _cell_parser("number")

    def build_row(cells: list[str]) -> tuple[Any, Any]:
        if len(cells) != len(columns):
            raise SchemaError(f"the row has {len(cells)} cells, the header {len(columns)}")
        values = [parse(cells[j]) if cells[j] != "" else math.nan for j in feature_at]
        bad = next(
            (columns[feature_at[k]] for k, v in enumerate(values) if isinstance(v, str)), None
        )
        if bad is not None:
            raise SchemaError("expected a number", field=bad)
        return (cells[id_at] if id_at >= 0 else None), values

    return build_row


def _check_columns(columns: list[str], id_column: str | None, path: Path) -> None:
    if id_column is not None and id_column not in columns:
        raise ConfigurationError(f"{path} has no id column {id_column!r}; columns: {columns}")
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:  # which of the two would be the feature? refuse rather than guess
        raise ConfigurationError(
            f"{path} has the column(s) {twice} more than once; columns must be unique"
        )


class _Lines:
    """The lines of a CSV file for ``csv.reader`` (``lines.iter``), remembered since the last
    :meth:`trim`, so that a record can be traced back to its lines: whether one held bytes
    that are not UTF-8 (the file is decoded with ``surrogateescape``, so such bytes become
    lone surrogates instead of stopping the read), and their text, to skip the rest of a
    record the reader gave up on. ``csv.reader`` reads no line ahead of the record it
    returns, so the lines read during one ``next(reader)`` are that record's."""

    def __init__(self, f: Any) -> None:
        self.file = f
        self.seen: list[str] = []
        self.not_utf8: list[int] = []  # positions in ``seen``
        self.iter = self._read()

    def _read(self) -> Iterator[str]:
        seen, not_utf8 = self.seen, self.not_utf8
        for line in self.file:
            if not line.isascii() and _has_surrogates(line):  # isascii() is O(1)
                not_utf8.append(len(seen))
            seen.append(line)
            yield line

    def trim(self) -> None:
        """Forget the lines read so far (call between records)."""
        self.seen.clear()
        self.not_utf8.clear()

    def not_utf8_since(self, mark: int) -> bool:
        return bool(self.not_utf8) and self.not_utf8[-1] >= mark

    def skip_open_quote(self, mark: int) -> int:
        """After ``csv.reader`` gave up on the record read from line ``mark`` on (a field
        over the csv module's size limit) in the middle of a quoted field, skip the lines
        still inside that field, so that its text is not read as rows of its own; return
        how many. Inside quotes a literal quote is doubled, so the field is open while the
        count of quotes read is odd."""
        open_quote = sum(line.count('"') for line in self.seen[mark:]) % 2
        skipped = 0
        while open_quote:
            line = next(self.file, None)
            if line is None:
                break
            skipped += 1
            open_quote ^= line.count('"') % 2
        return skipped


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@dataclass(frozen=True)
class _NotUtf8:
    """The cells of a CSV record that held bytes that are not UTF-8."""

    cells: list[str]


def _csv_records(reader: Any, lines: _Lines) -> Iterator[tuple[int, Any]]:
    """Numbered CSV records: the cells, or a :class:`_BadRow` for a record that cannot be
    read (a field over the csv module's size limit), or :class:`_NotUtf8`. Blank lines are
    counted but not yielded."""
    row_no = 0
    while True:
        if len(lines.seen) > 4096:
            lines.trim()
        mark = len(lines.seen)
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            row_no += 1
            skipped = lines.skip_open_quote(mark)
            also = (
                f"; the {skipped} line(s) after it, inside its quoted field, were skipped with it"
                if skipped
                else ""
            )
            yield row_no, _BadRow(None, SchemaError(f"the row cannot be read as CSV: {exc}{also}"))
            continue
        row_no += 1
        if lines.not_utf8_since(mark):
            yield row_no, _NotUtf8(cells)
        elif cells:
            yield row_no, cells


def _chunks_csv(
    handle: ModelHandle, path: Path, size: int, id_column: str | None
) -> Iterator[_Chunk]:
    # utf-8-sig: a byte-order mark is not part of the first column's name
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        lines = _Lines(f)
        reader = csv.reader(lines.iter)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise ConfigurationError(f"the header of {path} cannot be read as CSV: {exc}") from None
        if header is None:
            return
        if lines.not_utf8:
            raise ConfigurationError(f"the header of {path} is not valid UTF-8")
        _check_columns(header, id_column, path)
        build = _record_builder(handle, header, id_column)
        id_at = header.index(id_column) if id_column is not None else -1

        def parse(_row_no: int, raw: Any) -> tuple[Any, Any]:
            if isinstance(raw, _BadRow):
                raise raw
            if isinstance(raw, _NotUtf8):
                cells = raw.cells
                ident = cells[id_at] if 0 <= id_at < len(cells) else None
                j = next((j for j, cell in enumerate(cells) if _has_surrogates(cell)), len(header))
                name = header[j] if j < len(header) else None
                error = SchemaError("the value is not valid UTF-8", field=name)
                raise _BadRow(None if ident is None or _has_surrogates(ident) else ident, error)
            try:
                return build(raw)
            except SchemaError as exc:
                raise _BadRow(raw[id_at] if 0 <= id_at < len(raw) else None, exc) from None

        yield from _chunked(_csv_records(reader, lines), parse, size)


def _chunked(
    rows: Iterable[tuple[int, Any]], parse: Callable[[int, Any], tuple[Any, Any]], size: int
) -> Iterator[_Chunk]:
    """Parse numbered raw rows into chunks of ``size``; a row ``parse`` rejects (with a
    :class:`SchemaError` or a :class:`_BadRow`) goes to the chunk's bad rows instead of
    stopping the job."""
    chunk = _Chunk()
    for row_no, raw in rows:
        try:
            ident, record = parse(row_no, raw)
        except _BadRow as bad:
            chunk.bad.append((row_no, bad.ident, bad.error))
        except SchemaError as exc:
            chunk.bad.append((row_no, None, exc))
        else:
            chunk.rows.append(row_no)
            chunk.ids.append(ident)
            chunk.records.append(record)
        if len(chunk) >= size:
            yield chunk
            chunk = _Chunk()
    if len(chunk):
        yield chunk


def _split_id(record: Any, id_column: str | None) -> tuple[Any, Any]:
    if id_column is None:
        return None, record
    if not isinstance(record, dict) or id_column not in record:
        raise SchemaError(f"the id column {id_column!r} is missing", field=id_column)
    record = dict(record)
    return record.pop(id_column), record


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict, refusing a key given twice: ``json`` would keep the last
    value silently, and which one the writer meant cannot be told."""
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return record


# One decoder for every line: json.loads with arguments would build one per call.
_JSON = json.JSONDecoder(object_pairs_hook=_unique_keys)


def _chunks_jsonl(
    handle: ModelHandle, path: Path, size: int, id_column: str | None
) -> Iterator[_Chunk]:
    def parse(row_no: int, line: bytes) -> tuple[Any, Any]:
        # Each line is decoded alone, so bytes that are not UTF-8 cost their line only.
        try:
            text = line.decode("utf-8-sig" if row_no == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise SchemaError(f"line {row_no} is not valid UTF-8 (byte {exc.start + 1})") from None
        try:
            value = _JSON.decode(text)
        except _DuplicateKey as exc:
            raise SchemaError(f"line {row_no} has the key {exc.args[0]!r} more than once") from None
        except RecursionError:
            raise SchemaError(f"line {row_no} is nested too deeply to be read") from None
        except ValueError as exc:  # JSONDecodeError, or an integer over Python's digit limit
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise SchemaError(f"line {row_no} is not valid JSON: {reason}") from None
        return _split_id(value, id_column)

    with open(path, "rb") as f:
        rows = ((n, line) for n, line in enumerate(f, start=1) if line.strip())
        yield from _chunked(rows, parse, size)


def _chunks_parquet(
    handle: ModelHandle, path: Path, size: int, id_column: str | None
) -> Iterator[_Chunk]:
    pa, pq = _pyarrow()
    try:
        pf = pq.ParquetFile(path)
        columns = list(pf.schema_arrow.names)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ConfigurationError(f"{path} cannot be read as Parquet: {exc}") from None
    _check_columns(columns, id_column, path)
    as_records = handle.input_schema.records  # by name; else the columns in file order
    features = [c for c in columns if c != id_column]
    row_no = 0
    batches = pf.iter_batches(batch_size=size)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise ConfigurationError(f"{path} cannot be read after row {row_no}: {exc}") from None
        if batch is None:
            return
        n = batch.num_rows
        table = batch.select(features)
        rows = list(range(row_no + 1, row_no + n + 1))
        row_no += n
        ids = _pylist(batch.column(id_column)) if id_column is not None else [None] * n
        chunk = _Chunk()
        for r, ident in zip(rows, ids, strict=True):
            if isinstance(ident, _Unreadable):
                chunk.bad.append((r, None, ident.error))
            else:
                chunk.rows.append(r)
                chunk.ids.append(ident)
        if chunk.bad:  # rare: build the records now, without the rows already rejected
            keep = [i for i, ident in enumerate(ids) if not isinstance(ident, _Unreadable)]
            chunk.records = _table_records(table.take(keep), as_records)
            yield chunk
            continue

        def slow(table: Any = table) -> list[Any]:
            return _table_records(table, as_records)

        chunk.slow = slow
        chunk.batch = _fast_batch(table, as_records)
        yield chunk


def _fast_batch(table: Any, as_records: bool) -> Any:
    """The chunk as one DataFrame (record models) or matrix (others), or ``None`` when it
    must take the record path: nulls would become NaN in a DataFrame and slip past the
    schema, and only numeric columns make a matrix that means what the records mean
    (others go to the model as Python values, for the handle to accept or refuse)."""
    import pyarrow as pa

    if not table.num_rows or any(c.null_count for c in table.columns):
        return None
    try:
        if as_records:
            return table.to_pandas()
        if not all(
            pa.types.is_integer(c.type) or pa.types.is_floating(c.type) for c in table.columns
        ):
            return None
        import numpy as np

        return np.column_stack([c.to_numpy(zero_copy_only=False) for c in table.columns])
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        return None  # the record path converts value by value


def _table_records(table: Any, as_records: bool) -> list[Any]:
    """The rows of an Arrow table as records (dicts) or rows (lists); a row with a value
    Python cannot hold (a date past year 9999...) is an :class:`_Unreadable`."""
    names = table.column_names
    columns = [_pylist(c) for c in table.columns]
    records: list[Any] = []
    for values in zip(*columns) if columns else ([] for _ in range(table.num_rows)):
        bad = next((j for j, v in enumerate(values) if isinstance(v, _Unreadable)), None)
        if bad is not None:
            records.append(_Unreadable(SchemaError(values[bad].error.message, field=names[bad])))
        elif as_records:
            records.append(dict(zip(names, values)))
        else:
            records.append(list(values))
    return records


def _pylist(column: Any) -> list[Any]:
    """An Arrow column as Python values, value by value when the column as a whole cannot
    be converted; a value that cannot is an :class:`_Unreadable`."""
    try:
        return column.to_pylist()
    except Exception:  # one value Arrow cannot turn into Python stops the whole column
        values: list[Any] = []
        for i in range(len(column)):
            try:
                values.append(column[i].as_py())
            except Exception as exc:
                values.append(_Unreadable(SchemaError(f"the value cannot be read: {exc}")))
        return values


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigurationError(
            "Parquet files need pyarrow: pip install 'embedml[parquet]'"
        ) from None
    return pa, pq


# ---------------------------------------------------------------- writing


def flatten_output(value: Any, prefix: str = "prediction") -> dict[str, Any]:
    """One model result -> flat columns: a scalar is ``prediction``, a vector
    ``prediction_0``, ``prediction_1``..., an output-schema instance or a dict its fields
    (vectors inside them as ``field_0``...). A vector of one value is that value: an
    ``(n, 1)`` output gives the column ``prediction``, as an ``(n,)`` one does. Values are
    plain Python (JSON-ready)."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        value = dump()
    if isinstance(value, ClassProbabilities):  # a column per class, named by its label
        probabilities = np.asarray(value["probabilities"]).tolist()
        return {f"probabilities_{c}": p for c, p in zip(value["classes"], probabilities)}
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for k, v in value.items():
            flat.update(flatten_output(v, str(k)))
        return flat
    if isinstance(value, tuple):
        flat = {}
        for j, v in enumerate(value):
            flat.update(flatten_output(v, f"{prefix}_{j}"))
        return flat
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        value = tolist()
    if isinstance(value, list):
        if len(value) == 1:
            return flatten_output(value[0], prefix)
        flat = {}
        for j, v in enumerate(value):
            flat.update(flatten_output(v, f"{prefix}_{j}"))
        return flat
    return {prefix: value}


def output_columns(out: Any, n: int) -> dict[str, Any] | None:
    """The prediction columns of a whole batch's output, as arrays, named as
    :func:`flatten_output` names each row's, so that a chunk predicted in one call and a
    chunk predicted row by row give the same columns. Vectorised for a numeric or string
    array of one or two dimensions, or a dict of them; ``None`` for any other output
    (flatten it row by row then)."""
    import numpy as np

    parts = out.items() if isinstance(out, dict) else [("prediction", out)]
    columns: dict[str, Any] = {}
    for prefix, array in parts:
        if not isinstance(array, np.ndarray) or array.dtype == object or array.ndim not in (1, 2):
            return None
        if n < 1 or len(array) != n:
            return None
        if array.ndim == 1:
            columns[str(prefix)] = array
            continue
        names = list(flatten_output(array[0], str(prefix)))  # the same names as one row's
        if len(names) != array.shape[1]:
            return None
        columns.update(zip(names, array.T))
    return columns or None


@dataclass
class _Scored:
    """The scored rows of one chunk on their way to the output: row numbers, ids, and the
    prediction columns, as arrays (``columns``: a chunk predicted in one call, see
    :func:`output_columns`) or as one flat dict per row (``flats``)."""

    rows: list[int]
    keys: list[Any]
    columns: dict[str, Any] | None = None
    flats: list[dict[str, Any]] | None = None

    def values(self) -> Iterator[tuple[Any, ...]]:
        """Per row, the values of ``columns`` in order (plain Python)."""
        assert self.columns is not None
        return zip(*(c.tolist() for c in self.columns.values()))

    def dicts(self) -> list[dict[str, Any]]:
        if self.flats is None:
            names = list(self.columns or ())
            self.flats = [dict(zip(names, v)) for v in self.values()]
        return self.flats


_Row = tuple[int, Any, dict[str, Any]]  # one scored row: row number, id, prediction columns
_Rejected = tuple[int, Any, EmbedMLError]  # one rejected row: row number, id, why


class _Writer:
    """Writes scored rows to the output file. CSV and Parquet files have one set of columns,
    fixed by the first row written: a later row whose prediction has other columns, or a
    value the Parquet column cannot hold, is handed back rejected (never written with
    empty cells). JSON Lines rows carry their own keys."""

    def __init__(self, path: Path, fmt: str, id_name: str) -> None:
        self.path, self.fmt, self.id_name = path, fmt, id_name
        self._file: Any = None
        self._csv: Any = None
        self._pq: Any = None
        self._schema: Any = None
        self._names: list[str] | None = None  # the prediction columns, from the first row
        self._first = 0  # the row that fixed them
        if fmt != "parquet":
            self._file = open(path, "w", newline="" if fmt == "csv" else None, encoding="utf-8")  # noqa: SIM115 - closed by close()

    def _check_id(self, row_no: int, names: Iterable[str]) -> None:
        if self.id_name in names:  # the prediction would overwrite the id, silently
            raise ConfigurationError(
                f"the model's output has a column {self.id_name!r} (row {row_no}), the name of "
                "the output's id column; score with another id_column"
            )

    def write(self, block: _Scored) -> list[_Rejected]:
        """Write ``block``; return the rows that could not be written, with the reason."""
        rejected: list[_Rejected] = []
        if not block.rows:
            return rejected
        if self.fmt == "jsonl":
            self._write_jsonl(block, rejected)
            return rejected
        if self._names is None:
            first = list(block.columns) if block.columns is not None else list(block.dicts()[0])
            self._check_id(block.rows[0], first)
            self._names, self._first = first, block.rows[0]
        fast = block.columns is not None and list(block.columns) == self._names
        if self.fmt == "csv":
            if self._csv is None:
                self._csv = csv.writer(self._file)
                self._csv.writerow([self.id_name, *self._names])
            if fast:
                rows = zip(block.rows, block.keys, block.values())
                self._write_csv(((r, k, (k, *v)) for r, k, v in rows), rejected)
            else:
                names = self._names
                fitting = self._fitting(block, rejected)
                self._write_csv(
                    ((r, k, (k, *(f[n] for n in names))) for r, k, f in fitting), rejected
                )
        else:
            table = self._arrow_columns(block) if fast else None
            if table is None:
                table = self._arrow_rows(self._fitting(block, rejected), rejected)
            if table is not None:
                if self._pq is None:
                    self._schema = table.schema
                    self._pq = _pyarrow()[1].ParquetWriter(self.path, self._schema)
                self._pq.write_table(table)
        return rejected

    def _fitting(self, block: _Scored, rejected: list[_Rejected]) -> list[_Row]:
        """The rows whose prediction columns are the file's; the others go to ``rejected``."""
        names = self._names or []
        wanted = set(names)
        fitting = []
        for row_no, key, flat in zip(block.rows, block.keys, block.dicts(), strict=True):
            if flat.keys() == wanted:
                fitting.append((row_no, key, flat))
            else:
                error = PredictionError(
                    f"the model's output for this row has the columns {list(flat)}, the file's "
                    f"are {names} (from row {self._first})",
                    stage="output",
                )
                rejected.append((row_no, key, error))
        return fitting

    def _write_jsonl(self, block: _Scored, rejected: list[_Rejected]) -> None:
        id_name = self.id_name
        if block.columns is not None:
            self._check_id(block.rows[0], block.columns)
            names = [id_name, *block.columns]
            rows: Iterable[tuple[int, Any, dict[str, Any]]] = (
                (r, k, dict(zip(names, (k, *v))))
                for r, k, v in zip(block.rows, block.keys, block.values())
            )
        else:
            rows = zip(block.rows, block.keys, block.dicts())
        lines = []
        for row_no, key, flat in rows:
            if block.columns is None:
                self._check_id(row_no, flat)
                flat = {id_name: key, **flat}
            try:
                lines.append(json.dumps(flat, default=str) + "\n")
            except (ValueError, TypeError, RecursionError) as exc:
                rejected.append((row_no, key, _unwritable(exc)))
        self._file.writelines(lines)

    def _write_csv(
        self, rows: Iterable[tuple[int, Any, Sequence[Any]]], rejected: list[_Rejected]
    ) -> None:
        writerow = self._csv.writerow
        for row_no, key, cells in rows:
            try:  # the row is formatted whole before it is written: all of it or none
                writerow(cells)
            except (csv.Error, ValueError) as exc:  # ValueError: text that is not UTF-8
                rejected.append((row_no, key, _unwritable(exc)))

    def _arrow_columns(self, block: _Scored) -> Any:
        """The block as one Arrow table built column by column (the types inferred from the
        values, as for rows), or ``None`` when a value does not fit: the row path finds it."""
        pa = _pyarrow()[0]
        assert block.columns is not None
        types = (
            self._schema.types if self._schema is not None else [None] * (1 + len(block.columns))
        )
        columns = [block.keys, *(c.tolist() for c in block.columns.values())]
        try:
            arrays = [pa.array(values, type=t) for values, t in zip(columns, types, strict=True)]
            if self._schema is not None:
                return pa.Table.from_arrays(arrays, schema=self._schema)
            return pa.Table.from_arrays(arrays, names=[self.id_name, *block.columns])
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            return None

    def _arrow_rows(self, rows: list[_Row], rejected: list[_Rejected]) -> Any:
        """The rows as one Arrow table; rows the file's columns cannot hold (an id that was
        a number in the first rows and is text here...) go to ``rejected``."""
        pa = _pyarrow()[0]
        failures = (pa.ArrowException, ValueError, TypeError, OverflowError)
        dicts = [{self.id_name: key, **flat} for _, key, flat in rows]
        if not dicts:
            return None
        try:
            return pa.Table.from_pylist(dicts, schema=self._schema)
        except failures:
            pass
        tables = []
        schema = self._schema
        for (row_no, key, _), d in zip(rows, dicts, strict=True):
            try:
                one = pa.Table.from_pylist([d], schema=schema)
            except failures as exc:
                rejected.append((row_no, key, _unwritable(exc, schema)))
            else:
                schema = one.schema  # the first row that fits fixes the types of a new file
                tables.append(one)
        return pa.concat_tables(tables) if tables else None

    def close(self) -> None:
        if self.fmt == "parquet":
            if self._pq is None:  # nothing scored: still a valid (empty) file
                pa, pq = _pyarrow()
                self._pq = pq.ParquetWriter(self.path, pa.schema([(self.id_name, pa.string())]))
            self._pq.close()
        else:
            if self.fmt == "csv" and self._csv is None:
                self._file.write(self.id_name + "\r\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


def _unwritable(exc: BaseException, schema: Any = None) -> SchemaError:
    where = (
        f" with the columns {schema.names} and types {schema.types} fixed by the first rows"
        if schema is not None
        else ""
    )
    return SchemaError(
        f"the row cannot be written to the output{where}: {type(exc).__name__}: {exc}"
    )


def _temp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _progress(enabled: bool | None, desc: str) -> Any:
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(desc=desc, unit=" rows", file=sys.stderr, leave=True)


# ---------------------------------------------------------------- scoring


def _predict_chunk(handle: ModelHandle, chunk: _Chunk) -> tuple[Any, list[Any] | None]:
    """:func:`predict_batch_or_rows` on a chunk: its vectorised form first, then its records
    (rows the reader could not turn into records are errors in ``results``)."""
    unreadable: dict[int, EmbedMLError] = {}

    def records() -> list[Any]:
        built = chunk.slow() if chunk.slow is not None else chunk.records
        good = []
        for i, record in enumerate(built):
            if isinstance(record, _Unreadable):
                unreadable[i] = record.error
            else:
                good.append(record)
        return good

    batch = chunk.batch
    if (
        batch is None
        and chunk.slow is None
        and not any(isinstance(r, _Unreadable) for r in chunk.records)
    ):
        batch = chunk.records
    out, results = predict_batch_or_rows(handle, batch, records)
    if results is not None and unreadable:
        rest = iter(results)
        results = [unreadable[i] if i in unreadable else next(rest) for i in range(len(chunk.rows))]
    return out, results


def _score_chunk(
    handle: ModelHandle, chunk: _Chunk, keys: list[Any], bad: list[_Rejected]
) -> _Scored:
    """Predict a chunk; its scored rows, in order. Rows that failed go to ``bad``."""
    if not chunk.rows:
        return _Scored([], [])
    out, results = _predict_chunk(handle, chunk)
    if results is None:
        n = len(chunk.rows)
        columns = output_columns(out, n)
        if columns is not None:
            return _Scored(chunk.rows, keys, columns=columns)
        flats = [flatten_output(r) for r in split_rows(out, n)]
        return _Scored(chunk.rows, keys, flats=flats)
    scored = _Scored([], [], flats=[])
    for row_no, key, result in zip(chunk.rows, keys, results, strict=True):
        if isinstance(result, EmbedMLError):
            bad.append((row_no, key, result))
        else:
            scored.rows.append(row_no)
            scored.keys.append(key)
            scored.flats.append(flatten_output(result))  # type: ignore[union-attr]
    return scored


def _reject_line(row_no: int, key: Any, exc: EmbedMLError, with_id: bool) -> str:
    # the row number says where; the batch index of the error would not
    if isinstance(exc, SchemaError | PredictionError):
        exc.index = None
    entry = {"row": row_no, "id": key, "error": str(exc), "type": type(exc).__name__}
    if not with_id:
        del entry["id"]
    try:
        return json.dumps(entry, default=str) + "\n"
    except (ValueError, TypeError, RecursionError):  # an id JSON cannot hold: say so instead
        entry["id"] = f"<an id of type {type(key).__name__} that cannot be written>"
        return json.dumps(entry, default=str) + "\n"


def score(
    handle: ModelHandle,
    source: str | os.PathLike[str],
    sink: str | os.PathLike[str],
    *,
    batch_size: int = 1024,
    id_column: str | None = None,
    rejects: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> ScoreSummary:
    """Score every row of ``source`` with ``handle`` and write the predictions to ``sink``.

    Formats come from the suffixes: ``.csv``, ``.jsonl`` / ``.ndjson``, ``.parquet``
    (Parquet needs pyarrow). CSV cells are text: fields the schema declares numeric or
    boolean are parsed, and an empty cell is a missing value (``None``). Each output row is
    the row's ``id_column`` value (or its 1-based row number, column ``row``) followed by
    the prediction columns (see :func:`flatten_output`). Rows are read ``batch_size`` at a
    time, so memory does not grow with the file.

    Rows that cannot be read (invalid JSON or UTF-8, a CSV field over the csv module's
    size limit...), fail validation, make the model raise, or cannot be written (a value
    the output's columns cannot hold) go to ``rejects`` (default ``<sink>.rejects.jsonl``)
    as ``{"row": n, "id": ..., "error": message, "type": ...}``; the rest is scored, and
    every scored row has every prediction column. The output and reject files replace any
    old ones atomically when the job ends, so re-running after a crash is safe. A progress
    bar is shown on stderr when it is a terminal (``progress=None``), or as ``progress``
    says.

    Raises :class:`ConfigurationError` (unknown suffix, missing input or id column, bad
    ``batch_size``, sink equal to source, a model that is not row-wise, an input that
    cannot be read as a whole: a CSV header that is not UTF-8, a column name given twice, a
    file that is not Parquet; an output column named like the id column),
    :class:`HandleClosedError` and other errors that are not about single rows, or
    ``OSError`` when a file cannot be read or written.
    """
    src, dst = Path(source), Path(sink)
    rej = Path(rejects) if rejects is not None else dst.with_name(dst.name + ".rejects.jsonl")
    in_fmt, out_fmt = file_format(src), file_format(dst)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    handle.check_row_wise("score (a file's rows are predicted in chunks)")
    if not src.is_file():
        raise ConfigurationError(f"input file {src} does not exist")
    if dst.resolve() == src.resolve() or rej.resolve() in (src.resolve(), dst.resolve()):
        raise ConfigurationError("the output and rejects files must differ from the input file")
    id_name = id_column if id_column is not None else "row"
    readers = {"csv": _chunks_csv, "jsonl": _chunks_jsonl, "parquet": _chunks_parquet}
    chunks = readers[in_fmt](handle, src, batch_size, id_column)

    start = time.perf_counter()
    tmp_out, tmp_rej = _temp_beside(dst), _temp_beside(rej)
    scored = rejected = 0
    bar = _progress(progress, f"{handle.name}@{handle.version}")
    try:
        writer = _Writer(tmp_out, out_fmt, id_name)
        with open(tmp_rej, "w", encoding="utf-8") as rej_file:
            try:
                for chunk in chunks:
                    bad = list(chunk.bad)
                    keys = [_plain(i) for i in chunk.ids] if id_column is not None else chunk.rows
                    out_rows = _score_chunk(handle, chunk, keys, bad)
                    bad.extend(writer.write(out_rows))
                    for row_no, key, exc in sorted(bad, key=lambda b: b[0]):
                        rej_file.write(_reject_line(row_no, key, exc, id_column is not None))
                    scored += len(chunk) - len(bad)
                    rejected += len(bad)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                writer.close()
            rej_file.flush()
            os.fsync(rej_file.fileno())
        os.replace(tmp_out, dst)
        if rejected:
            os.replace(tmp_rej, rej)
        else:
            tmp_rej.unlink()
            with contextlib.suppress(FileNotFoundError):
                rej.unlink()  # a stale reject file from an earlier run would mislead
    except BaseException:
        for tmp in (tmp_out, tmp_rej):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise
    finally:
        if bar is not None:
            bar.close()
    return ScoreSummary(
        scored=scored,
        rejected=rejected,
        output=dst,
        rejects=rej if rejected else None,
        model=handle.name,
        version=handle.version,
        seconds=time.perf_counter() - start,
    )
