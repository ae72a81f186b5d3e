"""The model's own interface is the contract (issue 11): inputs reach a model by the names
it declares, never by position; what it declares is recorded at save, shown, and checked
against a declared schema; where it declares nothing, embedml refuses what it cannot place.

Real models only: scikit-learn pipelines fitted on DataFrames, their skl2onnx conversions
(one input per column, ZipMap outputs), TorchScript and torch.export modules.
"""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel

import embedml
from embedml.cli import main

# ---------------------------------------------------------------- models


def income_model():
    """A regression fitted on a DataFrame (age, income): y = 2 * age + 0.001 * income."""
    from sklearn.linear_model import LinearRegression

    df = pd.DataFrame({"age": [20.0, 30, 40, 50, 60], "income": [1000.0, 4000, 2000, 8000, 3000]})
    return LinearRegression().fit(df, 2 * df.age + 0.001 * df.income)


class IncomeFirst(BaseModel):  # the model's columns, declared in another order
    income: float
    age: float


class Misspelled(BaseModel):
    age: float
    incme: float


def mixed_frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """Float, int and string columns (float32 so that skl2onnx writes a float graph)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.uniform(20, 60, n).astype(np.float32),
            "visits": rng.integers(0, 10, n),
            "city": rng.choice(["paris", "lyon", "nice"], n),
        }
    )


def mixed_pipeline():
    """A ColumnTransformer pipeline over mixed column types, fitted on a DataFrame."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    df = mixed_frame()
    y = ((df.age > 40) ^ (df.city == "lyon")).astype(int)
    pre = ColumnTransformer(
        [
            ("num", StandardScaler(), ["age", "visits"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["city"]),
        ]
    )
    return Pipeline([("pre", pre), ("clf", LogisticRegression())]).fit(df, y), df


def column_onnx(zipmap: bool = True):
    """skl2onnx's conversion of mixed_pipeline(): one [N, 1] input per column."""
    from skl2onnx import to_onnx

    pipe, df = mixed_pipeline()
    options = None if zipmap else {id(pipe.steps[-1][1]): {"zipmap": False}}
    return to_onnx(pipe, df[:1], options=options), pipe, df


def torch_difference():
    """TorchScript ``forward(self, a, b) -> a - b``: the order of a and b matters."""
    import torch

    class Difference(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a - 2 * b

    return torch.jit.script(Difference())


class BatchMixer:
    """Scores each row against the batch's mean: a row's output depends on the others."""

    n_features_in_ = 2

    def predict(self, X):
        X = np.asarray(X, dtype=float)
        return X[:, 0] - X[:, 0].mean()


class ReversedLabels:
    """A classifier whose classes_ (and probability columns) are in the other order."""

    def __init__(self, inner):
        self.inner = inner
        self.classes_ = inner.classes_[::-1].copy()

    def predict_proba(self, X):
        return self.inner.predict_proba(X)[:, ::-1]


# ---------------------------------------------------------------- silent wrong answer 1


def test_schema_declared_in_another_order_reaches_the_model_by_name(store, tmp_path):
    model = income_model()
    record = {"age": 40, "income": 50000}
    expected = float(model.predict(pd.DataFrame([record]))[0])  # 2 * 40 + 50 = 130
    assert expected == pytest.approx(130.0)
    store.save("income", model, input_schema=IncomeFirst)
    with store.load("income") as h:
        assert h.predict(record) == pytest.approx(expected)
        assert h.predict(IncomeFirst(income=50000, age=40)) == pytest.approx(expected)
        frame = pd.DataFrame({"income": [50000.0, 1000.0], "age": [40.0, 20.0]})
        np.testing.assert_allclose(h.predict_batch(frame), model.predict(frame[["age", "income"]]))
        out = h.predict_batch([record, {"income": 1000.0, "age": 20.0}])
        np.testing.assert_allclose(out, [expected, 41.0])
    # and from the command line
    src = tmp_path / "in.csv"
    src.write_text("income,age\n50000,40\n1000,20\n")
    dst = tmp_path / "out.csv"
    assert (
        main(["--store", str(store.root), "predict", "income", "-i", str(src), "-o", str(dst)]) == 0
    )
    scored = pd.read_csv(dst)
    np.testing.assert_allclose(scored["prediction"], [expected, 41.0])


def test_schema_whose_names_differ_from_the_feature_names_is_refused_at_save(store):
    with pytest.raises(embedml.ConfigurationError) as err:
        store.save("income", income_model(), input_schema=Misspelled)
    message = str(err.value)
    assert "missing ['income']" in message and "unexpected ['incme']" in message
    assert "income" not in store.models()


def test_a_manifest_written_before_the_check_is_refused_at_load(store, tmp_path):
    # a joblib file is not unpickled at save, so its schema is checked when it is loaded
    import joblib

    path = tmp_path / "income.joblib"
    joblib.dump(income_model(), path)
    store.save("income", path, trust=True, input_schema=Misspelled)
    with pytest.raises(embedml.ConfigurationError, match=r"missing \['income'\]"):
        store.load("income")


# ---------------------------------------------------------------- silent wrong answer 2


def test_torchscript_inputs_are_matched_by_forward_argument_names(store):
    a = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    b = np.array([[10.0, 20.0], [30.0, 40.0]], dtype=np.float32)
    mv = store.save("diff", torch_difference())
    with store.load("diff") as h:
        np.testing.assert_allclose(h.predict_batch({"b": b, "a": a}), a - 2 * b)
        np.testing.assert_allclose(h.predict({"b": b[0], "a": a[0]}), a[0] - 2 * b[0])
        with pytest.raises(embedml.SchemaError) as err:
            h.predict_batch({"x": a, "y": b})
        assert "['a', 'b']" in str(err.value)
        with pytest.raises(embedml.SchemaError, match="unknown input"):
            h.predict_batch({"a": a, "b": b, "c": b})
        with pytest.raises(embedml.SchemaError, match="dict of arrays by name"):
            h.predict_batch(a)
    assert mv.signature["input_names"] == ["a", "b"]


def test_a_record_schema_for_a_model_of_several_tensor_inputs_is_refused(store):
    class AB(BaseModel):
        a: float
        b: float

    with pytest.raises(embedml.ConfigurationError, match=r"several inputs \['a', 'b'\]"):
        store.save("diff", torch_difference(), input_schema=AB)


def test_torch_export_inputs_are_matched_by_name(store):
    import torch

    class Difference(torch.nn.Module):
        def forward(self, a, b):
            return a - 2 * b

    a = np.ones((3, 2), dtype=np.float32)
    b = np.full((3, 2), 5.0, dtype=np.float32)
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        Difference(), (torch.zeros(3, 2), torch.zeros(3, 2)),
        dynamic_shapes={"a": {0: batch}, "b": {0: batch}},
    )  # fmt: skip
    mv = store.save("diff", program)
    with store.load("diff") as h:
        np.testing.assert_allclose(h.predict_batch({"b": b, "a": a}), a - 2 * b)
        with pytest.raises(embedml.SchemaError, match="unknown input"):
            h.predict_batch({"a": a, "b": b, "x": b})
    assert mv.signature["input_names"] == ["a", "b"]


# ---------------------------------------------------------------- no schema, the model's names


def test_records_and_frames_work_without_a_schema_when_the_model_names_its_features(store):
    model = income_model()
    store.save("income", model)
    with store.load("income") as h:
        assert h.predict({"income": 50000, "age": 40}) == pytest.approx(130.0)
        frame = pd.DataFrame({"income": [50000.0, 1000.0], "age": [40.0, 20.0]})
        np.testing.assert_allclose(h.predict_batch(frame), [130.0, 41.0])
        np.testing.assert_allclose(h.predict_batch({"income": [50000.0], "age": [40.0]}), [130.0])
        with pytest.raises(embedml.SchemaError, match="required field is missing") as err:
            h.predict({"age": 40})
        assert err.value.field == "income"
        with pytest.raises(embedml.SchemaError, match="unknown field"):
            h.predict({"age": 40, "income": 1.0, "zip": 75001})
        with pytest.raises(embedml.SchemaError, match="required column is missing"):
            h.predict_batch(frame[["age"]])


def test_a_mixed_type_sklearn_pipeline_takes_records_by_name(store):
    pipe, df = mixed_pipeline()
    store.save("mixed", pipe)
    rows = df[:5]
    expected = pipe.predict(rows)
    with store.load("mixed") as h:
        records = rows[["city", "visits", "age"]].to_dict("records")
        np.testing.assert_array_equal(h.predict_batch(records), expected)
        np.testing.assert_array_equal(h.predict_batch(rows[["visits", "city", "age"]]), expected)
        assert h.predict(records[0]) == expected[0]
    # batching joins callers' records (DataFrames by feature name) and gives each its row
    records = df[:16].to_dict("records")
    results: list = [None] * len(records)
    start = threading.Barrier(len(records))

    def call(i: int) -> None:
        start.wait(timeout=60)
        results[i] = h.predict(records[i])

    with store.load("mixed", batching=embedml.Batching(max_batch_size=8, max_wait_ms=50)) as h:
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(records))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert results == pipe.predict(df[:16]).tolist()
    with store.load("mixed", method="predict_proba") as h:
        out = h.predict_batch(rows)
        assert out["classes"] == [0, 1]
        np.testing.assert_allclose(out["probabilities"], pipe.predict_proba(rows))
        one = h.predict(records[2])
        assert one["classes"] == [0, 1]
        np.testing.assert_allclose(one["probabilities"], pipe.predict_proba(rows[2:3])[0])


