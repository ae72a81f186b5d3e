"""Input and output schemas, enforced by a handle on a real saved model.

Every bad input must raise SchemaError naming the field (or tensor) and, in a batch, the
record index, and the model must not be called: the models here are CountingModel objects
saved with joblib, whose loaded copies count their calls.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Literal, Optional

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel, Field

import embedml
from embedml.schema import RecordSchema, SchemaOptions, TensorSchema, cast_array
from helpers_models import (
    CALLS,
    CountingModel,
    RowEcho,
    onnx_two_inputs,
    sk_logreg,
    skl2onnx_logreg,
)


class Applicant(BaseModel):
    income: float = Field(ge=0)
    age: int = Field(ge=18, le=120)
    employed: bool
    region: Literal["north", "south"]
    debt: Optional[float] = None  # noqa: UP045 - the spelling users write


class Numeric(BaseModel):
    x: float
    n: int = Field(ge=0, le=10)
    flag: bool


GOOD = {"income": 1200.5, "age": 30, "employed": True, "region": "north", "debt": None}
GOOD_ECHO = "[1200.5, 30, True, 'north', nan]"


class Counted:
    """A saved CountingModel and a way to load it; ``calls`` is how often it really ran."""

    def __init__(self, store: embedml.ModelStore, schema: type, inner=None) -> None:
        self.tag = uuid.uuid4().hex
        self.store = store
        store.save(self.tag, CountingModel(self.tag, inner), input_schema=schema)

    @property
    def calls(self) -> int:
        return CALLS[self.tag]

    def load(self, **options) -> embedml.ModelHandle:
        return self.store.load(self.tag, **options)


@pytest.fixture
def applicant(store) -> Counted:
    return Counted(store, Applicant, RowEcho())


@pytest.fixture
def numeric(store) -> Counted:
    return Counted(store, Numeric)


# ---------------------------------------------------------------- the stored schema


def test_record_schema_from_pydantic():
    schema = RecordSchema.from_model(Applicant)
    assert schema.to_dict() == {
        "kind": "record",
        "title": "Applicant",
        "fields": [
            {"name": "income", "kind": "number", "minimum": 0},
            {"name": "age", "kind": "integer", "minimum": 18, "maximum": 120},
            {"name": "employed", "kind": "boolean"},
            {"name": "region", "kind": "string", "enum": ["north", "south"]},
            {"name": "debt", "kind": "number", "nullable": True, "default": None},
        ],
    }
    assert schema.names == ("income", "age", "employed", "region", "debt")
    assert schema.dtype == np.dtype(object)  # a string field: object matrix
    assert RecordSchema.from_model(Numeric).dtype == np.dtype(np.float64)
    again = RecordSchema.from_dict(schema.to_dict())
    assert again.to_dict() == schema.to_dict()


def test_unsupported_field_types_are_refused_at_save(store):
    class Nested(BaseModel):
        values: list[float]

    class Union(BaseModel):
        v: int | str

    for model in (Nested, Union):
        with pytest.raises(embedml.SchemaError):
            store.save("m", RowEcho(), input_schema=model)
    assert store.models() == []


# ---------------------------------------------------------------- good inputs of each kind


def test_record_inputs_of_every_kind(applicant):
    with applicant.load() as h:
        assert h.predict(GOOD) == GOOD_ECHO
        assert h.predict(Applicant(**GOOD)) == GOOD_ECHO
        # field order comes from the schema, not from the dict
        assert h.predict(dict(reversed(list(GOOD.items())))) == GOOD_ECHO
        batch = [GOOD, Applicant(**{**GOOD, "age": 41, "debt": 5.0}), {**GOOD, "region": "south"}]
        assert list(h.predict_batch(batch)) == [
            GOOD_ECHO,
            "[1200.5, 41, True, 'north', 5.0]",
            "[1200.5, 30, True, 'south', nan]",
        ]
        df = pd.DataFrame([{**GOOD, "debt": 1.5}] * 2)[
            ["region", "debt", "age", "employed", "income"]
        ]
        assert list(h.predict_batch(df)) == ["[1200.5, 30, True, 'north', 1.5]"] * 2
    assert applicant.calls == 5


def test_numeric_inputs_of_every_kind_build_the_same_matrix(numeric):
    records = [{"x": 0.5, "n": 3, "flag": True}, {"x": -2.0, "n": 10, "flag": False}]
    expected = [4.5, 8.0]  # the model sums the row: x + n + flag
    with numeric.load() as h:
        np.testing.assert_array_equal(h.predict_batch(records), expected)
        np.testing.assert_array_equal(h.predict_batch([Numeric(**r) for r in records]), expected)
        np.testing.assert_array_equal(
            h.predict_batch(np.array([[0.5, 3, 1], [-2.0, 10, 0]])), expected
        )
        np.testing.assert_array_equal(h.predict_batch(pd.DataFrame(records)), expected)
        assert h.predict(records[0]) == 4.5
        assert h.predict(np.array([0.5, 3, 1])) == 4.5
    assert numeric.calls == 6


# ---------------------------------------------------------------- bad inputs: SchemaError, model not called

BAD_RECORDS = [
    # (what, record placed at index 1 of a batch, field, message fragment)
    ("missing", {k: v for k, v in GOOD.items() if k != "age"}, "age", "missing"),
    ("unknown", {**GOOD, "colour": "red"}, "colour", "unknown field"),
    ("wrong type", {**GOOD, "income": "a lot"}, "income", "expected a number"),
    ("bool for number", {**GOOD, "income": True}, "income", "expected a number"),
    ("float for int", {**GOOD, "age": 30.5}, "age", "expected an integer"),
    ("int for bool", {**GOOD, "employed": 1}, "employed", "expected a boolean"),
    ("null not allowed", {**GOOD, "age": None}, "age", "expected an integer"),
    ("below minimum", {**GOOD, "income": -0.01}, "income", "out of range"),
    ("above maximum", {**GOOD, "age": 121}, "age", "out of range"),
    ("not in Literal", {**GOOD, "region": "east"}, "region", "expected one of"),
]


@pytest.mark.parametrize("what,record,field,fragment", BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS])
def test_bad_record_in_batch(applicant, what, record, field, fragment):
    with applicant.load() as h:
        with pytest.raises(embedml.SchemaError) as exc:
            h.predict_batch([GOOD, record, GOOD])
        err = exc.value
        assert isinstance(err, ValueError)
        assert (err.field, err.index) == (field, 1)
        assert (err.model, err.version) == (applicant.tag, "1")
        assert fragment in str(err) and "record 1" in str(err) and repr(field) in str(err)
        # the same record alone: no index
        with pytest.raises(embedml.SchemaError) as exc:
            h.predict(record)
        assert (exc.value.field, exc.value.index) == (field, None)
    assert applicant.calls == 0


@pytest.mark.parametrize(
    "what,frame,field,index",
    [
        ("below minimum", [GOOD, GOOD, {**GOOD, "income": -5.0}], "income", 2),
        ("above maximum", [GOOD, {**GOOD, "age": 500}], "age", 1),
        ("not in Literal", [{**GOOD, "region": "west"}, GOOD], "region", 0),
        ("wrong type", [GOOD, {**GOOD, "employed": "yes"}], "employed", 1),
    ],
)
def test_bad_dataframe_rows(applicant, what, frame, field, index):
    with applicant.load() as h, pytest.raises(embedml.SchemaError) as exc:
        h.predict_batch(pd.DataFrame(frame))
    assert (exc.value.field, exc.value.index) == (field, index)
    assert applicant.calls == 0


def test_bad_dataframe_columns(applicant):
    df = pd.DataFrame([GOOD])
    with applicant.load() as h:
        with pytest.raises(embedml.SchemaError, match="missing") as exc:
            h.predict_batch(df.drop(columns="age"))
        assert exc.value.field == "age"
        with pytest.raises(embedml.SchemaError, match="unknown column") as exc:
            h.predict_batch(df.assign(colour="red"))
        assert exc.value.field == "colour"
    assert applicant.calls == 0


@pytest.mark.parametrize(
    "what,array,field,index,fragment",
    [
        ("too narrow", np.ones((2, 2)), None, None, "3 columns"),
        ("too wide", np.ones((2, 4)), None, None, "3 columns"),
        ("3-D", np.ones((2, 3, 1)), None, None, "3 columns"),
        ("fraction for int", np.array([[0.0, 1, 1], [0.0, 1.5, 0]]), "n", 1, "integer"),
        ("2 for bool", np.array([[0.0, 1, 1], [0.0, 1, 0], [0.0, 1, 2]]), "flag", 2, "boolean"),
        ("out of range", np.array([[0.0, 11, 1]]), "n", 0, "out of range"),
        ("strings", np.array([["1", "2", "1"]]), None, None, "dtype"),
    ],
)
def test_bad_arrays(numeric, what, array, field, index, fragment):
    with numeric.load() as h, pytest.raises(embedml.SchemaError, match=fragment) as exc:
        h.predict_batch(array)
    assert (exc.value.field, exc.value.index) == (field, index)
    assert numeric.calls == 0


def test_wrong_shapes_of_input(numeric):
    with numeric.load() as h:
        with pytest.raises(embedml.SchemaError, match="use predict"):
            h.predict_batch({"x": 1.0, "n": 1, "flag": True})  # one record given as a batch
        with pytest.raises(embedml.SchemaError, match="empty"):
            h.predict_batch([])
        with pytest.raises(embedml.SchemaError, match="expected a record") as exc:
            h.predict_batch([{"x": 1.0, "n": 1, "flag": True}, "not a record"])
        assert exc.value.index == 1
        with pytest.raises(embedml.SchemaError, match="3 columns"):
            h.predict(np.array([1.0, 2.0]))  # one record as an array of the wrong width
    assert numeric.calls == 0


def test_allow_extra_ignores_unknown_fields(applicant):
    with applicant.load(allow_extra=True) as h:
        assert h.predict({**GOOD, "colour": "red"}) == GOOD_ECHO
        assert list(h.predict_batch(pd.DataFrame([GOOD]).assign(colour="red"))) == [GOOD_ECHO]
        with pytest.raises(embedml.SchemaError):  # other rules still apply
            h.predict({**GOOD, "colour": "red", "age": 7})
    assert applicant.calls == 2


# ---------------------------------------------------------------- casts


def test_safe_casts_are_silent(numeric, applicant):
    with numeric.load() as h:
        assert h.predict({"x": 2, "n": np.int16(3), "flag": np.bool_(True)}) == 6.0  # int -> float
        assert h.predict({"x": np.float32(0.5), "n": 1, "flag": False}) == 1.5
        assert list(h.predict_batch(np.array([[1, 2, 1]], dtype=np.int32))) == [4.0]
        assert list(h.predict_batch(np.array([[1, 2, 0]], dtype=np.float32))) == [3.0]
    with applicant.load() as h:
        assert h.predict({**GOOD, "income": 1200}) == "[1200, 30, True, 'north', nan]"
        assert h.predict({**GOOD, "debt": 3}) == "[1200.5, 30, True, 'north', 3]"


def test_strict_false_converts_what_is_unambiguous(applicant, numeric):
    with applicant.load(strict=False) as h:
        assert h.predict({**GOOD, "income": "1200.5"}) == GOOD_ECHO
        assert h.predict({**GOOD, "age": 30.0}) == GOOD_ECHO
        assert h.predict({**GOOD, "age": "30"}) == GOOD_ECHO
        assert h.predict({**GOOD, "employed": 1}) == GOOD_ECHO
        assert h.predict({**GOOD, "employed": "true"}) == GOOD_ECHO
        for still_bad, field in (
            ({**GOOD, "age": 30.5}, "age"),
            ({**GOOD, "income": "lots"}, "income"),
            ({**GOOD, "employed": 2}, "employed"),
            ({**GOOD, "age": "12"}, "age"),  # converted, then out of range
        ):
            with pytest.raises(embedml.SchemaError) as exc:
                h.predict(still_bad)
            assert exc.value.field == field
    with numeric.load(strict=False) as h:
        assert list(h.predict_batch(np.array([["0.5", "3", "1"]]))) == [4.5]
        assert list(h.predict_batch(pd.DataFrame({"x": [1.0], "n": [2.0], "flag": [1]}))) == [4.0]
    assert applicant.calls == 5
    assert numeric.calls == 2


def test_strict_refuses_unsafe_conversions_in_frames(numeric):
    with numeric.load() as h:
        with pytest.raises(embedml.SchemaError) as exc:
            h.predict_batch(pd.DataFrame({"x": [1.0], "n": [2.0], "flag": [True]}))
        assert exc.value.field == "n"
        with pytest.raises(embedml.SchemaError) as exc:
            h.predict_batch(pd.DataFrame({"x": [1.0], "n": [2], "flag": [1]}))
        assert exc.value.field == "flag"
    assert numeric.calls == 0


@pytest.mark.parametrize(
    "src,dst,ok",
    [
        (np.array([1, 2], np.int64), "float64", True),
        (np.array([1, 2], np.int64), "float32", True),
        (np.array([1.5], np.float32), "float64", True),
        (np.array([1.5], np.float64), "float32", True),
        (np.array([1e300], np.float64), "float32", False),
        (np.array([np.inf, np.nan], np.float64), "float32", True),
        (np.array([1, 2], np.int64), "int32", True),
        (np.array([2**40], np.int64), "int32", False),
        (np.array([-1], np.int64), "uint8", False),
        (np.array([255], np.int64), "uint8", True),
        (np.array([1.0], np.float64), "int64", False),
        (np.array([True]), "float32", False),
        (np.array([1]), "bool", False),
        (np.array(["1.5"]), "float64", False),
    ],
)
def test_cast_array_strict(src, dst, ok):
    dtype = np.dtype(dst)
    if ok:
        out = cast_array(src, dtype, name="t")
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, src.astype(dtype))
    else:
        with pytest.raises(embedml.SchemaError) as exc:
            cast_array(src, dtype, name="t")
        assert exc.value.field == "t" and exc.value.expected == dst


@pytest.mark.parametrize(
    "src,dst,expected",
    [
        (np.array([1.0, 2.0]), "int32", [1, 2]),
        (np.array([True, False]), "float32", [1.0, 0.0]),
        (np.array(["1.5", "2"]), "float64", [1.5, 2.0]),
        (np.array([0, 1]), "bool", [False, True]),
    ],
)
def test_cast_array_lenient(src, dst, expected):
    out = cast_array(src, np.dtype(dst), name="t", strict=False)
    assert out.dtype == np.dtype(dst)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    "src,dst", [(np.array([1.5]), "int32"), (np.array(["x"]), "float64"), (np.array([2]), "bool")]
)
def test_cast_array_lenient_still_refuses_lossy(src, dst):
    with pytest.raises(embedml.SchemaError):
        cast_array(src, np.dtype(dst), name="t", strict=False)


# ---------------------------------------------------------------- tensor specs


def test_tensor_spec_validation():
    assert embedml.TensorSpec("x", "float32", (None, 3)).shape == (-1, 3)
    assert embedml.TensorSpec("x", np.float64, (-1,)).dtype == "float64"
    assert embedml.TensorSpec("s", "string").dtype == "str"
    spec = embedml.TensorSpec("x", "int64", (-1, 2, 5))
    assert embedml.TensorSpec.from_dict(spec.to_dict()) == spec
    for bad in ("complex_thing", "datetime64[ns]"):
        with pytest.raises(ValueError, match="unknown dtype"):
            embedml.TensorSpec("x", bad)
    for shape in ((-2, 3), (-1, 2.5), ("",), (True, 3), ((1,), 2)):
        with pytest.raises(ValueError, match="shape"):
            embedml.TensorSpec("x", "float32", shape)


def test_tensor_spec_holds_what_onnx_graphs_declare():
    """Scalars, zero-size and named dimensions, undeclared ranks and every element type
    numpy holds; an old manifest's list of ints with -1 still reads the same."""
    scalar = embedml.TensorSpec("theta", "float32", ())
    assert scalar.shape == () and scalar.batch_dim is None
    named = embedml.TensorSpec("x", "float16", ("batch", 0, None, 3))
    assert named.shape == ("batch", 0, -1, 3) and named.batch_dim == "batch"
    assert embedml.TensorSpec("any", "bool", None).shape is None
    for spec in (scalar, named, embedml.TensorSpec("any", "bool", None)):
        assert embedml.TensorSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    for dtype in ("bool", "str", "float16", "int8", "uint16", "uint32", "uint64", "complex64"):
        assert embedml.TensorSpec("t", dtype).np_dtype.kind in "biufcO"
    old = {"name": "x", "dtype": "float32", "shape": [-1, 4]}
    assert embedml.TensorSpec.from_dict(old) == embedml.TensorSpec("x", "float32", (None, 4))


