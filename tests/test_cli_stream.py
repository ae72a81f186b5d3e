"""`embedml stream`: the command in a child process against a real redis-server (the
``redis_server`` / ``streams`` fixtures), with a real scikit-learn model in a store made here.

Each test checks outputs against scikit-learn's own predictions per input id, dead letters
with their reasons, and that nothing is left pending in the consumer group afterwards."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

import embedml

pytest.importorskip("redis")

COLUMNS = ["a", "b", "c"]
OUTPUT_FIELDS = {"id", "model", "version", "prediction", "latency_ms"}
#: Upper bound for a child that must end by itself (a hang fails the test, never blocks it).
CHILD_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def model() -> LogisticRegression:
    rng = np.random.default_rng(1)
    X = pd.DataFrame(rng.normal(size=(300, 3)), columns=COLUMNS)
    return LogisticRegression().fit(X, (X.a - 2 * X.b + 0.5 * X.c > 0).astype(int))


@pytest.fixture
def env(tmp_path, model, subprocess_env) -> dict[str, str]:
    """A child environment whose ``$EMBEDML_STORE`` holds ``clf@1`` (``model``)."""
    store = embedml.ModelStore(tmp_path / "store")
    store.save("clf", model)
    return {**subprocess_env, "EMBEDML_STORE": str(store.root)}


def records(n: int, seed: int = 0) -> list[dict[str, float]]:
    """``n`` records, their keys in a different order each (matched by name, not position)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, row in enumerate(rng.normal(size=(n, 3)).tolist()):
        keys = COLUMNS[i % 3 :] + COLUMNS[: i % 3]
        out.append({k: row[COLUMNS.index(k)] for k in keys})
    return out


def expected(model: LogisticRegression, recs: list[dict[str, float]]) -> list[int]:
    return model.predict(pd.DataFrame(recs)[COLUMNS]).tolist()


def xadd_all(client, stream: str, recs: list[dict[str, float]], field: str = "data") -> list[str]:
    pipe = client.pipeline(transaction=False)
    for rec in recs:
        pipe.xadd(stream, {field: json.dumps(rec)})
    return [i.decode() for i in pipe.execute()]


def entries(client, stream: str) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()} for _, fields in client.xrange(stream)
    ]


def stream_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "embedml", "stream", "clf", *args]


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        stream_argv(*args), env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S
    )


def summary(stderr: str) -> dict:
    """The JSON summary: the last line on stderr of a run that exits 0."""
    return json.loads(stderr.strip().splitlines()[-1])


def pending(client, stream: str, group: str) -> int:
    return int(client.xpending(stream, group)["pending"])


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    """Bounded poll of another process's progress."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Child:
    """``embedml stream`` in a child process; killed at the end of the ``with`` block if it
    is still running (a failing test never leaves it behind)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)

    def stop(self, sig: int = signal.SIGTERM) -> str:
        """Send ``sig`` and wait (bounded) for the child to end; returns its stderr."""
        self.process.send_signal(sig)
        return self.process.communicate(timeout=CHILD_TIMEOUT_S)[1]

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def test_scores_every_entry_and_dead_letters_the_bad_ones(streams, env, model):
    client = streams.server.client()
    inp, out, dlq = streams.name("in"), streams.name("out"), streams.name("dlq")
    recs = records(150)
    good = xadd_all(client, inp, recs)
    bad = {
        client.xadd(inp, {"data": "not json {"}).decode(): "is not JSON",
        client.xadd(inp, {"other": "1"}).decode(): "has no field 'data'",
        client.xadd(inp, {"data": json.dumps({"a": "x", "b": 0.5, "c": 1.0})}).decode(): "'x'",
    }
    good += xadd_all(client, inp, recs[:10])  # good entries after the bad ones are scored too

    r = run(
        env, "--source", streams.url("in", group="g"), "--sink", streams.url("out"),
        "--dead-letter", streams.url("dlq"), "--until-idle", "1", "--batch-size", "16",
    )  # fmt: skip

    assert r.returncode == 0, r.stderr
    outputs = entries(client, out)
    assert all(set(o) == OUTPUT_FIELDS for o in outputs), outputs[:2]
    assert all(o["model"] == "clf" and o["version"] == "1" for o in outputs)
    assert all(float(o["latency_ms"]) >= 0 for o in outputs)
    got = {o["id"]: json.loads(o["prediction"]) for o in outputs}
    assert len(got) == len(outputs) == len(good)  # one output per entry, no duplicates
    assert got == dict(zip(good, expected(model, recs + recs[:10])))
    letters = {d["id"]: d for d in entries(client, dlq)}
    assert set(letters) == set(bad)
    for entry_id, reason in bad.items():
        assert reason in letters[entry_id]["error"], letters[entry_id]
    assert letters[next(iter(bad))]["data"] == "not json {"
    assert pending(client, inp, "g") == 0
    s = summary(r.stderr)
    assert (s["consumed"], s["produced"], s["dead_lettered"]) == (163, 160, 3)
    assert s["pending"] == 0 and s["acknowledged"] == 163


