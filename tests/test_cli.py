"""The `embedml` command: store selection, NAME@SPEC, ls / show / predict / verify / alias /
bench, one-line errors with non-zero exits, and `python -m embedml` in a child process."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel, Field

import embedml
from embedml.cli import main, parse_ref
from helpers_models import onnx_linear, sk_logreg

NAMES = ["a", "b", "c", "d"]


class Features(BaseModel):
    a: float = Field(ge=-10, le=10)
    b: float
    c: int = Field(ge=0, le=5)
    d: bool


@pytest.fixture
def models(tmp_path):
    store = embedml.ModelStore(tmp_path / "models")
    store.save("lr", sk_logreg(), input_schema=Features, metadata={"team": "risk"})
    store.save("lr", sk_logreg(), input_schema=Features)
    store.save("lr", sk_logreg(), version="2.5", input_schema=Features)
    store.set_alias("lr", "production", "1")
    store.save("lin", onnx_linear())
    return store


def run(store, *args):
    return main(["--store", str(store.root), *args])


def test_parse_ref():
    assert parse_ref("fraud") == ("fraud", "latest")
    assert parse_ref("fraud@production") == ("fraud", "@production")
    assert parse_ref("fraud@1.2") == ("fraud", "1.2")
    assert parse_ref("fraud@>=1,<2") == ("fraud", ">=1,<2")
    assert parse_ref("fraud@latest") == ("fraud", "latest")
    for bad in ("fraud@", "../x@1", "fraud@!!", "fraud@prod/x"):
        with pytest.raises(embedml.InvalidNameError):
            parse_ref(bad)


def test_ls(models, capsys):
    assert run(models, "ls") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "LATEST", "VERSIONS", "ALIASES"]
    assert lines[1].split() == ["lin", "1", "1", "-"]
    assert lines[2].split() == ["lr", "2.5", "3", "production", "->", "1"]
    assert run(models, "ls", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data[1] == {
        "name": "lr", "versions": ["1", "2", "2.5"], "latest": "2.5", "aliases": {"production": "1"}
    }


@pytest.mark.parametrize(
    ("ref", "version"),
    [("lr", "2.5"), ("lr@production", "1"), ("lr@>=2,<2.5", "2"), ("lr@2", "2")],
)
def test_show_resolves_the_spec(models, capsys, ref, version):
    assert run(models, "show", ref, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["manifest"]["version"] == version
    assert data["aliases"] == {"production": "1"}
    assert [h["version"] for h in data["history"]] == ["1", "2", "2.5"]
    assert data["history"][0]["aliases"] == ["production"]


def test_show_text(models, capsys):
    assert run(models, "show", "lr@production") == 0
    out = capsys.readouterr().out
    assert out.startswith("lr@1  (joblib, ")
    assert "  a: number  (>=-10, <=10)" in out and "  c: integer  (>=0, <=5)" in out
    assert '"team": "risk"' in out
    assert " * 1 " in out and "@production" in out


def test_predict_scores_a_file(models, tmp_path, capsys):
    X = np.random.default_rng(0).normal(size=(60, 2))
    df = pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "c": 2, "d": True})
    df.loc[9, "a"] = 42.0  # out of range: rejected
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    df.to_csv(src, index=False)
    assert run(models, "predict", "lr@production", "-i", str(src), "-o", str(dst), "--batch-size", "16") == 0
    out = capsys.readouterr().out
    assert out.startswith("lr@1: scored 59 rows")
    assert f"rejected 1 -> {dst}.rejects.jsonl" in out
    got = pd.read_csv(dst)
    good = df.drop(index=9)
    assert got["row"].tolist() == [i + 1 for i in good.index]
    np.testing.assert_array_equal(got["prediction"], sk_logreg().predict(good[NAMES].to_numpy(float)))
    rejects = [json.loads(x) for x in (tmp_path / "out.csv.rejects.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rejects] == [10]


def test_verify_reports_a_tampered_artifact(models, capsys):
    assert run(models, "verify") == 0
    assert "4 version(s) checked, 0 mismatch(es)" in capsys.readouterr().out
    path = models.resolve("lr", "2").artifact_path
    path.write_bytes(path.read_bytes() + b"x")
    assert run(models, "verify") == 1
    out = capsys.readouterr().out
    assert "MISMATCH  lr@2: " in out and "ok        lr@1" in out
    assert run(models, "verify", "lin") == 0


def test_alias(models, capsys):
    assert run(models, "alias", "lr", "staging", "2") == 0
    assert capsys.readouterr().out.strip() == "lr@staging -> 2"
    assert models.resolve("lr", "@staging").version == "2"
    assert run(models, "alias", "lr", "latest", "2") == 1
    assert "reserved" in capsys.readouterr().err


@pytest.mark.parametrize("ref", ["lr", "lin"])
def test_bench(models, capsys, ref):
    assert run(models, "bench", ref, "--seconds", "0.05", "--batch-size", "8", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["batch"]["batch_size"] == 8
    for mode in ("single", "batch", "dynamic"):
        assert data[mode]["calls"] >= 5
        assert data[mode]["p99_ms"] >= data[mode]["median_ms"] > 0
    dynamic = data["dynamic"]
    assert dynamic["threads"] == 8 and dynamic["max_batch_size"] == 8
    assert dynamic["calls"] >= 5 * 8  # every thread made its calls
    assert 1 <= dynamic["mean_batch_size"] <= 8


def test_bench_prints_the_dynamic_batching_case(models, capsys):
    before = set(threading.enumerate())
    assert run(models, "bench", "lin", "--seconds", "0.05", "--threads", "3") == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("dynamic (3 threads)"))
    calls, median, p99, rows_per_s = row.split()[3:]
    assert int(calls) >= 15 and float(p99) >= float(median) > 0 and float(rows_per_s) > 0
    assert any(line.startswith("dynamic batching: ") and "mean batch" in line for line in lines)
    assert set(threading.enumerate()) <= before  # the bench threads and the batcher are gone


def test_bench_needs_a_schema(models, capsys):
    models.save("raw", sk_logreg())  # a fitted estimator without a declared schema
    assert run(models, "bench", "raw", "--seconds", "0.05") == 1
    assert "no input schema" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "nope"], "no model 'nope'"),
        (["show", "lr@9"], "no version of 'lr' matches '9'"),
        (["show", "lr@staging"], "aliases: @production -> 1"),
        (["show", "lr@!!"], "invalid version spec"),
        (["predict", "lr", "-i", "missing.csv", "-o", "out.csv"], "does not exist"),
        (["predict", "lr", "-i", "in.txt", "-o", "out.csv"], "suffix"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_1(models, capsys, args, message):
    assert run(models, *args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("embedml: error: ") and message in err


def test_store_selection(models, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # ./models is the default store
    monkeypatch.delenv("EMBEDML_STORE", raising=False)
    assert main(["ls", "--json"]) == 0
    assert [m["name"] for m in json.loads(capsys.readouterr().out)] == ["lin", "lr"]
    other = embedml.ModelStore(tmp_path / "other")
    other.save("solo", sk_logreg(), input_schema=Features)
    monkeypatch.setenv("EMBEDML_STORE", str(other.root))
    assert main(["ls", "--json"]) == 0
    assert [m["name"] for m in json.loads(capsys.readouterr().out)] == ["solo"]
    # --store wins over the environment, before or after the command
    assert main(["ls", "--json", "--store", str(models.root)]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert main(["--store", str(tmp_path / "absent"), "ls"]) == 1
    assert "no model store at" in capsys.readouterr().err
    assert not (tmp_path / "absent").exists()  # looking does not create a store


def test_usage_errors_exit_2(models, capsys):
    assert main(["bogus"]) == 2
    assert run(models, "predict", "lr") == 2  # --input/--output missing
    assert run(models, "bench", "lr", "--batch-size", "0") == 2
    assert "expected a number >= 1" in capsys.readouterr().err


def test_python_m_embedml_in_a_child_process(models, tmp_path, subprocess_env):
    def child(*args, env=subprocess_env):
        return subprocess.run(
            [sys.executable, "-m", "embedml", *args], capture_output=True, text=True, env=env, timeout=60
        )

    for args in ([], ["ls"], ["show"], ["predict"], ["verify"], ["alias"], ["bench"]):
        r = child(*args, "--help")
        assert r.returncode == 0 and r.stdout.startswith("usage: embedml"), (args, r.stderr)
    pd.DataFrame({"a": 0.5, "b": np.arange(5.0), "c": 1, "d": False, "key": list("vwxyz")}).to_json(
        tmp_path / "in.jsonl", orient="records", lines=True
    )
    env = {**subprocess_env, "EMBEDML_STORE": str(models.root)}
    r = child("predict", "lr", "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o.jsonl"), "--id-column", "key", env=env)
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["key"] for x in (tmp_path / "o.jsonl").read_text().splitlines()] == list("vwxyz")
    r = child("show", "ghost", env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("embedml: error: no model 'ghost'")


def test_bench_inputs_respect_tight_bounds(tmp_path, capsys):
    class Tight(BaseModel):
        a: float = Field(gt=0, lt=0.001)
        b: float = Field(ge=5, le=5)
        c: int = Field(gt=2, lt=4)  # only 3
        d: bool

    store = embedml.ModelStore(tmp_path / "m")
    store.save("tight", sk_logreg(), input_schema=Tight)
    assert run(store, "bench", "tight", "--seconds", "0.02", "--json") == 0
    assert json.loads(capsys.readouterr().out)["single"]["calls"] >= 5


def test_quantize_command(models, tmp_path, capsys):
    assert run(models, "quantize", "lin", "--rows", "16") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "lin@2: int8 quantisation of lin@1"
    q = models.resolve("lin", "2")
    report = q.manifest.metadata["export"]
    assert out[1].startswith(f"size:       {report['size_before']} -> {q.manifest.size} bytes")
    assert "of 16 rows (synthetic inputs from the schema)" in out[2]
    assert q.manifest.metadata["quantized_from"] == "lin@1"

    np.save(tmp_path / "x.npy", np.random.default_rng(1).normal(size=(10, 3)).astype(np.float32))
    args = ("quantize", "lin@1", "--sample", str(tmp_path / "x.npy"), "--new-version", "1.1", "--json")
    assert run(models, *args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["version"] == "lin@1.1" and data["rows"] == 10 and data["source"] == "lin@1"
    assert 0 <= data["agreement"] <= 1 and data["max_abs_diff"] >= 0


def test_quantize_command_errors(models, tmp_path, capsys):
    assert run(models, "quantize", "lr@production") == 1
    err = capsys.readouterr().err
    assert err.startswith("embedml: error: quantize works on ONNX versions; lr@1 is 'joblib'")
    assert err.count("\n") == 1
    (tmp_path / "x.txt").write_text("1,2,3\n")
    assert run(models, "quantize", "lin", "--sample", str(tmp_path / "x.txt")) == 1
    assert "expected a .npy or .jsonl file" in capsys.readouterr().err
    assert models.versions("lin") == ["1"]
