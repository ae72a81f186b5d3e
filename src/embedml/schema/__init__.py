"""The schema layer: what a model's inputs and outputs must look like.

Record schemas (named, typed fields of one record), tensor schemas (one :class:`TensorSpec`
per model input or output), the limits every input meets (NaN/inf, sizes), synthetic inputs
for warm-up, reference profiles for drift, and the output table layout. Imports only
:mod:`embedml.errors` and :mod:`embedml.tensors`.
"""

from .core import (
    ColumnInputs,
    FieldSpec,
    NamedRecords,
    NamedTensors,
    NoSchema,
    RecordSchema,
    Schema,
    SchemaOptions,
    TensorSchema,
    TensorSpec,
    cast_array,
    check_array,
    check_rows,
    dynamic,
    is_column_input,
    name_difference,
    not_row_wise,
    record_schema_for,
    schema_from_dict,
    schema_to_dict,
)

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
