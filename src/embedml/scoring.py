"""Batch scoring: :func:`score` a CSV, JSON Lines or Parquet file into another, chunk by chunk.

The input is read ``batch_size`` rows at a time and never held whole in memory; each chunk
is validated and predicted with one ``predict_batch`` call. Bad rows do not abort the job:
the chunk is bisected until they are isolated (:func:`embedml.streaming.predict_rows`), the
good rows are scored, and each bad row goes to a reject file (JSON Lines, default
``<sink>.rejects.jsonl``) with its 1-based row number and the error message.

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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError, EmbedMLError, PredictionError, SchemaError
from .streaming import predict_rows

if TYPE_CHECKING:
    from .handle import ModelHandle

__all__ = ["ScoreSummary", "flatten_output", "score"]

_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


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
    # ``records`` is then only built, by ``slow``, if that batch fails.
    batch: Any = None
    slow: Callable[[], list[Any]] | None = None

    def __len__(self) -> int:
        return len(self.rows) + len(self.bad)


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
    """CSV row (list of cells) -> (id, record), with cells parsed per the input schema."""
    from .schema import RecordSchema

    schema = handle.input_schema
    id_at = columns.index(id_column) if id_column is not None else -1
    feature_at = [j for j in range(len(columns)) if j != id_at]
    if isinstance(schema, RecordSchema):
        kinds = {f.name: f.kind for f in schema.fields}
        parsers = [(columns[j], j, _cell_parser(kinds.get(columns[j], "string"))) for j in feature_at]
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
                record = {name: (parse(cells[j]) if cells[j] != "" else None) for name, j, parse in parsers}
            return (cells[id_at] if id_at >= 0 else None), record

        return build
    # Tensor or schemaless models: the row's feature cells, as numbers, form one input row.
    parse = _cell_parser("number")

    def build_row(cells: list[str]) -> tuple[Any, Any]:
        if len(cells) != len(columns):
            raise SchemaError(f"the row has {len(cells)} cells, the header {len(columns)}")
        values = [parse(cells[j]) if cells[j] != "" else math.nan for j in feature_at]
        bad = next((columns[feature_at[k]] for k, v in enumerate(values) if isinstance(v, str)), None)
        if bad is not None:
            raise SchemaError("expected a number", field=bad)
        return (cells[id_at] if id_at >= 0 else None), values

    return build_row


def _check_id_column(columns: list[str], id_column: str | None, path: Path) -> None:
    if id_column is not None and id_column not in columns:
        raise ConfigurationError(f"{path} has no id column {id_column!r}; columns: {columns}")


def _chunks_csv(handle: ModelHandle, path: Path, size: int, id_column: str | None) -> Iterator[_Chunk]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        _check_id_column(header, id_column, path)
        build = _record_builder(handle, header, id_column)
        rows = ((n, cells) for n, cells in enumerate(reader, start=1) if cells)  # skip blank lines
        yield from _chunked(rows, lambda _n, cells: build(cells), size)


def _chunked(
    rows: Iterable[tuple[int, Any]], parse: Callable[[int, Any], tuple[Any, Any]], size: int
) -> Iterator[_Chunk]:
    """Parse numbered raw rows into chunks of ``size``; a row ``parse`` rejects with a
    :class:`SchemaError` goes to the chunk's bad rows instead of stopping the job."""
    chunk = _Chunk()
    for row_no, raw in rows:
        try:
            ident, record = parse(row_no, raw)
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


def _chunks_jsonl(handle: ModelHandle, path: Path, size: int, id_column: str | None) -> Iterator[_Chunk]:
    def parse(row_no: int, line: str) -> tuple[Any, Any]:
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"line {row_no} is not valid JSON: {exc.msg}") from None
        return _split_id(value, id_column)

    with open(path, encoding="utf-8") as f:
        rows = ((n, line) for n, line in enumerate(f, start=1) if line.strip())
        yield from _chunked(rows, parse, size)


def _chunks_parquet(handle: ModelHandle, path: Path, size: int, id_column: str | None) -> Iterator[_Chunk]:
    from .schema import RecordSchema

    pq = _pyarrow_parquet()
    pf = pq.ParquetFile(path)
    columns = list(pf.schema_arrow.names)
    _check_id_column(columns, id_column, path)
    as_records = isinstance(handle.input_schema, RecordSchema)
    features = [c for c in columns if c != id_column]
    row_no = 0
    for batch in pf.iter_batches(batch_size=size):
        n = batch.num_rows
        table = batch.select(features)
        ids = batch.column(id_column).to_pylist() if id_column is not None else [None] * n

        def slow(table: Any = table) -> list[Any]:
            if as_records:
                return table.to_pylist()
            return [list(r) for r in zip(*(c.to_pylist() for c in table.columns))]

        chunk = _Chunk(rows=list(range(row_no + 1, row_no + n + 1)), ids=ids, slow=slow)
        row_no += n
        # Nulls would become NaN in a DataFrame and slip past the schema: such chunks take
        # the record path, where a null is a missing value.
        if not any(c.null_count for c in table.columns):
            if as_records:
                chunk.batch = table.to_pandas()
            else:
                import numpy as np

                chunk.batch = np.column_stack([c.to_numpy() for c in table.columns]) if n else None
        yield chunk


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigurationError(
            "Parquet files need pyarrow: pip install 'embedml[parquet]'"
        ) from None
    return pq


