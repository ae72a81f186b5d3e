"""Canary and ABTest (sticky split by key, fractions, per-arm metrics, batches) and Shadow
(never blocks the caller, drops counted, disagreement statistics)."""

from __future__ import annotations

import asyncio
import math
import threading
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel

import embedml
from embedml.testing import FakeClock
from helpers_models import Broken, onnx_linear
from helpers_rollout import CLOCKS, EVENTS, Affine, Blocking, Ticking


class Req(BaseModel):
    user: int
    a: float
    b: float


K = {"1": 1.0, "2": 2.0, "3": -1.0}


@pytest.fixture
def handles(store):
    for v, k in K.items():
        store.save("m", Affine(k), version=v, input_schema=Req)
    hs = {v: store.load("m", v) for v in K}
    yield hs
    for h in hs.values():
        h.close()


def _within(count: int, n: int, p: float) -> bool:
    """``count`` is within 5 standard deviations of a Binomial(n, p) mean."""
    return abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p))


def test_equal_keys_of_other_types_route_as_in_a_fresh_process(handles):
    # Keys route by a hash of str(key): 7 and 7.0 (or 1 and True, 0.0 and -0.0) are equal in
    # Python but different keys. A router that has met one must route the other exactly as
    # a fresh router (another process) does, not by whichever came first.
    def router():
        return embedml.ABTest({"a": handles["1"], "b": handles["2"]}, key="user")

    seen = router()
    for u in range(100):
        seen.arm_for({"user": u})
    seen.arm_for({"user": 0.0})
    seen.arm_for({"user": (1, "a")})
    seen.arm_for({"user": Decimal("1.0")})
    others = [*(float(u) for u in range(100)), *(np.float32(u) for u in range(100)), True, False,
              -0.0, (1.0, "a"), Decimal("1.00")]  # fmt: skip
    again = list(range(100))  # and the values met first still route as they did
    for values in (others, again):
        fresh = [router().arm_for({"user": v}) for v in values]
        assert [seen.arm_for({"user": v}) for v in values] == fresh


def test_canary_is_sticky_by_key_and_sends_the_fraction(handles):
    canary = embedml.Canary(handles["1"], handles["2"], fraction=0.2, key="user")
    n = 5000
    first = {u: canary.predict({"user": u, "a": 1.0, "b": 0.0}, details=True).version for u in range(n)}
    again = {u: canary.predict({"user": u, "a": 1.0, "b": 0.0}, details=True).version for u in range(n)}
    assert first == again  # the same user always meets the same version
    on_candidate = {u for u, v in first.items() if v == "2"}
    assert _within(len(on_candidate), n, 0.2)
    assert canary.arm_for({"user": 7, "a": 0, "b": 0}) == ("candidate" if 7 in on_candidate else "primary")
    # Ramping up only moves users from primary to candidate.
    canary.fraction = 0.5
    ramped = {u for u in range(n) if canary.predict({"user": u, "a": 1.0, "b": 0.0}, details=True).version == "2"}
    assert on_candidate <= ramped and _within(len(ramped), n, 0.5)
    canary.fraction = 1.0
    assert canary.predict({"user": 3, "a": 1.0, "b": 0.0}) == 2.0 * 4
    m = canary.metrics()
    assert m["candidate"]["requests"] + m["primary"]["requests"] == 3 * n + 1
    assert m["primary"]["errors"] == 0 and m["primary"]["p99_ms"] >= m["primary"]["p50_ms"] > 0


def test_canary_without_key_is_random_and_key_lookup_errors_are_typed(handles):
    canary = embedml.Canary(handles["1"], handles["2"], fraction=0.3)
    n = 4000
    versions = [canary.predict({"user": 1, "a": 1.0, "b": 0.0}, details=True).version for _ in range(n)]
    assert _within(versions.count("2"), n, 0.3)
    assert len(set(versions)) == 2  # not sticky: one user meets both
    keyed = embedml.Canary(handles["1"], handles["2"], fraction=0.3, key="customer")
    with pytest.raises(embedml.SchemaError) as info:
        keyed.predict({"user": 1, "a": 1.0, "b": 0.0})
    assert info.value.field == "customer"
    with pytest.raises(embedml.ConfigurationError):
        embedml.Canary(handles["1"], handles["2"], fraction=1.5)


def test_abtest_weights_salt_batches_and_metrics(handles):
    ab = embedml.ABTest({"a": handles["1"], "b": handles["2"], "c": handles["3"]}, weights={"a": 1, "b": 3, "c": 0}, key="user")
    assert ab.weights == pytest.approx({"a": 0.25, "b": 0.75, "c": 0.0})
    records = [{"user": u, "a": 0.5, "b": 1.0} for u in range(4000)]
    batch = ab.predict_batch(records, details=True)
    one_by_one = [ab.predict(r) for r in records]
    assert np.allclose(batch.output, one_by_one)  # each record on its own arm, in input order
    assert batch.version == "2,1" or batch.version == "1,2"
    arms = [ab.arm_for(r) for r in records]
    assert _within(arms.count("a"), len(records), 0.25) and "c" not in arms
    # The same batch as a DataFrame routes by its key column identically.
    frame = ab.predict_batch(pd.DataFrame(records))
    assert np.allclose(frame, one_by_one)
    m = ab.metrics()
    assert m["a"]["rows"] + m["b"]["rows"] == 3 * len(records) and m["c"]["requests"] == 0
    # Another salt groups users differently (independent experiments).
    other = embedml.ABTest({"a": handles["1"], "b": handles["2"]}, weights=[1, 3], key="user", salt="exp2")
    assert [other.arm_for(r) for r in records] != arms
    assert asyncio.run(ab.apredict(records[0], details=True)).version == {"a": "1", "b": "2"}[arms[0]]
    with pytest.raises(embedml.ConfigurationError, match="2 weights for 3 arms"):
        embedml.ABTest({"a": handles["1"], "b": handles["2"], "c": handles["3"]}, weights=[1, 1])
    with pytest.raises(embedml.ConfigurationError):
        embedml.ABTest({"a": handles["1"]}, weights=[-1])


