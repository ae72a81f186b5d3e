"""Schemas before their split into :mod:`~embedml.schema.limits`,
:mod:`~embedml.schema.tensor` and :mod:`~embedml.schema.record`: import them from
:mod:`embedml.schema`. Kept so that ``embedml.schema.core`` still imports."""

from .limits import (
    SchemaOptions,
    cast_array,
    check_array,
    check_rows,
    name_difference,
)
from .record import (
    ColumnInputs,
    FieldSpec,
    NamedRecords,
    RecordSchema,
    Schema,
    record_schema_for,
    schema_from_dict,
    schema_to_dict,
)
from .tensor import (
    NamedTensors,
    NoSchema,
    TensorSchema,
    TensorSpec,
    dynamic,
    is_column_input,
    not_row_wise,
)

__all__ = [
    "ColumnInputs",
    "FieldSpec",
    "NamedRecords",
    "NamedTensors",
    "NoSchema",
    "RecordSchema",
    "Schema",
    "SchemaOptions",
    "TensorSchema",
    "TensorSpec",
    "cast_array",
    "check_array",
    "check_rows",
    "dynamic",
    "is_column_input",
    "name_difference",
    "not_row_wise",
    "record_schema_for",
    "schema_from_dict",
    "schema_to_dict",
]
