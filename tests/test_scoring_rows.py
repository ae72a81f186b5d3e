"""score() loses no row and no prediction (issue 12, High 3 and Medium 8).

Every written row is compared with the model's own answer, computed here from the raw
estimator or ONNX session (not through embedml); one bad row never ends a job; only a
file-level failure does, with an embedml error."""

from __future__ import annotations

import csv
import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel

import embedml
from embedml.cli import main
from embedml.integrations.ray import EmbedMLPredictor
from helpers_models import NAMES, Features

ROWS, CHUNK = 12, 4  # three chunks
BAD_AT = {"first": 1, "middle": 5, "last": 10}  # 0-based row given a = 99 (out of range)


class Label(BaseModel):
    label: int


@functools.cache
def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    X = rng.normal(size=(80, 4))
    return X, X[:, 0] + 0.5 * X[:, 1] - X[:, 3]


def _onnx_session(model: Any) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@functools.cache
def _models() -> dict[str, tuple[Any, Any, Any]]:
    """name -> (artifact, output schema, answer(X) -> one {column: value} per row)."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LinearRegression, LogisticRegression

    X, y = _data()
    reg = LinearRegression().fit(X, y)
    reg_n1 = LinearRegression().fit(X, y[:, None])
    reg_nk = LinearRegression().fit(X, np.column_stack([y, -y, 2 * y]))
    yes_no = LogisticRegression().fit(X, np.where(y > 0, "yes", "no"))
    classes = LogisticRegression().fit(X, (y > 0).astype(int))
    onnx_n1 = to_onnx(reg, X[:1].astype(np.float32))
    onnx_dict = to_onnx(yes_no, X[:1].astype(np.float32), options={"zipmap": False})

    def onnx_answer(model: Any) -> Any:
        session = _onnx_session(model)
        return lambda X: session.run(None, {session.get_inputs()[0].name: X.astype(np.float32)})

    def dict_rows(X: np.ndarray) -> list[dict[str, Any]]:
        label, proba = onnx_answer(onnx_dict)(X)
        return [{"label": a, "probabilities_0": p[0], "probabilities_1": p[1]} for a, p in zip(label, proba)]

    return {
        "(n,)": (reg, None, lambda X: [{"prediction": v} for v in reg.predict(X)]),
        "(n,1) sklearn": (reg_n1, None, lambda X: [{"prediction": r[0]} for r in reg_n1.predict(X)]),
        "(n,1) onnx": (onnx_n1, None, lambda X: [{"prediction": r[0]} for r in onnx_answer(onnx_n1)(X)[0]]),
        "(n,k)": (reg_nk, None, lambda X: [{f"prediction_{j}": r[j] for j in range(3)} for r in reg_nk.predict(X)]),
        "dict": (onnx_dict, None, dict_rows),
        "string labels": (yes_no, None, lambda X: [{"prediction": v} for v in yes_no.predict(X)]),
        "output schema": (classes, Label, lambda X: [{"label": v} for v in classes.predict(X)]),
    }


MODELS = ["(n,)", "(n,1) sklearn", "(n,1) onnx", "(n,k)", "dict", "string labels", "output schema"]


def _store_name(model: str) -> str:
    return "m" + "".join(c for c in model if c.isalnum())


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> embedml.ModelStore:
    store = embedml.ModelStore(tmp_path_factory.mktemp("rows") / "models")
    for name, (artifact, output_schema, _) in _models().items():
        store.save(_store_name(name), artifact, input_schema=Features, output_schema=output_schema)
    return store


@pytest.fixture(scope="module")
def handles(models):
    answers = {name: answer for name, (_, _, answer) in _models().items()}
    loaded = {name: (models.load(_store_name(name)), answers[name]) for name in MODELS}
    yield loaded
    for handle, _ in loaded.values():
        handle.close()


def _write(path: Path, df: pd.DataFrame) -> None:
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in df.to_dict("records")))
    else:
        df.to_parquet(path)


def _read(path: Path) -> list[dict[str, Any]]:
    """The output rows with the keys each one really has (a CSV or Parquet cell that is
    empty counts as missing)."""
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return [{k: v for k, v in r.items() if v != ""} for r in rows]
    table = pd.read_parquet(path).to_dict("records")
    return [{k: v for k, v in r.items() if v is not None and not (isinstance(v, float) and math.isnan(v))} for r in table]


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, str | np.str_):
        return str(got) == str(want)
    return math.isclose(float(got), float(want), rel_tol=1e-6, abs_tol=1e-9)


def _check_rows(out: list[dict[str, Any]], keys: list[str], answers: list[dict[str, Any]]) -> None:
    assert [r.get("key") for r in out] == keys
    for row, want in zip(out, answers, strict=True):
        assert set(row) == {"key", *want}, row  # every column, every row: nothing empty
        for column, value in want.items():
            assert _same(row[column], value), (row, column, value)


@pytest.mark.parametrize("bad", list(BAD_AT))
# each format read once and written once (the writer fixes columns, the reader picks the path)
@pytest.mark.parametrize("fmt_in,fmt_out", [("csv", "parquet"), ("jsonl", "csv"), ("parquet", "jsonl")])
@pytest.mark.parametrize("model", MODELS)
def test_every_row_has_every_prediction_whatever_the_output_shape(handles, tmp_path, model, fmt_in, fmt_out, bad):
    # A rejected row sends its chunk down the row-by-row path; the other chunks take the
    # one-call path. Both must give the same columns, which the first chunk fixes.
    handle, answer = handles[model]
    X, _ = _data()
    X = X[:ROWS].copy()
    X[BAD_AT[bad], 0] = 99.0
    df = pd.DataFrame(X, columns=NAMES).assign(key=[f"k{i}" for i in range(ROWS)])
    src, dst = tmp_path / f"in.{fmt_in}", tmp_path / f"out.{fmt_out}"
    _write(src, df)
    summary = embedml.score(handle, src, dst, id_column="key", batch_size=CHUNK)
    good = [i for i in range(ROWS) if i != BAD_AT[bad]]
    assert (summary.scored, summary.rejected) == (ROWS - 1, 1)
    rejects = [json.loads(line) for line in summary.rejects.read_text().splitlines()]
    assert [(r["row"], r["id"]) for r in rejects] == [(BAD_AT[bad] + 1, f"k{BAD_AT[bad]}")]
    answers = answer(X[good])
    _check_rows(_read(dst), [f"k{i}" for i in good], answers)


@pytest.mark.parametrize("model", MODELS)
def test_the_ray_predictor_names_columns_as_score_does(models, handles, model):
    # The Ray integration shares the step: the same columns in a batch scored in one call
    # and in a batch with a bad row, and the model's own answer in each.
    handle, answer = handles[model]
    X, _ = _data()
    X = X[:ROWS].copy()
    predictor = EmbedMLPredictor(models.root, _store_name(model), "1")
    clean = predictor(pd.DataFrame(X, columns=NAMES))
    X[3, 0] = 99.0
    dirty = predictor(pd.DataFrame(X, columns=NAMES))
    want = answer(X)
    columns = [*NAMES, *want[0], "error"]
    assert list(clean.columns) == columns and list(dirty.columns) == columns
    assert dirty["error"].notna().tolist() == [i == 3 for i in range(ROWS)]
    for i, row in enumerate(dirty.to_dict("records")):
        if i != 3:
            assert all(_same(row[c], v) for c, v in want[i].items()), (row, want[i])


# ---------------------------------------------------------------- one bad row never ends a job


@pytest.fixture
def lr(store):
    from helpers_models import sk_logreg

    store.save("lr", sk_logreg(), input_schema=Features)
    with store.load("lr") as h:
        yield h


def _lr_answer(rows: list[list[float]]) -> list[int]:
    from helpers_models import sk_logreg

    return sk_logreg().predict(np.array(rows, dtype=float)).tolist()


def _rejects(summary: embedml.ScoreSummary) -> list[dict[str, Any]]:
    return [json.loads(line) for line in summary.rejects.read_text().splitlines()]


def _values(i: int) -> list[float]:
    return [round(0.1 * i - 1, 3), 0.5, -0.25 * (i % 3), 1.0 - 0.1 * i]


def test_a_csv_field_over_the_csv_size_limit_is_one_rejected_row(lr, tmp_path):
    big = "1" * (csv.field_size_limit() + 10)
    lines = ["key,a,b,c,d"] + [f"k{i}," + ",".join(map(str, _values(i))) for i in range(8)]
    lines[3] = f"k2,0.5,{big},1,1"  # row 3: an unquoted field over the limit
    # row 6: a quoted field over the limit that spans lines which look like rows of their own
    lines[6] = f'k5,0.5,"{big}\nk90,1,1,1,1\nk91,2,2,2,2\n",1,1'
    src, dst = tmp_path / "in.csv", tmp_path / "out.jsonl"
    src.write_text("\n".join(lines) + "\n")
    summary = embedml.score(lr, src, dst, id_column="key", batch_size=3)
    assert (summary.scored, summary.rejected) == (6, 2)
    assert [(r["row"], r["type"]) for r in _rejects(summary)] == [(3, "SchemaError"), (6, "SchemaError")]
    assert all("field larger than field limit" in r["error"] for r in _rejects(summary))
    assert "the 3 line(s) after it" in _rejects(summary)[1]["error"]  # said, never silent
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    good = [0, 1, 3, 4, 6, 7]  # the text inside the big field was not scored as rows
    assert [r["key"] for r in out] == [f"k{i}" for i in good]
    assert [r["prediction"] for r in out] == _lr_answer([_values(i) for i in good])


def test_bytes_that_are_not_utf8_cost_their_row_only(lr, tmp_path):
    rows = [f"k{i}," + ",".join(map(str, _values(i))) for i in range(6)]
    csv_src, jsonl_src = tmp_path / "in.csv", tmp_path / "in.jsonl"
    data = ("key,a,b,c,d\n" + "\n".join(rows) + "\n").encode()
    csv_src.write_bytes(data.replace(b"k3,", b"k3,\xff", 1))  # row 4, field a
    lines = [json.dumps({"key": f"k{i}", **dict(zip(NAMES, _values(i)))}).encode() for i in range(6)]
    lines[1] = lines[1].replace(b'"k1"', b'"k\xc3"')  # a cut multi-byte sequence
    jsonl_src.write_bytes(b"\n".join(lines) + b"\n")
    for src, bad_row, bad_id in ((csv_src, 4, "k3"), (jsonl_src, 2, None)):
        summary = embedml.score(lr, src, tmp_path / "out.csv", id_column="key", batch_size=2)
        assert (summary.scored, summary.rejected) == (5, 1)
        [reject] = _rejects(summary)
        assert (reject["row"], reject["id"]) == (bad_row, bad_id)
        assert "not valid UTF-8" in reject["error"]
        good = [i for i in range(6) if i != bad_row - 1]
        out = pd.read_csv(tmp_path / "out.csv")
        assert out["key"].tolist() == [f"k{i}" for i in good]
        assert out["prediction"].tolist() == _lr_answer([_values(i) for i in good])
    assert "field 'a'" in _rejects(embedml.score(lr, csv_src, tmp_path / "o.csv", id_column="key"))[0]["error"]


def test_deeply_nested_or_huge_json_costs_its_line_only(lr, tmp_path):
    lines = [json.dumps(dict(zip(NAMES, _values(i)))) for i in range(5)]
    lines[1] = "[" * 100_000 + "]" * 100_000  # RecursionError in json.loads
    lines[3] = '{"a": ' + "9" * 5000 + ', "b": 0, "c": 0, "d": 0}'  # over Python's int digit limit
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    summary = embedml.score(lr, src, tmp_path / "out.jsonl", batch_size=2)
    assert (summary.scored, summary.rejected) == (3, 2)
    rejects = _rejects(summary)
    assert [r["row"] for r in rejects] == [2, 4]
    assert "nested too deeply" in rejects[0]["error"] and "not valid JSON" in rejects[1]["error"]
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in out] == _lr_answer([_values(i) for i in (0, 2, 4)])


def test_a_json_key_given_twice_is_rejected_not_guessed(lr, tmp_path):
    # json keeps the last value silently; which one was meant cannot be told
    lines = [json.dumps(dict(zip(NAMES, _values(i)))) for i in range(3)]
    lines[1] = '{"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4, "a": 0.5}'
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    summary = embedml.score(lr, src, tmp_path / "out.jsonl")
    assert (summary.scored, summary.rejected) == (2, 1)
    [reject] = _rejects(summary)
    assert reject["row"] == 2 and "'a' more than once" in reject["error"]


def test_parquet_columns_a_schemaless_model_cannot_take_as_a_matrix(store, tmp_path):
    # A string column goes row by row to the model, which refuses each row (rejected, job
    # goes on); a bool column goes to it as the same rows from JSON Lines would, and is
    # scored with the model's own answer on them.
    from sklearn.linear_model import LinearRegression

    X, y = _data()
    model = LinearRegression().fit(X[:, :3], y)
    store.save("plain", model)
    df = pd.DataFrame({"x0": X[:6, 0], "x1": X[:6, 1], "x2": [True, False, True, True, False, False]})
    for_strings = df.assign(x2=["1.5", "a", "2", "b", "3", "c"])
    with store.load("plain") as h:
        df.to_parquet(tmp_path / "bool.parquet")
        summary = embedml.score(h, tmp_path / "bool.parquet", tmp_path / "bool.csv", batch_size=4)
        assert (summary.scored, summary.rejected) == (6, 0)
        want = model.predict(df.to_numpy(dtype=float))
        np.testing.assert_allclose(pd.read_csv(tmp_path / "bool.csv")["prediction"], want, rtol=1e-9)
        for_strings.to_parquet(tmp_path / "str.parquet")
        summary = embedml.score(h, tmp_path / "str.parquet", tmp_path / "str.csv", batch_size=4)
        assert (summary.scored, summary.rejected) == (0, 6)
        assert [r["row"] for r in _rejects(summary)] == [1, 2, 3, 4, 5, 6]
        assert all(r["type"] == "PredictionError" for r in _rejects(summary))


def test_a_parquet_value_python_cannot_hold_costs_its_row(lr, tmp_path):
    # a timestamp past year 9999 is valid Arrow but no Python datetime
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    seconds = [int(datetime.datetime(2024, 1, 1 + i).timestamp()) for i in range(5)]
    seconds[2] = 400_000_000_000  # year 14645
    columns = {n: [_values(i)[j] for i in range(5)] for j, n in enumerate(NAMES)}
    table = pa.table({"when": pa.array(seconds, pa.timestamp("s")), **columns})
    pq.write_table(table, tmp_path / "in.parquet")
    summary = embedml.score(lr, tmp_path / "in.parquet", tmp_path / "out.csv", id_column="when", batch_size=4)
    assert (summary.scored, summary.rejected) == (4, 1)
    [reject] = _rejects(summary)
    assert reject["row"] == 3 and "cannot be read" in reject["error"]
    good = [0, 1, 3, 4]
    assert pd.read_csv(tmp_path / "out.csv")["prediction"].tolist() == _lr_answer([_values(i) for i in good])


def test_file_level_failures_abort_with_an_embedml_error_and_leave_the_old_output(lr, tmp_path):
    tmp_path = tmp_path / "data"
    tmp_path.mkdir()
    dst = tmp_path / "out.csv"
    dst.write_text("previous\n")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not a parquet file PAR1")
    (tmp_path / "header.csv").write_bytes(b"a,b\xff,c,d\n1,2,3,4\n")
    (tmp_path / "twice.csv").write_text("a,b,c,d,a\n1,2,3,4,5\n")
    for name, message in (("bad.parquet", "cannot be read as Parquet"), ("header.csv", "header"), ("twice.csv", "more than once")):
        with pytest.raises(embedml.ConfigurationError, match=message):
            embedml.score(lr, tmp_path / name, dst)
    assert dst.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.parquet", "header.csv", "out.csv", "twice.csv"]


def test_ids_the_parquet_output_cannot_hold_are_rejected_not_fatal(lr, tmp_path):
    # JSON ids are typed: numbers in the first rows fix an integer column; a text id later
    # (or in the same chunk) cannot go into it.
    ids: list[Any] = [0, 1, 2, "x3", 4, 5, "x6", 7]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"key": k, **dict(zip(NAMES, _values(i)))}) + "\n" for i, k in enumerate(ids)))
    summary = embedml.score(lr, src, tmp_path / "out.parquet", id_column="key", batch_size=3)
    assert (summary.scored, summary.rejected) == (6, 2)
    assert [(r["row"], r["id"]) for r in _rejects(summary)] == [(4, "x3"), (7, "x6")]
    assert all("cannot be written" in r["error"] for r in _rejects(summary))
    out = pd.read_parquet(tmp_path / "out.parquet")
    good = [0, 1, 2, 4, 5, 7]
    assert out["key"].tolist() == good
    assert out["prediction"].tolist() == _lr_answer([_values(i) for i in good])


def test_text_that_is_not_utf8_in_an_id_is_rejected_not_fatal(lr, tmp_path):
    # "\ud800" is valid JSON but no UTF-8 file can hold it
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"key": k, **dict(zip(NAMES, _values(i)))}) + "\n" for i, k in enumerate(["a", "\ud800", "c"])))
    summary = embedml.score(lr, src, tmp_path / "out.csv", id_column="key")
    assert (summary.scored, summary.rejected) == (2, 1)
    assert [(r["row"], r["id"]) for r in _rejects(summary)] == [(2, "\ud800")]
    assert pd.read_csv(tmp_path / "out.csv")["key"].tolist() == ["a", "c"]


def test_an_output_column_named_like_the_id_column_is_refused(store, tmp_path):
    # {"row": 1, **{"row": <prediction>}} overwrote the row number with the prediction
    from helpers_models import sk_logreg

    class Row(BaseModel):
        row: int

    store.save("r", sk_logreg(), input_schema=Features, output_schema=Row)
    src = tmp_path / "in.csv"
    df = pd.DataFrame([_values(i) for i in range(3)], columns=NAMES)
    df.to_csv(src, index=False)
    with store.load("r") as h:
        for fmt in ("csv", "jsonl", "parquet"):
            with pytest.raises(embedml.ConfigurationError, match="'row'"):
                embedml.score(h, src, tmp_path / f"out.{fmt}")
        df.assign(row=["i", "j", "k"]).to_csv(src, index=False)  # an id column named "row"
        with pytest.raises(embedml.ConfigurationError, match="'row'"):
            embedml.score(h, src, tmp_path / "out.csv", id_column="row")


def test_a_record_that_breaks_validation_is_rejected_in_a_stream(lr):
    # nesting deep enough for RecursionError while the record is checked
    deep: Any = 1.0
    for _ in range(100_000):
        deep = {"x": deep}
    good = dict(zip(NAMES, _values(1)))
    records = [good, {**good, "a": deep}, good]
    results = list(lr.predict_stream(iter(records), on_error="yield", batch_size=3))
    assert isinstance(results[1], embedml.SchemaError) and results[1].index == 1
    # validation names the field (its message shows the value bounded, not a RecursionError)
    assert results[1].field == "a" and "expected a number" in str(results[1])
    assert [results[0], results[2]] == _lr_answer([_values(1)] * 2)


def _cli_store(tmp_path: Path) -> embedml.ModelStore:
    from helpers_models import sk_logreg

    store = embedml.ModelStore(tmp_path / "models")
    store.save("lr", sk_logreg(), input_schema=Features)
    return store


def test_the_cli_fails_when_every_row_was_rejected(tmp_path, capsys):
    store = _cli_store(tmp_path)
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text("key,a,b,c,d\nk0,99,0,0,0\nk1,0,0,0\n")  # out of range; a cell short
    assert main(["--store", str(store.root), "predict", "lr", "-i", str(src), "-o", str(dst), "--id-column", "key"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("embedml: error: every row (2) was rejected")
    rejects = [json.loads(line) for line in (tmp_path / "out.csv.rejects.jsonl").read_text().splitlines()]
    assert [(r["row"], r["id"]) for r in rejects] == [(1, "k0"), (2, "k1")]  # the id even of a short row
    src.write_text("key,a,b,c,d\nk0,99,0,0,0\nk1,0,0,0,0\n")
    assert main(["--store", str(store.root), "predict", "lr", "-i", str(src), "-o", str(dst), "--id-column", "key"]) == 0
    src.write_text("key,a,b,c,d\n")  # nothing to score is not a failure
    assert main(["--store", str(store.root), "predict", "lr", "-i", str(src), "-o", str(dst), "--id-column", "key"]) == 0


def test_the_ray_predictor_refuses_to_overwrite_a_dataset_column(models):
    X, _ = _data()
    predictor = EmbedMLPredictor(models.root, _store_name("(n,)"), "1")
    for clash in ("prediction", "error"):
        df = pd.DataFrame(X[:4], columns=NAMES).assign(**{clash: ["kept"] * 4})
        with pytest.raises(embedml.ConfigurationError, match=clash):
            predictor(df)