@pytest.mark.filterwarnings("ignore:X has feature names")  # sklearn's, for the DataFrame
def test_a_record_nothing_can_place_is_a_schema_error(store, iris_like, logreg):
    X, _ = iris_like  # a model fitted on an array: no names
    store.save("plain", logreg)
    with store.load("plain") as h:
        for bad in ({"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}, [{"a": 1.0}]):
            call = h.predict if isinstance(bad, dict) else h.predict_batch
            with pytest.raises(embedml.SchemaError) as err:
                call(bad)
            assert "input_schema=" in str(err.value) and "pass an array" in str(err.value)
        # a DataFrame without a schema is read like an array, in column order, as before
        frame = pd.DataFrame(X[:4], columns=["w", "x", "y", "z"])
        np.testing.assert_array_equal(h.predict_batch(frame), logreg.predict(X[:4]))
        np.testing.assert_array_equal(h.predict_batch(X[:4]), logreg.predict(X[:4]))


class FourFields(BaseModel):
    d: float
    c: float
    b: float
    a: float


class ThreeFields(BaseModel):
    a: float
    b: float
    c: float


def test_without_names_a_schema_field_order_is_the_declaration(store, iris_like, logreg):
    X, _ = iris_like
    store.save("plain", logreg, input_schema=FourFields)
    with store.load("plain") as h:
        record = dict(zip(["d", "c", "b", "a"], X[0].tolist()))
        assert h.predict(record) == logreg.predict(X[:1])[0]
    with pytest.raises(embedml.ConfigurationError, match="takes 4 features"):
        store.save("plain", logreg, input_schema=ThreeFields)


# ---------------------------------------------------------------- one input per column (ONNX)


class Visit(BaseModel):  # declared in another order than the graph's inputs
    city: str
    visits: int
    age: float


@pytest.mark.parametrize("declared", [None, Visit], ids=["model-names", "declared-schema"])
def test_onnx_column_inputs_take_records_frames_and_columns_by_name(store, declared, tmp_path):
    onx, pipe, df = column_onnx()
    mv = store.save("visits", onx, input_schema=declared)
    assert [i["name"] for i in mv.signature["inputs"]] == ["age", "visits", "city"]
    rows = df[:8]
    expected = pipe.predict(rows)
    proba = pipe.predict_proba(rows)
    records = rows[["city", "age", "visits"]].to_dict("records")
    with store.load("visits") as h:
        out = h.predict_batch(records)
        np.testing.assert_array_equal(out["output_label"], expected)
        np.testing.assert_allclose(
            [p[1] for p in out["output_probability"]], proba[:, 1], atol=1e-5
        )
        shuffled = rows[["visits", "city", "age"]]
        np.testing.assert_array_equal(h.predict_batch(shuffled)["output_label"], expected)
        columns = {
            "city": rows.city.to_numpy(),
            "visits": rows.visits.to_numpy(),
            "age": rows.age.to_numpy(),
        }
        np.testing.assert_array_equal(h.predict_batch(columns)["output_label"], expected)
        one = h.predict(records[3])
        assert one["output_label"] == expected[3]
        assert asyncio.run(h.apredict(records[5]))["output_label"] == expected[5]
        with pytest.raises(embedml.SchemaError) as err:
            h.predict({**records[0], "city": 3})
        assert err.value.field == "city"
        with pytest.raises(embedml.SchemaError, match="required field is missing"):
            h.predict({"age": 30.0, "visits": 1})
    with store.load("visits", batching=embedml.Batching(max_batch_size=8)) as h:
        outs = [h.predict(r)["output_label"] for r in records]
        np.testing.assert_array_equal(outs, expected)
    # score(): a CSV whose columns are in yet another order
    src = tmp_path / "visits.csv"
    rows[["visits", "age", "city"]].to_csv(src, index=False)
    dst = tmp_path / "scored.jsonl"
    with store.load("visits") as h:
        summary = embedml.score(h, src, dst)
    assert summary.scored == len(rows) and summary.rejected == 0
    scored = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [r["output_label"] for r in scored] == expected.tolist()


def test_onnx_schema_naming_other_inputs_is_refused(store):
    class Wrong(BaseModel):
        age: float
        visits: int
        town: str

    class WrongKind(BaseModel):
        age: float
        visits: int
        city: float

    onx, _, _ = column_onnx()
    with pytest.raises(
        embedml.ConfigurationError, match=r"missing \['city'\] and unexpected \['town'\]"
    ):
        store.save("visits", onx, input_schema=Wrong)
    with pytest.raises(embedml.ConfigurationError, match="field 'city' is number"):
        store.save("visits", onx, input_schema=WrongKind)
    wrong_tensors = [
        embedml.TensorSpec("x", "float32", (-1, 1)),
        embedml.TensorSpec("y", "int64", (-1, 1)),
    ]
    with pytest.raises(embedml.ConfigurationError, match="do not match the model's inputs"):
        store.save("visits", onx, input_schema=wrong_tensors)


def test_declared_tensor_specs_are_checked_against_the_graph(store):
    from helpers_models import onnx_linear, onnx_two_inputs

    with pytest.raises(embedml.ConfigurationError, match=r"shape \(-1, 4\).*shape \('batch', 3\)"):
        store.save("lin", onnx_linear(), input_schema=embedml.TensorSpec("x", "float32", (-1, 4)))
    with pytest.raises(embedml.ConfigurationError, match="declared int64.*is float32"):
        store.save("lin", onnx_linear(), input_schema=embedml.TensorSpec("x", "int64", (-1, 3)))
    with pytest.raises(embedml.ConfigurationError, match=r"unexpected \['c'\]"):
        store.save("two", onnx_two_inputs(), input_schema=[
            embedml.TensorSpec("a", "float32", (-1, 2)), embedml.TensorSpec("c", "float32", (-1, 2)),
        ])  # fmt: skip
    # a single input may be declared under another name, and narrower than the graph
    mv = store.save(
        "lin", onnx_linear(), input_schema=embedml.TensorSpec("features", "float32", (-1, 3))
    )
    with store.load("lin") as h:
        assert h.predict_batch(np.ones((2, 3), dtype=np.float32)).shape == (2, 2)
    assert mv.signature["inputs"][0]["dims"] == ["batch", 3]


def test_onnx_column_inputs_from_the_command_line(store, tmp_path, capsys):
    onx, pipe, df = column_onnx(zipmap=False)
    store.save("visits", onx)
    src = tmp_path / "in.csv"
    df[:6][["city", "visits", "age"]].to_csv(src, index=False)
    dst = tmp_path / "out.csv"
    assert (
        main(["--store", str(store.root), "predict", "visits", "-i", str(src), "-o", str(dst)]) == 0
    )
    scored = pd.read_csv(dst)
    np.testing.assert_array_equal(scored["label"], pipe.predict(df[:6]))
    np.testing.assert_allclose(
        scored["probabilities_1"], pipe.predict_proba(df[:6])[:, 1], atol=1e-5
    )


# ---------------------------------------------------------------- signatures


def test_signatures_recorded_at_save_and_shown(store, capsys):
    import onnx
    from onnx import TensorProto, helper

    pipe, _ = mixed_pipeline()
    sk = store.save("mixed", pipe).signature
    assert sk["feature_names"] == ["age", "visits", "city"]
    assert sk["n_features"] == 3 and sk["classes"] == [0, 1]

    # an ONNX graph with a named symbolic batch dimension
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "y"], ["z"])],
        "add",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
        ],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    mv = store.save("add", model)
    assert store.resolve("add").signature == mv.signature
    inputs = mv.signature["inputs"]
    assert [(i["name"], i["dtype"], i["dims"]) for i in inputs] == [
        ("x", "float32", ["batch", 3]), ("y", "float32", ["batch", 3]),
    ]  # fmt: skip
    assert mv.signature["outputs"][0]["dims"] == ["batch", 3]
    assert main(["--store", str(store.root), "show", "add"]) == 0
    shown = capsys.readouterr().out
    assert "x: float32 [batch, 3]" in shown and "z: float32 [batch, 3]" in shown
    assert "(none declared)\noutput" not in shown  # the input is described by the signature
    assert main(["--store", str(store.root), "show", "mixed"]) == 0
    shown = capsys.readouterr().out
    assert "feature names: ['age', 'visits', 'city']" in shown and "classes: [0, 1]" in shown


