"""How embedml reads a model's interface: the model's own declaration is the contract.

A loaded :class:`~embedml.formats.Runtime` says what the model declares: scikit-learn's
``feature_names_in_`` / ``n_features_in_`` / ``classes_``, the ONNX graph's inputs and
outputs, TorchScript's ``forward`` argument names, ``torch.export``'s input specs. From
that and the schema declared at save, :func:`input_schema_for` picks how inputs reach the
model: **by name** whenever the model declares names, by the declared schema's field order
only when it declares none. A declared schema that names other inputs than the model is
refused (:class:`ConfigurationError` naming the difference).

At save, :func:`signature_at_save` records the declaration in the manifest (``"signature"``)
and, given an ``input_example``, the example's column types, the output signature and
whether predicting rows one at a time gives what predicting them together gives
(``batch_invariant``). See ``docs/concepts.md``, "How embedml reads a model's interface".
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigurationError, EmbedMLError, PredictionError, SchemaError
from ..schema import (
    ColumnInputs,
    FieldSpec,
    NamedRecords,
    NamedTensors,
    NoSchema,
    RecordSchema,
    SchemaOptions,
    TensorSchema,
    TensorSpec,
    is_column_input,
    name_difference,
    record_schema_for,
    schema_from_dict,
)
from ..tensors import n_rows, take
from . import Runtime

__all__ = ["input_schema_for", "signature_at_save"]

#: Rows of an input example checked one at a time for ``batch_invariant``.
_INVARIANCE_ROWS = 64


def _column_model(runtime: Runtime) -> bool:
    """One ``[N, 1]`` (or ``[N]``) input per column, several of them (skl2onnx pipelines)."""
    specs = runtime.input_specs
    return bool(specs) and len(specs) > 1 and all(is_column_input(s) for s in specs)  # type: ignore[arg-type]


def _kind_mismatch(record: RecordSchema, specs: Sequence[TensorSpec]) -> str | None:
    """A field whose kind cannot feed the input of its name (a string into a float input)."""
    by_name = {s.name: s for s in specs}
    for f in record.fields:
        spec = by_name[f.name]
        text = spec.dtype in ("str", "object")
        if (f.kind == "string") != text:
            return f"field {f.name!r} is {f.kind}, but the model's input {f.name!r} is {spec.dtype}"
    return None


def _spec_mismatch(declared: TensorSchema, model: Sequence[TensorSpec] | None) -> str | None:
    """A declared tensor whose element type or rank differs from the model's input of that
    name (the one input of a single-input model), or whose fixed dimensions differ."""
    if not model:
        return None
    by_name = {s.name: s for s in model}
    for spec in declared.specs:
        own = model[0] if declared.single and len(model) == 1 else by_name.get(spec.name)
        if own is None:
            continue
        if spec.dtype != own.dtype and {spec.dtype, own.dtype} != {"str", "object"}:
            return f"{spec.name!r} is declared {spec.dtype}, but the model's input {own.name!r} is {own.dtype}"
        if spec.shape is None or own.shape is None:
            continue  # a rank nobody declared
        fixed = [
            (d, o)
            for d, o in zip(spec.shape[1:], own.shape[1:])
            if isinstance(d, int) and isinstance(o, int) and -1 not in (d, o) and d != o
        ]
        if len(spec.shape) != len(own.shape) or fixed:
            return (
                f"{spec.name!r} is declared with shape {spec.shape}, but the model's input"
                f" {own.name!r} has shape {own.shape}"
            )
    return None


def input_schema_for(
    declared: RecordSchema | TensorSchema | None,
    runtime: Runtime,
    signature: Mapping[str, Any] | None = None,
    where: str = "the model",
    *,
    preprocessed: bool = False,
) -> Any:
    """How inputs reach ``runtime``: the schema that validates a call's input and hands
    the model a batch matched to its own names.

    ``declared`` is the schema saved with the version, ``signature`` the manifest's
    recorded signature (its ``columns`` type the records of a model that declares feature
    names but no record schema). Raises :class:`ConfigurationError` when the declared
    schema names other inputs than the model declares. With a ``preprocessed`` step the
    declared schema describes the step's input, not the model's: it is taken as it is.
    """
    if preprocessed:
        if declared is None and runtime.input_specs:
            return TensorSchema(runtime.input_specs)
        return declared or NoSchema()
    feature_names = runtime.feature_names
    if isinstance(declared, RecordSchema):
        if feature_names is not None:
            diff = name_difference(declared.names, feature_names)
            if diff is not None:
                raise ConfigurationError(
                    f"{where}: the input schema's fields do not match the model's feature names"
                    f" (feature_names_in_): {diff}"
                )
            return declared.in_order(feature_names)
        if _column_model(runtime):
            specs = runtime.input_specs or []
            diff = name_difference(declared.names, [s.name for s in specs])
            if diff is None:
                diff = _kind_mismatch(declared, specs)
            if diff is not None:
                raise ConfigurationError(
                    f"{where}: the input schema does not match the model's inputs (one per column): {diff}"
                )
            return ColumnInputs(declared, specs)
        names = runtime.input_names
        if names is not None and len(names) > 1:
            raise ConfigurationError(
                f"{where}: the model takes several inputs {list(names)}, but a record schema"
                " makes one matrix: declare tensor specs (a list of TensorSpec, one per input)"
                " or none, or add a preprocess step that builds the inputs"
            )
        n = runtime.n_features
        if n is not None and len(declared.fields) != n:
            raise ConfigurationError(
                f"{where}: the input schema has {len(declared.fields)} fields {list(declared.names)},"
                f" but the model takes {n} features (n_features_in_)"
            )
        return declared  # the model declares no names: the field order is the declaration
    if isinstance(declared, TensorSchema):
        names = runtime.input_names
        diff = None
        if names is not None and not declared.single:
            diff = name_difference([s.name for s in declared.specs], names)
        if diff is None:
            diff = _spec_mismatch(declared, runtime.input_specs)
        if diff is not None:
            raise ConfigurationError(
                f"{where}: the input schema's tensors do not match the model's inputs: {diff}"
            )
        return declared
    if feature_names is not None:
        columns = (signature or {}).get("columns")
        if columns and name_difference([c["name"] for c in columns], feature_names) is None:
            by_name = {c["name"]: c for c in columns}
            fields = [
                FieldSpec(n, by_name[n]["kind"], nullable=bool(by_name[n].get("nullable")))
                for n in feature_names
            ]
            return RecordSchema(fields, title="Example")
        return NamedRecords(feature_names)
    if _column_model(runtime):
        specs = runtime.input_specs or []
        return ColumnInputs(record_schema_for(specs), specs)
    if runtime.input_specs:
        return TensorSchema(runtime.input_specs)
    if runtime.input_names is not None:
        return NamedTensors(runtime.input_names)
    return NoSchema(mappings=False)


# ---------------------------------------------------------------- at save


def _kind_of_values(values: list[Any]) -> tuple[str, bool]:
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    nullable = len(present) < len(values)
    types = {type(v) for v in present}
    if types and all(issubclass(t, str) for t in types):
        return "string", nullable
    if types and all(issubclass(t, bool | np.bool_) for t in types):
        return "boolean", nullable
    if types and all(issubclass(t, int | np.integer) and not issubclass(t, bool) for t in types):
        return "integer", nullable
    return "number", nullable


def _frame_columns(df: Any) -> list[dict[str, Any]]:
    columns = []
    for name in df.columns:
        col = df[name]
        dtype = col.dtype
        entry: dict[str, Any] = {"name": str(name), "dtype": str(dtype)}
        if str(dtype) == "category":
            categories = col.cat.categories
            entry["categories"] = [c.item() if hasattr(c, "item") else c for c in categories]
            kind, _ = _kind_of_values(list(categories))
        elif dtype.kind == "f":
            kind = "number"
        elif dtype.kind in "iu":
            kind = "integer"
        elif dtype.kind == "b":
            kind = "boolean"
        else:
            kind, _ = _kind_of_values(col.dropna().tolist())
        entry["kind"] = kind
        entry["nullable"] = bool(col.isna().any())
        columns.append(entry)
    return columns


def _example_columns(example: Any) -> list[dict[str, Any]] | None:
    """Column names and types of an input example (DataFrame, record or list of records)."""
    if type(example).__module__.startswith("pandas") and hasattr(example, "columns"):
        return _frame_columns(example)
    rows = [example] if isinstance(example, Mapping) else example
    if isinstance(rows, list | tuple) and rows and all(isinstance(r, Mapping) for r in rows):
        names = list(rows[0])
        columns = []
        for name in names:
            kind, nullable = _kind_of_values([r.get(name) for r in rows])
            columns.append({"name": str(name), "kind": kind, "nullable": nullable})
        return columns
    return None


def _spec_dict(name: str, value: Any) -> dict[str, Any]:
    if isinstance(value, list) and value and isinstance(value[0], Mapping):
        return {"name": name, "type": "list of dicts", "dtype": None, "shape": None}  # ZipMap
    a = np.asarray(value)
    dtype = "str" if a.dtype.kind in "UO" else str(a.dtype)
    return {"name": name, "dtype": dtype, "shape": [-1, *a.shape[1:]]}


def _output_signature(out: Any) -> list[dict[str, Any]]:
    if isinstance(out, Mapping):
        return [_spec_dict(str(k), v) for k, v in out.items()]
    if isinstance(out, tuple):
        return [_spec_dict(f"output_{j}", v) for j, v in enumerate(out)]
    return [_spec_dict("output", out)]


def _slice(batch: Any, i: int) -> Any:
    """Row ``i`` of a model-ready batch, as a batch of one row."""
    if hasattr(batch, "iloc"):
        return batch.iloc[i : i + 1]
    if isinstance(batch, Mapping):
        return {k: v[i : i + 1] for k, v in batch.items()}
    return batch[i : i + 1]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape:
        return False
    if x.dtype.kind in "fc" or y.dtype.kind in "fc":
        return bool(np.allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True))
    return bool(np.array_equal(x, y))


def _import(path: str | None) -> Any:
    if path is None:
        return None
    module, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"cannot import {path!r} to run the input example: {exc}") from exc


def _example_batch(example: Any) -> Any:
    """An input example as ``predict_batch`` takes it (one record becomes a list of one)."""
    if isinstance(example, Mapping) and all(
        isinstance(v, str | int | float | bool | np.generic) or v is None for v in example.values()
    ):
        return [example]
    if callable(getattr(example, "model_dump", None)):
        return [example]
    return example


def signature_at_save(
    runtime: Runtime | None,
    input_schema: dict[str, Any] | None,
    input_example: Any = None,
    *,
    where: str,
    preprocess: str | None = None,
    postprocess: str | None = None,
) -> dict[str, Any] | None:
    """The ``signature`` recorded in the manifest of a version being saved.

    Checks the declared ``input_schema`` against what the model declares
    (:class:`ConfigurationError` naming the difference). With ``input_example`` (a
    DataFrame, a record, a list of records or an array) it also records the example's
    ``columns`` (names, types, nullability, categories), runs the example through the
    model once (after ``preprocess``) to record ``outputs`` when the model does not
    declare them, and records ``batch_invariant``: whether predicting the example's rows
    one at a time gives the same outputs as predicting them together (``None`` for an
    example of one row). Raises :class:`SchemaError` when the example does not fit the
    input schema and :class:`PredictionError` when the model fails on it.
    """
    if runtime is None:
        if input_example is None:
            return None
        return {"inputs": None, "outputs": None, "columns": _example_columns(input_example)}
    sig = runtime.signature()
    declared = schema_from_dict(input_schema)
    schema = input_schema_for(declared, runtime, None, where, preprocessed=preprocess is not None)
    sig["batch_invariant"] = None
    if input_example is None:
        return sig
    columns = _example_columns(input_example)
    sig["columns"] = columns
    names = runtime.feature_names
    if columns is not None and names is not None:
        diff = name_difference([c["name"] for c in columns], names)
        if diff is not None:
            raise ConfigurationError(
                f"{where}: the input example's columns do not match the model's feature names: {diff}"
            )
        if declared is None and preprocess is None:
            schema = input_schema_for(None, runtime, sig, where)
    pre, post = _import(preprocess), _import(postprocess)  # only now: they run the example
    try:
        batch = schema.many(_example_batch(input_example), SchemaOptions(allow_nan=True))
    except SchemaError as exc:
        raise SchemaError(
            f"the input example does not fit the input schema: {exc.message}",
            field=exc.field, index=exc.index,
        ) from None  # fmt: skip

    def run(inputs: Any) -> Any:
        try:
            out = runtime.predict(pre(inputs) if pre is not None else inputs)
            return post(out) if post is not None else out
        except EmbedMLError:
            raise
        except Exception as exc:
            raise PredictionError(
                f"{where}: the model raised {type(exc).__name__} on the input example: {exc}",
                stage="model",
            ) from exc

    out = run(batch)
    if not sig.get("outputs"):
        sig["outputs"] = _output_signature(out)
    n = n_rows(out)
    if n >= 2 and n == n_rows(batch):
        sig["batch_invariant"] = all(
            _same(take(out, i), take(run(_slice(batch, i)), 0))
            for i in range(min(n, _INVARIANCE_ROWS))
        )
    return sig
