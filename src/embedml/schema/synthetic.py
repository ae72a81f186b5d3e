"""Synthetic inputs built from an input schema: the one builder behind ``handle.warmup()``
and the ``embedml bench`` / ``embedml quantize`` commands.

Every value satisfies its field's declared bounds and enum (``Field(gt=0, le=1)`` on an int
field gives 1); string tensors get ``"x"``, other tensors numbers. When no value can satisfy
a field (an int field with ``gt=0, lt=1``) a :class:`ConfigurationError` names it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ConfigurationError
from .record import FieldSpec, RecordSchema
from .tensor import NoSchema, TensorSchema, TensorSpec

__all__ = ["stack_rows", "synthetic_batch", "synthetic_rows"]

Schema = RecordSchema | TensorSchema | NoSchema


def _interval(f: FieldSpec) -> tuple[float, float, bool, bool]:
    """The field's allowed range as ``(low, high, low_open, high_open)``."""
    low, high, low_open, high_open = -math.inf, math.inf, True, True
    if f.minimum is not None:
        low, low_open = float(f.minimum), False
    if f.exclusive_minimum is not None and float(f.exclusive_minimum) >= low:
        low, low_open = float(f.exclusive_minimum), True
    if f.maximum is not None:
        high, high_open = float(f.maximum), False
    if f.exclusive_maximum is not None and float(f.exclusive_maximum) <= high:
        high, high_open = float(f.exclusive_maximum), True
    return low, high, low_open, high_open


def _numbers(f: FieldSpec, n: int, rng: np.random.Generator | None) -> list[Any]:
    """``n`` values inside the field's bounds: the middle of the range (``rng=None``), or
    spread over it. Unbounded sides extend the range by 1 (2 when both are open)."""
    low, high, low_open, high_open = _interval(f)
    if f.kind == "integer":
        lo = (
            -math.inf if low == -math.inf else (math.floor(low) + 1 if low_open else math.ceil(low))
        )
        hi = (
            math.inf
            if high == math.inf
            else (math.ceil(high) - 1 if high_open else math.floor(high))
        )
        lo, hi = _finite(lo, hi)
        if lo > hi:
            raise ConfigurationError(
                f"no integer satisfies the bounds of field {f.name!r}; "
                "cannot build synthetic inputs for it"
            )
        lo, hi = int(lo), int(hi)
        if rng is None:
            return [(lo + hi) // 2] * n
        return rng.integers(lo, hi + 1, n).tolist()
    a, b = _finite(low, high)
    if not a < b and not (a == b and not low_open and not high_open):
        raise ConfigurationError(
            f"no number satisfies the bounds of field {f.name!r}; "
            "cannot build synthetic inputs for it"
        )
    if rng is None:  # the middle: strictly inside the bounds, so exclusive ones hold too
        return [(a + b) / 2] * n
    return (a + (b - a) * rng.uniform(0.05, 0.95, n)).tolist()


def _finite(low: float, high: float) -> tuple[float, float]:
    if low == -math.inf and high == math.inf:
        return -1.0, 1.0
    if low == -math.inf:
        return high - 2.0, high
    if high == math.inf:
        return low, low + 2.0
    return low, high


def _column(f: FieldSpec, n: int, rng: np.random.Generator | None) -> list[Any]:
    if f.enum:
        picks = [0] * n if rng is None else rng.integers(0, len(f.enum), n).tolist()
        return [f.enum[i] for i in picks]
    if f.kind == "string":
        return ["x"] * n if rng is None else [f"s{i % 7}" for i in range(n)]
    if f.kind == "boolean":
        return [False] * n if rng is None else [bool(v) for v in rng.integers(0, 2, n)]
    return _numbers(f, n, rng)


def _tensor_row(
    spec: TensorSpec, rng: np.random.Generator | None, whole: bool = False
) -> np.ndarray:
    """One example of ``spec`` without the batch axis (dynamic dimensions of size 1), or
    with every declared dimension for a model that takes its tensors ``whole``."""
    if spec.shape is None:
        raise ConfigurationError(
            f"cannot build synthetic inputs: the model does not declare the shape of {spec.name!r}"
        )
    dims = spec.shape if whole else spec.shape[1:]
    shape = tuple(d if isinstance(d, int) and d >= 0 else 1 for d in dims)
    if spec.np_dtype.kind in "OSU":
        return np.full(shape, "x", dtype=object)
    if rng is None:
        return np.zeros(shape, dtype=spec.np_dtype)
    if spec.np_dtype.kind in "iub":
        return rng.integers(0, 2, shape).astype(spec.np_dtype)
    return rng.normal(size=shape).astype(spec.np_dtype)


def synthetic_rows(schema: Schema, n: int, seed: int | None = None) -> list[Any]:
    """``n`` valid single-row inputs for ``predict``: records (dicts) for a record schema,
    arrays without the batch axis (or dicts of them, for several inputs) for tensors.

    ``seed=None`` gives the same plain row ``n`` times (the middle of each range, the first
    enum value, zeros); a seed spreads values over the allowed ranges. Raises
    :class:`ConfigurationError` when the schema says nothing about the input, or a field's
    bounds admit no value.
    """
    rng = None if seed is None else np.random.default_rng(seed)
    if isinstance(schema, RecordSchema):
        cols = [_column(f, n, rng) for f in schema.fields]
        return [dict(zip(schema.names, row)) for row in zip(*cols)]
    if isinstance(schema, TensorSchema):
        whole = not schema.rows  # a model that is not row-wise: each "row" is a whole call
        if schema.single:
            return [_tensor_row(schema.specs[0], rng, whole) for _ in range(n)]
        return [{s.name: _tensor_row(s, rng, whole) for s in schema.specs} for _ in range(n)]
    raise ConfigurationError(
        "cannot build synthetic inputs: the model has no input schema; save it with input_schema="
    )


def stack_rows(schema: Schema, rows: list[Any]) -> Any:
    """Rows from :func:`synthetic_rows` as one batch for ``predict_batch``."""
    if isinstance(schema, TensorSchema):
        if schema.single:
            return np.stack(rows)
        return {s.name: np.stack([r[s.name] for r in rows]) for s in schema.specs}
    return rows


def synthetic_batch(schema: Schema, rows: int = 1, seed: int | None = None) -> Any:
    """A batch of ``rows`` valid inputs (see :func:`synthetic_rows`); for a model that is
    not row-wise, the tensors of one whole call."""
    if isinstance(schema, TensorSchema) and not schema.rows:
        return synthetic_rows(schema, 1, seed)[0]
    return stack_rows(schema, synthetic_rows(schema, rows, seed))
