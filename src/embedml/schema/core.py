"""Input and output schemas, and their conversion to and from arrays.

Two kinds of schema travel with a version (as JSON in its manifest, so a fresh process
enforces them without importing the code that saved the model):

* a **record schema**, from a pydantic model describing one record: its fields, in order,
  become the columns of the feature matrix;
* a **tensor schema**, one :class:`TensorSpec` per model input (name, dtype, shape with
  ``-1`` for dynamic dimensions).

Rules (see ``docs/concepts.md``): a missing field takes its default when the pydantic model
gives it one, else is an error; an unknown field is an error unless ``allow_extra``; only lossless casts are applied silently (int -> float, narrower or
wider ints and floats when every value fits); anything else raises :class:`SchemaError`
naming the field or tensor, the record index, what was expected and what came. With
``strict=False`` numeric strings, bools and integral floats are also converted.
Batches are checked column by column with numpy, not one pydantic object per row. Outputs
of a record output schema are checked by the same rules (``strict`` and ``allow_nan`` of the
load) before they become instances of the output model.
"""

from __future__ import annotations

import math
import re
import reprlib
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional

import numpy as np

from ..errors import SchemaError
from ..tensors import n_rows

__all__ = [
    "ColumnInputs",
    "FieldSpec",
    "NamedRecords",
    "NamedTensors",
    "NoSchema",
    "RecordSchema",
    "SchemaOptions",
    "Schema",
    "TensorSchema",
    "TensorSpec",
    "cast_array",
    "check_array",
    "dynamic",
    "not_row_wise",
    "check_rows",
    "is_column_input",
    "name_difference",
    "record_schema_for",
    "schema_from_dict",
    "schema_to_dict",
]

_DTYPES = {
    "float16", "float32", "float64", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "bool", "complex64", "complex128", "str", "object",
}  # fmt: skip


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
_min = np.minimum.reduce
_abs = np.abs


def _all_finite(a: np.ndarray) -> bool:
    """True when a float array holds no NaN nor infinity (False may be a false alarm: a sum
    that overflows; callers then run the exact check)."""
    # One reduction in the common case; a NaN or an inf makes it non-finite. On large
    # float32 arrays max and min (SIMD, NaN-propagating) beat numpy's pairwise float32 sum.
    # On a few values (one row) a Python sum of the values as floats beats a ufunc call.
    # (Not a BLAS dot: that releases the GIL, and getting it back costs a thread switch.)
    size = a.size
    if size <= 32:
        return math.isfinite(sum(a.ravel().tolist()))
    if size >= 8192 and a.dtype.itemsize == 4:
        return math.isfinite(_max(a, axis=None)) and math.isfinite(_min(a, axis=None))
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


# ---------------------------------------------------------------- record schemas

_NUMBER_TYPES = frozenset(
    {
        float,
        int,
        np.float64,
        np.float32,
        np.float16,
        np.int64,
        np.int32,
        np.int16,
        np.int8,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
    }
)
_INT_TYPES = frozenset(
    {int, np.int64, np.int32, np.int16, np.int8, np.uint8, np.uint16, np.uint32, np.uint64}
)
_KIND_TYPES = {
    "number": _NUMBER_TYPES,
    "integer": _INT_TYPES,
    "boolean": frozenset({bool, np.bool_}),
    "string": frozenset({str}),
}
_KIND_PY = {"number": float, "integer": int, "boolean": bool, "string": str}


