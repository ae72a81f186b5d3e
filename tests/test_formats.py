"""Formats: every built-in loader gives the raw model's results; load options; the plug-in
registry; lazy imports of onnxruntime and torch."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel

import embedml
from embedml.formats import get_format, unregister_format
from helpers_models import (
    LINEAR_B,
    LINEAR_W,
    dataset,
    onnx_linear,
    onnx_two_inputs,
    run_python_json,
    sk_logreg,
    skl2onnx_logreg,
    torch_exported,
    torch_reference,
    torch_scripted,
)

# ---------------------------------------------------------------- sklearn via joblib / pickle


@pytest.mark.parametrize("fmt", ["joblib", "pickle"])
def test_sklearn_results_equal_raw_model(store, fmt):
    X, _ = dataset()
    raw = sk_logreg()
    store.save("lr", raw, format=fmt)
    with store.load("lr") as h:
        assert h.format == fmt
        np.testing.assert_array_equal(h.predict_batch(X), raw.predict(X))
        assert h.predict(X[7]) == raw.predict(X[7:8])[0]
    with store.load("lr", method="predict_proba") as h:
        # probabilities come with the classifier's labels, in the columns' order
        out = h.predict_batch(X)
        assert out["classes"] == raw.classes_.tolist()
        np.testing.assert_array_equal(out["probabilities"], raw.predict_proba(X))
        one = h.predict(X[3])
        assert one["classes"] == raw.classes_.tolist()
        np.testing.assert_array_equal(one["probabilities"], raw.predict_proba(X[3:4])[0])


def test_sklearn_method_must_exist(store):
    store.save("lr", sk_logreg())
    with pytest.raises(embedml.UnsupportedFormatError, match="no method 'transform'"):
        store.load("lr", method="transform")


def test_sklearn_pipeline_fitted_on_dataframe_gets_named_columns(store):
    """A model fitted on a DataFrame selects columns by name; records arrive as a DataFrame."""
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = dataset()
    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    pipe = make_pipeline(
        ColumnTransformer([("num", StandardScaler(), ["d", "a"])]), LogisticRegression()
    ).fit(df, y)
    store.save("pipe", pipe)
    with store.load("pipe") as h:
        np.testing.assert_array_equal(h.predict_batch(X), pipe.predict(df))
        np.testing.assert_array_equal(h.predict_batch(df), pipe.predict(df))


# ---------------------------------------------------------------- ONNX


def test_skl2onnx_results_equal_raw_model(store):
    X, _ = dataset()
    raw = sk_logreg()
    store.save("lr", skl2onnx_logreg())
    with store.load("lr") as h:
        out = h.predict_batch(X)
        assert set(out) == {"label", "probabilities"}
        np.testing.assert_array_equal(out["label"], raw.predict(X))
        np.testing.assert_allclose(out["probabilities"], raw.predict_proba(X), atol=1e-5)
        one = h.predict(X[0])
        assert one["label"] == raw.predict(X[:1])[0]
        np.testing.assert_allclose(one["probabilities"], raw.predict_proba(X[:1])[0], atol=1e-5)
        # the input spec came from the model itself: float32 [batch, 4]
        assert h.input_schema.specs == (embedml.TensorSpec("X", "float32", (-1, 4)),)
    with store.load("lr", outputs="probabilities") as h:
        np.testing.assert_allclose(h.predict_batch(X), raw.predict_proba(X), atol=1e-5)
    with store.load("lr", outputs=["label"]) as h:
        out = h.predict_batch(X)
        assert list(out) == ["label"]
        np.testing.assert_array_equal(out["label"], raw.predict(X))


def test_skl2onnx_with_zipmap(store):
    """skl2onnx's default ZipMap output (a sequence of maps) comes back as a list of dicts."""
    from skl2onnx import to_onnx

    X, _ = dataset()
    raw = sk_logreg()
    store.save("zm", to_onnx(raw, X[:1].astype(np.float32)))
    with store.load("zm") as h:
        out = h.predict_batch(X[:5])
        np.testing.assert_array_equal(out["output_label"], raw.predict(X[:5]))
        proba = [[row[0], row[1]] for row in out["output_probability"]]
        np.testing.assert_allclose(proba, raw.predict_proba(X[:5]), atol=1e-5)


class Features(BaseModel):
    a: float
    b: float
    c: float
    d: float


