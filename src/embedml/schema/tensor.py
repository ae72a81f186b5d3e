"""Tensor schemas: one :class:`TensorSpec` per model input or output (name, dtype, shape
with ``-1`` or a name for dynamic dimensions), :class:`TensorSchema` that checks a batch
against them, and the schemas of inputs given by name without a declared schema
(:class:`NamedTensors`, :class:`NoSchema`)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SchemaError
from ..tensors import n_rows
from .limits import (
    SchemaOptions,
    _all_finite,
    _check_loose,
    _check_names,
    _describe,
    _loose_array,
    _needs_limits,
    _no_batch_axis,
    _unique_columns,
    cast_array,
    check_array,
    check_rows,
)

__all__ = [
    "NamedTensors",
    "NoSchema",
    "TensorSchema",
    "TensorSpec",
    "dynamic",
    "is_column_input",
    "not_row_wise",
]

_DTYPES = {
    "float16", "float32", "float64", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "bool", "complex64", "complex128", "str", "object",
}  # fmt: skip


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output tensor: ``TensorSpec("x", "float32", (-1, 20))``.

    A dimension is a size (``0`` included), ``-1`` or ``None`` for a dynamic one, or a
    string naming a symbolic one (``"batch"``: ONNX graphs name them; dimensions with one
    name have one size in a call). ``()`` is a scalar; ``shape=None`` a tensor whose rank
    the model does not declare. For a row-wise model the first dimension is the batch.
    Raises ``ValueError`` for an unknown dtype or a bad shape.
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...] | None = (-1,)

    def __post_init__(self) -> None:
        try:
            dtype = (
                "str"
                if self.dtype in ("string", "<U0")
                else str(np.dtype(self.dtype))
                if self.dtype not in _DTYPES
                else self.dtype
            )
        except TypeError:  # numpy does not know the name either
            dtype = None
        if dtype not in _DTYPES:
            raise ValueError(
                f"TensorSpec {self.name!r}: unknown dtype {self.dtype!r}; use one of {sorted(_DTYPES)}"
            )
        object.__setattr__(self, "dtype", dtype)
        if self.shape is None:
            return
        try:
            shape = tuple(_dim(d) for d in self.shape)
        except (TypeError, ValueError):
            raise ValueError(
                f"TensorSpec {self.name!r}: shape {self.shape!r} must be a tuple of sizes >= 0, "
                "-1/None (dynamic) or dimension names"
            ) from None
        object.__setattr__(self, "shape", shape)

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(object) if self.dtype in ("str", "object") else np.dtype(self.dtype)

    @property
    def batch_dim(self) -> int | str | None:
        """The first dimension (``None`` for a scalar or an undeclared rank)."""
        return self.shape[0] if self.shape else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": None if self.shape is None else list(self.shape),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        shape = d["shape"]
        return cls(d["name"], d["dtype"], None if shape is None else tuple(shape))


def _dim(d: Any) -> int | str:
    """One dimension in its stored form: a size >= 0, ``-1`` (dynamic) or a name."""
    if d is None:
        return -1
    if isinstance(d, str) and d:
        return d
    if isinstance(d, int | np.integer) and not isinstance(d, bool) and d >= -1:
        return int(d)
    raise ValueError(d)


def dynamic(d: int | str) -> bool:
    """Whether a stored dimension is dynamic (``-1`` or a name)."""
    return d == -1 or isinstance(d, str)


# ---------------------------------------------------------------- tensor schemas


class TensorSchema:
    """A schema of one or more named tensors (model inputs or outputs).

    ``rows=True`` (the default when every spec has a first dimension): the first dimension
    is the batch, whatever size a spec gives it, and :meth:`one` takes one example without
    it. ``rows=False`` (a model that is not row-wise, see :func:`not_row_wise`): calls pass
    the tensors whole (:meth:`whole`), checked against every declared dimension.
    Raises :class:`SchemaError` for no specs, or ``rows=True`` with a spec without a first
    dimension.
    """

    kind = "tensors"
    records = False

    def __init__(self, specs: Sequence[TensorSpec], *, rows: bool | None = None) -> None:
        if not specs:
            raise SchemaError("a tensor schema needs at least one TensorSpec")
        self.specs = tuple(specs)
        flat = [s.name for s in self.specs if not s.shape]
        self.rows = not flat if rows is None else rows
        if self.rows and flat:
            raise SchemaError(
                f"tensor {flat[0]!r} has no first dimension to hold rows (a scalar or an undeclared shape)"
            )
        self.single = len(self.specs) == 1
        self._spec = self.specs[0]
        self._dtypes = tuple(s.np_dtype for s in self.specs)
        # the per-call fast path of a single input: a static row shape and dtype that match
        # need no per-axis check (anything else takes the full check and its error messages)
        shape = self._spec.shape
        tail = shape[1:] if self.rows and shape else None
        self._tail = None if tail is None or any(dynamic(d) for d in tail) else tail
        self._row_ndim = len(shape) - 1 if shape is not None else -1
        # a float row of this exact shape and dtype needs only the NaN/inf check (unchecked_one)
        self._float_row = (
            (self._tail, self._dtypes[0])
            if self.single and self._tail is not None and self._dtypes[0].kind == "f"
            else None
        )
        # whole(one=True) may add a batch axis of 1 only where every input allows it
        self._one_axis = all(
            s.shape and (s.shape[0] == 1 or dynamic(s.shape[0])) for s in self.specs
        )

    def unchecked_one(self, record: Any) -> np.ndarray | None:
        """``record`` as a batch of one row with only its shape and dtype checked, when it
        is exactly one float row of the single input tensor; else ``None`` (use
        :meth:`one`). The NaN/inf check is left to :meth:`rows_finite`, which a batcher
        runs on a whole batch of such rows at once."""
        row = self._float_row
        if (
            row is not None and type(record) is np.ndarray and record.shape == row[0]
            and record.dtype == row[1]
        ):  # fmt: skip
            return record[None]
        return None

    @staticmethod
    def rows_finite(batch: np.ndarray, opts: SchemaOptions) -> bool:
        """Whether rows from :meth:`unchecked_one` pass the NaN/inf check (``False`` may be
        a false alarm: then check them one by one with :meth:`one`)."""
        return opts.allow_nan or _all_finite(batch)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "tensors", "tensors": [s.to_dict() for s in self.specs]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSchema:
        return cls([TensorSpec.from_dict(t) for t in d["tensors"]])

    def __repr__(self) -> str:
        return f"TensorSchema({list(self.specs)})"

    def one(self, record: Any, opts: SchemaOptions) -> Any:
        """Validate one example (without the batch dimension) into a batch of one."""
        batch = self._one(record, opts)
        if type(batch) is np.ndarray and batch.dtype.kind == "f" and batch.size <= 32:
            # one row of a few floats, the most common call: _needs_limits inlined
            if opts.allow_nan or math.isfinite(sum(batch.ravel().tolist())):
                return batch
        elif not _needs_limits(batch, opts):
            return batch
        self._check_limits(batch, opts, single=True)
        return batch

    def many(self, records: Any, opts: SchemaOptions) -> Any:
        """Validate a batch (one array, or a dict name -> array for multi-input models)."""
        _no_batch_axis(records)
        batch = self._many(records, opts)
        if opts.max_batch_rows is None and not _needs_limits(batch, opts):
            return batch
        self._check_limits(batch, opts, single=False)
        return batch

    def whole(self, inputs: Any, opts: SchemaOptions, *, one: bool = False) -> tuple[Any, bool]:
        """Validate tensors passed whole (a model that is not row-wise): one array, or a dict
        name -> array; every declared dimension and dtype is checked. Returns the feed and
        whether it is whole. With ``one=True`` (``predict``), tensors that each lack the
        first dimension, where the model declares it as 1 or dynamic, are one example: a
        batch axis of 1 is added and ``False`` returned (the caller takes row 0 of each
        output)."""
        given = self._named(inputs)
        names = [s.name for s in self.specs]
        extra = [k for k in given if k not in names]
        if extra and not opts.allow_extra:
            raise SchemaError(f"unknown input(s) {extra}; expected {names}", field=str(extra[0]))
        arrays = {}
        for spec in self.specs:
            if spec.name not in given:
                raise SchemaError("required input tensor is missing", field=spec.name)
            arrays[spec.name] = _asarray(given[spec.name], spec)
        add = (
            one
            and self._one_axis
            and all(a.ndim == len(s.shape) - 1 for s, a in zip(self.specs, arrays.values()))
        )
        out = {}
        for spec, dtype in zip(self.specs, self._dtypes):
            a = arrays[spec.name]
            if add:
                a = a[None]
            out[spec.name] = a = self._check(a, spec, dtype, opts, first_axis=0)
            try:
                if a.ndim and spec.shape and dynamic(spec.shape[0]):
                    check_rows(len(a), opts)
                if not opts.allow_nan or a.dtype.kind in "OU":
                    check_array(a, spec.name, opts)
            except SchemaError as exc:
                exc.index = None
                raise
        feed = out[self._spec.name] if self.single and not isinstance(inputs, Mapping) else out
        return feed, not add

    def _named(self, inputs: Any) -> Mapping[str, Any]:
        if isinstance(inputs, Mapping):
            return inputs
        if self.single:
            return {self._spec.name: inputs}
        raise SchemaError(
            f"expected a dict of input tensors {[s.name for s in self.specs]}, got {_describe(inputs)}"
        )

    def _check_limits(self, batch: Any, opts: SchemaOptions, *, single: bool) -> None:
        arrays = batch.items() if isinstance(batch, dict) else ((self._spec.name, batch),)
        for name, a in arrays:
            if not single:
                check_rows(len(a), opts)
            try:
                check_array(a, name, opts)
            except SchemaError as exc:
                if single:
                    exc.index = None
                raise

    def _one(self, record: Any, opts: SchemaOptions) -> Any:
        if self.single:
            if isinstance(record, np.ndarray):
                a = record
            elif isinstance(record, Mapping) and self._spec.name in record:
                return self._single_by_name(record, opts, row=True)
            else:
                a = _asarray(record, self._spec)
            if a.ndim == self._row_ndim:
                a = a[None]
                if a.shape[1:] == self._tail:
                    return self._cast(a, opts)
            elif not (a.ndim == len(self._spec.shape) and a.shape[0] == 1):
                raise SchemaError(
                    f"expected one example of shape {self._spec.shape[1:]}, got shape {a.shape}",
                    field=self._spec.name,
                    expected=self._spec.shape,
                    got=a.shape,
                )
            return self._check(a, self._spec, self._dtypes[0], opts)
        batch = {}
        for spec in self.specs:
            if not isinstance(record, Mapping) or spec.name not in record:
                raise SchemaError(
                    f"expected a dict of input tensors {[s.name for s in self.specs]}",
                    field=spec.name,
                )
            batch[spec.name] = _asarray(record[spec.name], spec)[None]
        return self._check_many(batch, record, opts)

    def _many(self, records: Any, opts: SchemaOptions) -> Any:
        if self.single:
            if isinstance(records, np.ndarray):
                a = records
            elif isinstance(records, Mapping) and self._spec.name in records:
                return self._single_by_name(records, opts, row=False)
            else:
                a = _asarray(records, self._spec)
            if a.shape[1:] == self._tail and a.ndim:
                return self._cast(a, opts)
            return self._check(a, self._spec, self._dtypes[0], opts)
        if not isinstance(records, Mapping):
            raise SchemaError(
                f"expected a dict of input tensors {[s.name for s in self.specs]}, got {_describe(records)}"
            )
        return self._check_many(
            {s.name: _asarray(records[s.name], s) for s in self.specs if s.name in records},
            records,
            opts,
        )

    def _single_by_name(
        self, given: Mapping[str, Any], opts: SchemaOptions, *, row: bool
    ) -> np.ndarray:
        """The single input given by its name in a dict (one example when ``row``: a batch
        axis is added), checked as a dict of inputs (so other keys need ``allow_extra``)."""
        name = self._spec.name
        a = _asarray(given[name], self._spec)
        return self._check_many({name: a[None] if row else a}, given, opts)[name]

    def _cast(self, a: np.ndarray, opts: SchemaOptions) -> np.ndarray:
        """The single input's dtype, once its shape is known to match (see ``_tail``)."""
        dtype = self._dtypes[0]
        if a.dtype == dtype:
            return a
        return cast_array(a, dtype, name=self._spec.name, strict=opts.strict)

    def _check_many(
        self, batch: dict[str, np.ndarray], given: Mapping[str, Any], opts: SchemaOptions
    ) -> dict[str, np.ndarray]:
        names = [s.name for s in self.specs]
        extra = [k for k in given if k not in names]
        if extra and not opts.allow_extra:
            raise SchemaError(f"unknown input(s) {extra}; expected {names}", field=str(extra[0]))
        out = {}
        for spec, dtype in zip(self.specs, self._dtypes):
            if spec.name not in batch:
                raise SchemaError("required input tensor is missing", field=spec.name)
            out[spec.name] = self._check(batch[spec.name], spec, dtype, opts)
        rows = {len(v) for v in out.values()}
        if len(rows) > 1:
            raise SchemaError(f"input tensors have different batch sizes {sorted(rows)}")
        return out

    @staticmethod
    def _check(
        a: np.ndarray, spec: TensorSpec, dtype: np.dtype, opts: SchemaOptions, first_axis: int = 1
    ) -> np.ndarray:
        """``a`` cast to ``dtype`` once its shape fits ``spec`` (from ``first_axis`` on: 1
        skips the batch dimension)."""
        shape = spec.shape
        if shape is not None:
            if a.ndim != len(shape):
                raise SchemaError(
                    f"expected {len(shape)} dimensions (shape {_show(shape)}), got {a.ndim} (shape {a.shape})",
                    field=spec.name,
                    expected=shape,
                    got=a.shape,
                )
            for axis in range(first_axis, len(shape)):
                want, got = shape[axis], a.shape[axis]
                if want != got and not dynamic(want):
                    raise SchemaError(
                        f"dimension {axis} must be {want}, got {got} (expected shape {_show(shape)}, got {a.shape})",
                        field=spec.name,
                        expected=shape,
                        got=a.shape,
                    )
        if a.dtype != dtype:
            a = cast_array(a, dtype, name=spec.name, strict=opts.strict)
        return a

    def check_output(self, out: Any, n: int) -> Any:
        """Check raw outputs against the output tensor specs; returns them unchanged."""
        if self.single and not isinstance(out, Mapping | tuple):
            outs = {self._spec.name: np.asarray(out)}
        elif isinstance(out, Mapping):
            outs = {k: np.asarray(v) for k, v in out.items()}
        else:
            outs = {s.name: np.asarray(v) for s, v in zip(self.specs, out)}
        first_axis = 1 if self.rows else 0
        for spec in self.specs:
            a = outs.get(spec.name)
            if a is None:
                raise SchemaError(f"the model returned no output {spec.name!r}", field=spec.name)
            try:
                self._check(a, spec, spec.np_dtype, SchemaOptions(strict=True), first_axis)
            except SchemaError as exc:
                raise SchemaError(
                    f"output {exc.message}", field=spec.name, expected=exc.expected, got=exc.got
                ) from None
        return out