@dataclass(frozen=True)
class FieldSpec:
    """One field of a record schema, in the portable form stored in manifests.

    ``has_default`` / ``default``: the value a record that leaves the field out gets (a
    pydantic ``x: int = 3``); stored as ``"default"`` in the manifest only when there is one.
    """

    name: str
    kind: Literal["number", "integer", "boolean", "string"]
    nullable: bool = False
    enum: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    has_default: bool = False
    default: Any = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind}
        for key in (
            "nullable",
            "enum",
            "minimum",
            "maximum",
            "exclusive_minimum",
            "exclusive_maximum",
        ):
            value = getattr(self, key)
            if value is not None and value is not False:  # a bound of 0 is kept
                d[key] = list(value) if key == "enum" else value
        if self.has_default:
            d["default"] = self.default
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FieldSpec:
        kwargs = dict(d)
        if kwargs.get("enum") is not None:
            kwargs["enum"] = tuple(kwargs["enum"])
        if "default" in kwargs:
            kwargs["has_default"] = True
        return cls(**kwargs)

    def check_default(self) -> None:
        """Raise :class:`SchemaError` when the default breaks the field's own type, bounds
        or enum (pydantic does not check defaults; embedml refuses them when saving)."""
        if not self.has_default:
            return
        value = self.default
        problem = None
        if value is None:
            problem = None if self.nullable else "is None but the field is not Optional"
        elif type(value) not in _KIND_TYPES[self.kind]:
            problem = f"is not {'an' if self.kind == 'integer' else 'a'} {self.kind}"
        elif self.enum and value not in self.enum:
            problem = f"is not one of {list(self.enum)}"
        elif self.kind in ("number", "integer") and not (
            (self.minimum is None or value >= self.minimum)
            and (self.maximum is None or value <= self.maximum)
            and (self.exclusive_minimum is None or value > self.exclusive_minimum)
            and (self.exclusive_maximum is None or value < self.exclusive_maximum)
        ):
            problem = "is outside the field's bounds"
        if problem is not None:
            raise SchemaError(f"the default {value!r} {problem}", field=self.name)

    def coerce(self, value: Any, index: int | None, strict: bool) -> Any:
        """Slow path for one value whose type is not already allowed: convert or raise."""
        if value is None and self.nullable:
            return np.nan if self.kind == "number" else None
        if not strict:
            try:
                if self.kind == "number" and isinstance(value, bool | str | np.bool_):
                    return float(value)
                if (
                    self.kind == "integer"
                    and isinstance(value, float | str | np.floating)
                    and float(value).is_integer()
                ):
                    return int(float(value))
                if self.kind == "boolean" and value in (0, 1, "true", "false", "True", "False"):
                    return value in (1, "true", "True")
            except (TypeError, ValueError):
                pass
        if self.kind == "number" and isinstance(value, np.floating | np.integer):
            return float(value)
        if (
            self.kind == "integer"
            and isinstance(value, float)
            and value.is_integer()
            and not strict
        ):
            return int(value)
        expected = (
            "a number"
            if self.kind == "number"
            else f"{'an' if self.kind == 'integer' else 'a'} {self.kind}"
        )
        if self.nullable:
            expected += " or null"
        raise SchemaError(
            f"expected {expected}, got {_describe(value)}",
            field=self.name,
            index=index,
            expected=self.kind,
            got=type(value).__name__,
        )

    def py_type(self) -> Any:
        t: Any = Literal[self.enum] if self.enum else _KIND_PY[self.kind]  # type: ignore[valid-type]
        return Optional[t] if self.nullable else t  # noqa: UP045 - runtime type construction


def _field_from_json(name: str, prop: Mapping[str, Any], defs: Mapping[str, Any]) -> FieldSpec:
    prop = dict(prop)
    has_default = "default" in prop  # read before a $ref's definition is merged in
    if "$ref" in prop:
        prop = {**defs[prop.pop("$ref").rsplit("/", 1)[-1]], **prop}
    nullable = False
    if "anyOf" in prop:
        options = [o for o in prop["anyOf"] if o.get("type") != "null"]
        nullable = len(options) < len(prop["anyOf"])
        if len(options) != 1:
            raise SchemaError(
                f"unions of several types are not supported (got {prop['anyOf']})", field=name
            )
        inner = options[0]
        if "$ref" in inner:
            inner = {**defs[inner["$ref"].rsplit("/", 1)[-1]]}
        prop = {**{k: v for k, v in prop.items() if k != "anyOf"}, **inner}
    enum = prop.get("enum")
    if "const" in prop:
        enum = [prop["const"]]
    kind = prop.get("type")
    if kind is None and enum:
        kind = "string" if all(isinstance(e, str) for e in enum) else "number"
    if kind not in _KIND_TYPES:
        raise SchemaError(
            f"type {kind!r} is not supported in a record schema; use float, int, bool, str or Literal",
            field=name,
        )
    return FieldSpec(
        name=name, kind=kind, nullable=nullable, enum=tuple(enum) if enum else None,
        minimum=prop.get("minimum"), maximum=prop.get("maximum"),
        exclusive_minimum=prop.get("exclusiveMinimum"), exclusive_maximum=prop.get("exclusiveMaximum"),
        has_default=has_default, default=prop.get("default"),
    )  # fmt: skip


