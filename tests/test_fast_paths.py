"""The per-call fast paths give the same answers as the general code they short-cut."""

from __future__ import annotations

import math

import numpy as np
import pytest

import embedml
from embedml.observe.metrics import _EDGES, _N, Histogram, _size_bucket, bucket
from embedml.schema import (
    SchemaOptions,
    TensorSchema,
    TensorSpec,
    cast_array,
    check_array,
)
from embedml.tensors import n_rows, take


def test_bucket_matches_the_log2_formula_and_is_exact_at_edges():
    rng = np.random.default_rng(3)
    for v in np.exp(rng.uniform(math.log(1e-8), math.log(1e4), 5_000)):
        v = float(v)
        want = 0 if v <= 2.0**-20 else min(math.ceil((math.log2(v) + 20) * 4), _N)
        assert bucket(v) == want, v
    for i, edge in enumerate(_EDGES):
        assert bucket(edge) == i  # a value on an edge belongs to the bucket it ends
        assert bucket(math.nextafter(edge, math.inf)) == i + 1
    assert bucket(0.0) == 0 and bucket(1e9) == _N
    h = Histogram()
    for v in (1e-7, 3e-6, 3e-6, 0.5):
        h.add(v)
    assert h.n == 4 and sum(h.counts) == 4 and h.counts[bucket(3e-6)] == 2


def test_batch_size_labels_match_the_formula(store, logreg, iris_like):
    X, _ = iris_like
    store.save("lr", logreg, input_schema=embedml.TensorSpec("x", "float64", (-1, 4)))
    h = store.load("lr")
    sizes = [1, 2, 3, 4, 7, 8, 33, 64, 100]
    for n in sizes:
        h.predict_batch(X[:n])
    want: dict[str, int] = {}
    for n in sizes:
        want[_size_bucket(n)] = want.get(_size_bucket(n), 0) + 1
    assert h.metrics()["batch_size"] == want
    h.close()


def test_n_rows_and_take_on_every_structure():
    a = np.arange(12).reshape(6, 2)
    assert n_rows(a) == 6 and n_rows({"a": a, "b": a}) == 6 and n_rows((a, a)) == 6
    assert n_rows(np.float32(1.0)) == -1 and n_rows(np.array(3.0)) == -1 and n_rows([1, 2]) == 2
    assert n_rows({"a": {"x": 1, "y": 2, "z": 3}}) == 3  # a dict value is counted by len
    assert take(a, 2).tolist() == [4, 5] and take([7, 8], 1) == 8
    assert {k: v.tolist() for k, v in take({"p": a}, 1).items()} == {"p": [2, 3]}
    assert [v.tolist() for v in take((a, a), 0)] == [[0, 1], [0, 1]]


@pytest.mark.filterwarnings("ignore:overflow encountered")  # the sum of huge values
@pytest.mark.parametrize("size", [1, 20, 32, 33, 500, 8192, 20480])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_nan_and_inf_refused_wherever_they_are(size, dtype):
    opts = SchemaOptions()
    clean = np.ones((size, 1), dtype=dtype)
    check_array(clean, "x", opts)  # no error
    for pos in sorted({0, size // 2, size - 1}):
        for bad in (np.nan, np.inf, -np.inf):
            a = clean.copy()
            a[pos, 0] = bad
            with pytest.raises(embedml.SchemaError) as info:
                check_array(a, "x", opts)
            assert info.value.index == pos and info.value.field == "x"
            check_array(a, "x", SchemaOptions(allow_nan=True))  # allowed: no error
    huge = np.full((size, 1), np.finfo(dtype).max, dtype=dtype)
    check_array(huge, "x", opts)  # a sum that overflows is a false alarm, not an error


def test_float_narrowing_keeps_its_rules():
    f32 = np.dtype("float32")
    ok = np.array([[0.5, -2.0, 3e38]])
    assert cast_array(ok, f32, name="x").dtype == f32
    with pytest.raises(embedml.SchemaError, match="float32 range"):
        cast_array(np.array([[1.0, -1e300]]), f32, name="x")
    # NaN and infinities are not a range problem (the NaN/inf limit is a separate check)
    out = cast_array(np.array([[np.nan, np.inf, 1.0]]), f32, name="x")
    assert np.isnan(out[0, 0]) and np.isinf(out[0, 1]) and out.dtype == f32
    assert cast_array(np.zeros((0, 3)), f32, name="x").shape == (0, 3)


def test_tensor_schema_fast_path_and_full_check_agree():
    schema = TensorSchema([TensorSpec("x", "float32", (-1, 3))])
    opts = SchemaOptions()
    row = np.array([1.0, 2.0, 3.0])  # float64: cast on the fast path
    assert schema.one(row, opts).dtype == np.float32 and schema.one(row, opts).shape == (1, 3)
    assert schema.many(np.ones((4, 3)), opts).dtype == np.float32
    with pytest.raises(embedml.SchemaError, match="dimension 1 must be 3"):
        schema.many(np.ones((4, 2), dtype=np.float32), opts)
    with pytest.raises(embedml.SchemaError, match="expected 2 dimensions"):
        schema.many(np.ones(3, dtype=np.float32), opts)
    with pytest.raises(embedml.SchemaError, match="float32 range"):
        schema.one(np.array([1.0, 2.0, 1e300]), opts)
    with pytest.raises(embedml.SchemaError, match="max_batch_rows"):
        schema.many(np.ones((5, 3), dtype=np.float32), SchemaOptions(max_batch_rows=4))
