"""The schema layer: what a model's inputs and outputs must look like.

* :mod:`~embedml.schema.limits`: the limits every input meets (batch size, NaN/inf, string
  length, lossless casts);
* :mod:`~embedml.schema.tensor`: tensor schemas (one :class:`TensorSpec` per model input or
  output) and inputs by name without a declared schema;
* :mod:`~embedml.schema.record`: record schemas (named, typed fields of one record) and the
  JSON form of every schema in a manifest;
* synthetic inputs for warm-up (:mod:`~embedml.schema.synthetic`), reference profiles for
  drift (:mod:`~embedml.schema.profile`), and the output table layout
  (:mod:`~embedml.schema.frames`).

Imports only :mod:`embedml.errors` and :mod:`embedml.tensors`. The rules:

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
