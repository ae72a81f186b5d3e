"""A model that hangs: ``close(timeout)`` and ``swap(..., timeout=)`` return within their
timeout, the stuck call is abandoned (counted, logged), and the loaded version is released
when the model returns (docs/security.md, "Timeouts and hung models").

The model blocks on an event the test controls (helpers_runtime.GATE), released at the
end; nothing is timed: a close that waited for the model would return only after GATE is
set, and the test sets it only after close returned.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import numpy as np
import pytest

import embedml
import helpers_runtime as hr

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def gate():
    hr.reset()
    yield
    hr.GATE.set()  # whatever happened, let the stuck thread go


def _abandon_an_apredict(h) -> None:
    """An apredict whose batch is in the (blocked) model, then cancelled by its caller."""

    async def go():
        task = asyncio.ensure_future(h.apredict(np.ones(4)))
        while not hr.ENTERED.is_set():
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())


def test_close_returns_while_an_abandoned_batch_hangs(store, gate, caplog, threads_checked):
    store.save("gated", hr.Gated())
    h = store.load("gated", batching=embedml.Batching(inline_ms=0, max_wait_ms=0))
    pipe = h._pipe
    _abandon_an_apredict(h)
    with caplog.at_level(logging.ERROR, logger="embedml.serving.handle"):
        h.close(timeout=0.5)
    assert not hr.RETURNED.is_set()  # close did not wait for the model
    assert h.metrics()["abandoned"] == 1
    assert any("abandon" in r.getMessage() for r in caplog.records)
    with pytest.raises(embedml.HandleClosedError):
        h.predict(np.ones(4))
    hr.GATE.set()
    assert pipe.wait_closed(60)  # the stuck thread released the version when it returned
    # (threads_checked: the batcher's worker thread ends then too)


def test_swap_returns_while_an_abandoned_batch_hangs(store, gate, caplog, threads_checked):
    store.save("m", hr.Gated())  # version 1
    store.save("m", hr.RowSum())  # version 2
    h = store.load("m", "1", batching=embedml.Batching(inline_ms=0, max_wait_ms=0))
    old = h._pipe
    _abandon_an_apredict(h)
    with caplog.at_level(logging.ERROR, logger="embedml.serving.handle"):
        assert h.swap("2", timeout=0.5) == "2"
    assert not hr.RETURNED.is_set()
    assert h.metrics()["abandoned"] == 1
    assert any("abandon" in r.getMessage() for r in caplog.records)
    assert h.predict(np.ones(4)) == 4.0  # the new version serves at once
    assert asyncio.run(h.apredict(np.full(4, 2.0))) == 8.0
    hr.GATE.set()
    assert old.wait_closed(60)
    h.close()


def test_close_returns_while_a_thread_caller_hangs_in_the_model(store, gate, threads_checked):
    """Without batching (the caller's own thread runs the model) and with it (the caller
    leads its batch): close gives up after its timeout and counts the call abandoned."""
    store.save("gated", hr.Gated())
    for batching in (None, embedml.Batching(max_wait_ms=0)):
        hr.reset()
        h = store.load("gated", batching=batching)
        pipe = h._pipe
        caller = threading.Thread(target=h.predict, args=(np.ones(4),))
        caller.start()
        assert hr.ENTERED.wait(60)
        h.close(timeout=0.5)
        assert not hr.RETURNED.is_set()
        assert h.metrics()["abandoned"] == 1
        hr.GATE.set()
        caller.join(60)
        assert pipe.wait_closed(60)


def test_queued_calls_behind_a_hung_batch_are_not_lost(store, gate, threads_checked):
    """Calls queued behind the stuck batch stay queued: when the model returns they run
    (closing does not drop them), and each gets its own answer."""
    store.save("gated", hr.Gated())
    h = store.load("gated", batching=embedml.Batching(max_wait_ms=0, max_batch_size=4))
    results: dict[int, object] = {}

    def call(i):
        try:
            results[i] = h.predict(np.full(4, float(i)))
        except BaseException as exc:  # noqa: BLE001 - inspected below
            results[i] = exc

    first = threading.Thread(target=call, args=(1,))
    first.start()
    assert hr.ENTERED.wait(60)
    rest = [threading.Thread(target=call, args=(i,)) for i in (2, 3)]
    for t in rest:
        t.start()
    while h.batching_stats().queued < 2:
        threading.Event().wait(0.005)
    h.close(timeout=0.5)
    assert h.metrics()["abandoned"] == 1
    hr.GATE.set()
    for t in [first, *rest]:
        t.join(60)
    assert results == {1: 4.0, 2: 8.0, 3: 12.0}
