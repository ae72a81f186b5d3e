"""StreamRunner on a real redis-server: outputs, dead letters, acknowledgements, metrics.

The faults (killed consumers, a broker that goes away, hot swaps, several consumers) are in
test_stream_faults.py; the command in test_cli_stream.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid

import numpy as np
import pandas as pd
import pytest

import embedml
from embedml.offline.broker import DeadLetter, Entry, Output, StreamRunner
from embedml.offline.redis_streams import RedisStreamSink, RedisStreamSource, parse_stream_url
from helpers_processes import run_children
from redis_server import Streams

pytest.importorskip("redis")

COLUMNS = ["income", "debt", "age"]


@pytest.fixture(params=["redis 6.2", "valkey 9"])
def streams(request):
    """Every test here runs on Redis 6.2 (no group lag; XCLAIM answers nil for a deleted
    entry) and on Valkey 9 (Redis 7's stream commands)."""
    fixture = "redis_server" if request.param == "redis 6.2" else "valkey_server"
    return Streams(request.getfixturevalue(fixture), f"t{uuid.uuid4().hex[:8]}:")


@pytest.fixture(scope="module")
def credit():
    """A scikit-learn classifier fitted on named columns, and its answers for 300 records."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    frame = pd.DataFrame(rng.normal(size=(300, 3)), columns=COLUMNS)
    y = (frame.income - frame.debt + 0.1 * frame.age > 0).astype(int)
    model = LogisticRegression().fit(frame, y)
    return model, frame


@pytest.fixture
def handle(tmp_path, credit):
    model, _ = credit
    store = embedml.ModelStore(tmp_path / "store")
    store.save("credit", model, input_example=credit[1].head(3))
    with store.load("credit") as h:
        yield h


def produce(streams, name: str, values: list) -> list[str]:
    """XADD each value (bytes as they are, else JSON) in field ``data``; returns the ids."""
    client = streams.server.client()
    pipe = client.pipeline(transaction=False)
    for v in values:
        pipe.xadd(streams.name(name), {"data": v if isinstance(v, bytes) else json.dumps(v)})
    return [i.decode() for i in pipe.execute()]


def read_stream(streams, name: str) -> list[dict[str, str]]:
    rows = streams.server.client().xrange(streams.name(name))
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in rows]


def runner(handle, streams, **kw) -> StreamRunner:
    kw.setdefault("until_idle_s", 0.3)
    return StreamRunner(
        handle,
        RedisStreamSource(streams.url("in", group="g", consumer="c1")),
        RedisStreamSink(streams.url("out")),
        dead_letters=RedisStreamSink(streams.url("dead")),
        **kw,
    )


def test_every_entry_scored_by_name_written_then_acknowledged(handle, streams, credit):
    model, frame = credit
    # each record's keys in another order than the training columns: matched by name
    records = [{c: float(row[c]) for c in reversed(COLUMNS)} for _, row in frame.iterrows()]
    ids = produce(streams, "in", records)
    r = runner(handle, streams, batch_size=32)
    r.run()
    out = read_stream(streams, "out")
    assert [set(o) for o in out] == [{"id", "model", "version", "prediction", "latency_ms"}] * 300
    expected = dict(zip(ids, model.predict(frame).tolist()))
    assert {o["id"]: json.loads(o["prediction"]) for o in out} == expected
    assert {o["model"] for o in out} == {"credit"} and {o["version"] for o in out} == {"1"}
    assert all(float(o["latency_ms"]) >= 0 for o in out)
    assert [o["id"] for o in out] == ids  # one consumer: the input order
    client = streams.server.client()
    assert client.xpending(streams.name("in"), "g")["pending"] == 0
    m = r.metrics()
    assert (m["consumed"], m["produced"], m["acknowledged"], m["dead_lettered"]) == (
        300,
        300,
        300,
        0,
    )
    assert sum(n * k for k, n in m["batch_sizes"].items()) == 300
    assert max(m["batch_sizes"]) <= 32
    assert m["pending"] == 0 and m["lag"] == 0 and m["latency_ms"]["count"] == 300


def test_malformed_entries_are_dead_lettered_and_the_rest_scored(handle, streams, credit):
    model, frame = credit
    good = {c: 0.5 for c in COLUMNS}
    values = [
        good,
        b"{not json",
        {"income": "lots", "debt": 1.0, "age": 2.0},  # a string where a number goes
        {"income": 1.0, "debt": 1.0},  # a missing field
        {"income": 1.0, "debt": 1.0, "age": 2.0, "extra": "x" * 3000},  # oversized
        good,
    ]
    ids = produce(streams, "in", values)
    client = streams.server.client()
    no_field = client.xadd(streams.name("in"), {"payload": "{}"}).decode()
    r = runner(handle, streams, max_entry_bytes=2000)
    r.run()
    out = read_stream(streams, "out")
    assert [o["id"] for o in out] == [ids[0], ids[5]]
    assert json.loads(out[0]["prediction"]) == int(model.predict(pd.DataFrame([good]))[0])
    dead = {d["id"]: d for d in read_stream(streams, "dead")}
    assert set(dead) == {ids[1], ids[2], ids[3], ids[4], no_field}
    assert all(set(d) == {"id", "data", "error"} for d in dead.values())
    assert "not JSON" in dead[ids[1]]["error"] and dead[ids[1]]["data"] == "{not json"
    assert "income" in dead[ids[2]]["error"]
    assert "age" in dead[ids[3]]["error"]
    assert "max_entry_bytes=2000" in dead[ids[4]]["error"]
    assert "no field 'data'" in dead[no_field]["error"]
    assert json.loads(dead[no_field]["data"]) == {"payload": "{}"}
    assert client.xpending(streams.name("in"), "g")["pending"] == 0
    assert r.metrics()["dead_lettered"] == 5


def test_a_stop_finishes_what_was_read(handle, streams, credit):
    _, frame = credit
    records = [{c: float(row[c]) for c in COLUMNS} for _, row in frame.iterrows()]
    r = runner(handle, streams, until_idle_s=None, batch_size=16).start()
    ids = produce(streams, "in", records[:100])
    client = streams.server.client()
    # bounded wait until the runner has read some, then stop while it may be mid-batch
    for _ in range(2000):
        if r.metrics()["consumed"] or r.metrics()["in_flight"]:
            break
        threading.Event().wait(0.005)
    assert r.stop(timeout=30)
    assert r.error is None
    done = {o["id"] for o in read_stream(streams, "out")}
    pending = client.xpending(streams.name("in"), "g")["pending"]
    assert pending == 0  # nothing read was left unacknowledged
    assert done == set(ids[: len(done)]) and r.metrics()["acknowledged"] == len(done)


def test_results_to_a_callable_and_to_an_embedml_sink(handle, streams, tmp_path, credit):
    _, frame = credit
    ids = produce(
        streams,
        "in",
        [{c: float(v) for c, v in zip(COLUMNS, row)} for row in frame.to_numpy()[:20]] + [b"oops"],
    )
    got: list = []
    log = embedml.JsonlSink(tmp_path / "out.jsonl")
    source = RedisStreamSource(streams.url("in", group="g"))
    StreamRunner(handle, source, got.extend, dead_letters=log, until_idle_s=0.3).run()
    assert [o.id for o in got] == ids[:20] and all(isinstance(o, Output) for o in got)
    log.close()
    rows = embedml.read_jsonl(tmp_path / "out.jsonl")
    assert [(row["request_id"], row["error"]) for row in rows] == [
        (ids[20], "the field 'data' is not JSON: Expecting value: line 1 column 1 (char 0)")
    ]


def test_arun_in_an_event_loop_and_cancellation_stops_it(handle, streams, credit):
    _, frame = credit
    ids = produce(streams, "in", [{c: 1.0 for c in COLUMNS}] * 10)

    async def main() -> None:
        r = runner(handle, streams, until_idle_s=None)
        task = asyncio.ensure_future(r.arun())
        while r.metrics()["acknowledged"] < 10:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not r.running

    asyncio.run(main())
    assert [o["id"] for o in read_stream(streams, "out")] == ids


def test_lag_and_pending_on_redis_6(handle, streams):
    """Redis 6.2 has no XINFO GROUPS lag: it is counted after the group's last id."""
    produce(streams, "in", [{c: 1.0 for c in COLUMNS}] * 5)
    source = RedisStreamSource(streams.url("in", group="g", consumer="a"))
    first = source.read(2, 0)
    assert len(first) == 2 and all(isinstance(e, Entry) for e in first)
    stats = source.stats()
    assert (stats["pending"], stats["lag"]) == (2, 3)
    assert source.pending() == 2
    source.ack([first[0].id])
    assert source.stats()["pending"] == 1


def test_a_dead_consumers_entries_are_claimed_with_their_delivery_count(streams):
    produce(streams, "in", [{"x": i} for i in range(3)])
    dead = RedisStreamSource(streams.url("in", group="g", consumer="dead"))
    taken = dead.read(3, 0)
    assert [e.deliveries for e in taken] == [1, 1, 1]
    alive = RedisStreamSource(streams.url("in", group="g", consumer="alive"), claim_idle_ms=1)
    threading.Event().wait(0.01)  # let the entries be idle for more than 1 ms
    claimed = [e for _ in taken for e in alive.read(10, 0)]  # one per read
    assert [e.id for e in claimed] == [e.id for e in taken]
    assert [e.deliveries for e in claimed] == [2, 2, 2]


def test_an_entry_deleted_before_its_claim_becomes_a_dead_letter(handle, streams):
    ids = produce(streams, "in", [{c: 1.0 for c in COLUMNS}] * 2)
    dead = RedisStreamSource(streams.url("in", group="g", consumer="dead"))
    assert [e.id for e in dead.read(2, 0)] == ids
    client = streams.server.client()
    client.xdel(streams.name("in"), ids[0])
    threading.Event().wait(0.01)  # idle for more than claim_idle_ms
    alive = RedisStreamSource(streams.url("in", group="g", consumer="alive"), claim_idle_ms=1)
    StreamRunner(
        handle,
        alive,
        RedisStreamSink(streams.url("out")),
        dead_letters=RedisStreamSink(streams.url("dead")),
        until_idle_s=0.3,
    ).run()
    assert [o["id"] for o in read_stream(streams, "out")] == [ids[1]]
    assert read_stream(streams, "dead") == [
        {
            "id": ids[0],
            "data": "{}",
            "error": "the entry was deleted from the stream before it was processed",
        }
    ]
    assert client.xpending(streams.name("in"), "g")["pending"] == 0


def test_stream_urls():
    u = parse_stream_url(
        "redis://bob:s3cret@h:6380/2?stream=in&group=g&consumer=c&socket_timeout=3"
    )
    assert (u.stream, u.group, u.consumer) == ("in", "g", "c")
    assert (
        "s3cret" not in u.shown and u.client_url == "redis://bob:s3cret@h:6380/2?socket_timeout=3"
    )
    assert parse_stream_url("unix:///tmp/r.sock?stream=s").client_url == "unix:///tmp/r.sock"
    with pytest.raises(embedml.ConfigurationError, match="no stream"):
        parse_stream_url("redis://h:1/0?group=g")
    with pytest.raises(embedml.ConfigurationError, match="redis://"):
        parse_stream_url("kafka://h:1?stream=s")
    with pytest.raises(embedml.ConfigurationError, match="consumer group"):
        RedisStreamSource("redis://h:1/0?stream=s")


_WITHOUT_REDIS = """
import sys
sys.modules["redis"] = None  # as if the redis extra were not installed
from embedml.errors import MissingExtraError
from embedml.offline.redis_streams import RedisStreamSink, RedisStreamSource
for make in (RedisStreamSource, RedisStreamSink):
    try:
        make("redis://127.0.0.1:1/0?stream=s&group=g")
    except MissingExtraError as exc:
        print(exc.extra, exc.name, "pip install 'embedml[redis]'" in str(exc))
"""


def test_without_the_extra_a_missing_extra_error_names_it():
    # It was a TypeError: the error was raised without its required extra= and name=.
    assert run_children(_WITHOUT_REDIS, [[]]) == ["redis redis True\nredis redis True\n"]


def test_options_are_checked_when_the_runner_is_built(handle, streams):
    source = RedisStreamSource(streams.url("in", group="g"))
    for bad in (
        {"batch_size": 0},
        {"max_in_flight": 4, "batch_size": 8},
        {"max_wait_ms": -1},
        {"max_deliveries": 0},
        {"until_idle_s": -1.0},
    ):
        with pytest.raises(embedml.ConfigurationError):
            StreamRunner(handle, source, list.append, **bad)
    with pytest.raises(embedml.ConfigurationError, match="ResultSink"):
        StreamRunner(handle, source, 42)


def test_output_and_dead_letter_fields():
    assert Output("1-0", "m", "2", {"p": [0.25, 0.75]}, 1.5).fields() == {
        "id": "1-0",
        "model": "m",
        "version": "2",
        "prediction": '{"p": [0.25, 0.75]}',
        "latency_ms": "1.500",
    }
    assert DeadLetter("1-1", b"x", "why").fields() == {"id": "1-1", "data": b"x", "error": "why"}


def test_stream_metrics_on_prometheus(handle, streams):
    from prometheus_client import CollectorRegistry, generate_latest

    from embedml.observe.metrics.prometheus import register_stream

    produce(streams, "in", [{c: 1.0 for c in COLUMNS}] * 7 + [b"bad"])
    r = runner(handle, streams, batch_size=4)
    registry = CollectorRegistry()
    register_stream(r, registry)
    r.run()
    text = generate_latest(registry).decode()
    source = r.source.url
    assert f'embedml_stream_entries_total{{model="credit",outcome="produced",source="{source}"}} 7.0' in text
    assert f'embedml_stream_entries_total{{model="credit",outcome="dead_lettered",source="{source}"}} 1.0' in text
    assert f'embedml_stream_pending{{model="credit",source="{source}"}} 0.0' in text
    assert f'embedml_stream_lag{{model="credit",source="{source}"}} 0.0' in text
    assert f'embedml_stream_batch_size_count{{model="credit",source="{source}"}} 2.0' in text
    assert 'embedml_stream_latency_seconds{model="credit",quantile="0.99"' in text


def test_a_batched_handle_with_hooks_serves_two_runners(tmp_path, streams, credit):
    """Batching and hooks keep working: two runners (consumers of one group) share the
    stream and one batched handle; its hook logs every scored record."""
    model, frame = credit
    store = embedml.ModelStore(tmp_path / "store")
    store.save("credit", model, input_example=frame.head(3))
    log = embedml.JsonlSink(tmp_path / "calls.jsonl")
    records = [{c: float(row[c]) for c in COLUMNS} for _, row in frame.iterrows()]
    ids = produce(streams, "in", records)
    with store.load("credit", batching=embedml.Batching(max_batch_size=64), hooks=[log]) as h:
        runners = [
            StreamRunner(
                h,
                RedisStreamSource(streams.url("in", group="g", consumer=name)),
                RedisStreamSink(streams.url("out")),
                batch_size=8,
                until_idle_s=0.3,
            ).start()
            for name in ("a", "b")
        ]
        assert all(r.join(60) for r in runners) and all(r.error is None for r in runners)
        assert h.batching_stats().requests >= 2
    log.close()
    out = read_stream(streams, "out")
    assert sorted(o["id"] for o in out) == sorted(ids) and len(out) == 300
    expected = dict(zip(ids, model.predict(frame).tolist()))
    assert all(json.loads(o["prediction"]) == expected[o["id"]] for o in out)
    assert sum(r["rows"] for r in embedml.read_jsonl(tmp_path / "calls.jsonl")) == 300


def test_outputs_and_acknowledgement_in_one_script_or_separately(handle, streams, caplog):
    """Sinks on the source's server and database: one script writes and acknowledges.
    On another database, or for a user without scripting, the same results come from
    separate writes and an XACK (the refusal logged once)."""
    client = streams.server.client()
    client.execute_command("ACL", "SETUSER", "noscript", "on", ">pw", "~*", "+@all", "-@scripting")
    cases = {
        "script": {},
        "other db": {"sink": {"db": "1"}},
        "no scripting": {"both": {"username": "noscript", "password": "pw"}},
    }
    for name, where in cases.items():
        ids = produce(streams, f"in-{name}", [{c: float(i) for c in COLUMNS} for i in range(40)])
        both, sink_q = where.get("both", {}), {**where.get("both", {}), **where.get("sink", {})}
        source = RedisStreamSource(streams.url(f"in-{name}", group="g", **both))
        sink = RedisStreamSink(streams.url(f"out-{name}", **sink_q))
        commits: list[bool] = []

        def commit(ids_, writes, _commit=source.commit, commits=commits):
            commits.append(_commit(ids_, writes))
            return commits[-1]

        source.commit = commit  # counts the outcomes; the source's own method does the work
        StreamRunner(handle, source, sink, batch_size=16, until_idle_s=0.3).run()
        reader = streams.server.client() if "sink" not in where else redis_db(streams, 1)
        out = reader.xrange(streams.name(f"out-{name}"))
        assert [f[b"id"].decode() for _, f in out] == ids, name
        assert client.xpending(streams.name(f"in-{name}"), "g")["pending"] == 0
        assert commits and all(commits) == (name == "script"), (name, commits)
    assert caplog.text.count("refused the commit script") == 1


def redis_db(streams, db: int):
    import redis

    return redis.Redis.from_url(f"{streams.server.url}?db={db}")


class ScriptedSource:
    """A Source that hands out prepared reads in order (no broker): each read returns the
    next list of entries, then nothing. Acknowledged ids are kept."""

    url = "memory://scripted"

    def __init__(self, reads: list[list[Entry]]) -> None:
        self.reads, self.acked = list(reads), []

    def read(self, count: int, block_ms: int) -> list[Entry]:
        return self.reads.pop(0)[:count] if self.reads else []

    def ack(self, ids) -> None:
        self.acked.append(list(ids))

    def pending(self) -> int:
        return 0

    def stats(self) -> dict:
        return {"pending": 0, "lag": 0}

    def close(self) -> None:
        pass


def test_an_entry_claimed_while_a_batch_fills_is_scored_alone(handle):
    """A redelivered entry (maybe the one that killed a consumer) is a batch of its own,
    also when the source returns it on a read that fills a batch: the entries read with it
    are not charged its next delivery."""

    def entry(i: int, deliveries: int = 1) -> Entry:
        return Entry(f"{i}-0", {"data": json.dumps({c: 1.0 for c in COLUMNS}).encode()},
                     deliveries)

    source = ScriptedSource([[entry(1), entry(2)], [entry(9, deliveries=3)], [entry(3)]])
    got: list = []
    runner = StreamRunner(handle, source, got.extend, batch_size=8, max_wait_ms=10_000,
                          until_idle_s=0.2)
    runner.run()
    assert source.acked == [["1-0", "2-0"], ["9-0"], ["3-0"]]
    assert sorted(o.id for o in got) == ["1-0", "2-0", "3-0", "9-0"]
    assert runner.metrics()["redelivered"] == 1