class RecordSchema:
    """A schema for one record: named, typed fields that form one row of the feature matrix.

    Build it from a pydantic model class (:meth:`from_model`) or from its stored form
    (:meth:`from_dict`). All-numeric schemas give a ``float64`` matrix; a schema with any
    string field gives an ``object`` matrix.
    """

    kind = "record"
    #: Takes records (dicts) matched by field name; ``names`` lists them.
    records = True

    def __init__(self, fields: Sequence[FieldSpec], title: str = "Record") -> None:
        if not fields:
            raise SchemaError("a record schema needs at least one field")
        self.fields = tuple(fields)
        self.title = title
        self.names = tuple(f.name for f in self.fields)
        self._index = {n: i for i, n in enumerate(self.names)}
        self._fast = tuple((f.name, _KIND_TYPES[f.kind], f) for f in self.fields)
        numeric = all(f.kind != "string" for f in self.fields)
        self.dtype = np.dtype(np.float64) if numeric else np.dtype(object)
        lo = [
            max(x for x in (f.minimum, f.exclusive_minimum, -np.inf) if x is not None)
            for f in self.fields
        ]
        hi = [
            min(x for x in (f.maximum, f.exclusive_maximum, np.inf) if x is not None)
            for f in self.fields
        ]
        self._bounded = any(np.isfinite(lo + hi))
        # Bounds apply to numeric fields only; an object matrix (schema with a string field)
        # compares just those columns, as floats.
        self._ranged = [j for j, f in enumerate(self.fields) if f.kind in ("number", "integer")]
        self._lo, self._hi = np.array(lo), np.array(hi)
        self._excl_lo = np.array([f.exclusive_minimum is not None for f in self.fields])
        self._excl_hi = np.array([f.exclusive_maximum is not None for f in self.fields])
        self._enums = [(j, f) for j, f in enumerate(self.fields) if f.enum]
        self._model: Any = None
        for f in self.fields:
            f.check_default()
        #: record values of the fields a record may leave out (pydantic defaults)
        self._defaults = {f.name: f.default for f in self.fields if f.has_default}

    @classmethod
    def from_model(cls, model: type) -> RecordSchema:
        """Read the fields of a pydantic model class (in declaration order), with their
        defaults. Raises :class:`SchemaError` for a field with a ``default_factory`` (a
        manifest stores values, not code) or a default that breaks its own field."""
        for name, info in getattr(model, "model_fields", {}).items():
            if info.default_factory is not None:
                raise SchemaError(
                    "has a default_factory; embedml stores defaults as values in the "
                    "manifest: give it default=<value> instead",
                    field=name,
                )
        js = model.model_json_schema()  # type: ignore[attr-defined]
        defs = js.get("$defs", {})
        props = js.get("properties", {})
        return cls(
            [_field_from_json(n, p, defs) for n, p in props.items()],
            title=js.get("title", model.__name__),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "record", "title": self.title, "fields": [f.to_dict() for f in self.fields]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RecordSchema:
        return cls([FieldSpec.from_dict(f) for f in d["fields"]], title=d.get("title", "Record"))

    def __repr__(self) -> str:
        return f"RecordSchema({', '.join(f'{f.name}: {f.kind}' for f in self.fields)})"

    def in_order(self, names: Sequence[str]) -> RecordSchema:
        """The same fields in the order of ``names`` (the model's own column order), so the
        matrix it builds has each field in the column the model reads it from. ``names``
        must hold exactly the field names (see :func:`name_difference`)."""
        if tuple(names) == self.names:
            return self
        by_name = {f.name: f for f in self.fields}
        return RecordSchema([by_name[n] for n in names], title=self.title)

    # -- inputs
    def one(self, record: Any, opts: SchemaOptions) -> np.ndarray:
        """Validate one record (dict, pydantic instance or 1-D array) into a 1-row matrix."""
        try:
            try:
                m = self._one(record, opts)
            except OverflowError:
                raise self._too_large([record]) from None
            # The common case in one pass over a few floats: all finite (NaN and inf make
            # the sum non-finite) and none as large as an int beyond int64 could be.
            if m.dtype.kind == "f" and sum(map(abs, m.ravel().tolist())) < _INT64_EDGE:
                return m
            self._check_ints(m, [record])
            self._check_limits(m, opts)
            return m
        except SchemaError as exc:
            exc.index = None  # a single record has no batch index
            raise

    def _check_ints(self, m: np.ndarray, rows: Any) -> None:
        """Refuse a Python int beyond int64 in a numeric field (numpy would round it to a
        float, or leave it for the model to fail on). Looks at the values only when the
        matrix holds a magnitude that large (one vectorised pass) or Python objects."""
        if m.dtype.kind == "f":
            if m.size <= 32:
                if sum(map(abs, m.ravel().tolist())) < _INT64_EDGE:  # NaN compares False
                    return
            elif _max(_abs(m), axis=None) < _INT64_EDGE:
                return
        numeric = [f for f in self.fields if f.kind in ("number", "integer")]
        if hasattr(rows, "columns"):  # a DataFrame: Python ints live in object columns
            rows = rows[[f.name for f in numeric if f.name in rows.columns]]
            rows = rows.to_dict("records") if any(d.kind == "O" for d in rows.dtypes) else None
        if not isinstance(rows, list):  # an array holds no Python ints (object arrays
            return  # are refused by the cast to float64)
        for i, r in enumerate(rows):
            if isinstance(r, Mapping):
                for f in numeric:
                    if _big_int(r.get(f.name)):
                        raise SchemaError(
                            f"the integer {_safe_repr(r[f.name])} is outside the int64 range",
                            field=f.name, index=i, expected="int64", got="int",
                        )  # fmt: skip

    def _too_large(self, rows: Any) -> SchemaError:
        """The error for an int beyond float64 (numpy raises a bare ``OverflowError``)."""
        if hasattr(rows, "columns"):  # a DataFrame
            rows = rows.to_dict("records")
        if isinstance(rows, list):
            for i, r in enumerate(rows):
                for f in self.fields:
                    v = r.get(f.name) if isinstance(r, Mapping) else None
                    if isinstance(v, int) and abs(v) > sys.float_info.max:
                        return SchemaError(
                            "the number is too large for float64", field=f.name, index=i
                        )
        return SchemaError("a number is too large for float64")

    def _check_limits(self, m: np.ndarray, opts: SchemaOptions) -> None:
        if opts.allow_nan and opts.max_string_length is None:
            return
        if m.dtype.kind == "f" and _all_finite(m):
            return  # the common case in one vectorised pass; per-field checks find culprits
        for j, f in enumerate(self.fields):
            if f.kind == "string" and opts.max_string_length is not None:
                check_array(m[:, j], f.name, opts)
            elif f.kind == "number" and not opts.allow_nan:
                check_array(m[:, j], f.name, opts, nullable=f.nullable)

    def _one(self, record: Any, opts: SchemaOptions) -> np.ndarray:
        if type(record) is not dict:
            if isinstance(record, np.ndarray):
                if record.ndim != 1:
                    raise SchemaError(
                        f"expected one record (1-D array of {len(self.fields)} values), got an array of shape {record.shape}"
                    )
                return self._from_array(record[None, :], opts)
            record = self._as_mapping(record, None)
        values = []
        strict = opts.strict
        try:
            for name, allowed, spec in self._fast:
                v = record[name]
                values.append(v if type(v) in allowed else spec.coerce(v, None, strict))
        except KeyError:
            if not self._defaults:
                self._missing(record, None)
            return self._one(self._with_defaults(record, None), opts)
        if len(record) != len(self._fast) and not opts.allow_extra:
            self._unknown(record, None)
        m = np.array([values], dtype=self.dtype)
        self._check_values(m, 0)
        return m

    def many(self, records: Any, opts: SchemaOptions) -> np.ndarray:
        """Validate a batch (list of records, 2-D array or DataFrame) into a matrix."""
        _no_batch_axis(records)
        if not isinstance(records, Mapping) and hasattr(records, "__len__"):
            check_rows(len(records), opts)  # before any per-row work
        try:
            m = self._many(records, opts)
        except OverflowError:
            raise self._too_large(records) from None
        self._check_ints(m, records)
        check_rows(len(m), opts)
        self._check_limits(m, opts)
        return m

    def _many(self, records: Any, opts: SchemaOptions) -> np.ndarray:
        if isinstance(records, np.ndarray):
            return self._from_array(records, opts)
        if type(records).__module__.startswith("pandas"):
            return self._from_frame(records, opts)
        if (
            isinstance(records, Mapping)
            or not isinstance(records, Sequence | np.ndarray)
            and not hasattr(records, "__iter__")
        ):
            raise SchemaError(
                "predict_batch expects a list of records, a 2-D array or a DataFrame; got one record, use predict()"
            )
        rows = [r if type(r) is dict else self._as_mapping(r, i) for i, r in enumerate(records)]
        if not rows:
            raise SchemaError("the batch is empty")
        cols = []
        for name, allowed, spec in self._fast:
            try:
                col = [r[name] for r in rows]
            except KeyError:
                if self._defaults:
                    filled = [self._with_defaults(r, i) for i, r in enumerate(rows)]
                    return self._many(filled, opts)
                for i, r in enumerate(rows):
                    if name not in r:
                        self._missing(r, i)
                raise
            if not all(type(v) in allowed for v in col):
                col = [
                    v if type(v) in allowed else spec.coerce(v, i, opts.strict)
                    for i, v in enumerate(col)
                ]
            cols.append(col)
        if not opts.allow_extra:
            n = len(self._fast)
            for i, r in enumerate(rows):
                if len(r) != n:
                    self._unknown(r, i)
        m = np.empty((len(rows), len(cols)), dtype=self.dtype)
        for j, col in enumerate(cols):
            m[:, j] = col
        self._check_values(m, None)
        return m

    def _with_defaults(self, record: Mapping[str, Any], index: int | None) -> dict[str, Any]:
        """``record`` with the defaults of the fields it leaves out; a missing field without
        a default raises :class:`SchemaError`."""
        filled = {**{k: v for k, v in self._defaults.items() if k not in record}, **record}
        if any(n not in filled for n in self.names):
            self._missing(filled, index)
        return filled

    def _as_mapping(self, record: Any, index: int | None) -> Mapping[str, Any]:
        if isinstance(record, Mapping):
            # A plain copy: a defaultdict or Counter would answer for fields it does not have.
            return dict(record)
        dump = getattr(record, "model_dump", None)
        if callable(dump):
            return dump()
        raise SchemaError(
            f"expected a record (dict with fields {list(self.names)}), got {_describe(record)}",
            index=index,
        )

    def _missing(self, record: Mapping[str, Any], index: int | None) -> None:
        name = next(n for n in self.names if n not in record)
        unknown = [str(k) for k in record if k not in self._index]
        hint = (
            f" (got unknown field(s) {unknown}; the fields are {list(self.names)})"
            if unknown
            else ""
        )
        raise SchemaError(
            f"required field is missing{hint}", field=name, index=index, expected=self.kind
        )

    def _unknown(self, record: Mapping[str, Any], index: int | None) -> None:
        # keys of any type (ints and strings mixed do not sort), shown bounded
        extra = sorted((_safe_repr(k), _safe_str(k)) for k in record if k not in self._index)
        raise SchemaError(
            f"unknown field(s) [{', '.join(r for r, _ in extra)}]; expected only {list(self.names)} (load with allow_extra=True to ignore them)",
            field=extra[0][1] if extra else None, index=index,
        )  # fmt: skip

    def _from_array(self, a: np.ndarray, opts: SchemaOptions) -> np.ndarray:
        if a.ndim != 2 or a.shape[1] != len(self.fields):
            raise SchemaError(
                f"expected a 2-D array with {len(self.fields)} columns ({', '.join(self.names)}), got shape {a.shape}"
            )
        if self.dtype.kind == "f":
            try:
                m = cast_array(a, self.dtype, name="(array)", strict=opts.strict)
            except SchemaError as exc:
                raise SchemaError(
                    f"{exc.message}; the columns are {list(self.names)}",
                    expected=exc.expected,
                    got=exc.got,
                ) from None
            for j, f in enumerate(self.fields):
                if f.kind == "integer" and not np.all(np.floor(m[:, j]) == m[:, j]):
                    i = int(np.argmax(np.floor(m[:, j]) != m[:, j]))
                    raise SchemaError(
                        f"expected an integer, got {_plain(m[i, j])!r}", field=f.name, index=i
                    )
                if f.kind == "boolean" and not np.isin(m[:, j], (0, 1)).all():
                    i = int(np.argmin(np.isin(m[:, j], (0, 1))))
                    raise SchemaError(
                        f"expected a boolean (0 or 1), got {_plain(m[i, j])!r}",
                        field=f.name,
                        index=i,
                    )
        else:
            m = a.astype(object)
            for j, (_, allowed, spec) in enumerate(self._fast):
                for i, v in enumerate(m[:, j]):
                    if type(v) not in allowed:
                        m[i, j] = spec.coerce(v, i, opts.strict)
        self._check_values(m, None)
        return m

    def _from_frame(self, df: Any, opts: SchemaOptions) -> np.ndarray:
        _unique_columns(df)
        missing = [n for n in self.names if n not in df.columns and n not in self._defaults]
        if missing:
            raise SchemaError(
                f"required column is missing (columns: {list(df.columns)})", field=missing[0]
            )
        extra = [c for c in df.columns if c not in self._index]
        if extra and not opts.allow_extra:
            raise SchemaError(
                f"unknown column(s) [{', '.join(map(_safe_repr, extra))}]; expected only {list(self.names)} (load with allow_extra=True to ignore them)",
                field=_safe_str(extra[0]),
            )
        m = np.empty((len(df), len(self.fields)), dtype=self.dtype)
        for j, (name, allowed, spec) in enumerate(self._fast):
            if name not in df.columns:  # a defaulted field
                default = self._defaults[name]
                m[:, j] = default if type(default) in allowed else spec.coerce(default, None, True)
                continue
            col = df[name].to_numpy()
            if col.dtype.kind in "fiu" and spec.kind in ("number", "integer"):
                if spec.kind == "integer" and col.dtype.kind == "f":
                    col = cast_array(col, np.dtype(np.int64), name=name, strict=opts.strict)
                m[:, j] = col
            else:
                m[:, j] = [
                    v if type(v) in allowed else spec.coerce(v, i, opts.strict)
                    for i, v in enumerate(col.tolist())
                ]
        self._check_values(m, None)
        return m

    def _check_values(self, m: np.ndarray, index: int | None) -> None:
        if self._bounded:
            vals = m
            if m.dtype.kind != "f":
                vals = np.full(m.shape, np.nan)
                vals[:, self._ranged] = m[:, self._ranged].astype(np.float64)
            with np.errstate(invalid="ignore"):
                low = np.where(self._excl_lo, vals <= self._lo, vals < self._lo)
                high = np.where(self._excl_hi, vals >= self._hi, vals > self._hi)
            bad = low | high
            if bad.any():
                i, j = (int(x) for x in np.argwhere(bad)[0])
                f = self.fields[j]
                # interval notation: "(" / ")" for exclusive bounds, so gt=0 reads "(0, ...]"
                left = (
                    f"({f.exclusive_minimum}"
                    if f.exclusive_minimum is not None
                    else f"[{f.minimum}"
                    if f.minimum is not None
                    else "(-inf"
                )
                right = (
                    f"{f.exclusive_maximum})"
                    if f.exclusive_maximum is not None
                    else f"{f.maximum}]"
                    if f.maximum is not None
                    else "inf)"
                )
                rng = f"{left}, {right}"
                raise SchemaError(
                    f"value {_plain(m[i, j])!r} is out of range {rng}",
                    field=f.name,
                    index=index if index is not None else i,
                    got=m[i, j],
                )
        for j, f in self._enums:
            col = m[:, j]
            ok = np.isin(col, np.array(f.enum, dtype=object)) | (
                np.array([v is None for v in col]) if f.nullable else False
            )
            if not ok.all():
                i = int(np.argmin(ok))
                raise SchemaError(
                    f"expected one of {list(f.enum)}, got {col[i]!r}",
                    field=f.name,
                    index=index if index is not None else i,
                    got=col[i],
                )

    # -- outputs
    def pydantic_model(self) -> type:
        """A pydantic model class rebuilt from the stored fields (cached)."""
        if self._model is None:
            from pydantic import Field, create_model

            defs: dict[str, Any] = {}
            for f in self.fields:
                bounds = {
                    "ge": f.minimum,
                    "le": f.maximum,
                    "gt": f.exclusive_minimum,
                    "lt": f.exclusive_maximum,
                }
                kwargs = {k: v for k, v in bounds.items() if v is not None}
                if f.has_default:
                    kwargs["default"] = f.default
                defs[f.name] = (f.py_type(), Field(**kwargs))
            self._model = create_model(self.title, **defs)
        return self._model

    def outputs(self, out: Any, n: int, opts: SchemaOptions | None = None) -> list[Any]:
        """Turn a batch of raw outputs into ``n`` validated instances of the output schema.

        Outputs meet the rules inputs meet (with the ``strict`` and ``allow_nan`` of
        ``opts``): no numeric strings for numbers, NaN only in Optional number fields, bounds
        and enums; a column of an array output reads as an array input does (integral
        floats for int fields, 0/1 for bool fields). Fields the outputs leave out take their
        defaults. Raises :class:`SchemaError` naming the field and row.
        """
        opts = opts or SchemaOptions()
        records = self._output_records(out, n)
        try:
            self.many(records, SchemaOptions(strict=opts.strict, allow_nan=opts.allow_nan))
        except SchemaError as exc:
            raise SchemaError(
                f"output does not match the output schema: {exc.message}",
                field=exc.field, index=exc.index, expected=exc.expected, got=exc.got,
            ) from None  # fmt: skip
        model = self.pydantic_model()
        return [model.model_validate(r) for r in records]  # checked above: cannot fail

    def _output_records(self, out: Any, n: int) -> list[dict[str, Any]]:
        """Raw outputs as ``n`` records of plain Python values (left-out defaults absent)."""
        fields = {f.name: f for f in self.fields}
        if isinstance(out, Mapping):
            missing = [k for k in self.names if k not in out and k not in self._defaults]
            if missing:
                raise SchemaError(
                    f"the model's outputs {list(out)} have no {missing[0]!r} for the output schema",
                    field=missing[0],
                )
            names = [k for k in self.names if k in out]
            cols = [_output_column(out[k], n, fields[k]) for k in names]
        elif isinstance(out, tuple):
            if len(out) != len(self.names):
                raise SchemaError(
                    f"the model returned {len(out)} outputs; the output schema has {len(self.names)} fields"
                )
            names = list(self.names)
            cols = [_output_column(o, n, f) for o, f in zip(out, self.fields)]
        else:
            a = np.asarray(out)
            names = list(self.names)
            if len(names) == 1 and (a.ndim == 1 or (a.ndim == 2 and a.shape[1] == 1)):
                cols = [_output_column(a, n, self.fields[0])]
            elif a.ndim == 2 and a.shape[1] == len(names):
                cols = [_output_column(a[:, j], n, f) for j, f in enumerate(self.fields)]
            else:
                raise SchemaError(
                    f"the model's output of shape {a.shape} does not map onto the output fields {list(self.names)}"
                )
        for name, col in zip(names, cols):
            if not isinstance(col, list) or len(col) != n:
                got = len(col) if isinstance(col, list) else "a scalar"
                raise SchemaError(
                    f"the model returned {got} values of {name!r} for {n} rows", field=name
                )
        return [dict(zip(names, row)) for row in zip(*cols)]


def _output_column(values: Any, n: int, f: FieldSpec) -> list[Any]:
    """One output column as Python values; an array column reads as array inputs do."""
    a = np.asarray(values)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a.reshape(len(a))
    if (
        a.dtype.kind == "f"
        and f.kind == "integer"
        and np.isfinite(a).all()
        and (a == np.floor(a)).all()
    ):
        a = a.astype(np.int64)
    elif a.dtype.kind in "fiu" and f.kind == "boolean" and np.isin(a, (0, 1)).all():
        a = a.astype(bool)
    return a.tolist()


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
                return self._check_many(
                    {self._spec.name: _asarray(record[self._spec.name], self._spec)[None]},
                    record,
                    opts,
                )[self._spec.name]
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
                return self._check_many(
                    {self._spec.name: _asarray(records[self._spec.name], self._spec)},
                    records,
                    opts,
                )[self._spec.name]
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


def _needs_limits(batch: Any, opts: SchemaOptions) -> bool:
    """False when one checked array passes every limit but ``max_batch_rows`` (the
    per-call fast path: a float array with no NaN/inf, or NaN allowed; ints; bools)."""
    if type(batch) is not np.ndarray:
        return True
    kind = batch.dtype.kind
    if kind == "f":
        return not opts.allow_nan and not _all_finite(batch)
    return kind not in "iub"


def _asarray(value: Any, spec: TensorSpec) -> np.ndarray:
    try:
        return np.asarray(value)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise SchemaError(f"cannot be read as an array: {exc}", field=spec.name) from None


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


def record_schema_for(specs: Sequence[TensorSpec], title: str = "Record") -> RecordSchema:
    """The record schema of a model with one ``[N, 1]`` tensor per column: a field per
    input, typed by the input's element type."""

    def kind(dtype: str) -> Any:
        if dtype in ("str", "object"):
            return "string"
        if dtype == "bool":
            return "boolean"
        return "integer" if dtype.startswith(("int", "uint")) else "number"

    return RecordSchema([FieldSpec(s.name, kind(s.dtype)) for s in specs], title=title)


def is_column_input(spec: TensorSpec) -> bool:
    """Whether a model input takes one value per row: shape ``[N]`` or ``[N, 1]`` with a
    dynamic first dimension (``-1`` or a name such as ``"batch"``)."""
    shape = spec.shape
    if shape is None or len(shape) not in (1, 2):
        return False
    return (shape[0] == -1 or isinstance(shape[0], str)) and shape[1:] in ((), (1,))


class ColumnInputs(RecordSchema):
    """Records matched by name onto a model that takes one ``[N, 1]`` (or ``[N]``) tensor
    per column, as skl2onnx writes a ``ColumnTransformer`` pipeline: each field feeds the
    input of its name, cast to that input's element type (strings included).

    Records, lists of records and DataFrames are validated by the record schema (declared,
    or made from the inputs' types); a dict of arrays (``{"age": [..], "city": [..]}``)
    is matched by name like any multi-input tensor model.
    """

    def __init__(self, record: RecordSchema, specs: Sequence[TensorSpec]) -> None:
        ordered = record.in_order([s.name for s in specs])
        super().__init__(ordered.fields, title=ordered.title)
        self.tensors = TensorSchema(specs)

    def __repr__(self) -> str:
        return f"ColumnInputs({', '.join(f'{f.name}: {f.kind}' for f in self.fields)})"

    def one(self, record: Any, opts: SchemaOptions) -> dict[str, np.ndarray]:
        if isinstance(record, Mapping) and not all(_is_value(v) for v in record.values()):
            return self.tensors.one(record, opts)  # one example per input tensor
        return self._split(super().one(record, opts))

    def many(self, records: Any, opts: SchemaOptions) -> dict[str, np.ndarray]:
        if isinstance(records, Mapping):
            specs = {s.name: s for s in self.tensors.specs}
            columns = {k: _as_column(v, specs[k]) if k in specs else v for k, v in records.items()}
            return self.tensors.many(columns, opts)
        return self._split(super().many(records, opts))

    def _split(self, m: np.ndarray) -> dict[str, np.ndarray]:
        """The validated matrix (columns in the inputs' order) -> one tensor per input."""
        out = {}
        for j, spec in enumerate(self.tensors.specs):
            col = m[:, j]
            dtype = spec.np_dtype
            if col.dtype != dtype:
                if col.dtype.kind == "O":  # a column of a mixed (object) matrix
                    col = np.array(col.tolist())
                if dtype.kind == "b":
                    col = col.astype(bool)  # the record schema checked booleans
                elif col.dtype != dtype:
                    # integer fields hold whole numbers (checked), so a float64 matrix casts
                    col = cast_array(col, dtype, name=spec.name, strict=False)
            out[spec.name] = col.reshape(-1, 1) if len(spec.shape or ()) == 2 else col
        return out


def _as_column(value: Any, spec: TensorSpec) -> Any:
    """A 1-D column given for an ``[N, 1]`` input, as ``[N, 1]``."""
    a = np.asarray(value) if not isinstance(value, np.ndarray) else value
    return a.reshape(-1, 1) if a.ndim == 1 and len(spec.shape or ()) == 2 else a


class NamedRecords:
    """Records and DataFrames matched by name onto a model's feature names (scikit-learn's
    ``feature_names_in_``) when no record schema was declared. Values are passed as they
    come (the model checks their types); the model gets a DataFrame with its columns in
    its own order. Arrays are read like arrays: columns in the model's order.
    """

    kind = "named"
    records = True
    fields = None

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)

    def __repr__(self) -> str:
        return f"NamedRecords({list(self.names)})"

    def to_dict(self) -> None:
        return None

    def one(self, record: Any, opts: SchemaOptions) -> Any:
        if isinstance(record, np.ndarray):
            return NoSchema().one(record, opts)
        row = _as_record(record, None, self.names)
        _check_names(row, self.names, opts, None, "field")
        frame = _frame({n: [row[n]] for n in self.names})
        try:
            _check_loose(frame, opts)
        except SchemaError as exc:
            exc.index = None
            raise
        return frame

    def many(self, records: Any, opts: SchemaOptions) -> Any:
        if isinstance(records, np.ndarray):
            return NoSchema().many(records, opts)
        if type(records).__module__.startswith("pandas") and hasattr(records, "columns"):
            _check_names(list(records.columns), self.names, opts, None, "column")
            frame = records[list(self.names)]
        elif isinstance(records, Mapping):  # a dict of columns
            _check_names(records, self.names, opts, None, "column")
            frame = _frame({n: _loose_array(records[n], n) for n in self.names})
        else:
            if isinstance(records, str) or not isinstance(records, Sequence | Iterable):
                raise SchemaError(
                    "predict_batch expects a list of records, a DataFrame, a dict of columns or a 2-D array;"
                    f" got {_describe(records)}"
                )
            rows = [_as_record(r, i, self.names) for i, r in enumerate(records)]
            if not rows:
                raise SchemaError("the batch is empty")
            check_rows(len(rows), opts)
            for i, r in enumerate(rows):
                _check_names(r, self.names, opts, i, "field")
            frame = _frame({n: [r[n] for r in rows] for n in self.names})
        check_rows(len(frame), opts)
        _check_loose(frame, opts)
        return frame