def test_input_example_records_types_outputs_and_batch_invariance(store, capsys):
    from sklearn.ensemble import HistGradientBoostingRegressor

    pipe, df = mixed_pipeline()
    example = df[:6].astype({"city": "category"})
    sig = store.save("mixed", pipe, input_example=example).signature
    columns = {c["name"]: c for c in sig["columns"]}
    assert columns["age"]["kind"] == "number" and columns["visits"]["kind"] == "integer"
    assert columns["city"]["kind"] == "string" and columns["city"]["dtype"] == "category"
    assert sorted(columns["city"]["categories"]) == sorted(set(example.city))
    assert not any(c["nullable"] for c in columns.values())
    assert sig["outputs"] == [{"name": "output", "dtype": "int64", "shape": [-1]}]
    assert sig["batch_invariant"] is True
    # records: their types and nullability (a model that takes missing values)
    train = pd.DataFrame({"age": [20, 30, 40, 50] * 10, "income": [1.0, np.nan, 3.0, 4.0] * 10})
    model = HistGradientBoostingRegressor(max_iter=5).fit(train, train.age * 2.0)
    example = [{"age": 40, "income": 5.5}, {"age": 41, "income": None}]
    sig = store.save("hgb", model, input_example=example).signature
    assert sig["columns"] == [
        {"name": "age", "kind": "integer", "nullable": False},
        {"name": "income", "kind": "number", "nullable": True},
    ]
    with store.load("hgb") as h:  # the recorded types check records
        assert h.predict({"age": 41, "income": None}) == pytest.approx(model.predict(
            pd.DataFrame({"age": [41], "income": [np.nan]}))[0])  # fmt: skip
        with pytest.raises(embedml.SchemaError, match="expected an integer") as err:
            h.predict({"age": "forty", "income": 1.0})
        assert err.value.field == "age"
    with pytest.raises(embedml.ConfigurationError, match=r"unexpected \['incme'\]"):
        store.save("income", income_model(), input_example={"age": 40, "incme": 5.0})