@pytest.fixture
def tensor_model(store) -> Counted:
    c = Counted.__new__(Counted)
    c.tag, c.store = uuid.uuid4().hex, store
    store.save(
        c.tag, CountingModel(c.tag), input_schema=embedml.TensorSpec("x", "float32", (-1, 3))
    )
    return c


@pytest.mark.parametrize(
    "what,batch,fragment",
    [
        ("width", np.ones((2, 4), np.float32), "dimension 1 must be 3"),
        ("ndim", np.ones((2, 3, 1), np.float32), "expected 2 dimensions"),
        ("1-D", np.ones(3, np.float32), "expected 2 dimensions"),
        ("strings", np.array([["a", "b", "c"]]), "expected dtype float32"),
        ("beyond float32", np.full((1, 3), 1e300), "float32 range"),
        ("ragged", [[1.0, 2.0, 3.0], [1.0]], "array"),
    ],
)
def test_bad_tensors(tensor_model, what, batch, fragment):
    with tensor_model.load() as h, pytest.raises(embedml.SchemaError, match=fragment) as exc:
        h.predict_batch(batch)
    assert exc.value.field == "x"
    assert tensor_model.calls == 0


def test_good_tensors(tensor_model):
    with tensor_model.load() as h:
        np.testing.assert_array_equal(h.predict_batch(np.ones((2, 3), np.float32)), [3.0, 3.0])
        np.testing.assert_array_equal(h.predict_batch(np.ones((2, 3), np.int64)), [3.0, 3.0])
        np.testing.assert_array_equal(h.predict_batch([[1, 2, 3]]), [6.0])
        assert h.predict(np.arange(3.0)) == 3.0
        with pytest.raises(embedml.SchemaError, match="one example of shape"):
            h.predict(np.ones((2, 3)))
    assert tensor_model.calls == 4


