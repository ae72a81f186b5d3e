"""Faults of broker streaming, against a real redis-server: a consumer process killed in
the middle of a batch (restarted, or taken over by another consumer), a broker that is not
there or dies mid-run, a record that keeps killing its consumer, a model swapped
mid-stream, and several consumers sharing one stream.

Input entry ``i`` holds the record ``[i, 1.0]``; the models are ``Affine(k)`` variants
(``k * row sum``), so an output's prediction ``k * (i + 1)`` tells the version that made it.
Waits are polls of the broker with deadlines; nothing is timed.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import embedml
from embedml.errors import BrokerError
from embedml.offline.broker import StreamRunner
from embedml.offline.redis_streams import RedisStreamSink, RedisStreamSource
from helpers_models import child_env
from helpers_rollout import Affine
from helpers_servers import _free_port
from helpers_streams import POISON_EXIT, Holding, Poisoned
from redis_server import running_redis
from tcp_cut import CuttingRelay

redis = pytest.importorskip("redis")

N = 3000
DEADLINE_S = 40.0  # a bound for a hung consumer, never reached when things work

# A consumer process: scores the input stream with the store's model "m" until SIGINT
# (run() stops gracefully), then prints its metrics.
CONSUMER = """
import json, sys
import embedml
from embedml.offline.broker import StreamRunner
from embedml.offline.redis_streams import RedisStreamSink, RedisStreamSource

store, in_url, out_url, dlq_url, consumer, claim_idle_ms, max_deliveries = sys.argv[1:]
handle = embedml.ModelStore(store).load("m")
runner = StreamRunner(
    handle,
    RedisStreamSource(in_url, consumer=consumer, claim_idle_ms=int(claim_idle_ms)),
    RedisStreamSink(out_url),
    dead_letters=RedisStreamSink(dlq_url),
    batch_size=32,
    max_deliveries=int(max_deliveries),
)
print("started", flush=True)
runner.run()
print(json.dumps(runner.metrics()), flush=True)
"""


# ---------------------------------------------------------------- helpers


def wait_for(condition: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> Any:
    """Polls ``condition`` until it is true; fails naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)  # a poll of another process's state, not a synchronisation


def produce(client: Any, stream: str, values: range) -> dict[str, int]:
    """Entry ``[i, 1.0]`` for each ``i``; returns entry id -> ``i``."""
    pipe = client.pipeline(transaction=False)
    for i in values:
        pipe.xadd(stream, {"data": json.dumps([float(i), 1.0])})
    return {raw.decode(): i for raw, i in zip(pipe.execute(), values)}


def read_all(client: Any, stream: str) -> list[dict[str, str]]:
    """The stream's entries' fields, in stream order."""
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in client.xrange(stream, "-", "+")
    ]


def output_ids(client: Any, *streams: str) -> list[str]:
    return [o["id"] for s in streams for o in read_all(client, s)]


def group_pending(client: Any, stream: str, group: str = "g") -> int:
    return int(client.xpending(stream, group)["pending"])


