"""Synthetic inputs built from an input schema, used by ``handle.warmup()``."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ConfigurationError
from .schema import FieldSpec, NoSchema, RecordSchema, TensorSchema

__all__ = ["synthetic_batch"]


def _value(f: FieldSpec) -> Any:
    if f.enum:
        return f.enum[0]
    if f.kind == "string":
        return "x"
    if f.kind == "boolean":
        return False
    lo = next((x for x in (f.minimum, f.exclusive_minimum) if x is not None), None)
    hi = next((x for x in (f.maximum, f.exclusive_maximum) if x is not None), None)
    if lo is not None and hi is not None:
        v = (lo + hi) / 2
    elif lo is not None:
        v = lo + 1
    elif hi is not None:
        v = hi - 1
    else:
        v = 0
    return int(v) if f.kind == "integer" else float(v)


def synthetic_batch(schema: RecordSchema | TensorSchema | NoSchema, rows: int = 1) -> Any:
    """A batch of ``rows`` valid inputs: mid-range numbers, first enum values, zeros.

    Raises :class:`ConfigurationError` when the schema says nothing about the input's shape.
    """
    if isinstance(schema, RecordSchema):
        record = {f.name: _value(f) for f in schema.fields}
        return [dict(record) for _ in range(rows)]
    if isinstance(schema, TensorSchema):
        out = {}
        for spec in schema.specs:
            shape = (rows, *(d if d > 0 else 1 for d in spec.shape[1:]))
            out[spec.name] = np.zeros(shape, dtype=spec.np_dtype)
        return out[schema.specs[0].name] if schema.single else out
    raise ConfigurationError(
        "cannot build warm-up inputs: the model has no input schema; save it with input_schema="
    )
