"""Rolling out a new model version: save -> promote with a gate -> canary -> full rollout -> rollback.

Run it from the repository root (it works in a temporary folder and cleans up)::

    .venv/bin/python examples/rollout.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout

import embedml  # noqa: E402


class Applicant(BaseModel):
    """One request; `user_id` also routes each user to a version (sticky canary)."""

    user_id: int
    income: float
    debt: float
    age: float


def make_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.c_[rng.integers(0, 10_000, 1000), rng.normal(size=(1000, 3))]
    y = (X[:, 1] - X[:, 2] + 0.3 * X[:, 3] > 0).astype(np.int64)
    return X, y


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the follower did not pick up the alias move")
        time.sleep(0.02)


def main() -> None:
    X, y = make_data(0)
    X_hold, y_hold = make_data(1)
    with tempfile.TemporaryDirectory() as tmp:
        store = embedml.ModelStore(Path(tmp) / "models")

        # 1. Save two versions: v1 sees only income; v2 sees every feature.
        v1 = LogisticRegression().fit(np.c_[X[:, :2], np.zeros((len(X), 2))], y)
        v2 = LogisticRegression().fit(X, y)
        store.save("credit", v1, version="1", input_schema=Applicant)
        store.save("credit", v2, version="2", input_schema=Applicant)

        # 2. Promote v1, then v2 through a gate: at least 0.8 accuracy, no worse than v1.
        gate = embedml.Gate(accuracy_score, X_hold, y_hold, min_score=0.8, max_drop=0.0)
        store.set_alias("credit", "production", "1")
        store.promote("credit", "2", alias="staging", gate=embedml.Gate(accuracy_score, X_hold, y_hold, min_score=0.8))
        print("staging ->", store.aliases("credit")["staging"])

        # 3. Serve production; the handle follows the alias by itself.
        prod = store.load("credit", "@production", follow=True, poll_s=0.05)
        candidate = store.load("credit", "@staging")
        canary = embedml.Canary(prod, candidate, fraction=0.1, key="user_id")
        applicants = [
            {"user_id": int(u), "income": float(a), "debt": float(b), "age": float(c)}
            for u, a, b, c in X_hold[:500]
        ]
        versions = [canary.predict(a, details=True).version for a in applicants]
        print(f"canary: {versions.count('2')} of {len(versions)} requests on version 2")
        assert canary.predict(applicants[0], details=True).version == versions[0]  # sticky

        # Shadow: v2 sees production traffic in the background; callers get v1's answers.
        with embedml.Shadow(prod, candidate) as shadow:
            for a in applicants:
                shadow.predict(a)
            shadow.wait(timeout=30)
            print(f"shadow: disagreement rate {shadow.stats()['disagreement_rate']:.3f}")

        # 4. Full rollout: promote v2 to production (the gate compares it with v1).
        result = store.promote("credit", "2", gate=gate, who="release-bot")
        print("production ->", result.version, "| gate:", store.history("credit")[-1]["gate"]["candidate"])
        wait_until(lambda: prod.version == "2")
        print("serving", prod.predict(applicants[0], details=True).version)

        # 5. Rollback: move the alias back; every following handle swaps within poll_s.
        store.rollback("credit", who="oncall")
        wait_until(lambda: prod.version == "1")
        print("rolled back, serving", prod.predict(applicants[0], details=True).version)
        for entry in store.history("credit", alias="production"):
            print(f"  {entry['action']:9} {entry['from']} -> {entry['to']} by {entry['who']}"
                  f"{' (rollback)' if entry.get('rollback') else ''}")
        prod.close()
        candidate.close()


if __name__ == "__main__":
    main()