def test_record_schema_on_onnx_and_torch_models(store):
    """Records become a float64 matrix, cast (within range) to the model's float32 input."""
    X, _ = dataset()
    records = [dict(zip("abcd", map(float, row))) for row in X[:6]]
    store.save("onnx", skl2onnx_logreg(), input_schema=Features)
    store.save("ts", torch_scripted(), input_schema=Features)
    store.save("ep", torch_exported(), input_schema=Features)
    with store.load("onnx", outputs="label") as h:
        np.testing.assert_array_equal(h.predict_batch(records), sk_logreg().predict(X[:6]))
        assert h.predict(records[2]) == sk_logreg().predict(X[2:3])[0]
    for name in ("ts", "ep"):
        with store.load(name) as h:
            np.testing.assert_allclose(h.predict_batch(records), torch_reference(X[:6]), rtol=1e-6)
            with pytest.raises(embedml.SchemaError) as exc:
                h.predict({**records[0], "d": "x"})
            assert exc.value.field == "d"


def test_onnx_unknown_output_is_refused(store):
    store.save("lr", skl2onnx_logreg())
    with pytest.raises(embedml.UnsupportedFormatError, match="probabilities"):
        store.load("lr", outputs="proba")


def test_hand_built_onnx_graph_with_dynamic_batch(store):
    store.save("linear", onnx_linear())
    rng = np.random.default_rng(1)
    with store.load("linear") as h:
        for n in (1, 3, 17):
            x = rng.normal(size=(n, 3)).astype(np.float32)
            np.testing.assert_allclose(h.predict_batch(x), x @ LINEAR_W + LINEAR_B, rtol=1e-6)
        np.testing.assert_allclose(h.predict([1.0, 2.0, 3.0]), [17.0, 21.0], rtol=1e-6)
        with pytest.raises(embedml.SchemaError, match="dimension 1 must be 3"):
            h.predict_batch(np.zeros((2, 4), np.float32))


def test_onnx_graph_with_two_inputs_and_two_outputs(store):
    store.save("two", onnx_two_inputs())
    a = np.array([[1, 2], [3, 4]], np.float32)
    b = np.array([[10, 20], [30, 40]], np.float32)
    with store.load("two") as h:
        out = h.predict_batch({"a": a, "b": b})
        np.testing.assert_array_equal(out["sum"], a + b)
        np.testing.assert_array_equal(out["prod"], a * b)
        one = h.predict({"a": a[1], "b": b[1]})
        np.testing.assert_array_equal(one["sum"], a[1] + b[1])
        with pytest.raises(embedml.SchemaError) as exc:
            h.predict_batch({"a": a})
        assert exc.value.field == "b"
        with pytest.raises(embedml.SchemaError, match="different batch sizes"):
            h.predict_batch({"a": a, "b": b[:1]})
    with store.load("two", outputs="prod") as h:
        np.testing.assert_array_equal(h.predict_batch({"a": a, "b": b}), a * b)


def test_onnx_session_options(store, tmp_path):
    store.save("linear", onnx_linear())
    # ONNX Runtime writes the optimised graph to optimized_model_filepath as it builds the
    # session: the file shows that the handle's session was built with these options.
    written = tmp_path / "from-dict.onnx"
    opts = {
        "intra_op_num_threads": 1, "inter_op_num_threads": 1, "enable_cpu_mem_arena": False,
        "optimized_model_filepath": str(written),
    }  # fmt: skip
    with store.load("linear", session_options=opts) as h:
        assert written.is_file()
        np.testing.assert_allclose(h.predict([0.0, 0.0, 0.0]), LINEAR_B)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.optimized_model_filepath = str(tmp_path / "from-object.onnx")
    with store.load("linear", session_options=so) as h:
        assert (tmp_path / "from-object.onnx").is_file()
        np.testing.assert_allclose(h.predict([0.0, 0.0, 0.0]), LINEAR_B)
    # each attribute of the dict reaches the session, which runs on the CPU only (the
    # format's runtime, as a plug-in's caller sees it)
    runtime = get_format("onnx").load(
        onnx_linear().SerializeToString(), embedml.FormatOptions(session_options=opts)
    )
    got = runtime.session.get_session_options()  # type: ignore[attr-defined]
    assert (got.intra_op_num_threads, got.inter_op_num_threads) == (1, 1)
    assert got.enable_cpu_mem_arena is False
    assert runtime.session.get_providers() == ["CPUExecutionProvider"]  # type: ignore[attr-defined]
    with pytest.raises(embedml.UnsupportedFormatError, match="no_such_option"):
        store.load("linear", session_options={"no_such_option": 1})