def test_field_names_the_record_field(streams, env, model):
    client = streams.server.client()
    inp, out, dlq = streams.name("in"), streams.name("out"), streams.name("dlq")
    recs = records(20, seed=2)
    pipe = client.pipeline(transaction=False)
    for rec in recs:  # "data" holds junk: only "payload" is read
        pipe.xadd(inp, {"data": "junk", "payload": json.dumps(rec)})
    good = [i.decode() for i in pipe.execute()]
    missing = client.xadd(inp, {"data": json.dumps(recs[0])}).decode()

    r = run(
        env, "--source", streams.url("in", group="g"), "--sink", streams.url("out"),
        "--dead-letter", streams.url("dlq"), "--until-idle", "1", "--field", "payload",
    )  # fmt: skip

    assert r.returncode == 0, r.stderr
    got = {o["id"]: json.loads(o["prediction"]) for o in entries(client, out)}
    assert got == dict(zip(good, expected(model, recs)))
    [letter] = entries(client, dlq)
    assert letter["id"] == missing and "has no field 'payload'" in letter["error"]
    assert pending(client, inp, "g") == 0


def test_max_len_caps_the_output_and_dead_letter_streams(streams, env):
    client = streams.server.client()
    inp, out, dlq = streams.name("in"), streams.name("out"), streams.name("dlq")
    xadd_all(client, inp, records(1000, seed=3))
    pipe = client.pipeline(transaction=False)
    for _ in range(1000):
        pipe.xadd(inp, {"data": "not json"})
    pipe.execute()

    r = run(
        env, "--source", streams.url("in", group="g"), "--sink", streams.url("out"),
        "--dead-letter", streams.url("dlq"), "--until-idle", "1", "--max-len", "50",
        "--batch-size", "200",
    )  # fmt: skip

    assert r.returncode == 0, r.stderr
    s = summary(r.stderr)
    assert (s["produced"], s["dead_lettered"]) == (1000, 1000)  # all written, then trimmed
    # MAXLEN ~ trims whole stream nodes (100 entries each by default): about 50, never 1000
    assert 50 <= client.xlen(out) <= 200
    assert 50 <= client.xlen(dlq) <= 200
    assert pending(client, inp, "g") == 0


class Producer:
    """Adds records to a stream from a thread until :meth:`stop`; ``ids`` maps each added
    entry id to its record."""

    def __init__(self, client, stream: str, seed: int = 0) -> None:
        self.client, self.stream = client, stream
        self.recs = records(20_000, seed=seed)
        self.ids: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-producer")

    def _run(self) -> None:
        for start in range(0, len(self.recs), 10):
            if self._stop.is_set():
                return
            chunk = self.recs[start : start + 10]
            self.ids.update(zip(xadd_all(self.client, self.stream, chunk), chunk))
            self._stop.wait(0.005)  # a steady trickle, not one burst

    def __enter__(self) -> Producer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_finishes_the_batches_in_flight_and_exits_0(streams, env, model, sig):
    client = streams.server.client()
    inp, out = streams.name("in"), streams.name("out")
    argv = stream_argv("--source", streams.url("in", group="g"), "--sink", streams.url("out"),
                       "--batch-size", "32")  # fmt: skip
    with Child(argv, env) as child, Producer(client, inp) as producer:
        wait_for(lambda: client.exists(out) and client.xlen(out) >= 100, "outputs")
        assert child.process.poll() is None
        stderr = child.stop(sig)  # while the producer keeps adding entries

    assert child.returncode == 0, stderr
    assert f"{signal.Signals(sig).name}: finishing" in stderr
    outputs = entries(client, out)
    got = {o["id"]: json.loads(o["prediction"]) for o in outputs}
    assert len(got) == len(outputs)  # no duplicates
    # every entry the group delivered has its output, and nothing is left pending
    [group] = client.xinfo_groups(inp)
    last = group["last-delivered-id"].decode()
    delivered = [i for i, _ in client.xrange(inp, max=last)]
    assert [i.decode() for i in delivered] == list(got)
    assert pending(client, inp, "g") == 0
    assert len(producer.ids) > len(got)  # the stream went on after the stop
    recs = [producer.ids[i] for i in got]
    assert list(got.values()) == expected(model, recs)
    s = summary(stderr)
    assert s["consumed"] == s["produced"] == s["acknowledged"] == len(got)


def test_start_id_dollar_scores_only_new_entries(streams, env, model):
    client = streams.server.client()
    inp, out = streams.name("in"), streams.name("out")
    xadd_all(client, inp, records(30, seed=4))  # before the group: never delivered
    argv = stream_argv("--source", streams.url("in", group="g"), "--sink", streams.url("out"),
                       "--start-id", "$")  # fmt: skip
    with Child(argv, env) as child:
        wait_for(lambda: any(g["name"] == b"g" for g in client.xinfo_groups(inp)), "the group")
        recs = records(40, seed=5)
        new = xadd_all(client, inp, recs)
        wait_for(lambda: client.exists(out) and client.xlen(out) >= len(new), "outputs")
        stderr = child.stop()

    assert child.returncode == 0, stderr
    got = {o["id"]: json.loads(o["prediction"]) for o in entries(client, out)}
    assert got == dict(zip(new, expected(model, recs)))
    assert pending(client, inp, "g") == 0


