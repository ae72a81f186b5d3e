"""Real model artifacts for the foundation tests, built once per process (cached).

Importable by child processes too: put this folder on ``PYTHONPATH`` (see ``child_env``).
Classes whose instances are pickled live here (not in a test module) so that a loaded
artifact can always find them.
"""

from __future__ import annotations

import collections
import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

TESTS = str(Path(__file__).resolve().parent)

# Calls made to every CountingModel in this process, by tag: the loaded copy of a saved
# CountingModel is another object, but it counts under the same tag.
CALLS: collections.Counter[str] = collections.Counter()


class CountingModel:
    """A sklearn-style model that counts its calls; it wraps a real fitted estimator or,
    without one, returns the row sums (works on any numeric matrix)."""

    def __init__(self, tag: str, inner: Any = None) -> None:
        self.tag = tag
        self.inner = inner

    def predict(self, X: Any) -> Any:
        CALLS[self.tag] += 1
        if self.inner is not None:
            return self.inner.predict(X)
        return np.asarray(X, dtype=np.float64).sum(axis=1)

    def predict_proba(self, X: Any) -> Any:
        CALLS[self.tag] += 1
        return self.inner.predict_proba(X)


class RowEcho:
    """Returns each row as a string: shows exactly what reached the model (any dtype)."""

    def predict(self, X: Any) -> Any:
        return np.asarray([repr([_plain(v) for v in row]) for row in np.asarray(X)])


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


class BatchCentered:
    """Mixes rows: each row's sum minus the mean over the batch (not row-wise)."""

    def predict(self, X: Any) -> Any:
        sums = np.asarray(X, dtype=np.float64).sum(axis=1)
        return sums - sums.mean()


class Broken:
    """A model whose predict raises: the error must reach callers as PredictionError."""

    def predict(self, X: Any) -> Any:
        raise ZeroDivisionError("model exploded")


class Tagged:
    """Predicts a constant tag for every row: identifies which save produced an artifact."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def predict(self, X: Any) -> Any:
        return np.asarray([self.tag] * len(X))


class CrashOnPickle:
    """Kills the process (no cleanup, like a power cut) while it is being written."""

    def __reduce__(self):
        os._exit(17)


class FailOnPickle:
    """Raises while it is being written: the save must leave nothing behind."""

    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def child_env(base: dict[str, str]) -> dict[str, str]:
    """``subprocess_env`` plus this folder, so children can import the helpers."""
    env = dict(base)
    env["PYTHONPATH"] = TESTS + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ---------------------------------------------------------------- datasets and sklearn


@functools.cache
def dataset() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = (X[:, 0] + 0.5 * X[:, 1] - X[:, 3] > 0).astype(np.int64)
    return X, y


@functools.cache
def sk_logreg() -> Any:
    from sklearn.linear_model import LogisticRegression

    X, y = dataset()
    return LogisticRegression().fit(X, y)


@functools.cache
def skl2onnx_logreg() -> Any:
    """The logistic regression converted with skl2onnx (no ZipMap: plain arrays out)."""
    from skl2onnx import to_onnx

    X, _ = dataset()
    return to_onnx(sk_logreg(), X[:1].astype(np.float32), options={"zipmap": False})


# ---------------------------------------------------------------- hand-built ONNX graphs

LINEAR_W = np.arange(6, dtype=np.float32).reshape(3, 2)
LINEAR_B = np.array([1.0, -1.0], dtype=np.float32)


def _model(graph: Any) -> Any:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def onnx_linear() -> Any:
    """y = x @ W + b with a dynamic batch dimension: x [batch, 3] -> y [batch, 2]."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[
            numpy_helper.from_array(LINEAR_W, "W"),
            numpy_helper.from_array(LINEAR_B, "b"),
        ],
    )
    return _model(graph)


def onnx_two_inputs() -> Any:
    """Two inputs a, b [batch, 2] float32 -> sum = a + b and prod = a * b."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Mul", ["a", "b"], ["prod"]),
        ],
        "two_inputs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 2]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("prod", TensorProto.FLOAT, ["batch", 2]),
        ],
    )
    return _model(graph)


# ---------------------------------------------------------------- torch


@functools.cache
def torch_net() -> Any:
    """A small, deterministic torch module: 4 features -> 2 softmax scores."""
    import torch

    class TinyNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hidden = torch.nn.Linear(4, 8)
            self.out = torch.nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.out(torch.relu(self.hidden(x))), dim=-1)

    torch.manual_seed(0)
    return TinyNet().eval()


@functools.cache
def torch_scripted() -> Any:
    import torch

    return torch.jit.script(torch_net())


@functools.cache
def torch_exported() -> Any:
    """``torch.export`` of the net with a dynamic batch dimension."""
    import torch

    batch = torch.export.Dim("batch")
    return torch.export.export(torch_net(), (torch.zeros(2, 4),), dynamic_shapes={"x": {0: batch}})


def torch_reference(X: np.ndarray) -> np.ndarray:
    """The raw module's output on ``X`` (as float32)."""
    import torch

    with torch.inference_mode():
        return torch_net()(torch.from_numpy(np.asarray(X, dtype=np.float32))).numpy()


#: A 4-field record schema (scoring and Ray tests), one bounded field.
NAMES = ["a", "b", "c", "d"]


class Features(BaseModel):
    a: float = Field(ge=-10, le=10)
    b: float
    c: float
    d: float


def run_python_json(code: str, *args: str, env: dict[str, str]) -> Any:
    """Run ``python -c code args...`` in a fresh process; return the JSON it prints."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=100
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def exercised_pair(store, logreg, X, y, register):
    """What the exporter tests read back: "lr" (already in ``store``, with one hook) and
    "lr2" (the same model) loaded, 3 rows predicted by "lr2", both handed to ``register``
    (the first twice: a no-op), then on "lr" 30 single calls with their outcomes, one batch
    of 20 rows and one call that fails validation. Returns both handles."""
    import pytest

    import embedml

    store.save("lr2", logreg, input_schema=embedml.TensorSpec("x", "float64", (-1, 4)))
    handle = store.load("lr", hooks=[lambda r: None])
    other = store.load("lr2")
    other.predict_batch(X[:3])
    for h in (handle, other, handle):
        register(h)
    for i in range(30):
        p = handle.predict(X[i], details=True)
        handle.log_outcome(p.request_id, y[i])
    handle.predict_batch(X[:20])
    with pytest.raises(embedml.SchemaError):
        handle.predict(np.zeros(2))
    assert handle.hooks[0].flush()
    return handle, other