def test_options_that_do_not_apply_are_refused(store):
    store.save("linear", onnx_linear())
    store.save("lr", sk_logreg())
    with pytest.raises(embedml.UnsupportedFormatError, match="method="):
        store.load("linear", method="predict_proba")
    with pytest.raises(embedml.UnsupportedFormatError, match="session_options="):
        store.load("lr", session_options={"intra_op_num_threads": 1})
    with pytest.raises(embedml.UnsupportedFormatError, match="outputs="):
        store.load("lr", outputs="label")


def test_corrupt_onnx_is_unsupported_format(store):
    store.save("junk", b"this is not an onnx graph", format="onnx")
    with pytest.raises(embedml.UnsupportedFormatError, match="ONNX Runtime"):
        store.load("junk")


# ---------------------------------------------------------------- torch


def test_torchscript_results_equal_raw_module(store):
    X, _ = dataset()
    store.save("ts", torch_scripted())
    with store.load("ts") as h:
        assert h.format == "torchscript"
        np.testing.assert_allclose(h.predict_batch(X), torch_reference(X), rtol=1e-6)
        np.testing.assert_allclose(h.predict(X[5]), torch_reference(X[5:6])[0], rtol=1e-6)


def test_torchscript_runs_in_eval_mode(store):
    """A module saved in training mode runs in eval mode: its dropout is off, so results
    are the eval-mode module's, every time."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.Dropout(0.5)).train()
    store.save("dropout", torch.jit.script(net))
    X = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    with torch.inference_mode():
        expected = net.eval()(torch.from_numpy(X)).numpy()
    with store.load("dropout") as h:
        for _ in range(3):  # in training mode, about half the 512 outputs would be zeroed
            np.testing.assert_allclose(h.predict_batch(X), expected, rtol=1e-6)


def test_torch_export_results_equal_raw_module(store):
    X, _ = dataset()
    store.save("ep", torch_exported())
    with store.load("ep") as h:
        assert h.format == "torch_export"
        for n in (1, 2, 300):  # the batch dimension is dynamic
            np.testing.assert_allclose(h.predict_batch(X[:n]), torch_reference(X[:n]), rtol=1e-6)
        np.testing.assert_allclose(h.predict(X[9]), torch_reference(X[9:10])[0], rtol=1e-6)
        with pytest.raises(embedml.SchemaError, match="dimension 1 must be 4"):
            h.predict_batch(np.zeros((2, 5), np.float32))


def test_torch_runs_under_inference_mode(store):
    import torch

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # 1 when called without autograd (inference mode) and in eval mode, else 0
            flag = float(not torch.is_grad_enabled() and not self.training)
            return x[:, :1] * 0 + flag

    store.save("probe", torch.jit.script(Probe().train()))
    with store.load("probe") as h:
        np.testing.assert_array_equal(h.predict_batch(np.ones((2, 3), np.float32)), [[1], [1]])


# ---------------------------------------------------------------- plug-in formats


class NpyLinear(embedml.ModelFormat):
    """A linear model stored as a .npy weight matrix: y = x @ W."""

    name = "npy_linear"
    suffixes = (".npy",)

    def claims(self, obj: Any) -> bool:
        return isinstance(obj, np.ndarray) and obj.ndim == 2

    def dump(self, obj: Any, path: Path) -> None:
        with open(path, "wb") as f:
            np.save(f, obj, allow_pickle=False)

    def load(self, data: bytes, options: embedml.FormatOptions) -> embedml.Runtime:
        weights = np.load(io.BytesIO(data), allow_pickle=False)

        class Linear(embedml.Runtime):
            input_specs = [embedml.TensorSpec("x", "float64", (-1, weights.shape[0]))]

            def predict(self, inputs: Any) -> Any:
                return inputs @ weights

        return Linear()

    def frameworks(self, obj: Any | None = None) -> list[str]:
        return ["numpy"]


@pytest.fixture
def npy_format():
    embedml.register_format(NpyLinear)
    try:
        yield NpyLinear
    finally:
        unregister_format(NpyLinear.name)


def test_custom_format_plugs_in(store, tmp_path, npy_format):
    assert "npy_linear" in embedml.available_formats()
    W = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    mv = store.save("lin", W)  # claimed by the plug-in, not pickled by joblib
    assert mv.manifest.format == "npy_linear"
    assert mv.manifest.frameworks == {"numpy": np.__version__}
    assert mv.artifact_path.name == "model.npy"
    path = tmp_path / "weights.npy"
    np.save(path, 2 * W)
    assert store.save("lin", path).manifest.format == "npy_linear"  # suffix inferred
    x = np.array([[1.0, 2.0, 3.0]])
    with store.load("lin", "1") as h:
        np.testing.assert_array_equal(h.predict_batch(x), x @ W)
        with pytest.raises(embedml.SchemaError, match="dimension 1 must be 3"):
            h.predict_batch(np.ones((1, 2)))  # the runtime's own input spec is enforced
    with store.load("lin", "2") as h:
        np.testing.assert_array_equal(h.predict(x[0]), (x @ (2 * W))[0])


def test_duplicate_registration_is_refused(npy_format):
    with pytest.raises(ValueError, match="already registered"):
        embedml.register_format(NpyLinear)

    class FakeOnnx(NpyLinear):
        name = "onnx"

    with pytest.raises(ValueError, match="already registered"):
        embedml.register_format(FakeOnnx)
    assert type(embedml.formats.get_format("onnx")).__name__ == "OnnxFormat"

    class Nameless(embedml.ModelFormat):
        def dump(self, obj, path):  # pragma: no cover - never called
            raise NotImplementedError

        def load(self, data, options):  # pragma: no cover - never called
            raise NotImplementedError

    with pytest.raises(ValueError, match="'name' and 'suffixes'"):
        embedml.register_format(Nameless)


def test_unregistered_format_is_gone_and_unknown_formats_list_registered(store, npy_format):
    store.save("lin", np.eye(2))
    unregister_format("npy_linear")
    assert "npy_linear" not in embedml.available_formats()
    with pytest.raises(embedml.UnsupportedFormatError) as exc:
        store.load("lin")
    msg = str(exc.value)
    assert "npy_linear" in msg
    for builtin in ("joblib", "onnx", "pickle", "torch_export", "torchscript"):
        assert builtin in msg
    with pytest.raises(embedml.UnsupportedFormatError, match="registered formats: joblib"):
        store.save("x", np.eye(2), format="nope")
    embedml.register_format(NpyLinear)  # the fixture unregisters it again


def test_builtin_formats():
    assert set(embedml.available_formats()) >= {
        "joblib",
        "pickle",
        "onnx",
        "torchscript",
        "torch_export",
    }


# ---------------------------------------------------------------- lazy imports

_LAZY = """
import json, sys, tempfile
import numpy as np
def heavy():
    return sorted(m for m in ("onnxruntime", "torch", "onnx", "sklearn") if m in sys.modules)