# ---------------------------------------------------------------- writing


def flatten_output(value: Any, prefix: str = "prediction") -> dict[str, Any]:
    """One model result -> flat columns: a scalar is ``prediction``, a vector
    ``prediction_0``, ``prediction_1``..., an output-schema instance or a dict its fields
    (vectors inside them as ``field_0``...). Values are plain Python (JSON-ready)."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        value = dump()
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
        flat = {}
        for j, v in enumerate(value):
            flat.update(flatten_output(v, f"{prefix}_{j}"))
        return flat
    return {prefix: value}


class _Writer:
    def __init__(self, path: Path, fmt: str, id_name: str) -> None:
        self.path, self.fmt, self.id_name = path, fmt, id_name
        self._file: Any = None
        self._csv: Any = None
        self._pq: Any = None
        self._schema: Any = None
        if fmt != "parquet":
            self._file = open(path, "w", newline="" if fmt == "csv" else None, encoding="utf-8")  # noqa: SIM115 - closed by close()

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self.fmt == "jsonl":
            self._file.writelines(json.dumps(r, default=str) + "\n" for r in rows)
        elif self.fmt == "csv":
            if self._csv is None:
                self._csv = csv.DictWriter(self._file, fieldnames=list(rows[0]), extrasaction="ignore")
                self._csv.writeheader()
            self._csv.writerows(rows)
        else:
            import pyarrow as pa

            table = pa.Table.from_pylist(rows, schema=self._schema)
            if self._pq is None:
                self._schema = table.schema
                self._pq = _pyarrow_parquet().ParquetWriter(self.path, self._schema)
            self._pq.write_table(table)

    def close(self) -> None:
        if self.fmt == "parquet":
            if self._pq is None:  # nothing scored: still a valid (empty) file
                import pyarrow as pa

                self._pq = _pyarrow_parquet().ParquetWriter(
                    self.path, pa.schema([(self.id_name, pa.string())])
                )
            self._pq.close()
        else:
            if self.fmt == "csv" and self._csv is None:
                self._file.write(self.id_name + "\r\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


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


def _batch_rows(out: Any, keys: list[Any], id_name: str) -> list[dict[str, Any]]:
    """Output rows of one successful ``predict_batch`` (vectorised for plain arrays)."""
    import numpy as np

    from .streaming import _split_rows

    if isinstance(out, np.ndarray) and out.dtype != object and out.ndim in (1, 2):
        if out.ndim == 1 or out.shape[1] == 1:
            return [{id_name: k, "prediction": v} for k, v in zip(keys, out.reshape(len(out)).tolist())]
        names = [f"prediction_{j}" for j in range(out.shape[1])]
        return [{id_name: k, **dict(zip(names, row))} for k, row in zip(keys, out.tolist())]
    return [{id_name: k, **flatten_output(r)} for k, r in zip(keys, _split_rows(out, len(keys)))]


def _score_chunk(
    handle: ModelHandle, chunk: _Chunk, keys: list[Any], id_name: str, bad: list[Any]
) -> list[dict[str, Any]]:
    if not chunk.rows:
        return []
    first = chunk.batch if chunk.batch is not None else chunk.records if chunk.slow is None else None
    if first is not None:
        try:
            return _batch_rows(handle.predict_batch(first), keys, id_name)
        except (SchemaError, PredictionError):
            pass  # find the bad rows below; the good ones are still scored
    records = chunk.slow() if chunk.slow is not None else chunk.records
    out_rows = []
    for row_no, key, result in zip(chunk.rows, keys, predict_rows(handle, records)):
        if isinstance(result, EmbedMLError):
            bad.append((row_no, key, result))
        else:
            out_rows.append({id_name: key, **flatten_output(result)})
    return out_rows


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

    Rows that fail validation, or on which the model raises, go to ``rejects`` (default
    ``<sink>.rejects.jsonl``) as ``{"row": n, "id": ..., "error": message, "type": ...}``;
    the rest is scored. The output and reject files replace any old ones atomically when
    the job ends, so re-running after a crash is safe. A progress bar is shown on stderr
    when it is a terminal (``progress=None``), or as ``progress`` says.

    Raises :class:`ConfigurationError` (unknown suffix, missing input or id column, bad
    ``batch_size``, sink equal to source), :class:`HandleClosedError`, or ``OSError``
    when a file cannot be read or written.
    """
    src, dst = Path(source), Path(sink)
    rej = Path(rejects) if rejects is not None else dst.with_name(dst.name + ".rejects.jsonl")
    in_fmt, out_fmt = file_format(src), file_format(dst)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(f"batch_size must be an integer >= 1, got {batch_size!r}")
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
                    out_rows = _score_chunk(handle, chunk, keys, id_name, bad)
                    writer.write(out_rows)
                    for row_no, key, exc in sorted(bad, key=lambda b: b[0]):
                        # the row number says where; the batch index of the error would not
                        if isinstance(exc, SchemaError):
                            exc.index = None
                        entry = {"row": row_no, "id": key, "error": str(exc), "type": type(exc).__name__}
                        if id_column is None:
                            del entry["id"]
                        rej_file.write(json.dumps(entry, default=str) + "\n")
                    scored += len(out_rows)
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
