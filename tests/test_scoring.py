"""Batch scoring (embedml.score): CSV / JSON Lines / Parquet in and out, rejects with row
numbers, id columns, atomic overwrite, bounded memory on files many chunks long."""

from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel

import embedml
from helpers_models import NAMES, Features, onnx_linear, sk_logreg


class Score(BaseModel):
    label: int


@pytest.fixture
def handle(store):
    store.save("lr", sk_logreg(), input_schema=Features)
    with store.load("lr") as h:
        yield h


def _frame(n: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.normal(size=(n, 4)), columns=NAMES)


def _expected(df: pd.DataFrame) -> np.ndarray:
    return sk_logreg().predict(df[NAMES].to_numpy())


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_csv_to_csv_matches_direct_predictions(handle, tmp_path):
    df = _frame(2500)
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    df.to_csv(src, index=False)
    summary = embedml.score(handle, src, dst, batch_size=300)
    assert (summary.scored, summary.rejected, summary.rows) == (2500, 0, 2500)
    assert summary.output == dst and summary.rejects is None
    assert (summary.model, summary.version) == ("lr", "1")
    out = pd.read_csv(dst)
    assert list(out.columns) == ["row", "prediction"]
    assert out["row"].tolist() == list(range(1, 2501))
    np.testing.assert_array_equal(out["prediction"].to_numpy(), _expected(df))
    assert not (tmp_path / "out.csv.rejects.jsonl").exists()