def test_a_model_that_mixes_rows_is_recorded_and_refuses_batching(store):
    X = np.array([[1.0, 0.0], [3.0, 0.0], [8.0, 0.0]])
    mv = store.save("mixer", BatchMixer(), input_example=X)
    assert mv.signature["batch_invariant"] is False
    with pytest.raises(embedml.ConfigurationError, match="depend on the other rows"):
        store.load("mixer", batching=True)
    with store.load("mixer") as h:  # without batching each call is its own batch
        np.testing.assert_allclose(h.predict_batch(X), [-3.0, -1.0, 4.0])
    mv = store.save("mixer", BatchMixer())  # no example: nothing is known, nothing refused
    assert mv.signature["batch_invariant"] is None
    store.load("mixer", batching=True).close()


def test_probabilities_come_with_their_class_labels_through_scoring_and_streams(store, tmp_path):
    pipe, df = mixed_pipeline()
    store.save("mixed", pipe)
    with store.load("mixed", method="predict_proba") as h:
        results = list(h.predict_stream(df[:5].to_dict("records"), batch_size=2))
        for row, result in zip(pipe.predict_proba(df[:5]), results):
            assert result["classes"] == [0, 1]
            np.testing.assert_allclose(result["probabilities"], row)
        src = tmp_path / "rows.csv"
        df[:5].to_csv(src, index=False)
        embedml.score(h, src, tmp_path / "out.csv")
    scored = pd.read_csv(tmp_path / "out.csv")
    np.testing.assert_allclose(scored["probabilities_1"], pipe.predict_proba(df[:5])[:, 1])


