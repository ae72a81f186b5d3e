"""Hot swap under load, in-flight calls finishing on the old version, failed warm-ups and
swaps of closed handles (following an alias: test_follow.py)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import embedml
from helpers_rollout import CLOSED, EVENTS, STARTED, Affine, Blocking

K = {"1": 1.0, "2": -2.0, "3": 3.0}


@pytest.fixture
def affine(store):
    for version, k in K.items():
        store.save("m", Affine(k), version=version, format="tracked")
    return store


def test_swap_under_load_loses_no_request_and_returns_no_wrong_result(affine):
    before = set(threading.enumerate())
    h = affine.load("m", "1")
    n_threads, per_thread = 8, 1300  # 10,400 requests
    errors: list[BaseException] = []
    seen: dict[str, int] = {}
    lock = threading.Lock()
    stop_swapping = threading.Event()
    swaps = []
    sent: list[int] = []
    CLOSED.clear()

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        mine: dict[str, int] = {}
        done = 0
        try:
            # At least per_thread calls, and on until three swaps have happened: on a busy
            # machine the swapper thread may otherwise not run before the clients finish.
            while done < per_thread or len(swaps) < 3:
                done += 1
                x = rng.normal(size=3)
                p = h.predict(x, details=True)
                assert p.output == pytest.approx(K[p.version] * x.sum()), (p.version, x)
                mine[p.version] = mine.get(p.version, 0) + 1
        except BaseException as exc:  # reported below
            errors.append(exc)
        with lock:
            sent.append(done)
            for v, c in mine.items():
                seen[v] = seen.get(v, 0) + c

    def swapper() -> None:
        targets = ["2", "3", "1"]
        i = 0
        while not stop_swapping.is_set():
            swaps.append(h.swap(targets[i % 3]))
            i += 1
            time.sleep(0.002)

    clients = [threading.Thread(target=client, args=(i,)) for i in range(n_threads)]
    for t in clients:
        t.start()
    swap_thread = threading.Thread(target=swapper)
    swap_thread.start()
    for t in clients:
        t.join()
    stop_swapping.set()
    swap_thread.join()
    assert not errors, errors[:3]
    assert sum(sent) >= n_threads * per_thread
    assert sum(seen.values()) == sum(sent)  # no request lost
    assert set(seen) == {"1", "2", "3"}  # the load really spanned swaps
    # Every swapped-out runtime was closed once drained, and the last one on close().
    assert len(CLOSED) == len(swaps)
    h.close()
    assert len(CLOSED) == len(swaps) + 1
    assert set(threading.enumerate()) == before


def test_calls_in_flight_finish_on_the_old_version_and_it_closes_after(store):
    CLOSED.clear()
    EVENTS["slow-1"] = threading.Event()
    STARTED["slow-1"] = threading.Event()
    store.save("b", Blocking(1.0, "slow-1"), version="1", format="tracked")
    store.save("b", Affine(5.0), version="2", format="tracked")
    h = store.load("b", "1")
    old = []
    t = threading.Thread(target=lambda: old.append(h.predict([1.0, 2.0], details=True)))
    t.start()
    assert STARTED["slow-1"].wait(60)  # the call is in version 1's model
    assert h.swap("2", warmup=[1.0, 1.0]) == "2"
    # New calls go to version 2 at once, while the old call is still running on version 1.
    assert h.predict([1.0, 2.0], details=True).version == "2"
    assert h.version == "2"
    assert CLOSED == []  # version 1 is still in use
    EVENTS["slow-1"].set()
    t.join()
    assert old[0].version == "1" and old[0].output == 3.0
    assert CLOSED == ["1.0"]  # closed once drained
    h.close()
    assert CLOSED == ["1.0", "5.0"]


def test_failed_warmup_keeps_the_old_version_serving(store):
    store.save("w", Affine(1.0), version="1")
    two = embedml.TensorSpec("x", "float64", [None, 2])
    store.save("w", Affine(2.0), version="2", input_schema=two)
    store.save("w", Affine(3.0), version="3", input_schema=two)
    with store.load("w", "1") as h:
        h.predict([1.0, 2.0, 3.0])  # remembered as the warm-up sample
        with pytest.raises(embedml.SchemaError):
            h.swap("2")  # version 2 takes 2 features: the live traffic would break
        assert h.version == "1"
        assert h.predict([1.0, 2.0, 3.0]) == 6.0
        assert h.swap("2", warmup=[1.0, 1.0]) == "2"
        assert h.predict([1.0, 2.0]) == 6.0
        with pytest.raises(embedml.SchemaError):
            h.predict([1.0, 2.0, 3.0])  # a bad record is not kept as the warm-up sample
        # Version 3 takes 2 features too: warmed up on [1.0, 2.0], not on the bad record.
        assert h.swap("3") == "3"
        assert h.predict([1.0, 2.0]) == 9.0


def test_swap_to_the_same_version_is_a_no_op_and_closed_handles_refuse(affine):
    h = affine.load("m", "2")
    CLOSED.clear()
    assert h.swap("2") == "2"
    assert CLOSED == []  # version 2's runtime kept, not loaded again (and the first closed)
    assert h.swap("latest") == "3"
    assert CLOSED == ["-2.0"]  # a real swap closes the runtime it replaced
    h.close()
    with pytest.raises(embedml.HandleClosedError):
        h.swap("1")
    with pytest.raises(embedml.VersionNotFoundError):
        affine.load("m", "1").swap("9")
