"""embedml.integrations.mlflow.import_model against a real local MLflow tracking and
registry store (MLflow's file store under a temporary folder), with real models logged
through MLflow's own flavours: a scikit-learn pipeline fitted on a DataFrame, an ONNX graph
(skl2onnx), PyTorch modules (torch.export and pickled), a custom pyfunc model."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("mlflow")  # the mlflow extra is in the dev extra

import mlflow  # noqa: E402
import mlflow.onnx  # noqa: E402
import mlflow.pyfunc  # noqa: E402
import mlflow.pytorch  # noqa: E402
import mlflow.sklearn  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402

import embedml  # noqa: E402
from embedml.cli import main as cli_main  # noqa: E402
from embedml.errors import (  # noqa: E402
    ConfigurationError,
    InvalidNameError,
    ModelNotFoundError,
    NotFoundError,
    UnsupportedFormatError,
    UntrustedArtifactError,
    VersionNotFoundError,
)
from embedml.integrations.mlflow import import_model  # noqa: E402

_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_ALLOW_FILE_STORE")


@contextlib.contextmanager
def mlflow_globals(uri: str | None) -> Iterator[None]:
    """MLflow's global configuration pointed at ``uri`` (the file store allowed), restored
    afterwards: tracking and registry URIs and the environment variables MLflow sets."""
    saved = {k: os.environ.get(k) for k in _ENV}
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    if uri is not None:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Unscriptable(torch.nn.Module):
    """A module TorchScript cannot compile (variadic forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 2)

    def forward(self, *xs):
        return self.lin(xs[0])


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def _churn_frame(n: int = 80, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({
        "tenure": rng.uniform(0, 60, n),
        "charges": rng.uniform(10, 120, n),
        "calls": rng.integers(0, 8, n),
        "plan": rng.choice(["basic", "pro", "max"], n),
    })  # fmt: skip
    y = ((X.calls > 3) ^ (X.tenure < 10)).astype(int).to_numpy()
    return X, y


def _churn_model(C: float) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    X, y = _churn_frame()
    columns = ColumnTransformer([
        ("num", StandardScaler(), ["tenure", "charges", "calls"]),
        ("cat", OneHotEncoder(handle_unknown="ignore"), ["plan"]),
    ])  # fmt: skip
    return make_pipeline(columns, LogisticRegression(C=C)).fit(X, y)


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> dict[str, Any]:
    """One MLflow store with every model the tests import (logging costs seconds: once)."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LinearRegression, LogisticRegression

    uri = (tmp_path_factory.mktemp("mlflow") / "mlruns").as_uri()
    runs: dict[str, Any] = {"uri": uri}
    X, _ = _churn_frame()
    with mlflow_globals(uri):
        for C in (1.0, 0.01):  # version 1 (champion) and version 2 (latest)
            model = _churn_model(C)
            with mlflow.start_run():
                mlflow.sklearn.log_model(
                    model, name="model", signature=infer_signature(X, model.predict(X)),
                    input_example=X.head(3), registered_model_name="churn", pip_requirements=[],
                )  # fmt: skip
        client = mlflow.MlflowClient()
        client.set_registered_model_alias("churn", "champion", "1")

        # fitted on columns a, b; logged with a signature naming a, c
        fit = pd.DataFrame({"a": [1.0, 2, 3, 4], "b": [0.0, 1, 0, 1]})
        wrong = pd.DataFrame({"a": [1.0], "c": [0.0]})
        model = LinearRegression().fit(fit, [1.0, 2, 3, 4])
        with mlflow.start_run():
            mlflow.sklearn.log_model(
                model, name="model", signature=infer_signature(wrong, np.zeros(1)),
                registered_model_name="mismatch", pip_requirements=[],
            )  # fmt: skip

        Xi = np.random.default_rng(1).normal(size=(40, 4)).astype(np.float32)
        yi = (Xi[:, 0] + Xi[:, 1] > 0).astype(int)
        runs["X4"] = Xi
        clf = LogisticRegression().fit(Xi, yi)
        onx = to_onnx(clf, Xi[:1], options={id(clf): {"zipmap": False}})
        with mlflow.start_run() as run:
            mlflow.onnx.log_model(
                onx, name="onnx_model", signature=infer_signature(Xi, clf.predict(Xi)),
                pip_requirements=[],
            )  # fmt: skip
        runs["onnx"] = run.info.run_id

        array_model = LogisticRegression().fit(Xi, yi)  # no feature names: a tensor signature
        with mlflow.start_run() as run:
            mlflow.sklearn.log_model(
                array_model, name="model", signature=infer_signature(Xi, yi),
                pip_requirements=[],
            )  # fmt: skip
        runs["sklearn_array"] = run.info.run_id

        torch.manual_seed(0)
        linear = torch.nn.Sequential(torch.nn.Linear(4, 2)).eval()
        out = linear(torch.from_numpy(Xi)).detach().numpy()
        with mlflow.start_run() as run:
            mlflow.pytorch.log_model(
                linear, name="model", signature=infer_signature(Xi, out), input_example=Xi[:2],
                pip_requirements=[],
            )  # fmt: skip
        runs["pt2"] = run.info.run_id
        with mlflow.start_run() as run:
            mlflow.pytorch.log_model(
                linear, name="model", serialization_format="pickle",
                signature=infer_signature(Xi, out), pip_requirements=[],
            )  # fmt: skip
        runs["pickled_scriptable"] = run.info.run_id
        with mlflow.start_run() as run:
            mlflow.pytorch.log_model(
                Unscriptable().eval(), name="model", serialization_format="pickle",
                signature=infer_signature(Xi, out), pip_requirements=[],
            )  # fmt: skip
        runs["unscriptable"] = run.info.run_id
        with mlflow.start_run() as run:
            mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=[])
        runs["pyfunc"] = run.info.run_id
    return runs


@pytest.fixture(autouse=True)
def _clean_mlflow_state() -> Iterator[None]:
    """Every test runs with the file store allowed and leaves MLflow's globals as found."""
    with mlflow_globals(None):
        yield


def _import(registry: dict[str, Any], uri: str, store: Any, **kwargs: Any) -> Any:
    return import_model(
        uri, store, tracking_uri=registry["uri"], registry_uri=registry["uri"], **kwargs
    )


def test_sklearn_champion_predicts_as_mlflow_pyfunc(registry, tmp_path) -> None:
    store = embedml.ModelStore(tmp_path / "models")
    mv = _import(registry, "models:/churn@champion", store)

    assert (mv.name, mv.version, mv.manifest.format) == ("churn", "1", "joblib")
    fields = mv.manifest.input_schema["fields"]
    assert [(f["name"], f["kind"]) for f in fields] == [
        ("tenure", "number"), ("charges", "number"), ("calls", "integer"), ("plan", "string"),
    ]  # fmt: skip
    prov = mv.manifest.metadata["mlflow"]
    assert prov["registered_model"] == "churn" and prov["alias"] == "champion"
    assert prov["version"] == "1"  # the alias pinned to the version it points at
    assert prov["source_uri"] == "models:/churn@champion" and prov["flavor"] == "sklearn"
    assert (
        prov["run_id"]
        == mlflow.MlflowClient(registry["uri"]).get_model_version("churn", "1").run_id
    )
    assert [c["name"] for c in prov["signature"]["inputs"]] == [
        "tenure",
        "charges",
        "calls",
        "plan",
    ]

    X, _ = _churn_frame(50, seed=7)
    with mlflow_globals(registry["uri"]):
        expected = mlflow.pyfunc.load_model("models:/churn@champion").predict(X)
    # the second version differs: the comparison can tell which one was imported
    assert not np.array_equal(expected, _churn_model(0.01).predict(X))
    with store.load("churn") as handle:
        np.testing.assert_array_equal(handle.predict_batch(X), expected)
        # records by name, in another key order than the signature's
        shuffled = X[["plan", "calls", "charges", "tenure"]].to_dict("records")
        np.testing.assert_array_equal(handle.predict_batch(shuffled), expected)


def test_version_and_latest_uris_and_no_global_change(registry, tmp_path) -> None:
    before = (mlflow.get_tracking_uri(), dict(os.environ))
    store = embedml.ModelStore(tmp_path / "models")
    latest = _import(registry, "models:/churn/latest", store, name="churn_latest")
    pinned = _import(registry, "models:/churn/1", store, name="churn_v1", version="7")

    assert latest.manifest.metadata["mlflow"]["version"] == "2"
    assert (pinned.version, pinned.manifest.metadata["mlflow"]["version"]) == ("7", "1")
    assert (mlflow.get_tracking_uri(), dict(os.environ)) == before


def test_logged_model_id_uri(registry, tmp_path) -> None:
    version = mlflow.MlflowClient(registry["uri"]).get_model_version("churn", "2")
    mv = _import(registry, f"models:/{version.model_id}", tmp_path / "models", name="by_id")
    prov = mv.manifest.metadata["mlflow"]
    assert (prov["model_id"], prov["run_id"]) == (version.model_id, version.run_id)
    X, _ = _churn_frame(20, seed=3)
    with embedml.ModelStore(tmp_path / "models").load("by_id") as handle:
        np.testing.assert_array_equal(handle.predict_batch(X), _churn_model(0.01).predict(X))


def test_default_is_mlflows_own_configuration(registry, tmp_path) -> None:
    with mlflow_globals(registry["uri"]):
        mv = import_model("models:/churn@champion", tmp_path / "models")
    assert mv.manifest.metadata["mlflow"]["registry_uri"] == registry["uri"]


def test_signature_that_disagrees_with_the_model_is_refused(registry, tmp_path) -> None:
    store = embedml.ModelStore(tmp_path / "models")
    with pytest.raises(ConfigurationError, match="MLflow signature does not agree") as info:
        _import(registry, "models:/mismatch/1", store)
    assert "'b'" in str(info.value) and "'c'" in str(info.value)
    assert store.models() == []
    # the model's own interface alone is accepted
    mv = _import(registry, "models:/mismatch/1", store, use_signature=False)
    assert mv.signature["feature_names"] == ["a", "b"]
    with store.load("mismatch") as handle:
        assert handle.predict({"b": 1.0, "a": 3.0}) == pytest.approx(3.0)


def test_onnx_from_a_run_predicts_as_mlflow_pyfunc(registry, tmp_path) -> None:
    store = embedml.ModelStore(tmp_path / "models")
    uri = f"runs:/{registry['onnx']}/onnx_model"
    mv = _import(registry, uri, store, name="lr_onnx")

    assert mv.manifest.format == "onnx"
    assert mv.manifest.input_schema["tensors"] == [
        {"name": "X", "dtype": "float32", "shape": [-1, 4]}
    ]
    assert mv.manifest.metadata["mlflow"]["run_id"] == registry["onnx"]
    X = registry["X4"]
    with mlflow_globals(registry["uri"]):
        expected = mlflow.pyfunc.load_model(uri).predict(X)
    with store.load("lr_onnx") as handle:
        got = handle.predict_batch(X)
    np.testing.assert_array_equal(got["label"], expected["label"])
    np.testing.assert_allclose(got["probabilities"], expected["probabilities"], rtol=1e-6)


@pytest.mark.parametrize(
    ("run", "fmt"), [("pt2", "torch_export"), ("pickled_scriptable", "torchscript")]
)
def test_pytorch_predicts_as_mlflow_pyfunc(registry, tmp_path, run, fmt) -> None:
    store = embedml.ModelStore(tmp_path / "models")
    uri = f"runs:/{registry[run]}/model"
    mv = _import(registry, uri, store, name="lin")

    assert mv.manifest.format == fmt
    [spec] = mv.manifest.input_schema["tensors"]
    assert (spec["dtype"], spec["shape"]) == ("float32", [-1, 4])
    X = registry["X4"]
    with mlflow_globals(registry["uri"]):
        expected = mlflow.pyfunc.load_model(uri).predict(X)
    with store.load("lin") as handle:
        np.testing.assert_allclose(handle.predict_batch(X), expected, rtol=1e-6)


def test_sklearn_fitted_on_an_array_takes_the_tensor_signature(registry, tmp_path) -> None:
    store = embedml.ModelStore(tmp_path / "models")
    uri = f"runs:/{registry['sklearn_array']}/model"
    mv = _import(registry, uri, store, name="arr")
    assert mv.manifest.input_schema["tensors"] == [
        {"name": "input", "dtype": "float32", "shape": [-1, 4]}
    ]
    X = registry["X4"]
    with mlflow_globals(registry["uri"]):
        expected = mlflow.pyfunc.load_model(uri).predict(X)
    with store.load("arr") as handle:
        np.testing.assert_array_equal(handle.predict_batch(X), expected)


def test_unscriptable_pickled_pytorch_says_what_to_log(registry, tmp_path) -> None:
    store = embedml.ModelStore(tmp_path / "models")
    with pytest.raises(UnsupportedFormatError, match="serialization_format='pt2'"):
        _import(registry, f"runs:/{registry['unscriptable']}/model", store, name="u")
    assert store.models() == []


def test_mlflows_code_execution_policy_is_respected(registry, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_MODEL_CODE_EXECUTION", "false")
    store = embedml.ModelStore(tmp_path / "models")
    with pytest.raises(UntrustedArtifactError, match="MLFLOW_ALLOW_MODEL_CODE_EXECUTION"):
        _import(registry, "models:/churn@champion", store)
    with pytest.raises(UntrustedArtifactError):
        _import(registry, f"runs:/{registry['pickled_scriptable']}/model", store, name="p")
    # a torch.export archive holds no pickle: MLflow checks it and lets it through
    mv = _import(registry, f"runs:/{registry['pt2']}/model", store, name="lin")
    assert mv.manifest.format == "torch_export"


def test_custom_pyfunc_flavour_is_refused(registry, tmp_path) -> None:
    with pytest.raises(UnsupportedFormatError, match="python_function"):
        _import(registry, f"runs:/{registry['pyfunc']}/model", tmp_path / "m", name="echo")


@pytest.mark.parametrize(
    ("uri", "error", "text"),
    [
        ("s3://bucket/churn", InvalidNameError, "not an MLflow model URI"),
        ("models:/churn/Production", InvalidNameError, "stages are deprecated"),
        ("models:/nope@champion", ModelNotFoundError, "no registered model 'nope'"),
        ("models:/churn@nope", VersionNotFoundError, "champion"),
        ("models:/churn/99", VersionNotFoundError, "no version 99"),
        ("runs:/0123456789abcdef/model", NotFoundError, "no run"),
        ("models:/m-0123456789abcdef", NotFoundError, "no logged model"),
    ],
)
def test_bad_uris_are_typed_errors(registry, tmp_path, uri, error, text) -> None:
    with pytest.raises(error, match=text):
        _import(registry, uri, tmp_path / "models", name="x")


def test_missing_artifact_and_missing_name(registry, tmp_path) -> None:
    with pytest.raises(NotFoundError, match="cannot download"):
        _import(registry, f"runs:/{registry['onnx']}/no_such_model", tmp_path / "m", name="x")
    with pytest.raises(ConfigurationError, match="pass name="):
        _import(registry, f"runs:/{registry['onnx']}/onnx_model", tmp_path / "m")


def test_signed_import_verifies(registry, tmp_path) -> None:
    store = embedml.ModelStore(tmp_path / "models")
    key = "k" * 32
    mv = _import(registry, "models:/churn@champion", store, signing_key=key)
    assert (mv.path / "manifest.sig").is_file()
    assert store.verify("churn", signing_key=key, require_signature=True) == {"churn@1": None}


def test_cli_import_mlflow(registry, tmp_path, capsys) -> None:
    store = tmp_path / "models"
    args = ["import-mlflow", "models:/churn@champion", "--store", str(store), "--name", "c"]
    args += ["--tracking-uri", registry["uri"], "--registry-uri", registry["uri"]]
    assert cli_main(args) == 0
    assert "as c@1 (joblib)" in capsys.readouterr().out
    bad = [
        "import-mlflow",
        "models:/nope/1",
        "--store",
        str(store),
        "--tracking-uri",
        registry["uri"],
    ]
    assert cli_main(bad) == 1
    assert "no registered model 'nope'" in capsys.readouterr().err


def test_without_mlflow_the_error_names_the_extra(subprocess_env, tmp_path) -> None:
    code = (
        "import sys\n"
        "sys.modules['mlflow'] = None  # as if mlflow-skinny were not installed\n"
        "from embedml.errors import MissingExtraError\n"
        "from embedml.integrations.mlflow import import_model\n"
        "try:\n"
        f"    import_model('models:/churn/1', {str(tmp_path / 'm')!r})\n"
        "except MissingExtraError as exc:\n"
        "    print(exc.extra, exc.name, 'embedml[mlflow]' in str(exc))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.stdout.split() == ["mlflow", "mlflow", "True"], done.stderr
