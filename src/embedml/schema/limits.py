"""The limits every input meets, whatever its schema: batch size, NaN/inf, string length,
lossless casts (:class:`SchemaOptions`, :func:`check_rows`, :func:`check_array`,
:func:`cast_array`), and the small helpers the record and tensor schemas share to check
and describe values."""

from __future__ import annotations

import math
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SchemaError

__all__ = [
    "SchemaOptions",
    "cast_array",
    "check_array",
    "check_rows",
    "name_difference",
]


@dataclass(frozen=True)
class SchemaOptions:
    """How strictly inputs are checked (load options of a handle).

    Limits (each violation is a :class:`SchemaError` naming the field or tensor):
    ``allow_nan=False`` refuses NaN and +-infinity in numeric inputs (a ``None`` in a
    nullable number field is still accepted; it travels as NaN); ``max_batch_rows`` caps
    the rows of one call; ``max_string_length`` caps every string value.
    """

    strict: bool = True
    allow_extra: bool = False
    allow_nan: bool = False
    max_batch_rows: int | None = None
    max_string_length: int | None = None


def check_rows(n: int, opts: SchemaOptions) -> None:
    """Raise :class:`SchemaError` if a batch of ``n`` rows exceeds ``max_batch_rows``."""
    if opts.max_batch_rows is not None and n > opts.max_batch_rows:
        raise SchemaError(
            f"the batch has {n} rows, more than max_batch_rows={opts.max_batch_rows}; split it",
            expected=opts.max_batch_rows,
            got=n,
        )


_sum = np.add.reduce
_max = np.maximum.reduce
_isfinite = np.isfinite
_abs = np.abs


def _all_finite(a: np.ndarray) -> bool:
    """True when a float array holds no NaN nor infinity (False may be a false alarm: a sum
    that overflows; callers then run the exact check)."""
    # One reduction in the common case; a NaN or an inf makes it non-finite. On large
    # float32 arrays numpy's pairwise float32 sum is slow, and ``isfinite().all()`` beat
    # max and min (SIMD, NaN-propagating): 1,024 x 20 values 3.4 against 4.4 us, 8,192
    # values 2.2 against 2.8 us (medians of 9 timeit runs, numpy 2.4).
    # On a few values (one row) a Python sum of the values as floats beats a ufunc call.
    # (Not a BLAS dot: that releases the GIL, and getting it back costs a thread switch.)
    size = a.size
    if size <= 32:
        return math.isfinite(sum(a.ravel().tolist()))
    if size >= 8192 and a.dtype.itemsize == 4:
        return bool(_isfinite(a).all())
    return math.isfinite(_sum(a, axis=None))


def _bad_number(v: Any) -> bool:
    return isinstance(v, float | np.floating) and not np.isfinite(v)


def check_array(
    a: np.ndarray, name: str | None, opts: SchemaOptions, *, nullable: bool = False
) -> None:
    """Apply the NaN/inf and string-length limits to one array (rows on axis 0).

    ``nullable`` lets NaN (a null) through but still refuses infinities.
    """
    bad: Any = None
    # the common all-finite case first; anything else falls through to the exact check
    if a.dtype.kind == "f" and not opts.allow_nan and _all_finite(a):
        return
    if a.dtype.kind in "fc" and not opts.allow_nan:
        finite = np.isfinite(a)
        bad = ~finite if not nullable else ~(finite | np.isnan(a))
    elif a.dtype.kind == "O" and (not opts.allow_nan or opts.max_string_length is not None):
        limit = opts.max_string_length
        bad = np.zeros(a.shape, dtype=bool)
        for pos, v in np.ndenumerate(a):
            if isinstance(v, str):
                bad[pos] = limit is not None and len(v) > limit
            elif not opts.allow_nan and _bad_number(v):
                bad[pos] = not (nullable and np.isnan(v))
    elif a.dtype.kind == "U" and opts.max_string_length is not None:
        bad = np.char.str_len(a) > opts.max_string_length
    if bad is None or not bad.any():
        return
    pos = tuple(int(x) for x in np.argwhere(bad)[0]) if a.ndim else ()
    v = a[pos]
    index = pos[0] if pos else None
    if isinstance(v, str):
        raise SchemaError(
            f"a string of {len(v)} characters is longer than max_string_length={opts.max_string_length}",
            field=name, index=index, expected=opts.max_string_length, got=len(v),
        )  # fmt: skip
    raise SchemaError(
        f"{_plain(v)!r} is not allowed: NaN and infinity are refused (load with allow_nan=True to accept them)",
        field=name, index=index, got=_plain(v),
    )  # fmt: skip


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# Error messages show input values through this: bounded in depth and length, so a hostile
# value (a dict nested 100,000 deep, a huge list) cannot make the message itself fail.
_short = reprlib.Repr()  # (keyword arguments need Python 3.12)
_short.maxlevel, _short.maxstring, _short.maxother = 3, 40, 40
_short.maxlist = _short.maxdict = _short.maxtuple = _short.maxset = 4