def test_abtest_on_onnx_arrays_with_a_callable_key(store):
    store.save("lin", onnx_linear(), version="1")
    store.save("lin", onnx_linear(), version="2")
    with store.load("lin", "1") as h1, store.load("lin", "2") as h2:
        ab = embedml.ABTest({"x": h1, "y": h2}, key=lambda row: int(row[0]))
        X = np.arange(300, dtype=np.float32).reshape(100, 3)
        out = ab.predict_batch(X)
        assert np.allclose(out, h1.predict_batch(X))
        rows = {ab.arm_for(row) for row in X}
        assert rows == {"x", "y"}


@pytest.mark.parametrize("router", ["abtest", "canary"])
def test_arm_latencies_are_measured_on_the_routers_clock(store, router):
    clock = CLOCKS["route"] = FakeClock()
    store.save("t", Ticking(1.0, "route", 0.25), version="1")
    store.save("t", Ticking(2.0, "route", 0.5), version="2")
    with store.load("t", "1") as one, store.load("t", "2") as two:
        if router == "abtest":
            split = embedml.ABTest({"a": one, "b": two}, key=lambda r: int(r[0]), clock=clock)
        else:
            split = embedml.Canary(two, one, 0.5, key=lambda r: int(r[0]), clock=clock)
        arms = {"abtest": {"a": 0.25, "b": 0.5}, "canary": {"candidate": 0.25, "primary": 0.5}}
        seconds = arms[router]
        users = np.arange(40.0)
        for u in users:
            split.predict([u, 1.0])
        asyncio.run(split.apredict([users[0], 1.0]))
        split.predict_batch(np.stack([users, np.ones(40)], axis=1)[:3])
        metrics = split.metrics()
        for arm, took in seconds.items():
            m = metrics[arm]
            assert m["requests"] > 1
            # a batch routed to both arms calls each once: every call took its model's time
            assert m["p50_ms"] == pytest.approx(1000 * took)
            assert m["mean_ms"] == pytest.approx(1000 * took)
    with pytest.raises(embedml.ConfigurationError, match="clock"):
        embedml.ABTest({"a": one}, clock="not a clock")


def test_shadow_never_blocks_the_caller_and_counts_drops(store, threads_checked):
    EVENTS["shadow-slow"] = threading.Event()
    store.save("p", Affine(1.0), version="1")
    store.save("p", Blocking(1.0, "shadow-slow"), version="2")
    with store.load("p", "1") as primary, store.load("p", "2") as slow:
        shadow = embedml.Shadow(primary, slow, queue_size=4)
        # The shadow model is stuck: if the caller waited on it, this would hang.
        results = [shadow.predict([float(i), 1.0]) for i in range(50)]
        assert results == [float(i) + 1.0 for i in range(50)]
        stats = shadow.stats()
        assert stats["submitted"] + stats["dropped"] == 50
        assert stats["dropped"] >= 50 - 4 - 1  # the queue holds 4, the thread one more
        assert shadow.wait(timeout=0.05) is False  # the shadow model is still stuck
        EVENTS["shadow-slow"].set()
        assert shadow.wait(timeout=60)
        stats = shadow.stats()
        assert stats["compared"] == stats["submitted"] and stats["disagreements"] == 0
        assert stats["mean_abs_diff"] == 0.0
        shadow.close()
        with pytest.raises(embedml.HandleClosedError):
            shadow.predict([1.0, 1.0])
        assert primary.predict([1.0, 1.0]) == 2.0  # the handles stay open


def test_shadow_disagreement_statistics_and_errors(store):
    store.save("p", Affine(1.0), version="1")
    store.save("p", Affine(1.5), version="2")
    store.save("p", Broken(), version="3")
    with store.load("p", "1") as h1, store.load("p", "2") as h2, store.load("p", "3") as h3:
        X = np.array([[1.0, 1.0], [0.0, 0.0], [2.0, -4.0]])
        with embedml.Shadow(h1, h2) as shadow:
            assert shadow.predict_batch(X, details=True).version == "1"
            assert shadow.predict(X[0]) == 2.0
            assert asyncio.run(shadow.apredict(X[1])) == 0.0
            assert shadow.wait(timeout=60)
            s = shadow.stats()
        # Rows: [1,1] -> 2 vs 3, [0,0] -> 0 vs 0, [2,-4] -> -2 vs -3; plus [1,1] and [0,0] alone.
        assert (s["compared"], s["disagreements"]) == (5, 3)
        assert s["disagreement_rate"] == pytest.approx(3 / 5)
        assert s["mean_abs_diff"] == pytest.approx((1 + 0 + 1 + 1 + 0) / 5)
        with embedml.Shadow(h1, h3) as broken:
            assert broken.predict(X[0]) == 2.0  # the shadow's failure never reaches callers
            assert broken.wait(timeout=60)
            assert broken.stats()["errors"] == 1