def test_bad_csv_rows_are_rejected_with_row_numbers_and_the_rest_is_scored(handle, tmp_path):
    df = _frame(40)
    rows = [[repr(float(v)) for v in r] for r in df.to_numpy()]
    rows[3][1] = "abc"  # not a number
    rows[10][2] = ""  # empty cell = missing value
    rows[25][0] = "99"  # out of range [-10, 10]
    rows[31] = rows[31][:3]  # a cell short
    src, dst = tmp_path / "in.csv", tmp_path / "out.jsonl"
    with open(src, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(NAMES)
        w.writerows(rows)
    summary = embedml.score(handle, src, dst, batch_size=16)
    assert (summary.scored, summary.rejected) == (36, 4)
    assert summary.rejects == tmp_path / "out.jsonl.rejects.jsonl"
    rejects = _read_jsonl(summary.rejects)
    assert [r["row"] for r in rejects] == [4, 11, 26, 32]
    assert {r["type"] for r in rejects} == {"SchemaError"}
    assert "field 'b'" in rejects[0]["error"] and "'abc'" in rejects[0]["error"]
    assert "field 'c'" in rejects[1]["error"] and "None" in rejects[1]["error"]
    assert "field 'a'" in rejects[2]["error"] and "out of range" in rejects[2]["error"]
    assert "3 cells" in rejects[3]["error"]
    out = _read_jsonl(dst)
    good = [i for i in range(40) if i not in (3, 10, 25, 31)]
    assert [r["row"] for r in out] == [i + 1 for i in good]
    np.testing.assert_array_equal(
        [r["prediction"] for r in out], _expected(df.iloc[good])
    )


def test_jsonl_to_parquet_with_id_column_and_invalid_json(handle, tmp_path):
    df = _frame(120)
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.parquet"
    lines = [json.dumps({"id": f"tx{i}", **dict(zip(NAMES, map(float, r)))}) for i, r in enumerate(df.to_numpy())]
    lines[7] = "{not json"
    lines[50] = json.dumps({"id": "tx50", "a": 1.0, "b": 2.0, "c": 3.0})  # d missing
    src.write_text("\n".join(lines) + "\n")
    rejects = tmp_path / "bad" / "r.jsonl"
    rejects.parent.mkdir()
    summary = embedml.score(handle, src, dst, id_column="id", rejects=rejects, batch_size=32)
    assert (summary.scored, summary.rejected, summary.rejects) == (118, 2, rejects)
    bad = _read_jsonl(rejects)
    assert [(b["row"], b["id"]) for b in bad] == [(8, None), (51, "tx50")]
    assert "not valid JSON" in bad[0]["error"]
    assert "field 'd'" in bad[1]["error"] and "missing" in bad[1]["error"]
    out = pd.read_parquet(dst)
    assert list(out.columns) == ["id", "prediction"]
    good = [i for i in range(120) if i not in (7, 50)]
    assert out["id"].tolist() == [f"tx{i}" for i in good]
    np.testing.assert_array_equal(out["prediction"].to_numpy(), _expected(df.iloc[good]))


def test_parquet_to_csv_and_output_schema_columns(store, tmp_path):
    store.save("lr", sk_logreg(), input_schema=Features, output_schema=Score)
    df = _frame(500).assign(key=np.arange(1000, 1500))
    src, dst = tmp_path / "in.parquet", tmp_path / "out.csv"
    df.to_parquet(src)
    with store.load("lr") as h:
        summary = embedml.score(h, src, dst, id_column="key", batch_size=64)
    assert summary.scored == 500
    out = pd.read_csv(dst)
    assert list(out.columns) == ["key", "label"]
    assert out["key"].tolist() == list(range(1000, 1500))
    np.testing.assert_array_equal(out["label"].to_numpy(), _expected(df))


def test_tensor_model_vector_outputs(store, tmp_path):
    store.save("lin", onnx_linear())
    X = np.random.default_rng(3).normal(size=(50, 3)).astype(np.float32)
    src, dst = tmp_path / "x.csv", tmp_path / "y.jsonl"
    pd.DataFrame(X, columns=["x0", "x1", "x2"]).to_csv(src, index=False)
    with store.load("lin") as h:
        summary = embedml.score(h, src, dst, batch_size=20)
        expected = h.predict_batch(X)
    assert summary.scored == 50
    out = _read_jsonl(dst)
    assert set(out[0]) == {"row", "prediction_0", "prediction_1"}
    got = np.array([[r["prediction_0"], r["prediction_1"]] for r in out])
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_rerun_overwrites_atomically_and_removes_stale_rejects(handle, tmp_path):
    tmp_path = tmp_path / "data"
    tmp_path.mkdir()
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    df = _frame(30)
    bad = df.copy()
    bad.loc[5, "a"] = 50.0
    bad.to_csv(src, index=False)
    first = embedml.score(handle, src, dst)
    assert first.rejected == 1 and first.rejects.exists()
    df.to_csv(src, index=False)  # fixed input, same job run again
    second = embedml.score(handle, src, dst)
    assert (second.scored, second.rejected, second.rejects) == (30, 0, None)
    assert not first.rejects.exists()
    assert len(pd.read_csv(dst)) == 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv"]


def test_a_failed_job_leaves_the_old_output_and_no_temp_files(store, tmp_path):
    store.save("lr", sk_logreg(), input_schema=Features)
    tmp_path = tmp_path / "data"
    tmp_path.mkdir()
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    _frame(50).to_csv(src, index=False)
    dst.write_text("previous results\n")
    h = store.load("lr")
    h.close()  # a closed handle fails the job at its first chunk
    with pytest.raises(embedml.HandleClosedError):
        embedml.score(h, src, dst)
    assert dst.read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv"]


def test_argument_errors(handle, tmp_path):
    src = tmp_path / "in.csv"
    _frame(5).to_csv(src, index=False)
    with pytest.raises(embedml.ConfigurationError, match="suffix"):
        embedml.score(handle, src, tmp_path / "out.txt")
    with pytest.raises(embedml.ConfigurationError, match="does not exist"):
        embedml.score(handle, tmp_path / "none.csv", tmp_path / "out.csv")
    with pytest.raises(embedml.ConfigurationError, match="no id column 'key'"):
        embedml.score(handle, src, tmp_path / "out.csv", id_column="key")
    with pytest.raises(embedml.ConfigurationError, match="differ"):
        embedml.score(handle, src, src)
    with pytest.raises(embedml.ConfigurationError, match="batch_size"):
        embedml.score(handle, src, tmp_path / "out.csv", batch_size=0)


def test_empty_input_gives_an_empty_output(handle, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text(",".join(NAMES) + "\n")
    summary = embedml.score(handle, src, tmp_path / "out.parquet")
    assert (summary.scored, summary.rejected) == (0, 0)
    assert len(pd.read_parquet(summary.output)) == 0


def _peak(handle, src: Path, dst: Path) -> int:
    tracemalloc.start()
    try:
        embedml.score(handle, src, dst, batch_size=500)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_the_file(handle, tmp_path):
    small, large = tmp_path / "small.csv", tmp_path / "large.csv"
    _frame(2_000).to_csv(small, index=False)  # 4 chunks
    _frame(32_000, seed=2).to_csv(large, index=False)  # 64 chunks, 16x the rows
    peak_small = _peak(handle, small, tmp_path / "s.csv")
    peak_large = _peak(handle, large, tmp_path / "l.csv")
    # Holding the large file's records would take far more than its size on disk.
    assert peak_large < large.stat().st_size / 2
    assert peak_large < 2 * peak_small
    assert len(pd.read_csv(tmp_path / "l.csv")) == 32_000


def test_parquet_nulls_and_bad_values_are_rejected(handle, tmp_path):
    df = _frame(300)
    df.loc[17, "c"] = None  # a null, not a number: must not reach the model as NaN
    df.loc[250, "a"] = -11.0
    src, dst = tmp_path / "in.parquet", tmp_path / "out.csv"
    df.to_parquet(src)
    summary = embedml.score(handle, src, dst, batch_size=100)
    assert (summary.scored, summary.rejected) == (298, 2)
    bad = _read_jsonl(summary.rejects)
    assert [b["row"] for b in bad] == [18, 251]
    assert "field 'c'" in bad[0]["error"] and "None" in bad[0]["error"]
    assert "field 'a'" in bad[1]["error"]
    good = df.drop(index=[17, 250])
    out = pd.read_csv(dst)
    assert out["row"].tolist() == [i + 1 for i in good.index]
    np.testing.assert_array_equal(out["prediction"].to_numpy(), _expected(good))


def test_parquet_into_a_tensor_model(store, tmp_path):
    store.save("lin", onnx_linear())
    X = np.random.default_rng(4).normal(size=(64, 3)).astype(np.float32)
    src, dst = tmp_path / "x.parquet", tmp_path / "y.parquet"
    pd.DataFrame(X, columns=["x0", "x1", "x2"]).assign(k=np.arange(64)).to_parquet(src)
    with store.load("lin") as h:
        summary = embedml.score(h, src, dst, id_column="k", batch_size=10)
        expected = h.predict_batch(X)
    out = pd.read_parquet(dst)
    assert summary.scored == 64 and out["k"].tolist() == list(range(64))
    np.testing.assert_allclose(out[["prediction_0", "prediction_1"]].to_numpy(), expected, rtol=1e-6)


def test_progress_bar_only_when_asked_or_on_a_terminal(handle, tmp_path, capsys):
    src = tmp_path / "in.csv"
    _frame(300).to_csv(src, index=False)
    embedml.score(handle, src, tmp_path / "a.csv", batch_size=100)  # stderr is not a TTY here
    assert capsys.readouterr().err == ""
    embedml.score(handle, src, tmp_path / "b.csv", batch_size=100, progress=True)
    err = capsys.readouterr().err
    assert "lr@1" in err and "300" in err and "rows" in err
