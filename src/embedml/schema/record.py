"""Record schemas: named, typed fields of one record (:class:`FieldSpec`,
:class:`RecordSchema`, from a pydantic model), records fed to a model by column
(:class:`ColumnInputs`, :class:`NamedRecords`), and the conversion of any schema to and from
the JSON kept in a manifest (:func:`schema_to_dict`, :func:`schema_from_dict`)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional

import numpy as np

from ..errors import SchemaError
from .limits import (
    _INT64_EDGE,
    SchemaOptions,
    _abs,
    _all_finite,
    _as_record,
    _big_int,
    _check_loose,
    _check_names,
    _describe,
    _is_value,
    _loose_array,
    _max,
    _no_batch_axis,
    _plain,
    _safe_repr,
    _safe_str,
    _unique_columns,
    cast_array,
    check_array,
    check_rows,
)
from .tensor import (
    NamedTensors,
    NoSchema,
    TensorSchema,
    TensorSpec,
)

__all__ = [
    "ColumnInputs",
    "FieldSpec",
    "NamedRecords",
    "RecordSchema",
    "Schema",
    "record_schema_for",
    "schema_from_dict",
    "schema_to_dict",
]


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


def _interval(f: FieldSpec) -> str:
    """The field's bounds in interval notation: ``(`` / ``)`` for an exclusive bound, so
    ``gt=0`` reads ``(0, inf)`` and ``ge=0, le=1`` reads ``[0, 1]``."""
    low, opening = ("-inf", "(") if f.minimum is None else (f.minimum, "[")
    if f.exclusive_minimum is not None:
        low, opening = f.exclusive_minimum, "("
    high, closing = ("inf", ")") if f.maximum is None else (f.maximum, "]")
    if f.exclusive_maximum is not None:
        high, closing = f.exclusive_maximum, ")"
    return f"{opening}{low}, {high}{closing}"


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
                raise SchemaError(
                    f"value {_plain(m[i, j])!r} is out of range {_interval(f)}",
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
