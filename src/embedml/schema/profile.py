"""Reference profile: a compact summary of the training inputs (and outputs) of a version.

``store.save(..., reference_data=X, reference_outputs=Y)`` stores one in the version folder
(``reference_profile.json``, listed with its SHA-256 in ``Manifest.extra_files`` and checked
like the artifact). Per feature it keeps quantile bin edges and counts (numeric) or category
counts (categorical), plus the values of a bounded random sample of the reference rows
(10,000 by default) so that two-sample tests against live data are exact.
:class:`~embedml.DriftMonitor` compares live traffic against it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigurationError, IntegrityError, SchemaError
from .limits import SchemaOptions
from .record import RecordSchema, schema_from_dict

__all__ = ["PROFILE_FILE", "FeatureProfile", "ReferenceProfile", "feature_matrix"]

PROFILE_FILE = "reference_profile.json"
_OTHER = "__other__"


def feature_matrix(
    batch: Any, names: tuple[str, ...] | list[str] | None, prefix: str = "x"
) -> tuple[list[str], np.ndarray]:
    """Named columns of a batch: ``(names, 2-D array)``.

    A 2-D array with field names (record schemas) keeps them; other arrays are flattened
    per row and named ``prefix[j]``; a dict of arrays is flattened tensor by tensor
    (``name[j]``); a DataFrame keeps its columns. A 1-D array is one column ``prefix``.
    """
    if hasattr(batch, "columns") and hasattr(batch, "to_numpy"):
        return [str(c) for c in batch.columns], batch.to_numpy()
    if isinstance(batch, dict):
        cols, blocks = [], []
        for key, value in batch.items():
            sub_names, block = feature_matrix(np.asarray(value), None, str(key))
            cols += sub_names
            blocks.append(block)
        return cols, (np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0])
    if isinstance(batch, tuple):
        return feature_matrix({f"{prefix}{i}": v for i, v in enumerate(batch)}, None, prefix)
    a = np.asarray(batch)
    if a.ndim == 1:
        return [prefix], a[:, None]
    if a.ndim != 2:
        a = a.reshape(len(a), -1)
    if names is not None and len(names) == a.shape[1]:
        return list(names), a
    if a.shape[1] == 1:
        return [prefix], a
    return [f"{prefix}[{j}]" for j in range(a.shape[1])], a


def is_numeric(column: np.ndarray) -> bool:
    """Numbers (not booleans) are numeric; strings, booleans and mixed objects categorical."""
    if column.dtype.kind in "iuf":
        return True
    if column.dtype.kind == "O":
        return all(
            isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
            for v in column[:1000]
        )
    return False


def bin_index(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Bin of each value: 0 for ``<= edges[0]``, ..., ``len(edges)`` above the last edge."""
    return np.searchsorted(edges, values, side="left")


@dataclass
class FeatureProfile:
    """Reference statistics of one feature (or output column)."""

    name: str
    kind: str  # "numeric" or "categorical"
    count: int
    missing: int = 0
    edges: list[float] = field(default_factory=list)  # numeric: inner bin edges
    counts: list[int] = field(default_factory=list)  # per bin, or per category
    categories: list[str] = field(default_factory=list)  # categorical, with "__other__" last
    sample: list[Any] = field(default_factory=list)

    @property
    def proportions(self) -> np.ndarray:
        c = np.asarray(self.counts, dtype=np.float64)
        return c / max(c.sum(), 1.0)

    def live_counts(self, values: np.ndarray) -> np.ndarray:
        """Counts of live values in this feature's bins or categories."""
        if self.kind == "numeric":
            v = values.astype(np.float64)
            v = v[~np.isnan(v)]
            return np.bincount(bin_index(np.asarray(self.edges), v), minlength=len(self.counts))
        index = {c: i for i, c in enumerate(self.categories)}
        other = index[_OTHER]
        codes = np.fromiter((index.get(str(v), other) for v in values), np.int64, len(values))
        return np.bincount(codes, minlength=len(self.categories))


