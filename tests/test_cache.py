"""The many-model cache: hits share one runtime, count and byte bounds evict LRU, evicted
runtimes close once idle, concurrent loads of one model load it once."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import embedml
from helpers_models import onnx_linear
from helpers_rollout import CLOSED, Affine, SlowToLoad


@pytest.fixture
def tenants(store):
    for i in range(4):
        store.save(f"tenant{i}", Affine(float(i + 1)), version="1", format="tracked")
    CLOSED.clear()
    return store


def test_hit_shares_the_loaded_runtime_and_options_are_part_of_the_key(tenants):
    cache = embedml.ModelCache(max_models=8)
    h1 = tenants.load("tenant0", cache=cache)
    h2 = tenants.load("tenant0", cache=cache)
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 1
    h1.close()
    assert h2.predict([1.0, 2.0]) == 3.0  # one handle closing does not close the shared model
    h3 = tenants.load("tenant0", cache=cache, strict=False)  # other options: another entry
    assert cache.stats()["misses"] == 2 and len(cache) == 2
    tenants.save("lin", onnx_linear())
    opts = {"intra_op_num_threads": 1}  # a dict cannot be part of a key: loaded uncached
    h4 = tenants.load("lin", cache=cache, session_options=opts)
    h5 = tenants.load("lin", cache=cache, session_options=opts)
    assert len(cache) == 2 and cache.stats()["misses"] == 2
    for h in (h2, h3, h4, h5):
        h.close()
    assert CLOSED == []  # the cache keeps its models loaded after their handles close
    cache.clear()
    assert CLOSED == ["1.0", "1.0"] and len(cache) == 0


def test_count_bound_evicts_lru_and_closes_once_idle(tenants):
    cache = embedml.ModelCache(max_models=2)
    held = tenants.load("tenant0", cache=cache)  # still in use when evicted
    tenants.load("tenant1", cache=cache).close()
    tenants.load("tenant0", cache=cache).close()  # tenant0 is now the most recent
    tenants.load("tenant2", cache=cache).close()  # evicts tenant1 (least recently used)
    assert CLOSED == ["2.0"]
    tenants.load("tenant3", cache=cache).close()  # evicts tenant0, but `held` still uses it
    assert CLOSED == ["2.0"] and cache.stats()["evictions"] == 2
    assert held.predict([1.0, 1.0]) == 2.0
    held.close()
    assert CLOSED == ["2.0", "1.0"]
    cache.clear()
    assert sorted(CLOSED) == ["1.0", "2.0", "3.0", "4.0"]


def test_byte_bound_evicts_by_approximate_size(tenants):
    size = tenants.resolve("tenant0").manifest.size
    cache = embedml.ModelCache(max_models=100, max_bytes=int(size * 2.5))
    for i in range(4):
        tenants.load(f"tenant{i}", cache=cache).close()
    assert len(cache) == 2 and cache.nbytes <= size * 2.5
    assert sorted(CLOSED) == ["1.0", "2.0"]
    tiny = embedml.ModelCache(max_bytes=10)  # smaller than any model: served, never kept
    h = tenants.load("tenant3", cache=tiny)
    assert len(tiny) == 0 and h.predict([1.0]) == 4.0
    h.close()
    assert CLOSED.count("4.0") == 1
    with pytest.raises(embedml.ConfigurationError):
        embedml.ModelCache(max_models=0)


def test_two_threads_asking_at_once_load_once(store):
    store.save("slow", SlowToLoad(3.0, 0.5), version="1")
    SlowToLoad.LOADS.clear()
    cache = embedml.ModelCache()
    barrier = threading.Barrier(4)
    handles = []

    def ask() -> None:
        barrier.wait()
        handles.append(store.load("slow", cache=cache))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert SlowToLoad.LOADS == [3.0]
    assert cache.stats()["misses"] == 1 and cache.stats()["hits"] == 3
    assert [h.predict(np.ones(2)) for h in handles] == [6.0] * 4
    for h in handles:
        h.close()
    cache.clear()


def test_embedml_load_uses_the_process_cache_and_swaps_through_it(tenants):
    cache = embedml.default_cache()
    assert cache is embedml.default_cache()

    def loads_and_hits() -> tuple[int, int]:
        return cache.stats()["misses"], cache.stats()["hits"]

    start = loads_and_hits()
    a = embedml.load("tenant1", store=tenants)
    b = embedml.load("tenant1", store=tenants)  # a's loaded model, from the cache
    private = embedml.load("tenant1", store=tenants, cache=False)
    assert loads_and_hits() == (start[0] + 1, start[1] + 1)
    private.close()
    assert CLOSED == ["2.0"]  # private's own runtime; a's and b's stays loaded for them
    assert a.predict(np.ones(2)) == b.predict(np.ones(2)) == 4.0
    tenants.save("tenant1", Affine(10.0), version="2", format="tracked")
    a.swap("2")
    assert b.swap("2") == "2"
    assert loads_and_hits() == (start[0] + 2, start[1] + 2)  # b took a's version 2 too
    assert a.predict(np.ones(2)) == b.predict(np.ones(2)) == 20.0
    a.close()
    b.close()
    cache.clear()
    # one runtime per version for a and b, plus private's: shared, not loaded per handle
    assert sorted(CLOSED) == ["10.0", "2.0", "2.0"]


def test_churn_from_many_threads_serves_right_results_and_closes_every_runtime(tenants):
    cache = embedml.ModelCache(max_models=2)
    errors: list[BaseException] = []

    def tenant_traffic(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(80):
                i = int(rng.integers(0, 4))
                with tenants.load(f"tenant{i}", cache=cache) as h:
                    assert h.predict([1.0, 2.0]) == 3.0 * (i + 1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=tenant_traffic, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    stats = cache.stats()
    assert stats["hits"] + stats["misses"] == 480 and stats["models"] <= 2
    # Every runtime loaded and then evicted was closed; the ones still cached are open.
    assert len(CLOSED) == stats["misses"] - stats["models"] == stats["evictions"]
    cache.clear()
    assert len(CLOSED) == stats["misses"]


def test_per_handle_options_are_not_part_of_the_cache_key(tenants):
    # hooks, batching and follow belong to a handle: three handles with different ones
    # share one loaded model (one load), each with its own hooks and batching
    cache = embedml.ModelCache(max_models=8)
    seen: list[list[str]] = [[], [], []]
    sinks = [embedml.CallableSink(lambda r, i=i: seen[i].append(r.version)) for i in range(3)]
    handles = [
        tenants.load("tenant0", cache=cache, hooks=[sinks[0]]),
        tenants.load("tenant0", cache=cache, hooks=[sinks[1]], batching=True),
        tenants.load("tenant0", "1", cache=cache, hooks=[sinks[2]], follow=True),
    ]
    assert cache.stats()["misses"] == 1 and cache.stats()["hits"] == 2 and len(cache) == 1
    assert [h.predict([1.0, 2.0]) for h in handles] == [3.0, 3.0, 3.0]
    assert handles[1].batching_stats() is not None and handles[0].batching_stats() is None
    for h in handles:
        h.close()
    assert seen == [["1"], ["1"], ["1"]]  # each call went to its own handle's hooks only
    assert CLOSED == []  # still cached
    cache.clear()
    assert CLOSED == ["1.0"]  # one model was loaded, so one is closed


def test_embedml_load_caches_by_default_and_the_store_does_not(tenants):
    embedml.default_cache().clear()
    before = embedml.default_cache().stats()
    with (
        embedml.load("tenant2", store=tenants, hooks=[lambda r: None]),
        embedml.load("tenant2", store=tenants, batching=True),
    ):
        pass
    after = embedml.default_cache().stats()
    assert after["misses"] - before["misses"] == 1 and after["hits"] - before["hits"] == 1
    with tenants.load("tenant2"), tenants.load("tenant2"):  # private copies
        assert embedml.default_cache().stats()["misses"] == after["misses"]
    embedml.default_cache().clear()