def _show(shape: tuple[int | str, ...]) -> str:
    """A shape as people write it: dynamic dimensions as ``None``, names quoted."""
    return (
        "("
        + ", ".join("None" if d == -1 else repr(d) for d in shape)
        + ("," if len(shape) == 1 else "")
        + ")"
    )


# ONNX shape inference (run by onnxruntime's quantizer, tf2onnx...) names each dimension it
# cannot tell "unk__<n>": such a name says nothing, like an unnamed one.
_UNKNOWN_DIM = re.compile(r"unk__\d+")


def not_row_wise(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec] = ()) -> str | None:
    """Why a model with these input and (tensor) output specs is not row-wise, or ``None``
    when it is: every tensor has a dynamic first dimension, all unnamed (or named
    ``unk__<n>`` by shape inference) or all one name, which no other dimension uses. Only
    then are its outputs one per input row."""
    if not inputs:
        return "it has no inputs"
    named: set[str] = set()
    unnamed = []
    for kind, specs in (("input", inputs), ("output", outputs)):
        for s in specs:
            where = f"{kind} {s.name!r}"
            if s.shape is None:
                return f"{where} does not declare its dimensions"
            if not s.shape:
                return f"{where} is a scalar"
            first = s.shape[0]
            if not dynamic(first):
                return f"{where} has the fixed first dimension {first} (shape {_show(s.shape)})"
            if isinstance(first, str) and not _UNKNOWN_DIM.fullmatch(first):
                named.add(first)
                if first in s.shape[1:]:
                    return f"{where} uses its first dimension {first!r} on another axis (shape {_show(s.shape)})"
            else:
                unnamed.append(where)
    if len(named) > 1:
        return f"its first dimensions have different names {sorted(named)}"
    if named and unnamed:
        return f"{unnamed[0]} has an unnamed first dimension, others the named one {next(iter(named))!r}"
    return None