def test_int_tensor_widths(store):
    tag = uuid.uuid4().hex
    store.save(tag, CountingModel(tag), input_schema=embedml.TensorSpec("ids", "int32", (-1, 2)))
    with store.load(tag) as h:
        np.testing.assert_array_equal(h.predict_batch(np.array([[1, 2]], np.int64)), [3.0])
        np.testing.assert_array_equal(h.predict_batch(np.array([[1, 2]], np.uint8)), [3.0])
        with pytest.raises(embedml.SchemaError, match="int32 range"):
            h.predict_batch(np.array([[1, 2**40]], np.int64))
        with pytest.raises(embedml.SchemaError, match="int32"):
            h.predict_batch(np.array([[1.0, 2.0]]))
    with store.load(tag, strict=False) as h:
        np.testing.assert_array_equal(h.predict_batch(np.array([[1.0, 2.0]])), [3.0])
        with pytest.raises(embedml.SchemaError, match="whole numbers"):
            h.predict_batch(np.array([[1.5, 2.0]]))
    assert CALLS[tag] == 3


def test_multi_input_tensors(store):
    store.save("two", onnx_two_inputs())
    a = np.ones((2, 2), np.float32)
    with store.load("two") as h:
        assert [s.name for s in h.input_schema.specs] == ["a", "b"]
        with pytest.raises(embedml.SchemaError, match="unknown input") as exc:
            h.predict_batch({"a": a, "b": a, "c": a})
        assert exc.value.field == "c"
        with pytest.raises(embedml.SchemaError, match="dict of input tensors"):
            h.predict_batch(a)
        with pytest.raises(embedml.SchemaError) as exc:
            h.predict_batch({"a": a, "b": np.array([["x", "y"], ["z", "w"]])})
        assert exc.value.field == "b"
    with store.load("two", allow_extra=True) as h:
        np.testing.assert_array_equal(h.predict_batch({"a": a, "b": a, "c": a})["sum"], 2 * a)