def _safe_repr(value: Any) -> str:
    """``repr(value)``, bounded; never raises (a ``__repr__`` that fails is named instead)."""
    try:
        return _short.repr(value)
    except Exception:  # a hostile or broken __repr__
        return f"<{type(value).__name__} object>"


def _safe_str(value: Any) -> str:
    """A field name for an error: the string itself, else a bounded repr."""
    return value if isinstance(value, str) else _safe_repr(value)


def _describe(value: Any) -> str:
    text = _safe_repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


# Python ints a numeric field accepts: those of int64 (beyond it numpy silently rounds them
# to float64, or fails inside the model).
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INT64_EDGE = 2.0**63  # floats at least this large may hide such an int


def _big_int(value: Any) -> bool:
    return type(value) is int and not _INT64_MIN <= value <= _INT64_MAX


def _no_batch_axis(records: Any) -> None:
    """``predict_batch`` of a 0-d array (a bare number): a typed error, not a ``TypeError``."""
    if isinstance(records, np.ndarray) and records.ndim == 0:
        raise SchemaError(
            f"predict_batch expects a batch (rows on the first axis), got a 0-d array "
            f"{_safe_repr(_plain(records[()]))}; use predict() for one record",
            got=(),
        )


def _unique_columns(df: Any) -> None:
    """Refuse a DataFrame whose column names repeat: which column is the field is ambiguous."""
    if df.columns.has_duplicates:
        dups = sorted({_safe_repr(c) for c in df.columns[df.columns.duplicated()]})
        raise SchemaError(
            f"the DataFrame has duplicated column(s) {', '.join(dups)}: inputs are matched by "
            "name, so embedml cannot tell which one to use; drop or rename the copies",
            field=_safe_str(df.columns[df.columns.duplicated()][0]),
        )


_FLOAT_MAX: dict[np.dtype, float] = {}


def _float_max(dtype: np.dtype) -> float:
    try:
        return _FLOAT_MAX[dtype]
    except KeyError:
        limit = _FLOAT_MAX[dtype] = float(np.finfo(dtype).max)
        return limit


def cast_array(a: np.ndarray, dtype: np.dtype, *, name: str, strict: bool = True) -> np.ndarray:
    """Cast ``a`` to ``dtype`` if no value changes, else raise :class:`SchemaError`."""
    if a.dtype == dtype:
        return a
    src, dst = a.dtype.kind, dtype.kind
    why = ""
    if dst == "O":
        if src in "OU":
            return a.astype(dtype)
    elif dst == "f":
        if src in "iu" or (src == "f" and dtype.itemsize >= a.dtype.itemsize):
            return a.astype(dtype)
        if src == "f":
            # the common case, all finite and in range, in one reduction: the max is NaN if
            # any value is (the comparison fails: the exact check below)
            limit = _float_max(dtype)
            if a.size and _max(_abs(a), axis=None) <= limit:
                return a.astype(dtype)
            finite = a[np.isfinite(a)]
            if finite.size == 0 or np.abs(finite).max() <= np.finfo(dtype).max:
                return a.astype(dtype)
            why = f": values beyond the {dtype} range"
        elif src == "b" and not strict:
            return a.astype(dtype)
        elif src in "OU" and not strict:
            try:
                return a.astype(dtype)
            except (TypeError, ValueError):
                why = ": values are not numbers"
    elif dst in "iu":
        if src in "iu" or (src == "f" and not strict) or (src == "b" and not strict):
            if a.size == 0:
                return a.astype(dtype)
            if src == "f" and not np.all(np.isfinite(a) & (np.floor(a) == a)):
                why = ": values are not whole numbers"
            else:
                info = np.iinfo(dtype)
                if a.min() >= info.min and a.max() <= info.max:
                    return a.astype(dtype)
                why = f": values beyond the {dtype} range"
    elif dst == "b" and src in "iu" and not strict and np.isin(a, (0, 1)).all():
        return a.astype(dtype)
    raise SchemaError(
        f"expected dtype {dtype}, got {a.dtype}{why}",
        field=name,
        expected=str(dtype),
        got=str(a.dtype),
    )