def _asarray(value: Any, spec: TensorSpec) -> np.ndarray:
    try:
        return np.asarray(value)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise SchemaError(f"cannot be read as an array: {exc}", field=spec.name) from None


def is_column_input(spec: TensorSpec) -> bool:
    """Whether a model input takes one value per row: shape ``[N]`` or ``[N, 1]`` with a
    dynamic first dimension (``-1`` or a name such as ``"batch"``)."""
    shape = spec.shape
    if shape is None or len(shape) not in (1, 2):
        return False
    return (shape[0] == -1 or isinstance(shape[0], str)) and shape[1:] in ((), (1,))


class NamedTensors:
    """Inputs matched by name onto the arguments a model declares without shapes
    (TorchScript ``forward(self, a, b)``): a dict of arrays, one per argument; a model of
    one argument also takes an array."""

    kind = "named"
    records = False

    def __init__(self, names: Sequence[str]) -> None:
        self.input_names = tuple(names)

    def __repr__(self) -> str:
        return f"NamedTensors({list(self.input_names)})"

    def to_dict(self) -> None:
        return None

    def one(self, record: Any, opts: SchemaOptions) -> Any:
        if not isinstance(record, Mapping):
            return self._array(record).one(record, opts)
        _check_names(record, self.input_names, opts, None, "input")
        return NoSchema().one({n: record[n] for n in self.input_names}, opts)

    def many(self, records: Any, opts: SchemaOptions) -> Any:
        if not isinstance(records, Mapping):
            return self._array(records).many(records, opts)
        _check_names(records, self.input_names, opts, None, "input")
        return NoSchema().many({n: records[n] for n in self.input_names}, opts)

    def _array(self, value: Any) -> NoSchema:
        if len(self.input_names) != 1:
            raise SchemaError(
                f"the model takes several inputs {list(self.input_names)}: pass a dict of arrays by name,"
                f" got {_describe(value)}"
            )
        return NoSchema()


