"""Scale-out on Ray Data: score a ``ray.data.Dataset`` with one model handle per actor.

:class:`EmbedMLPredictor` is a callable class for ``Dataset.map_batches``: each Ray actor
builds one, which loads the model once from the store, then scores every batch sent to it.
:func:`predict` wires it up with the usual knobs (``concurrency``, ``batch_size``,
``num_cpus``).

The store is opened in every actor from its location, so every worker node must reach it:
an object-store URL (``s3://bucket/prefix``, extra ``s3``; each node downloads the version
once into its own verified cache), or a path: on one machine any local path works; on a
cluster a shared filesystem (NFS, EFS, a Lustre or CephFS mount) mounted at the same path on
every node. Nothing is shipped to the workers except the location, name and version.
Install with ``pip install 'embedml[ray]'``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigurationError, EmbedMLError, StoreError
from ..offline.scoring import flatten_output, output_columns
from ..serving.load import ModelStore
from ..serving.options import LoadOptions
from ..serving.stream import predict_batch_or_rows, split_rows
from ..store.model_store import is_remote_url, store_root

__all__ = ["EmbedMLPredictor", "predict"]


def _open_store(store_uri: str | os.PathLike[str], where: str) -> ModelStore:
    """The store at ``store_uri``: an object-store URL as it is, a path (or ``file://``)
    only when that folder exists ``where`` this runs (driver or worker)."""
    text = os.fspath(store_uri)
    if is_remote_url(text):
        return ModelStore(text)
    root = store_root(text)
    if not root.is_dir():
        raise StoreError(
            f"no model store at {root} on {where}; a path must be on a filesystem every "
            "Ray node mounts at the same path (or give an s3:// store URL)"
        )
    return ModelStore(root)


class EmbedMLPredictor:
    """Callable class for ``Dataset.map_batches(..., batch_format="pandas")``.

    Built once per actor: opens the store at ``store_uri`` and loads ``name`` at
    ``version`` (kept for the actor's life). Each call takes a pandas batch and returns it
    with the prediction columns added (``prediction`` or ``prediction_0``..., or the output
    schema's fields; see :func:`embedml.offline.scoring.flatten_output`) and ``error_column``:
    ``None`` for scored rows, the error message for rows that failed validation or on
    which the model raised (their prediction columns are null). A bad row never fails the
    batch. ``feature_columns`` picks the model's input columns (default: the record
    schema's fields, else every column); the other columns pass through unchanged. A
    dataset column with the name of an added column raises :class:`ConfigurationError`
    (it would be overwritten)."""

    def __init__(
        self,
        store_uri: str | os.PathLike[str],
        name: str,
        version: str = "latest",
        *,
        feature_columns: Sequence[str] | None = None,
        error_column: str = "error",
        load_options: LoadOptions | Mapping[str, Any] | None = None,
    ) -> None:
        store = _open_store(store_uri, "this worker")
        self.handle = store.load(name, version, LoadOptions.of(load_options))
        try:
            self.handle.check_row_wise("the Ray integration (a dataset is predicted in row batches)")
        except ConfigurationError:
            self.handle.close()
            raise
        self.error_column = error_column
        schema = self.handle.input_schema
        # a model that takes records by name gets the named columns; else an array in order
        self._records = schema.records
        if feature_columns is not None:
            self.feature_columns: list[str] | None = list(feature_columns)
        elif self._records:
            self.feature_columns = list(schema.names)  # type: ignore[union-attr]
        else:
            self.feature_columns = None

    def _inputs(self, df: Any) -> Any:
        cols = self.feature_columns if self.feature_columns is not None else list(df.columns)
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ConfigurationError(
                f"the dataset has no column(s) {missing} for {self.handle.name}@{self.handle.version}; columns: {list(df.columns)}"
            )
        features = df[cols]
        if self._records:
            return features, lambda: features.to_dict("records")
        matrix = features.to_numpy()
        return matrix, lambda: list(matrix)

    def __call__(self, batch: Any) -> Any:
        import pandas as pd

        df = batch if isinstance(batch, pd.DataFrame) else pd.DataFrame(batch)
        n = len(df)
        if n == 0:
            return self._add(df, {self.error_column: pd.Series([], dtype=object)})
        whole, rows = self._inputs(df)
        errors: list[str | None] = [None] * n
        # the same step as embedml.score: one call, or the bad rows isolated
        out, results = predict_batch_or_rows(self.handle, whole, rows)
        if results is None:
            columns = output_columns(out, n)
            if columns is not None:
                return self._add(df, {**columns, self.error_column: errors})
            results = split_rows(out, n)
        flat: list[dict[str, Any]] = []
        for i, result in enumerate(results):
            if isinstance(result, EmbedMLError):
                errors[i] = str(result)
                flat.append({})
            else:
                flat.append(flatten_output(result))
        preds = pd.DataFrame.from_records(flat, index=df.index)
        return self._add(df, {**{c: preds[c] for c in preds.columns}, self.error_column: errors})

    def _add(self, df: Any, columns: dict[str, Any]) -> Any:
        """``df`` with ``columns`` added; a column of the dataset with the same name would be
        overwritten, silently, so it is refused."""
        clash = [c for c in columns if c in df.columns]
        if clash:
            raise ConfigurationError(
                f"the dataset already has the column(s) {clash} that scoring with "
                f"{self.handle.name}@{self.handle.version} adds (predictions, error_column="
                f"{self.error_column!r}); rename them or pass another error_column"
            )
        return df.assign(**columns)


def predict(
    dataset: Any,
    store_uri: str | os.PathLike[str],
    name: str,
    version: str = "latest",
    *,
    batch_size: int = 1024,
    concurrency: int | tuple[int, int] = 1,
    num_cpus: float = 1.0,
    feature_columns: Sequence[str] | None = None,
    error_column: str = "error",
    load_options: LoadOptions | Mapping[str, Any] | None = None,
    **map_batches_kwargs: Any,
) -> Any:
    """Score a ``ray.data.Dataset``: returns a lazy Dataset with the prediction columns and
    ``error_column`` added to every row (see :class:`EmbedMLPredictor`).

    The spec ``version`` (``"latest"``, ``"1.2"``, ``">=1,<2"``, ``"@production"``) is resolved
    once, here on the driver, so every actor loads the same version even if a new one is
    saved mid-job. ``concurrency`` actors (an int, or ``(min, max)`` for autoscaling) each
    reserve ``num_cpus`` CPUs and get batches of ``batch_size`` rows. Other keyword
    arguments go to ``Dataset.map_batches``. Raises :class:`ConfigurationError` /
    :class:`StoreError` / the store's lookup errors before any work starts;
    ``load_options`` (a :class:`~embedml.serving.options.LoadOptions` or a dict of its
    fields) are checked here too (``TypeError`` for an unknown one).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    store = _open_store(store_uri, "the driver")
    options = LoadOptions.of(load_options)
    # an alias or "latest" goes through the signed store record when the loads will
    mv = store.resolve(name, version, **options.resolve_options())
    return dataset.map_batches(
        EmbedMLPredictor,
        fn_constructor_kwargs={
            "store_uri": store_uri if is_remote_url(os.fspath(store_uri)) else str(store.root),
            "name": mv.name,
            "version": mv.version,
            "feature_columns": list(feature_columns) if feature_columns is not None else None,
            "error_column": error_column,
            "load_options": options,
        },
        batch_size=batch_size,
        batch_format="pandas",
        concurrency=concurrency,
        num_cpus=num_cpus,
        **map_batches_kwargs,
    )