def test_declared_tensor_list_schema_is_stored(store):
    specs = [
        embedml.TensorSpec("a", "float32", (-1, 2)),
        embedml.TensorSpec("b", "float32", (-1, 2)),
    ]
    mv = store.save("two", onnx_two_inputs(), input_schema=specs)
    assert TensorSchema.from_dict(mv.manifest.input_schema).specs == tuple(specs)


# ---------------------------------------------------------------- outputs


class Label(BaseModel):
    label: int


class Total(BaseModel):
    total: float = Field(le=100)


def test_output_schema_instances_from_dict_outputs(store):
    X = np.random.default_rng(3).normal(size=(6, 4))
    store.save("lr", skl2onnx_logreg(), output_schema=Label)
    with store.load("lr") as h:
        out = h.predict_batch(X)
        assert all(type(o).__name__ == "Label" for o in out)
        assert [o.label for o in out] == list(sk_logreg().predict(X))
        one = h.predict(X[0])
        assert one.label == sk_logreg().predict(X[:1])[0]
        assert one.model_dump() == {"label": int(sk_logreg().predict(X[:1])[0])}


def test_output_schema_violation_is_schema_error(store):
    tag = uuid.uuid4().hex
    store.save(tag, CountingModel(tag), output_schema=Total)
    with store.load(tag) as h:
        assert [o.total for o in h.predict_batch(np.array([[1.0, 2.0], [50.0, 50.0]]))] == [
            3.0,
            100.0,
        ]
        with pytest.raises(embedml.SchemaError, match="output") as exc:
            h.predict_batch(np.array([[1.0, 2.0], [60.0, 50.0]]))
        assert (exc.value.field, exc.value.index) == ("total", 1)


