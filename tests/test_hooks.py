"""Prediction hooks and sinks: records, background writers, drop/block, errors, rotation."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import subprocess
import sys
import threading

import numpy as np
import pytest
from pydantic import BaseModel

import embedml
from embedml import CallableSink, JsonlSink, LoggingSink, PredictionRecord, read_jsonl


class Person(BaseModel):
    age: float
    income: float
    email: str
    ssn: str


def _person_model(records):
    return np.asarray([float(r[0]) + float(r[1]) for r in np.asarray(records)])


@pytest.fixture
def lr(store, logreg):
    store.save("lr", logreg, input_schema=embedml.TensorSpec("x", "float64", (-1, 4)))
    return store


def _threads():
    return {t.ident for t in threading.enumerate()}


def test_record_fields_and_jsonl(lr, iris_like, tmp_path):
    X, _ = iris_like
    before = _threads()
    seen: list[PredictionRecord] = []
    path = tmp_path / "log.jsonl"
    h = lr.load("lr", hooks=[JsonlSink(path), seen.append])
    p = h.predict(X[0], details=True)
    b = h.predict_batch(X[:5], details=True)
    with pytest.raises(embedml.SchemaError):
        h.predict(np.zeros(3))
    h.close()
    assert _threads() == before
    rows = read_jsonl(path)
    assert [r["request_id"] for r in rows[:2]] == [p.request_id, b.request_id]
    assert len({r["request_id"] for r in rows}) == 3
    first = rows[0]
    assert (first["model"], first["version"], first["batch_size"]) == ("lr", "1", 1)
    np.testing.assert_array_equal(first["inputs"], X[:1])
    assert first["outputs"] == [int(p.output)]
    assert rows[1]["outputs"] == np.asarray(b.output).tolist()
    assert rows[1]["batch_size"] == 5
    assert first["latency_ms"] >= first["model_ms"] >= 0
    assert first["error"] is None
    bad = rows[2]
    assert bad["error"].startswith("SchemaError") and bad["inputs"] is None
    # the plain callable got the same records, as objects
    assert [r.request_id for r in seen] == [r["request_id"] for r in rows]
    assert seen[2].error_type == "SchemaError"


def test_logged_inputs_are_a_copy(lr, iris_like, tmp_path):
    X, _ = iris_like
    seen = []
    gate = threading.Event()
    h = lr.load("lr", hooks=[lambda r: (gate.wait(5), seen.append(r.inputs))])
    buf = X[:3].copy()
    h.predict_batch(buf)
    buf[:] = 99.0  # the caller reuses its buffer before the sink wrote the record
    gate.set()
    h.close()
    np.testing.assert_array_equal(seen[0], X[:3])


@pytest.mark.parametrize("policy", ["block", "drop"])
def test_nothing_lost_on_clean_close_with_many_threads(lr, iris_like, tmp_path, policy):
    X, _ = iris_like
    path = tmp_path / "many.jsonl"
    sink = JsonlSink(path, policy=policy, max_queue=64)
    h = lr.load("lr", hooks=[sink])
    ids: list[str] = []
    lock = threading.Lock()

    def work(k: int) -> None:
        for i in range(150):
            rid = h.predict(X[(k * 7 + i) % len(X)], details=True).request_id
            with lock:
                ids.append(rid)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    h.close()
    lines = path.read_text().splitlines()
    stats = sink.stats()
    assert len(ids) == 16 * 150 and sink.closed
    # every accepted record is on disk, each once; dropped ones are counted
    assert len(lines) == stats["accepted"] == stats["written"]
    assert stats["accepted"] + stats["dropped"] == len(ids)
    logged = [json.loads(line)["request_id"] for line in lines]
    assert len(set(logged)) == len(logged) and set(logged) <= set(ids)
    if policy == "block":
        assert stats["dropped"] == 0 and sorted(logged) == sorted(ids)


def test_close_drains_at_once_however_long_the_write_interval(
    lr, iris_like, tmp_path, caplog, threads_checked
):
    X, _ = iris_like
    sink = JsonlSink(tmp_path / "slow.jsonl")
    sink.interval = 3600.0  # the writer would otherwise sleep an hour between batches
    h = lr.load("lr", hooks=[sink])
    for row in X[:40]:
        h.predict(row)
    with caplog.at_level(logging.ERROR, logger="embedml.observe.hooks"):
        h.close()  # (threads_checked: the writer thread ended)
    assert not caplog.records  # no "did not finish" on a healthy writer
    assert sink.stats()["written"] == 40 == len(read_jsonl(tmp_path / "slow.jsonl"))


def test_hook_exceptions_are_counted_and_logged_once(lr, iris_like, caplog):
    X, _ = iris_like

    def broken(record):
        raise RuntimeError("sink is broken")

    with caplog.at_level(logging.ERROR, logger="embedml.observe.hooks"):
        h = lr.load("lr", hooks=[broken])
        out = [h.predict(X[i]) for i in range(20)]
        h.hooks[0].flush()
        stats = h.metrics()["hooks"][0]
        h.close()
    assert len(out) == 20
    assert stats["errors"] == 20 and stats["accepted"] == 20
    assert len([r for r in caplog.records if "sink is broken" in r.getMessage()]) == 1


def test_full_queue_drops_and_counts(lr, iris_like):
    X, _ = iris_like
    gate = threading.Event()
    calls = []
    sink = CallableSink(lambda r: (gate.wait(10), calls.append(r.request_id)), max_queue=5)
    h = lr.load("lr", hooks=[sink])
    for i in range(50):
        h.predict(X[i])
    stats = sink.stats()
    assert stats["accepted"] + stats["dropped"] == 50
    assert stats["accepted"] == 5  # queued plus in the writer's hands
    assert stats["dropped"] == 45
    gate.set()
    h.close()
    assert len(calls) == stats["accepted"] == sink.stats()["written"]


def test_block_policy_waits_instead_of_dropping(lr, iris_like):
    X, _ = iris_like
    calls = []
    slow = threading.Semaphore(0)

    def fn(record):
        slow.acquire(timeout=5)
        calls.append(record.request_id)

    sink = CallableSink(fn, max_queue=2, policy="block")
    h = lr.load("lr", hooks=[sink])
    done = threading.Event()

    def caller():
        for i in range(10):
            h.predict(X[i])
        done.set()

    t = threading.Thread(target=caller)
    t.start()
    assert not done.wait(0.3)  # blocked: the sink holds at most 2 records
    for _ in range(10):
        slow.release()
    t.join(10)
    assert done.is_set()
    h.close()
    assert len(calls) == 10 and sink.stats()["dropped"] == 0


def test_jsonl_rotation(lr, iris_like, tmp_path):
    X, _ = iris_like
    path = tmp_path / "rot.jsonl"
    sink = JsonlSink(path, rotate_bytes=3000, keep=2, policy="block")
    h = lr.load("lr", hooks=[sink])
    ids = []
    for i in range(120):
        ids.append(h.predict(X[i % 300], details=True).request_id)
        sink.flush()  # one write per record, so rotation points are deterministic
    h.close()
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("rot"))
    assert names[-2:] == ["rot.jsonl.1", "rot.jsonl.2"] and len(names) <= 3  # keep=2
    for p in tmp_path.glob("rot.jsonl.*"):
        size = p.stat().st_size
        assert 3000 <= size < 3000 + 400  # rotated right after crossing the limit
    kept = [r["request_id"] for r in read_jsonl(path)]
    assert kept == ids[-len(kept) :] and 10 < len(kept) < 120  # oldest files were deleted
    current = [r["request_id"] for r in read_jsonl(path, rotated=False)]
    assert current == (kept[len(kept) - len(current) :] if current else [])


def test_jsonl_rotation_cuts_a_large_write_batch(lr, iris_like, tmp_path):
    # Regression: a sink catching up wrote its whole batch into one file (128 kB files
    # with rotate_bytes=20 kB in test_fork); each file now ends within one line of the size.
    X, _ = iris_like
    path = tmp_path / "big.jsonl"
    records = []
    h = lr.load("lr", hooks=[CallableSink(records.append, policy="block")])
    ids = [h.predict(x, details=True).request_id for x in X[:120]]
    h.close()
    sink = JsonlSink(path, rotate_bytes=3000, keep=100)
    sink.write(records)  # one write batch of 120 records
    sink.close()
    rotated = list(tmp_path.glob("big.jsonl.*"))
    assert len(rotated) >= 5
    for p in rotated:
        assert 3000 <= p.stat().st_size < 3000 + 400
    assert [r["request_id"] for r in read_jsonl(path)] == ids


def test_jsonl_rotation_shifts_only_the_files_there_are(lr, iris_like, tmp_path):
    # path.1 and path.3 exist (path.2 was deleted by hand): a rotation moves path.1 to the
    # free path.2 and leaves path.3 alone; nothing is overwritten, nothing past keep is made
    X, _ = iris_like
    records = []
    h = lr.load("lr", hooks=[CallableSink(records.append, policy="block")])
    for x in X[:40]:
        h.predict(x)
    h.close()
    path = tmp_path / "g.jsonl"
    for name, text in (("g.jsonl.1", "one\n"), ("g.jsonl.3", "three\n")):
        (tmp_path / name).write_text(text)
    sink = JsonlSink(path, rotate_bytes=1, keep=3)  # every record rotates
    sink.write(records[:1])
    sink.close()
    assert (tmp_path / "g.jsonl.2").read_text() == "one\n"
    assert (tmp_path / "g.jsonl.3").read_text() == "three\n"
    assert not (tmp_path / "g.jsonl.4").exists()
    sink = JsonlSink(path, rotate_bytes=1, keep=3)
    sink.write(records[1:3])  # two more rotations: keep=3 files at most
    sink.close()
    assert sorted(p.name for p in tmp_path.glob("g.jsonl.*")) == ["g.jsonl.1", "g.jsonl.2", "g.jsonl.3"]


def test_sampling(lr, iris_like):
    X, _ = iris_like
    sink = CallableSink(lambda r: None, sample=0.3)
    h = lr.load("lr", hooks=[sink])
    for i in range(2000):
        h.predict(X[i % 300])
    h.close()
    assert 450 < sink.stats()["accepted"] < 750  # binomial(2000, .3): mean 600, sd 20.5
    assert sink.stats()["written"] == sink.stats()["accepted"]


def test_redaction_drop_and_hash(store, tmp_path):
    from sklearn.dummy import DummyRegressor

    model = DummyRegressor().fit(np.zeros((3, 4)), [1.0, 2.0, 3.0])
    store.save("people", model, input_schema=Person)
    path = tmp_path / "red.jsonl"
    plain = tmp_path / "plain.jsonl"
    h = store.load(
        "people", hooks=[JsonlSink(path, redact={"ssn": "drop", "email": "hash"}), JsonlSink(plain)]
    )
    person = {"age": 40, "income": 10.5, "email": "a@b.c", "ssn": "123-45-6789"}
    h.predict(person)
    h.close()
    [row] = read_jsonl(path)
    [full] = read_jsonl(plain)
    assert full["inputs"] == [person | {"age": 40.0}]
    assert "ssn" not in row["inputs"][0]
    assert row["inputs"][0]["email"] == "sha256:" + hashlib.sha256(b"'a@b.c'").hexdigest()[:16]
    assert row["inputs"][0]["age"] == 40.0
    with pytest.raises(embedml.ConfigurationError, match="redact"):
        JsonlSink(path, redact={"ssn": "scramble"})


def test_logging_sink(lr, iris_like, caplog):
    X, _ = iris_like
    with caplog.at_level(logging.INFO, logger="embedml.predictions"):
        h = lr.load("lr", hooks=[LoggingSink()])
        rid = h.predict(X[0], details=True).request_id
        h.close()
    [rec] = [r for r in caplog.records if r.name == "embedml.predictions"]
    assert json.loads(rec.getMessage())["request_id"] == rid
    assert rec.prediction["inputs"] == [X[0].tolist()]


def test_apredict_is_recorded(lr, iris_like):
    X, _ = iris_like
    seen = []
    h = lr.load("lr", hooks=[seen.append])

    async def main():
        return await asyncio.gather(*(h.apredict(X[i], details=True) for i in range(8)))

    preds = asyncio.run(main())
    h.close()
    assert sorted(r.request_id for r in seen) == sorted(p.request_id for p in preds)


def test_add_remove_hook_and_bad_hooks(lr, iris_like):
    X, _ = iris_like
    h = lr.load("lr")
    seen = []
    sink = h.add_hook(seen.append)
    h.predict(X[0])
    assert h.remove_hook(sink) and sink.closed and len(seen) == 1
    assert not h.remove_hook(sink)
    h.predict(X[1])
    assert len(seen) == 1
    with pytest.raises(embedml.ConfigurationError):
        h.add_hook("not a hook")
    with pytest.raises(embedml.ConfigurationError):
        lr.load("lr", hooks=[42])
    with pytest.raises(embedml.ConfigurationError):
        JsonlSink("x.jsonl", sample=1.5)
    with pytest.raises(embedml.ConfigurationError):
        CallableSink(print, policy="wait")
    h.close()
    with pytest.raises(embedml.HandleClosedError):
        h.add_hook(seen.append)


def test_shared_sink_closes_with_its_last_handle(lr, iris_like, tmp_path):
    X, _ = iris_like
    sink = JsonlSink(tmp_path / "shared.jsonl")
    a, b = lr.load("lr", hooks=[sink]), lr.load("lr", hooks=[sink])
    a.predict(X[0])
    b.predict(X[1])
    a.close()
    assert not sink.closed
    b.predict(X[2])
    b.close()
    assert sink.closed and len(read_jsonl(tmp_path / "shared.jsonl")) == 3


def test_records_are_flushed_at_interpreter_exit(lr, tmp_path, subprocess_env):
    path = tmp_path / "exit.jsonl"
    code = f"""