def _needs_limits(batch: Any, opts: SchemaOptions) -> bool:
    """False when one checked array passes every limit but ``max_batch_rows`` (the
    per-call fast path: a float array with no NaN/inf, or NaN allowed; ints; bools)."""
    if type(batch) is not np.ndarray:
        return True
    kind = batch.dtype.kind
    if kind == "f":
        return not opts.allow_nan and not _all_finite(batch)
    return kind not in "iub"


def name_difference(given: Sequence[str], expected: Sequence[str]) -> str | None:
    """``None`` when ``given`` and ``expected`` hold the same names (in any order), else a
    sentence naming the missing and the unexpected ones."""
    missing = [n for n in expected if n not in given]
    unexpected = [n for n in given if n not in expected]
    if not missing and not unexpected:
        return None
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if unexpected:
        parts.append(f"unexpected {unexpected}")
    return f"{' and '.join(parts)} (the model's names: {list(expected)})"


def _check_names(
    given: Any, names: Sequence[str], opts: SchemaOptions, index: int | None, what: str
) -> None:
    """Raise :class:`SchemaError` for a missing or (unless ``allow_extra``) unknown name."""
    missing = next((n for n in names if n not in given), None)
    if missing is not None:
        raise SchemaError(
            f"required {what} is missing; the model's {what}s are {list(names)}",
            field=missing, index=index,
        )  # fmt: skip
    if not opts.allow_extra and len(given) != len(names):
        unknown = [str(k) for k in given if k not in names]
        raise SchemaError(
            f"unknown {what}(s) {unknown}; the model's {what}s are {list(names)} (load with allow_extra=True to ignore them)",
            field=unknown[0], index=index,
        )  # fmt: skip


def _as_record(record: Any, index: int | None, names: Sequence[str]) -> Mapping[str, Any]:
    if isinstance(record, Mapping):
        return record
    dump = getattr(record, "model_dump", None)
    if callable(dump):
        return dump()
    raise SchemaError(
        f"expected a record (dict with fields {list(names)}), got {_describe(record)}", index=index
    )


def _is_value(v: Any) -> bool:
    """One value of a record (not an array or list of values)."""
    return isinstance(v, str | int | float | bool | np.generic) or v is None


def _loose_array(value: Any, name: Any) -> np.ndarray:
    try:
        a = np.asarray(value)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise SchemaError(
            f"cannot be read as an array: {type(exc).__name__}: {str(exc)[:200]}",
            field=None if name is None else _safe_repr(name),
        ) from None
    _no_big_ints(a, name)
    if a.dtype == np.uint64 or (
        a.dtype.kind == "f" and a.size and not _max(_abs(a), axis=None) < _INT64_EDGE
    ):
        # numpy turned ints beyond int64 into uint64, or rounded them to floats: find them
        big = next((v for v in _leaves(value, a.ndim) if _big_int(v)), None)
        if big is not None:
            raise SchemaError(
                f"the integer {_safe_repr(big)} is outside the int64 range",
                field=None if name is None else _safe_repr(name),
                expected="int64", got="int",
            )  # fmt: skip
    return a


def _leaves(value: Any, depth: int) -> Any:
    """The scalars of a nested list of ``depth`` levels (the shape numpy found in it)."""
    if depth == 0 or isinstance(value, str | bytes | np.ndarray):
        yield value
        return
    for v in value:
        yield from _leaves(v, depth - 1)


def _no_big_ints(a: np.ndarray, name: Any) -> None:
    """Refuse Python ints beyond int64 in an object array (numpy keeps them as objects)."""
    if a.dtype.kind != "O":
        return
    for v in a.ravel().tolist():
        if _big_int(v):
            raise SchemaError(
                f"the integer {_safe_repr(v)} is outside the int64 range",
                field=None if name is None else _safe_repr(name),
                expected="int64", got="int",
            )  # fmt: skip


def _check_loose(batch: Any, opts: SchemaOptions) -> None:
    """Limits for schemaless inputs: arrays, dicts of arrays or DataFrames (by column)."""
    if isinstance(batch, np.ndarray):
        _no_big_ints(batch, None)
        check_array(batch, None, opts)
    elif isinstance(batch, Mapping):
        for k, v in batch.items():
            if isinstance(v, np.ndarray):
                _no_big_ints(v, k)
                check_array(v, str(k), opts)
    elif type(batch).__module__.startswith("pandas") and hasattr(batch, "columns"):
        for col in batch.columns:
            check_array(batch[col].to_numpy(), str(col), opts)