# ---------------------------------------------------------------- export


def test_an_exported_model_fitted_on_a_dataframe_takes_columns_by_name(store):
    from sklearn.ensemble import RandomForestRegressor

    from embedml.offline.export import to_onnx

    rng = np.random.default_rng(3)
    train = pd.DataFrame(rng.uniform(0, 10, (200, 3)), columns=["a", "b", "c"])
    model = RandomForestRegressor(n_estimators=5, random_state=0).fit(train, train.a - train.c)
    held_out = train[:20]
    mv = to_onnx(store, "rf", model, held_out, input_schema=None)
    with store.load("rf") as h:
        got = h.predict_batch(held_out[["c", "a", "b"]]).ravel()  # the columns in another order
        np.testing.assert_allclose(got, model.predict(held_out), rtol=1e-4, atol=1e-4)
        assert h.predict({"c": 1.0, "b": 2.0, "a": 9.0}) == pytest.approx(
            model.predict(pd.DataFrame({"a": [9.0], "b": [2.0], "c": [1.0]}))[0], abs=1e-4
        )
    assert [f["name"] for f in mv.manifest.input_schema["fields"]] == ["a", "b", "c"]

    class Misnamed(BaseModel):
        a: float
        b: float
        d: float

    with pytest.raises(embedml.ConfigurationError, match=r"missing \['c'\] and unexpected \['d'\]"):
        to_onnx(store, "rf", model, held_out, input_schema=Misnamed)


def test_an_ab_test_merges_its_arms_probabilities_by_class_label(store, iris_like, logreg):
    X, _ = iris_like
    store.save("clf", logreg, method="predict_proba")
    store.save("clf", ReversedLabels(logreg), method="predict_proba")
    with store.load("clf", "1") as a, store.load("clf", "2") as b:
        ab = embedml.ABTest({"a": a, "b": b}, key=lambda row: float(row[0]))
        assert {ab.arm_for(row) for row in X[:40]} == {"a", "b"}  # both arms serve rows
        out = ab.predict_batch(X[:40])
    assert out["classes"] == [0, 1]
    np.testing.assert_allclose(out["probabilities"], logreg.predict_proba(X[:40]))