def _profile_column(
    name: str, column: np.ndarray, rows: np.ndarray, bins: int
) -> FeatureProfile:
    if is_numeric(column):
        v = column.astype(np.float64)
        ok = ~np.isnan(v)
        clean = v[ok]
        if clean.size == 0:
            raise SchemaError("reference data has no numeric values", field=name)
        edges = np.unique(np.quantile(clean, np.linspace(0, 1, bins + 1)[1:-1]))
        counts = np.bincount(bin_index(edges, clean), minlength=len(edges) + 1)
        sample = v[rows]
        return FeatureProfile(
            name, "numeric", int(clean.size), int((~ok).sum()), edges.tolist(),
            counts.tolist(), [], sample[~np.isnan(sample)].tolist(),
        )  # fmt: skip
    values = np.asarray([str(x) for x in column.tolist()], dtype=object)
    cats, counts = np.unique(values, return_counts=True)
    return FeatureProfile(
        name, "categorical", int(len(values)), 0, [], [*counts.tolist(), 0],
        [*cats.tolist(), _OTHER], values[rows].tolist(),
    )  # fmt: skip


@dataclass
class ReferenceProfile:
    """Reference statistics of the inputs (``features``) and, if given, ``outputs``."""

    features: dict[str, FeatureProfile]
    outputs: dict[str, FeatureProfile] = field(default_factory=dict)
    rows: int = 0
    sample_rows: int = 0
    profile_version: int = 1

    @classmethod
    def from_data(
        cls,
        data: Any,
        outputs: Any = None,
        *,
        names: tuple[str, ...] | list[str] | None = None,
        bins: int = 10,
        sample_size: int = 10_000,
        seed: int = 0,
    ) -> ReferenceProfile:
        """Profile a batch of reference inputs (2-D array, DataFrame, dict of arrays).

        ``names`` names the columns of a 2-D array. ``outputs`` are the model's outputs on
        the same (or other) reference rows. Raises :class:`ConfigurationError` for bad
        ``bins`` / ``sample_size`` and :class:`SchemaError` for empty data.
        """
        if bins < 2 or sample_size < 1:
            raise ConfigurationError(f"bins must be >= 2 and sample_size >= 1, got {bins}, {sample_size}")
        rng = np.random.default_rng(seed)

        def profile(batch: Any, prefix: str) -> tuple[dict[str, FeatureProfile], int, int]:
            cols, m = feature_matrix(batch, names if prefix == "x" else None, prefix)
            n = len(m)
            if n == 0:
                raise SchemaError(f"reference {'data' if prefix == 'x' else 'outputs'} is empty")
            rows = np.sort(rng.choice(n, size=min(n, sample_size), replace=False))
            feats = {c: _profile_column(c, m[:, j], rows, bins) for j, c in enumerate(cols)}
            return feats, n, len(rows)

        features, n, k = profile(data, "x")
        outs = profile(outputs, "output")[0] if outputs is not None else {}
        return cls(features, outs, n, k)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ReferenceProfile:
        """Parse a stored profile; raises :class:`IntegrityError` if it is malformed."""
        try:
            d = json.loads(text)
            return cls(
                {k: FeatureProfile(**v) for k, v in d["features"].items()},
                {k: FeatureProfile(**v) for k, v in d.get("outputs", {}).items()},
                int(d.get("rows", 0)),
                int(d.get("sample_rows", 0)),
                int(d.get("profile_version", 1)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"reference profile is malformed: {exc}") from exc


def profile_for_schema(
    data: Any, outputs: Any, input_schema: dict[str, Any] | None
) -> ReferenceProfile:
    """Validate ``data`` with the version's input schema (so columns line up with live
    inputs) and profile it. Raises :class:`SchemaError` naming the bad record."""
    schema = schema_from_dict(input_schema)  # type: ignore[arg-type]
    names = None
    if schema is not None:
        try:
            data = schema.many(data, SchemaOptions(strict=False, allow_extra=True))
        except SchemaError as exc:
            exc.message = f"reference_data: {exc.message}"
            raise
        if isinstance(schema, RecordSchema):
            names = schema.names
    return ReferenceProfile.from_data(data, outputs, names=names)
