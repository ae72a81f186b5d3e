"""Shared fixtures: a fresh store, real trained models, and an environment for subprocesses."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import embedml
from gcs_server import gcs_bucket, gcs_server  # noqa: F401  (fixtures: a real GCS emulator)
from redis_server import redis_server, streams, valkey_server  # noqa: F401  (real Redis / Valkey servers)
from s3_server import s3_bucket, s3_server  # noqa: F401  (fixtures: a real S3 server)

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def store(tmp_path: Path) -> embedml.ModelStore:
    return embedml.ModelStore(tmp_path / "store")


@pytest.fixture
def three(url: str) -> embedml.ModelStore:
    """``affine`` versions 1, 2, 3 (``k * row sum``, k = 1, -2, 3) in a fresh store at the
    requesting module's ``url`` fixture (the S3 and gs:// remote-store tests)."""
    # imported here: helpers_rollout registers the "tracked" format, only where it is used
    from helpers_rollout import Affine

    store = embedml.ModelStore(url)
    for k, version in ((1.0, "1"), (-2.0, "2"), (3.0, "3")):
        store.save("m", Affine(k), version=version, format="tracked")
    return store


@pytest.fixture(scope="session")
def iris_like() -> tuple[np.ndarray, np.ndarray]:
    """A small 4-feature, 2-class dataset (deterministic)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = (X[:, 0] + 0.5 * X[:, 1] - X[:, 3] > 0).astype(np.int64)
    return X, y


@pytest.fixture(scope="session")
def logreg(iris_like):
    from sklearn.linear_model import LogisticRegression

    X, y = iris_like
    return LogisticRegression().fit(X, y)


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for child Python processes that must import this checkout's embedml."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


PYTHON = sys.executable


@pytest.fixture
def threads_checked():
    """Fails the test if it leaves a thread behind (after giving each up to 10 s to end)."""
    before = set(threading.enumerate())
    yield
    for t in set(threading.enumerate()) - before:
        t.join(10)
    assert set(threading.enumerate()) - before == set()