import numpy as np, embedml
h = embedml.ModelStore({str(lr.root)!r}).load("lr", hooks=[embedml.JsonlSink({str(path)!r})])
for i in range(500):
    h.predict(np.full(4, i / 100.0))
# no close(): the atexit handler must write everything accepted
"""
    subprocess.run([sys.executable, "-c", code], env=subprocess_env, check=True, timeout=60)
    assert len(path.read_text().splitlines()) == 500


def test_jsonl_base64_arrays_round_trip(store, tmp_path):
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(2)
    X = rng.normal(size=(50, 3)).astype(np.float32)
    model = LinearRegression().fit(X, X.sum(axis=1))
    store.save("f32", model, input_schema=embedml.TensorSpec("x", "float32", (-1, 3)))
    path = tmp_path / "b64.jsonl"
    with store.load("f32", hooks=[JsonlSink(path, arrays="base64")]) as h:
        outs = [h.predict_batch(X[i : i + 5]) for i in range(0, 50, 5)]
    rows = read_jsonl(path)
    assert len(rows) == 10
    for i, row in enumerate(rows):
        assert row["inputs"].dtype == np.float32
        np.testing.assert_array_equal(row["inputs"], X[i * 5 : i * 5 + 5])
        np.testing.assert_array_equal(row["outputs"], outs[i])
    assert '"base64":' in path.read_text().splitlines()[0]
    with pytest.raises(embedml.ConfigurationError, match="arrays"):
        JsonlSink(path, arrays="hex")
