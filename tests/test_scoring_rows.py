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
