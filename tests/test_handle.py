"""ModelHandle: identity, predict / predict_batch / apredict, details, processing steps,
errors from inside the model, lifecycle, load options and ``embedml.load``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import uuid

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel

import embedml
from helpers_models import (
    CALLS,
    Broken,
    CountingModel,
    Tagged,
    child_env,
    dataset,
    onnx_linear,
    sk_logreg,
)
from helpers_prepost import double, explode, negate


class Features(BaseModel):
    a: float
    b: float
    c: float
    d: float


NAMES = ["a", "b", "c", "d"]


@pytest.fixture
def lr(store) -> embedml.ModelStore:
    store.save("lr", sk_logreg(), input_schema=Features)
    return store


def _records(X: np.ndarray) -> list[dict[str, float]]:
    return [dict(zip(NAMES, map(float, row))) for row in X]


# ---------------------------------------------------------------- identity and results


def test_identity(lr):
    lr.save("lr", sk_logreg(), version="1.5", input_schema=Features)
    with lr.load("lr", "1") as h:
        assert (h.name, h.version, h.format) == ("lr", "1", "joblib")
        assert h.manifest == lr.resolve("lr", "1").manifest
        assert h.state is embedml.HandleState.OPEN
        assert repr(h) == "<ModelHandle lr@1 (joblib, open)>"
        assert isinstance(h, embedml.ModelHandle)
    assert lr.load("lr").version == "1.5"


def test_results_equal_raw_model_for_every_input_kind(lr):
    X, _ = dataset()
    raw = sk_logreg().predict(X)
    with lr.load("lr") as h:
        np.testing.assert_array_equal(h.predict_batch(X), raw)
        np.testing.assert_array_equal(h.predict_batch(_records(X)), raw)
        np.testing.assert_array_equal(h.predict_batch([Features(**r) for r in _records(X)]), raw)
        np.testing.assert_array_equal(h.predict_batch(pd.DataFrame(X, columns=NAMES)), raw)
        for i in (0, 1, 99):
            assert h.predict(X[i]) == raw[i]
            assert h.predict(_records(X)[i]) == raw[i]
            assert h.predict(Features(**_records(X)[i])) == raw[i]


def test_details(lr):
    X, _ = dataset()
    with lr.load("lr") as h:
        p1 = h.predict(X[0], details=True)
        p2 = h.predict(X[0], details=True)
        assert isinstance(p1, embedml.Prediction)
        assert (p1.model, p1.version) == ("lr", "1")
        assert p1.output == h.predict(X[0])
        assert p1.request_id and p1.request_id != p2.request_id
        pb = h.predict_batch(X[:5], details=True)
        np.testing.assert_array_equal(pb.output, sk_logreg().predict(X[:5]))
        assert pb.version == "1" and pb.request_id not in (p1.request_id, p2.request_id)


def test_apredict(lr):
    X, _ = dataset()
    raw = sk_logreg().predict(X[:20])

    async def main():
        outs = await asyncio.gather(*(h.apredict(x) for x in X[:20]))
        detailed = await h.apredict(_records(X)[3], details=True)
        return outs, detailed

    with lr.load("lr") as h:
        outs, detailed = asyncio.run(main())
    np.testing.assert_array_equal(outs, raw)
    assert detailed.output == raw[3] and detailed.version == "1"


@pytest.mark.timeout(60)
def test_one_handle_shared_by_threads(store):
    store.save("linear", onnx_linear())
    rng = np.random.default_rng(5)
    inputs = [rng.normal(size=(8, 3)).astype(np.float32) for _ in range(8)]
    with store.load("linear") as h:
        expected = [h.predict_batch(x) for x in inputs]
        results: dict[int, list[np.ndarray]] = {}
        start = threading.Barrier(len(inputs))

        def work(i: int) -> None:
            start.wait()
            results[i] = [h.predict_batch(inputs[i]) for _ in range(25)]

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i, outs in results.items():
        for out in outs:
            np.testing.assert_array_equal(out, expected[i])
    assert len(results) == len(inputs)


# ---------------------------------------------------------------- errors inside the pipeline


def test_model_error_is_prediction_error(store):
    store.save("broken", Broken())
    with store.load("broken") as h:
        with pytest.raises(embedml.PredictionError, match="ZeroDivisionError") as exc:
            h.predict(np.ones(3))
        assert exc.value.stage == "model"
        assert isinstance(exc.value.__cause__, ZeroDivisionError)
        assert str(exc.value.__cause__) == "model exploded"
        with pytest.raises(embedml.PredictionError):
            h.predict_batch(np.ones((2, 3)))
        with pytest.raises(embedml.PredictionError):
            asyncio.run(h.apredict(np.ones(3)))


def _counted(store):
    tag = uuid.uuid4().hex
    store.save(tag, CountingModel(tag))
    return tag


@pytest.mark.parametrize("stage", ["preprocess", "postprocess"])
def test_step_error_is_prediction_error(store, stage):
    tag = _counted(store)
    h = store.load(tag, **{stage: explode})
    with h, pytest.raises(embedml.PredictionError, match=stage) as exc:
        h.predict_batch(np.ones((2, 3)))
    assert exc.value.stage == stage
    assert isinstance(exc.value.__cause__, ArithmeticError)
    # a failing preprocess stops the call before the model
    assert CALLS[tag] == (0 if stage == "preprocess" else 1)


def test_wrong_number_of_output_rows_is_prediction_error(store):
    tag = _counted(store)
    h = store.load(tag, postprocess=lambda out: out[:1])
    with h, pytest.raises(embedml.PredictionError, match="1 output rows for 3 input rows") as exc:
        h.predict_batch(np.ones((3, 2)))
    assert exc.value.stage == "output"


# ---------------------------------------------------------------- pre/post-processing


class Total(BaseModel):
    total: float


def test_stages_run_in_order(store):
    """validate -> preprocess -> model -> postprocess -> validate output."""

    class Two(BaseModel):
        b: int
        a: float

    seen = {}

    def pre(batch):
        seen["pre"] = batch.copy()  # the validated matrix: schema field order, float64
        return batch + 1

    def post(out):
        seen["post"] = out.copy()  # the model's raw output
        return out * 10

    tag = uuid.uuid4().hex
    store.save(tag, CountingModel(tag), input_schema=Two, output_schema=Total)
    with store.load(tag, preprocess=pre, postprocess=post) as h:
        out = h.predict_batch([{"a": 0.5, "b": 2}, {"a": 1.5, "b": 3}])
    assert seen["pre"].dtype == np.float64
    np.testing.assert_array_equal(seen["pre"], [[2.0, 0.5], [3.0, 1.5]])
    np.testing.assert_array_equal(seen["post"], [4.5, 6.5])
    # the output schema saw post's result; instances are of the class rebuilt from the
    # manifest (named after the saved one), so a fresh process gets them too
    assert [(type(o).__name__, o.model_dump()) for o in out] == [
        ("Total", {"total": 45.0}),
        ("Total", {"total": 65.0}),
    ]
    # a bad record stops before preprocess
    seen.clear()
    with store.load(tag, preprocess=pre) as h, pytest.raises(embedml.SchemaError):
        h.predict({"a": 1.0, "b": 1.5})
    assert seen == {} and CALLS[tag] == 1


def test_callables_at_load(store):
    tag = _counted(store)
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    with store.load(tag, preprocess=double, postprocess=negate) as h:
        np.testing.assert_array_equal(h.predict_batch(x), [-6.0, -14.0])
        assert h.predict(x[0]) == -6.0
    with store.load(tag, preprocess=lambda b: b + 1) as h:
        np.testing.assert_array_equal(h.predict_batch(x), [5.0, 9.0])


def test_import_paths_in_manifest(store):
    tag = uuid.uuid4().hex
    mv = store.save(
        tag,
        CountingModel(tag),
        preprocess="helpers_prepost:double",
        postprocess="helpers_prepost:negate",
    )
    assert (
        json.loads((mv.path / "manifest.json").read_text())["preprocess"]
        == "helpers_prepost:double"
    )
    x = np.array([[1.0, 2.0]])
    with store.load(tag) as h:
        np.testing.assert_array_equal(h.predict_batch(x), [-6.0])
    # a callable given at load replaces the manifest's step
    with store.load(tag, postprocess=lambda out: out + 0.5) as h:
        np.testing.assert_array_equal(h.predict_batch(x), [6.5])
    with store.load(tag, preprocess="helpers_prepost:negate") as h:
        np.testing.assert_array_equal(h.predict_batch(x), [3.0])


def test_bad_step_import_paths(store):
    tag = _counted(store)
    for path, fragment in (
        ("helpers_prepost:missing", "cannot import"),
        ("no_such_module_xyz:f", "cannot import"),
        ("helpers_prepost:NOT_CALLABLE", "not callable"),
    ):
        with pytest.raises(embedml.ConfigurationError, match=fragment):
            store.load(tag, preprocess=path)
    store.save("bad", Tagged("x"), postprocess="no_such_module_xyz:f")
    with pytest.raises(embedml.ConfigurationError, match="no_such_module_xyz"):
        store.load("bad")


@pytest.mark.timeout(120)
def test_import_paths_resolve_in_a_fresh_process(store, subprocess_env):
    tag = uuid.uuid4().hex
    store.save(
        tag,
        CountingModel(tag),
        preprocess="helpers_prepost:double",
        postprocess="helpers_prepost:negate",
    )
    code = (
        "import sys, json, embedml\n"
        "h = embedml.load(sys.argv[1], store=sys.argv[2])\n"
        "print(json.dumps(h.predict_batch([[1.0, 2.0], [0.5, 0.5]]).tolist()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, tag, str(store.root)],
        env=child_env(subprocess_env),
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [-6.0, -2.0]


# ---------------------------------------------------------------- lifecycle


def test_close_and_with(lr):
    X, _ = dataset()
    h = lr.load("lr")
    h.predict(X[0])
    h.close()
    assert h.state is embedml.HandleState.CLOSED
    assert "closed" in repr(h)
    for call in (
        lambda: h.predict(X[0]),
        lambda: h.predict_batch(X[:2]),
        lambda: asyncio.run(h.apredict(X[0])),
    ):
        with pytest.raises(embedml.HandleClosedError, match="lr@1"):
            call()
    h.close()  # idempotent
    with lr.load("lr") as h2:
        assert h2.predict(X[0]) == sk_logreg().predict(X[:1])[0]
    assert h2.state is embedml.HandleState.CLOSED
    with pytest.raises(embedml.HandleClosedError):
        h2.predict(X[0])


def test_no_threads_left_after_close(store):
    store.save("linear", onnx_linear())
    before = threading.active_count()
    for _ in range(3):
        with store.load("linear") as h:
            asyncio.run(h.apredict([1.0, 2.0, 3.0]))
            h.predict_batch(np.ones((4, 3), np.float32))
    assert threading.active_count() == before


# ---------------------------------------------------------------- load options and embedml.load


def test_unknown_load_option_is_type_error(lr):
    with pytest.raises(TypeError, match="predict_probability"):
        lr.load("lr", predict_probability=True)
    with pytest.raises(TypeError, match="batch_size"):
        embedml.load("lr", store=lr, batch_size=3)


def test_load_option_values_are_validated(lr):
    with pytest.raises(embedml.ConfigurationError, match="method"):
        lr.load("lr", method=3)
    with pytest.raises(embedml.ConfigurationError, match="preprocess"):
        lr.load("lr", preprocess=5)
    with pytest.raises(embedml.ConfigurationError, match="postprocess"):
        lr.load("lr", postprocess=[1])


def test_embedml_load_store_argument_env_and_default(tmp_path, monkeypatch):
    X, _ = dataset()
    raw = sk_logreg().predict(X[:1])[0]
    explicit = embedml.ModelStore(tmp_path / "explicit")
    explicit.save("m", Tagged("explicit"))
    from_env = embedml.ModelStore(tmp_path / "env")
    from_env.save("m", Tagged("env"))
    cwd = tmp_path / "app"
    embedml.ModelStore(cwd / "models").save("m", Tagged("default"))
    one = np.zeros(1)

    monkeypatch.chdir(cwd)
    monkeypatch.delenv("EMBEDML_STORE", raising=False)
    assert embedml.load("m").predict(one) == "default"
    assert embedml.default_store().root == (cwd / "models").absolute()
    monkeypatch.setenv("EMBEDML_STORE", str(tmp_path / "env"))
    assert embedml.load("m").predict(one) == "env"
    assert embedml.load("m", store=explicit).predict(one) == "explicit"
    assert embedml.load("m", store=str(tmp_path / "explicit")).predict(one) == "explicit"

    explicit.save("lr", sk_logreg(), version="2.1")
    explicit.set_alias("lr", "production", "2.1")
    with embedml.load("lr", "@production", store=explicit, method="predict") as h:
        assert h.version == "2.1"
        assert h.predict(X[0]) == raw
    assert embedml.load("lr", ">=2,<3", store=explicit).version == "2.1"