def id_key(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


def acked_have_outputs(client: Any, stream: str, outs: list[str], group: str = "g") -> set[str]:
    """Asserts that every entry the group has acknowledged has an output (or dead letter)
    in ``outs``; returns the acknowledged ids. The group is read before the outputs: an
    entry acknowledged by then had its output written before."""
    info = next(g for g in client.xinfo_groups(stream) if g["name"].decode() == group)
    last = id_key(info["last-delivered-id"].decode())
    pending = {
        p["message_id"].decode() for p in client.xpending_range(stream, group, "-", "+", 1_000_000)
    }
    delivered = {
        raw.decode() for raw, _ in client.xrange(stream, "-", "+") if id_key(raw.decode()) <= last
    }
    acked = delivered - pending
    missing = acked - set(output_ids(client, *outs))
    assert not missing, f"{len(missing)} acknowledged entries have no output: {sorted(missing)[:5]}"
    return acked


def check_predictions(client: Any, out: str, ids: dict[str, int], ks: dict[str, float]) -> None:
    """Each output's prediction is what the version it names computes for its input."""
    for o in read_all(client, out):
        i = ids[o["id"]]
        assert json.loads(o["prediction"]) == ks[o["version"]] * (i + 1), o


class Consumers:
    """Consumer processes (``CONSUMER``) on a store and three streams; all reaped at the end."""

    def __init__(self, env: dict[str, str], store: embedml.ModelStore, tmp: Path, urls: dict):
        self.env, self.store, self.tmp, self.urls = env, store, tmp, urls
        self.children: list[subprocess.Popen[str]] = []

    def start(
        self, consumer: str, *, claim_idle_ms: int = 600_000, max_deliveries: int = 5
    ) -> subprocess.Popen[str]:
        n = len(self.children)
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CONSUMER,
                str(self.store.root),
                self.urls["in"],
                self.urls["out"],
                self.urls["dlq"],
                consumer,
                str(claim_idle_ms),
                str(max_deliveries),
            ],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=open(self.tmp / f"consumer{n}.out", "w"),  # noqa: SIM115  (the child's)
            stderr=open(self.tmp / f"consumer{n}.err", "w"),  # noqa: SIM115
            text=True,
        )
        child.number = n  # type: ignore[attr-defined]
        self.children.append(child)
        return child

    def stderr(self, child: subprocess.Popen[str]) -> str:
        return (self.tmp / f"consumer{child.number}.err").read_text()[-3000:]  # type: ignore[attr-defined]

    def stop(self, child: subprocess.Popen[str]) -> dict[str, Any]:
        """SIGINT (a graceful stop); returns the metrics it printed."""
        wait_for(
            lambda: "started" in (self.tmp / f"consumer{child.number}.out").read_text(),  # type: ignore[attr-defined]
            "the consumer to start",
        )
        child.send_signal(signal.SIGINT)
        assert child.wait(DEADLINE_S) == 0, self.stderr(child)
        out = (self.tmp / f"consumer{child.number}.out").read_text().splitlines()  # type: ignore[attr-defined]
        return json.loads(out[-1])

    def kill_all(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()
            child.wait()
            for f in (child.stdout, child.stderr):
                if f is not None:
                    f.close()


@pytest.fixture
def consumers(subprocess_env, store, tmp_path, streams) -> Iterator[Consumers]:
    urls = {
        "in": streams.url("in", group="g"),
        "out": streams.url("out"),
        "dlq": streams.url("dlq"),
    }
    group = Consumers(child_env(subprocess_env), store, tmp_path, urls)
    try:
        yield group
    finally:
        group.kill_all()


# ---------------------------------------------------------------- 1. consumer killed mid-batch


@pytest.mark.parametrize(
    ("second", "claim_idle_ms"),
    [("a", 600_000), ("b", 300)],
    ids=["restarted-same-name", "taken-over-by-another"],
)
def test_a_consumer_killed_mid_batch_loses_nothing(
    consumers, store, streams, tmp_path, second, claim_idle_ms
):
    flag = tmp_path / "hold"
    flag.touch()
    store.save("m", Holding(1.0, at=1500.0, flag=str(flag)))
    client = streams.server.client()
    ins, out, dlq = (streams.name(s) for s in ("in", "out", "dlq"))
    ids = produce(client, ins, range(N))

    first = consumers.start("a")
    held = Path(f"{flag}.held")
    wait_for(lambda: held.exists() or first.poll() is not None, "the batch holding 1500")
    assert first.poll() is None, consumers.stderr(first)
    # the consumer is inside the batch holding entry 1500: earlier batches were written
    written = client.xlen(out)
    in_flight = group_pending(client, ins)
    assert 0 < written < N and in_flight > 0
    first.send_signal(signal.SIGKILL)
    first.wait()
    acked_have_outputs(client, ins, [out, dlq])
    flag.unlink()

    # "a" again takes back its own pending entries at once; "b" claims a's once idle
    later = consumers.start(second, claim_idle_ms=claim_idle_ms)
    wait_for(
        lambda: set(ids) <= set(output_ids(client, out)) and group_pending(client, ins) == 0,
        "every entry scored and acknowledged",
    )
    metrics = consumers.stop(later)

    produced = output_ids(client, out)
    assert set(produced) == set(ids)  # none lost, none invented
    assert client.xlen(dlq) == 0
    assert group_pending(client, ins) == 0
    assert metrics["redelivered"] == in_flight  # exactly the entries the dead one held
    duplicates = len(produced) - len(set(produced))
    # killed inside the model call: no output of the held entries was written, so none is
    # written twice (a kill between write and acknowledgement would make duplicates)
    assert duplicates == 0
    check_predictions(client, out, ids, {"1": 1.0})


# ---------------------------------------------------------------- 2. broker unreachable, dropped


def test_an_unreachable_broker_fails_with_broker_error_after_the_timeout(store, threads_checked):
    store.save("m", Affine(1.0))
    handle = store.load("m")
    port = _free_port()  # nothing listens there
    url = f"redis://user:s3cret@127.0.0.1:{port}/0?stream=in&group=g"
    runner = StreamRunner(
        handle,
        RedisStreamSource(url, consumer="a"),
        RedisStreamSink(url),
        broker_timeout_s=1.0,
    )
    runner.start()
    assert runner.join(DEADLINE_S), "the runner hung on a broker that is not there"
    error = runner.error
    assert isinstance(error, BrokerError), error
    assert error.operation == "read"
    assert f"127.0.0.1:{port}" in error.url and "s3cret" not in error.url
    assert "s3cret" not in str(error) and f"127.0.0.1:{port}" in str(error)
    assert "broker_timeout_s" in str(error)
    assert runner.metrics()["broker_retries"] >= 2  # retried, with backoff, before giving up
    with pytest.raises(BrokerError):  # run() raises it
        StreamRunner(
            handle, RedisStreamSource(url, consumer="a"), RedisStreamSink(url), broker_timeout_s=0
        ).run()
    handle.close()


def test_a_broker_killed_mid_run_and_restarted_loses_nothing(store, tmp_path, threads_checked):
    flag = tmp_path / "hold"
    flag.touch()
    store.save("m", Holding(1.0, at=1500.0, flag=str(flag)))
    handle = store.load("m")
    with running_redis() as server:
        client = server.client()
        ids = produce(client, "in", range(N))
        runner = StreamRunner(
            handle,
            RedisStreamSource(server.stream_url("in", group="g"), consumer="a"),
            RedisStreamSink(server.stream_url("out")),
            batch_size=32,
            broker_timeout_s=DEADLINE_S,
        ).start()
        try:
            wait_for(Path(f"{flag}.held").exists, "the batch holding 1500")
            assert 0 < client.xlen("out") < N
            server.kill()  # the worker is inside a batch, the reader waits for room
            flag.unlink()
            wait_for(lambda: runner.metrics()["broker_retries"] > 0, "a failed broker call")
            server.start()  # same folder: the append-only file brings streams and group back
            client = server.client()
            acked_have_outputs(client, "in", ["out"])

            def done() -> bool:
                acked = acked_have_outputs(client, "in", ["out"])  # at every poll
                return acked == set(ids)

            wait_for(done, "every entry acknowledged after the broker came back")
            assert runner.stop(DEADLINE_S) and runner.error is None, runner.error
        finally:
            runner.stop(DEADLINE_S)
            handle.close()
        assert set(output_ids(client, "out")) == set(ids)
        assert group_pending(client, "in") == 0
        check_predictions(client, "out", ids, {"1": 1.0})
        client.close()


# ---------------------------------------------------------------- 3. max_deliveries


def test_an_entry_that_keeps_killing_its_consumer_is_dead_lettered(consumers, store, streams):
    max_deliveries = 2
    store.save("m", Poisoned(1.0, at=1500.0))
    client = streams.server.client()
    ins, out, dlq = (streams.name(s) for s in ("in", "out", "dlq"))
    ids = produce(client, ins, range(N))
    poison = next(entry_id for entry_id, i in ids.items() if i == 1500)

    deaths = 0
    while True:  # restart the consumer (same name) each time the record kills it
        child = consumers.start("a", max_deliveries=max_deliveries)
        wait_for(
            lambda child=child: (
                child.poll() is not None
                or (
                    set(ids) <= set(output_ids(client, out, dlq))
                    and group_pending(client, ins) == 0
                )
            ),
            "the consumer to die or finish",
        )
        if child.poll() is None:
            consumers.stop(child)
            break
        assert child.returncode == POISON_EXIT, consumers.stderr(child)
        deaths += 1
        assert deaths <= max_deliveries, "the poison record was delivered again and again"
    assert deaths == max_deliveries  # killed at each delivery up to max_deliveries

    letters = read_all(client, dlq)
    assert [d["id"] for d in letters] == [poison]  # only the poison: the rest are scored
    assert json.loads(letters[0]["data"]) == [1500.0, 1.0]
    assert f"max_deliveries={max_deliveries}" in letters[0]["error"]
    assert set(output_ids(client, out)) == set(ids) - {poison}
    assert group_pending(client, ins) == 0
    check_predictions(client, out, ids, {"1": 1.0})


# ---------------------------------------------------------------- 4. hot swap mid-stream


def test_a_model_swapped_mid_stream_names_the_version_of_each_output(
    store, tmp_path, streams, threads_checked
):
    flag = tmp_path / "hold"
    flag.touch()
    store.save("m", Holding(1.0, at=1500.0, flag=str(flag)), version="1")
    store.save("m", Affine(-2.0), version="2")
    handle = store.load("m", version="1")
    client = streams.server.client()
    ins, out = streams.name("in"), streams.name("out")
    ids = produce(client, ins, range(N))
    runner = StreamRunner(
        handle,
        RedisStreamSource(streams.url("in", group="g"), consumer="a"),
        RedisStreamSink(streams.url("out")),
        batch_size=32,
    ).start()
    try:
        wait_for(Path(f"{flag}.held").exists, "the batch holding 1500")
        assert handle.swap("2") == "2"  # while a batch runs on version 1
        flag.unlink()
        wait_for(lambda: set(ids) <= set(output_ids(client, out)), "every entry scored")
        assert runner.stop(DEADLINE_S) and runner.error is None, runner.error
    finally:
        runner.stop(DEADLINE_S)
        handle.close()

    outputs = read_all(client, out)
    assert sorted(o["id"] for o in outputs) == sorted(ids)
    check_predictions(client, out, ids, {"1": 1.0, "2": -2.0})
    versions = [o["version"] for o in outputs]
    # the held batch (and those before it) on version 1, every later batch on version 2
    switch = versions.index("2")
    assert set(versions[:switch]) == {"1"} and set(versions[switch:]) == {"2"}
    assert ids[outputs[switch]["id"]] > 1500
    assert group_pending(client, ins) == 0
    client.close()


# ---------------------------------------------------------------- 5. several consumers


def test_consumers_of_one_group_share_a_stream_each_in_order(store, streams, threads_checked):
    store.save("m", Affine(1.0))
    client = streams.server.client()
    ins = streams.name("in")
    names = ["c0", "c1", "c2"]
    client.xgroup_create(ins, "g", id="$", mkstream=True)  # only entries produced from now
    runners = []
    with contextlib.ExitStack() as cleanup:
        for name in names:
            handle = store.load("m")
            cleanup.callback(handle.close)
            runner = StreamRunner(
                handle,
                RedisStreamSource(streams.url("in", group="g", consumer=name)),
                RedisStreamSink(streams.url(f"out-{name}")),
                batch_size=16,
            )
            runners.append(runner.start())
            cleanup.callback(runner.stop, DEADLINE_S)
        ids: dict[str, int] = {}
        for start in range(0, N, 100):  # while the three consumers wait in the broker
            ids |= produce(client, ins, range(start, start + 100))
        outs = [streams.name(f"out-{name}") for name in names]
        wait_for(lambda: set(ids) <= set(output_ids(client, *outs)), "every entry scored")
        for runner in runners:
            assert runner.stop(DEADLINE_S) and runner.error is None, runner.error

    per_consumer = [output_ids(client, out) for out in outs]
    assert sorted(i for ids_ in per_consumer for i in ids_) == sorted(ids)  # each exactly once
    for got in per_consumer:
        assert got, "a consumer of the group got nothing"
        assert got == sorted(got, key=id_key)  # in input-id order within one consumer
    for out in outs:
        check_predictions(client, out, ids, {"1": 1.0})
    assert group_pending(client, ins) == 0
    client.close()


def test_a_read_whose_reply_was_lost_is_taken_back_at_once(store, threads_checked):
    # The connection is cut where the broker's answer to XREADGROUP starts (the only reply
    # that names the stream): the broker has handed out those entries, the consumer never
    # saw them. They must not wait claim_idle_ms (here 10 minutes) to be scored.
    store.save("m", Affine(1.0))
    handle = store.load("m")
    with running_redis(tcp=True) as server:
        client = server.client()
        ids = produce(client, "lostreply", range(200))
        relay = CuttingRelay(server.port, cut_at=b"lostreply", keep_listening=True)
        base = f"redis://127.0.0.1:{relay.port}/0"
        runner = StreamRunner(
            handle,
            RedisStreamSource(
                f"{base}?stream=lostreply&group=g", consumer="a", claim_idle_ms=600_000
            ),
            RedisStreamSink(f"{base}?stream=out"),
            batch_size=32,
        ).start()
        try:
            wait_for(relay.cut.is_set, "the cut")
            wait_for(
                lambda: (
                    set(ids) <= set(output_ids(client, "out"))
                    and group_pending(client, "lostreply") == 0
                ),
                "every entry scored, those of the lost reply too",
                timeout=30,
            )
            assert runner.stop(DEADLINE_S) and runner.error is None, runner.error
            assert runner.metrics()["broker_retries"] >= 1
        finally:
            runner.stop(DEADLINE_S)
            handle.close()
            relay.join()
        assert set(output_ids(client, "out")) == set(ids)
        client.close()
