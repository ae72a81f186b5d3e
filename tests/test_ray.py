"""Ray Data scale-out: embedml.integrations.ray on a local Ray (2 CPUs) started here.

Skipped when ray is not installed (`pip install 'embedml[ray]'`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel

import embedml
from conftest import SRC
from embedml.integrations.ray import EmbedMLPredictor, predict
from helpers_models import NAMES, Features, onnx_linear, sk_logreg


class Label(BaseModel):
    label: int


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'embedml[ray]'")
    pytest.importorskip("ray.data", reason="ray[data] is not installed: pip install 'embedml[ray]'")
    # Workers must import this checkout's embedml, not an installed copy.
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": SRC}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = embedml.ModelStore(tmp_path_factory.mktemp("ray") / "models")
    store.save("lr", sk_logreg(), input_schema=Features)
    store.save("lr", sk_logreg(), input_schema=Features, output_schema=Label)
    store.set_alias("lr", "production", "1")
    store.save("lin", onnx_linear())
    return store


def _frame(n: int) -> pd.DataFrame:
    X = np.random.default_rng(5).normal(size=(n, 4))
    return pd.DataFrame(X, columns=NAMES).assign(key=[f"k{i}" for i in range(n)])


def test_predictor_in_process_isolates_bad_rows(store):
    df = _frame(50)
    df.loc[[3, 40], "a"] = 99.0
    predictor = EmbedMLPredictor(store.root, "lr", "1", error_column="why")
    out = predictor(df)
    assert list(out.columns) == [*NAMES, "key", "prediction", "why"]
    good = df.drop(index=[3, 40])
    np.testing.assert_array_equal(
        out.loc[good.index, "prediction"].to_numpy(), sk_logreg().predict(good[NAMES].to_numpy())
    )
    assert out.loc[good.index, "why"].isna().all()
    assert out.loc[[3, 40], "prediction"].isna().all()
    assert "field 'a'" in out.loc[3, "why"] and "out of range" in out.loc[40, "why"]


def test_predictor_output_schema_and_tensor_models(store):
    df = _frame(20)
    out = EmbedMLPredictor(store.root, "lr", "2")(df)
    np.testing.assert_array_equal(out["label"].to_numpy(), sk_logreg().predict(df[NAMES].to_numpy()))
    X = df[["a", "b", "c"]].astype(np.float32)
    lin = EmbedMLPredictor(store.root, "lin", feature_columns=["a", "b", "c"])(df)
    with store.load("lin") as h:
        expected = h.predict_batch(X.to_numpy())
    np.testing.assert_allclose(lin[["prediction_0", "prediction_1"]].to_numpy(), expected, rtol=1e-6)
    assert lin["key"].tolist() == df["key"].tolist()


def test_errors_before_any_work(store, tmp_path):
    with pytest.raises(embedml.StoreError, match="no model store"):
        predict(None, tmp_path / "absent", "lr")
    with pytest.raises(embedml.ModelNotFoundError):
        predict(None, store.root, "ghost")
    with pytest.raises(embedml.VersionNotFoundError):
        predict(None, store.root, "lr", "@staging")
    with pytest.raises(embedml.ConfigurationError, match="az://"):
        predict(None, "az://bucket/models", "lr")  # s3:// and gs:// work; az:// does not yet
    with pytest.raises(embedml.ConfigurationError, match="no column"):
        EmbedMLPredictor(store.root, "lin", feature_columns=["x0"])(_frame(3))


def test_ray_dataset_scored_by_two_actors(ray_local, store):
    df = _frame(4000)
    df.loc[123, "a"] = -50.0
    # 8 blocks and no repartition task: both CPUs go to the two actors
    ds = ray_local.data.from_pandas([df.iloc[i::8] for i in range(8)])
    scored = predict(ds, store.root, "lr", "@production", batch_size=500, concurrency=2)
    out = scored.to_pandas().set_index("key").loc[df["key"]]
    assert len(out) == 4000
    bad = out.loc["k123"]
    assert pd.isna(bad["prediction"]) and "out of range" in bad["error"]
    good = df.drop(index=123)
    np.testing.assert_array_equal(
        out.loc[good["key"], "prediction"].to_numpy(), sk_logreg().predict(good[NAMES].to_numpy())
    )
    assert out.loc[good["key"], "error"].isna().all()


def test_ray_pins_the_version_resolved_on_the_driver(ray_local, store):
    ds = ray_local.data.from_pandas(_frame(40))
    scored = predict(ds, store.root, "lr", batch_size=16, concurrency=1)  # latest = 2
    store.save("lr", sk_logreg(), version="3", input_schema=Features)  # saved before it runs
    out = scored.to_pandas()
    assert "label" in out.columns and "prediction" not in out.columns  # version 2's output


def test_ray_dataset_scored_from_an_s3_store(ray_local, s3_bucket, tmp_path, monkeypatch):
    # the actors open the store by URL and download the version into their own cache
    cache = tmp_path / "cache"
    monkeypatch.setenv("EMBEDML_CACHE_DIR", str(cache))
    url = f"{s3_bucket.url}/models"
    embedml.ModelStore(url).save("lr", sk_logreg(), input_schema=Features)
    df = _frame(300)
    ds = ray_local.data.from_pandas(df)
    env = {**s3_bucket.server.env(), "EMBEDML_CACHE_DIR": str(cache), "PYTHONPATH": SRC}
    scored = predict(ds, url, "lr", batch_size=100, runtime_env={"env_vars": env})
    out = scored.to_pandas().set_index("key").loc[df["key"]]
    np.testing.assert_array_equal(
        out["prediction"].to_numpy(), sk_logreg().predict(df[NAMES].to_numpy())
    )
    assert out["error"].isna().all()