def test_output_tensor_schema(store):
    tag = uuid.uuid4().hex
    store.save(tag, CountingModel(tag), output_schema=embedml.TensorSpec("y", "float64", (-1,)))
    with store.load(tag) as h:
        np.testing.assert_array_equal(h.predict_batch(np.ones((2, 2))), [2.0, 2.0])
    tag2 = uuid.uuid4().hex
    store.save(tag2, CountingModel(tag2), output_schema=embedml.TensorSpec("y", "int64", (-1,)))
    with store.load(tag2) as h, pytest.raises(embedml.SchemaError, match="output"):
        h.predict_batch(np.ones((2, 2)))


def test_range_messages_use_interval_notation(store):
    class Bounds(BaseModel):
        p: float = Field(gt=0, lt=1)
        n: int = Field(le=10)

    tag = uuid.uuid4().hex
    store.save(tag, CountingModel(tag), input_schema=Bounds)
    with store.load(tag) as h:
        assert h.predict({"p": 0.5, "n": -99}) == -98.5
        for record, fragment in (
            ({"p": 0.0, "n": 1}, "value 0.0 is out of range (0, 1)"),
            ({"p": 1.0, "n": 1}, "value 1.0 is out of range (0, 1)"),
            ({"p": 0.5, "n": 11}, "value 11.0 is out of range (-inf, 10]"),
        ):
            with pytest.raises(embedml.SchemaError, match=re.escape(fragment)):
                h.predict(record)
    assert CALLS[tag] == 1


def test_schema_options_defaults():
    opts = SchemaOptions()
    assert (opts.strict, opts.allow_extra) == (True, False)
