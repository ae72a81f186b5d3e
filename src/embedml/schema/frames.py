"""Outputs as a pandas DataFrame: ``predict_batch(df, as_frame=True)``.

Column names follow the ones ``embedml.score`` writes (``docs/scoring.md``):

* one value per row -> ``prediction``; a vector per row -> ``prediction_0``,
  ``prediction_1``...;
* a dict of outputs (ONNX models with several outputs) -> one column per output, vectors as
  ``name_0``...; a list of dicts per row (skl2onnx's ZipMap) as ``name_<key>``; an entry
  named ``classes`` that is not one per row labels the vector columns of its width
  (``probabilities_<class>``); a tuple as ``output_0``, ``output_1``...;
* output-schema instances -> one column per field.

The frame gets the input DataFrame's index, so its rows line up with the input's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import SchemaError
from ..tensors import ClassProbabilities

__all__ = ["is_frame", "output_frame"]


def is_frame(value: Any) -> bool:
    """Whether ``value`` is a pandas DataFrame (without importing pandas)."""
    return type(value).__module__.startswith("pandas") and hasattr(value, "columns")


def output_frame(out: Any, n: int, index: Any = None) -> Any:
    """The ``n`` rows of ``out`` as a DataFrame with ``index`` (default ``0..n-1``).

    Raises :class:`SchemaError` when an output does not have one entry per row.
    """
    import pandas as pd  # the caller passed a DataFrame, or asked for one

    columns: dict[str, Any] = {}
    if isinstance(out, Mapping):
        labels = _class_labels(out, n)
        for name, value in out.items():
            if str(name) != "classes" or labels is None:
                _add(columns, str(name), value, n, labels)
    elif isinstance(out, tuple):
        for j, value in enumerate(out):
            _add(columns, f"output_{j}", value, n, None)
    elif isinstance(out, list) and out and callable(getattr(out[0], "model_dump", None)):
        rows = [o.model_dump() for o in out]
        columns = {k: [r[k] for r in rows] for k in rows[0]}
    else:
        _add(columns, "prediction", out, n, None)
    return pd.DataFrame(columns, index=index if index is not None else pd.RangeIndex(n))


def _class_labels(out: Mapping[Any, Any], n: int) -> list[Any] | None:
    if isinstance(out, ClassProbabilities):  # known to be labels, even for n classes
        return list(out["classes"])
    classes = out.get("classes")
    if classes is None or (not isinstance(classes, np.ndarray | Sequence)) or len(classes) == n:
        return None  # absent, or one class per row: then it is an output like the others
    return list(np.asarray(classes).tolist())


def _add(columns: dict[str, Any], name: str, value: Any, n: int, labels: list[Any] | None) -> None:
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        keys = list(value[0])
        if len(value) != n:
            raise SchemaError(f"output {name!r} has {len(value)} rows for {n} input rows")
        for k in keys:
            columns[f"{name}_{k}"] = [row.get(k) for row in value]
        return
    a = np.asarray(value)
    if a.ndim == 0 or len(a) != n:
        got = "one value" if a.ndim == 0 else f"{len(a)} rows"
        raise SchemaError(f"output {name!r} has {got} for {n} input rows; cannot make a frame")
    if a.ndim == 2 and a.shape[1] == 1:
        a = a.reshape(n)
    if a.ndim == 1:
        columns[name] = a
        return
    flat = a.reshape(n, -1)
    names = labels if labels is not None and len(labels) == flat.shape[1] else range(flat.shape[1])
    for j, label in enumerate(names):
        columns[f"{name}_{label}"] = flat[:, j]