class NoSchema:
    """No declared schema: inputs are taken as arrays, with the batch on axis 0.

    ``mappings=False`` (a model that declares no input names) refuses dicts: nothing
    could tell which value goes where.
    """

    kind = "none"
    records = False

    def __init__(self, mappings: bool = True) -> None:
        self.mappings = mappings

    def _refuse(self, value: Any) -> None:
        if self.mappings:
            return
        if isinstance(value, list | tuple) and value:
            value = value[0]  # a list of records
        if isinstance(value, Mapping) or callable(getattr(value, "model_dump", None)):
            raise SchemaError(
                "the model declares no input names, so a record (dict) cannot be matched to its"
                " inputs: save the model with input_schema= (a pydantic model whose fields are"
                " in the model's column order), or pass an array"
            )

    def one(self, record: Any, opts: SchemaOptions) -> Any:
        batch = self._one(record, opts)
        try:
            _check_loose(batch, opts)
        except SchemaError as exc:
            exc.index = None
            raise
        return batch

    def many(self, records: Any, opts: SchemaOptions) -> Any:
        _no_batch_axis(records)
        batch = self._many(records, opts)
        _check_loose(batch, opts)
        check_rows(n_rows(batch), opts)
        return batch

    def _one(self, record: Any, opts: SchemaOptions) -> Any:
        if isinstance(record, np.ndarray):
            return record[None]
        self._refuse(record)
        if isinstance(record, Mapping):
            return {k: _loose_array(v, k)[None] for k, v in record.items()}
        return _loose_array([record], None)

    def _many(self, records: Any, opts: SchemaOptions) -> Any:
        if isinstance(records, np.ndarray):
            return records
        if type(records).__module__.startswith("pandas"):
            if hasattr(records, "columns"):
                _unique_columns(records)
            return records
        self._refuse(records)
        if isinstance(records, Mapping):
            return {k: _loose_array(v, k) for k, v in records.items()}
        return _loose_array(records, None)

    def to_dict(self) -> None:
        return None
