"""Operations on batches: one array, a dict of arrays, or a tuple of arrays, batch on axis 0.

Handles, batchers and streams use these to count rows, take one row, and join or split
batches, whatever structure a model takes or returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["ClassProbabilities", "concat", "n_rows", "split", "take"]


class ClassProbabilities(dict):  # type: ignore[type-arg]
    """``{"probabilities": (n, k) array, "classes": [k labels]}``: a classifier's
    probabilities with the labels of their columns. A plain dict to its reader; the
    functions here take rows of ``probabilities`` only, keeping ``classes`` whole."""

    def __init__(self, probabilities: Any, classes: list[Any]) -> None:
        super().__init__(probabilities=probabilities, classes=classes)

    def with_rows(self, probabilities: Any) -> ClassProbabilities:
        return ClassProbabilities(probabilities, list(self["classes"]))


def n_rows(batch: Any) -> int:
    """Number of rows in a batch (``-1`` when it has no length)."""
    cls = type(batch)
    if cls is dict:  # the common cases first, before the ABC checks
        batch = next(iter(batch.values()), ())
    elif cls is np.ndarray:
        pass
    elif isinstance(batch, Mapping):
        batch = next(iter(batch.values()), ())
    elif isinstance(batch, tuple):
        batch = batch[0] if batch else ()
    try:
        return len(batch)
    except TypeError:
        return -1


def take(batch: Any, i: int) -> Any:
    """Row ``i`` of a batch, in the batch's structure."""
    cls = type(batch)
    if cls is np.ndarray or cls is list:  # the common cases, before the ABC checks
        return batch[i]
    if cls is dict:
        return {k: v[i] for k, v in batch.items()}
    if cls is ClassProbabilities:
        return batch.with_rows(batch["probabilities"][i])
    if isinstance(batch, np.ndarray | list):
        return batch[i]
    if isinstance(batch, Mapping):
        return {k: v[i] for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(v[i] for v in batch)
    if hasattr(batch, "iloc"):
        return batch.iloc[i]
    return batch[i]


def concat(batches: Sequence[Any]) -> Any:
    """Join batches of the same structure along axis 0 (raises ``ValueError`` if they differ)."""
    first = batches[0]
    if len(batches) == 1:
        return first
    if isinstance(first, np.ndarray):
        return np.concatenate(batches, axis=0)
    if isinstance(first, ClassProbabilities):
        return first.with_rows(np.concatenate([b["probabilities"] for b in batches], axis=0))
    if isinstance(first, Mapping):
        return {k: np.concatenate([b[k] for b in batches], axis=0) for k in first}
    if isinstance(first, tuple):
        return tuple(np.concatenate([b[j] for b in batches], axis=0) for j in range(len(first)))
    if isinstance(first, list):
        return [x for b in batches for x in b]
    if hasattr(first, "iloc"):  # DataFrames (records by feature name); pandas is loaded
        import pandas as pd

        return pd.concat(batches, ignore_index=True)
    raise ValueError(f"cannot concatenate batches of type {type(first).__name__}")


def split(batch: Any, sizes: Sequence[int]) -> list[Any]:
    """Cut a batch into consecutive parts of the given sizes."""
    parts, start = [], 0
    for size in sizes:
        stop = start + size
        if isinstance(batch, ClassProbabilities):
            parts.append(batch.with_rows(batch["probabilities"][start:stop]))
        elif isinstance(batch, Mapping):
            parts.append({k: v[start:stop] for k, v in batch.items()})
        elif isinstance(batch, tuple):
            parts.append(tuple(v[start:stop] for v in batch))
        else:
            parts.append(batch[start:stop])
        start = stop
    return parts