@pytest.mark.parametrize(
    ("option", "url", "message"),
    [
        ("--source", "STREAMS?stream=in", "--source: a stream source needs a consumer group"),
        ("--source", "http://localhost/?stream=in&group=g", "--source: a stream URL starts with"),
        ("--sink", "STREAMS", "--sink: the stream URL"),
        ("--dead-letter", "redis://localhost:6379/0", "--dead-letter: the stream URL"),
    ],
)
def test_a_bad_url_is_a_usage_error(streams, env, option, url, message):
    urls = {
        "--source": streams.url("in", group="g"),
        "--sink": streams.url("out"),
        "--dead-letter": streams.url("dlq"),
    }
    urls[option] = url.replace("STREAMS", streams.server.url)
    r = run(env, *[x for pair in urls.items() for x in pair])
    assert r.returncode == 2
    assert r.stderr.startswith("embedml: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert message in r.stderr
    assert not streams.server.client().exists(streams.name("in"))  # nothing was read


def test_an_unreachable_broker_fails_after_broker_timeout(streams, env, tmp_path):
    gone = f"unix://{tmp_path}/no-redis.sock"
    r = run(
        env, "--source", f"{gone}?stream=in&group=g", "--sink", streams.url("out"),
        "--broker-timeout", "0.5",
    )  # fmt: skip
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("embedml: error: read on unix://"), r.stderr
    assert "kept failing for 0.5 s" in last and "Traceback" not in r.stderr
    assert json.loads(r.stderr.strip().splitlines()[-2])["consumed"] == 0


def test_usage_errors_exit_2(env):
    r = run(env, "--source", "unix:///x?stream=a&group=g")  # no --sink
    assert r.returncode == 2 and "--sink" in r.stderr
    r = run(env, "--source", "unix:///x?stream=a&group=g", "--sink", "unix:///x?stream=b",
            "--until-idle", "-1")  # fmt: skip
    assert r.returncode == 2 and "expected a number >= 0" in r.stderr


def test_follow_moves_to_the_version_an_alias_points_at(streams, tmp_path, model, subprocess_env):
    flipped = LogisticRegression().fit(
        pd.DataFrame(np.random.default_rng(6).normal(size=(300, 3)), columns=COLUMNS),
        np.tile([0, 1], 150),
    )
    store = embedml.ModelStore(tmp_path / "follow")
    store.save("clf", model, version="1")
    store.save("clf", flipped, version="2")
    store.set_alias("clf", "prod", "1")
    env = {**subprocess_env, "EMBEDML_STORE": str(store.root)}
    client = streams.server.client()
    inp, out = streams.name("in"), streams.name("out")
    argv = stream_argv(
        "--source", streams.url("in", group="g"), "--sink", streams.url("out"), "--follow"
    )
    argv[argv.index("clf")] = "clf@prod"

    def versions() -> set[str]:
        return {o["version"] for o in entries(client, out)}

    with Child(argv, env) as child, Producer(client, inp, seed=7) as producer:
        wait_for(lambda: "1" in versions(), "outputs of version 1")
        store.set_alias("clf", "prod", "2")
        wait_for(lambda: "2" in versions(), "outputs of version 2")
        stderr = child.stop()

    assert child.returncode == 0, stderr
    outputs = entries(client, out)
    by_version = {"1": model, "2": flipped}
    for version, m in by_version.items():
        mine = [o for o in outputs if o["version"] == version]
        recs = [producer.ids[o["id"]] for o in mine]
        assert [json.loads(o["prediction"]) for o in mine] == expected(m, recs)
    # version 2 took over for good: no output of version 1 after the first of version 2
    order = [o["version"] for o in outputs]
    assert "1" not in order[order.index("2") :]
    assert pending(client, inp, "g") == 0


def test_entries_a_dead_consumer_left_are_claimed(streams, env, model):
    client = streams.server.client()
    inp, out, dlq = streams.name("in"), streams.name("out"), streams.name("dlq")
    recs = records(30, seed=8)
    ids = xadd_all(client, inp, recs)
    client.xgroup_create(inp, "g", id="0")
    client.xreadgroup("g", "dead", {inp: ">"}, count=5)  # read, never acknowledged

    r = run(
        env, "--source", streams.url("in", group="g", consumer="alive"), "--sink",
        streams.url("out"), "--dead-letter", streams.url("dlq"), "--until-idle", "1",
        "--claim-idle-ms", "1", "--max-deliveries", "1",
    )  # fmt: skip

    assert r.returncode == 0, r.stderr
    # delivered once already without an output: over --max-deliveries 1, so dead letters
    letters = entries(client, dlq)
    assert [d["id"] for d in letters] == ids[:5]
    assert all("delivered 1 times without an output" in d["error"] for d in letters)
    got = {o["id"]: json.loads(o["prediction"]) for o in entries(client, out)}
    assert got == dict(zip(ids[5:], expected(model, recs[5:])))
    assert pending(client, inp, "g") == 0
    assert summary(r.stderr)["redelivered"] == 5