import embedml
seen = {"import": heavy()}
store = embedml.ModelStore(tempfile.mkdtemp())
seen["store"] = heavy()
store.save("obj", np.eye(2), format="pickle")
store.load("obj", method="__len__")
seen["pickle"] = heavy()
store.save("onnx", open(sys.argv[1], "rb").read())
seen["onnx-save"] = heavy()
store.load("onnx").predict([1.0, 2.0, 3.0])
seen["onnx-load"] = heavy()
store.save("ts", sys.argv[2], trust=True)  # a .pt file needs a voucher
seen["ts-save"] = heavy()
store.load("ts").predict(np.zeros(4, np.float32))
seen["ts-load"] = heavy()
print(json.dumps(seen))
"""


@pytest.mark.timeout(120)
def test_onnxruntime_and_torch_are_imported_on_first_use(tmp_path, subprocess_env):

    import torch

    (tmp_path / "m.onnx").write_bytes(onnx_linear().SerializeToString())
    torch.jit.save(torch_scripted(), str(tmp_path / "m.pt"))
    seen = run_python_json(_LAZY, str(tmp_path / "m.onnx"), str(tmp_path / "m.pt"), env=subprocess_env)
    assert seen["import"] == []
    assert seen["store"] == []
    assert seen["pickle"] == []
    # saving reads the model's declared interface (its signature), with its runtime
    assert seen["onnx-save"] == ["onnxruntime"]
    assert seen["onnx-load"] == ["onnxruntime"]
    # a TorchScript *file* is not run at save (like a pickle file): torch waits for the load
    assert seen["ts-save"] == ["onnxruntime"]
    assert seen["ts-load"] == ["onnxruntime", "torch"]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "torch_export"])
def test_saving_an_object_a_format_cannot_write_is_a_typed_error(store, fmt):
    with pytest.raises(embedml.UnsupportedFormatError, match=fmt):
        store.save("m", object(), format=fmt)
    assert store.models() == []