def _frame(columns: dict[str, Any]) -> Any:
    import pandas as pd  # a model with feature_names_in_ was fitted on a DataFrame

    return pd.DataFrame(columns)


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


def _loose_array(value: Any, name: Any) -> np.ndarray:
    try:
        a = np.asarray(value)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise SchemaError(
            f"cannot be read as an array: {type(exc).__name__}: {str(exc)[:200]}",
            field=None if name is None else _safe_repr(name),
        ) from None
    _no_big_ints(a, name)
    if a.dtype == np.uint64 or (a.dtype.kind == "f" and a.size and not _max(_abs(a), axis=None) < _INT64_EDGE):
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


Schema = RecordSchema | TensorSchema | NamedRecords | NamedTensors | NoSchema


def schema_to_dict(schema: Any) -> dict[str, Any] | None:
    """The manifest form of a schema given at save time (pydantic class, TensorSpec(s), or None)."""
    if schema is None:
        return None
    if isinstance(schema, RecordSchema | TensorSchema):
        return schema.to_dict()
    if isinstance(schema, TensorSpec):
        return TensorSchema([schema]).to_dict()
    if isinstance(schema, Sequence) and schema and all(isinstance(s, TensorSpec) for s in schema):
        return TensorSchema(list(schema)).to_dict()
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        return RecordSchema.from_model(schema).to_dict()
    raise SchemaError(
        f"a schema must be a pydantic model class, a TensorSpec or a list of them; got {_describe(schema)}"
    )


def schema_from_dict(d: Mapping[str, Any] | None) -> RecordSchema | TensorSchema | None:
    """Rebuild a schema from its manifest form."""
    if d is None:
        return None
    if d.get("kind") == "record":
        return RecordSchema.from_dict(d)
    if d.get("kind") == "tensors":
        return TensorSchema.from_dict(d)
    raise SchemaError(f"unknown schema kind {d.get('kind')!r} in manifest")
