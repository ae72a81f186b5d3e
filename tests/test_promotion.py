"""Promotion gates (pass, floor, tolerated drop), the alias history and rollback."""

from __future__ import annotations

import getpass

import numpy as np
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score

import embedml
from helpers_models import dataset


@pytest.fixture
def models(store):
    """v1: logistic regression; v2: a slightly weaker one (1 feature dropped); v3: a constant."""
    X, y = dataset()
    good = LogisticRegression().fit(X[:200], y[:200])
    weaker = LogisticRegression().fit(np.c_[X[:200, :3], np.zeros(200)], y[:200])
    const = DummyClassifier(strategy="constant", constant=0).fit(X[:200], y[:200])
    for v, m in (("1", good), ("2", weaker), ("3", const)):
        store.save("clf", m, version=v)
    store.set_alias("clf", "production", "1")
    holdout = (X[200:], y[200:])
    scores = {v: accuracy_score(holdout[1], m.predict(holdout[0])) for v, m in (("1", good), ("2", weaker), ("3", const))}
    return store, holdout, scores


def test_gate_passes_and_moves_the_alias_recording_scores(models):
    store, (X, y), scores = models
    gate = embedml.Gate(accuracy_score, X, y, min_score=0.5, max_drop=1.0)
    mv = store.promote("clf", "2", gate=gate, who="ci")
    assert mv.version == "2" and store.aliases("clf")["production"] == "2"
    entry = store.history("clf")[-1]
    assert entry["action"] == "promote" and entry["who"] == "ci"
    assert (entry["from"], entry["to"], entry["rollback"]) == ("1", "2", False)
    assert entry["gate"]["candidate"] == pytest.approx(scores["2"])
    assert entry["gate"]["current"] == pytest.approx(scores["1"])
    assert entry["gate"]["metric"] == "accuracy_score"
    gate_entry = store.history("clf")[-2]
    assert gate_entry["action"] == "gate" and gate_entry["passed"] is True
    assert gate_entry["scores"] == entry["gate"]


def test_gate_below_min_score_raises_with_scores_and_leaves_the_alias(models):
    store, (X, y), scores = models
    assert scores["3"] < 0.7
    with pytest.raises(embedml.GateFailedError, match="below min_score 0.7") as info:
        store.promote("clf", "3", gate=embedml.Gate(accuracy_score, X, y, min_score=0.7))
    assert isinstance(info.value, embedml.EmbedMLError)
    assert info.value.scores["candidate"] == pytest.approx(scores["3"])
    assert info.value.scores["candidate_version"] == "3"
    assert store.aliases("clf")["production"] == "1"
    entry = store.history("clf")[-1]
    assert entry["action"] == "gate" and entry["passed"] is False
    assert entry["scores"]["candidate"] == pytest.approx(scores["3"])
    assert entry["who"] == getpass.getuser()


def test_gate_max_drop_compares_with_the_current_version(models):
    store, (X, y), scores = models
    drop = scores["1"] - scores["2"]
    assert drop > 0  # the weaker model is really weaker on this holdout
    with pytest.raises(embedml.GateFailedError) as info:
        store.promote("clf", "2", gate=embedml.Gate(accuracy_score, X, y, max_drop=drop / 2))
    assert info.value.scores["current"] == pytest.approx(scores["1"])
    assert info.value.scores["drop"] == pytest.approx(drop)
    assert store.aliases("clf")["production"] == "1"
    store.promote("clf", "2", gate=embedml.Gate(accuracy_score, X, y, max_drop=drop))
    assert store.aliases("clf")["production"] == "2"
    # No current version (a new alias): max_drop has nothing to compare against.
    store.promote("clf", "3", alias="staging", gate=embedml.Gate(accuracy_score, X, y, max_drop=0.0))
    assert store.aliases("clf")["staging"] == "3"


def test_history_marks_rollbacks_and_rollback_walks_back(models):
    store, _, _ = models
    store.set_alias("clf", "production", "2")
    store.promote("clf", "3")
    assert store.rollback("clf").version == "2"
    assert store.rollback("clf", who="oncall").version == "1"
    with pytest.raises(embedml.StoreError, match="no earlier version"):
        store.rollback("clf")
    moves = [(e["action"], e["from"], e["to"], e["rollback"]) for e in store.history("clf", alias="production")]
    assert moves == [
        ("set_alias", None, "1", False),
        ("set_alias", "1", "2", False),
        ("promote", "2", "3", False),
        ("rollback", "3", "2", True),
        ("rollback", "2", "1", True),
    ]
    assert store.history("clf")[-1]["who"] == "oncall"
    store.set_alias("clf", "production", "3")
    store.set_alias("clf", "production", "2")  # a plain set_alias backwards is a rollback too
    assert store.history("clf")[-1]["rollback"] is True
    store.remove_alias("clf", "production")
    assert store.history("clf")[-1]["action"] == "remove_alias"
    assert all(e["time"].endswith("Z") for e in store.history("clf"))


def test_history_skips_a_torn_line_and_bad_gate_settings_are_refused(models):
    store, (X, y), _ = models
    with open(store.root / "clf" / "history.jsonl", "a") as f:
        f.write('{"action": "set_al')  # a crash mid-write
    store.set_alias("clf", "production", "2")
    assert [e["to"] for e in store.history("clf")] == ["1", "2"]
    assert store.history("nothing-yet") == []
    with pytest.raises(embedml.ConfigurationError):
        embedml.Gate(accuracy_score, X, y, max_drop=-0.1)
    with pytest.raises(embedml.ConfigurationError):
        embedml.Gate("accuracy", X, y)


def test_two_processes_moving_aliases_at_once_keep_a_whole_history(models, subprocess_env):
    import subprocess
    import sys

    from helpers_models import child_env

    store, _, _ = models
    code = (
        "import sys, embedml\n"
        "s = embedml.ModelStore(sys.argv[1])\n"
        "for i in range(25):\n"
        "    s.set_alias('clf', sys.argv[2], str(1 + i % 3), who=sys.argv[2])\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(store.root), alias], env=child_env(subprocess_env))
        for alias in ("blue", "green")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    for alias in ("blue", "green"):
        moves = store.history("clf", alias=alias)
        assert [e["to"] for e in moves] == [str(1 + i % 3) for i in range(25)]
        assert [e["from"] for e in moves] == [None] + [e["to"] for e in moves[:-1]]
        assert {e["who"] for e in moves} == {alias}
    assert store.aliases("clf") == {"production": "1", "blue": "1", "green": "1"}


def test_the_gate_runs_outside_the_lock_and_a_move_meanwhile_fails_the_promotion(
    models, subprocess_env
):
    # While the gate scores, another process moves the alias (it can: the gate runs
    # outside the store lock). The promotion then refuses to move it (compare-and-set),
    # and promoting again scores against the version the alias points to now.
    import subprocess
    import sys

    from helpers_models import child_env

    store, (X, y), _ = models
    code = (
        "import sys, embedml\n"
        "embedml.ModelStore(sys.argv[1]).set_alias('clf', 'production', '3', who='other')\n"
    )
    moved: list[int] = []

    def metric(y_true, y_pred):
        if not moved:  # the first score of the first promotion
            args = [sys.executable, "-c", code, str(store.root)]
            done = subprocess.run(args, env=child_env(subprocess_env), timeout=120)
            moved.append(done.returncode)
        return accuracy_score(y_true, y_pred)

    gate = embedml.Gate(metric, X, y, max_drop=1.0)
    with pytest.raises(embedml.AliasMovedError) as info:
        store.promote("clf", "2", gate=gate, who="ci")
    assert moved == [0] and (info.value.expected, info.value.found) == ("1", "3")
    assert isinstance(info.value, embedml.StoreError)
    assert store.aliases("clf")["production"] == "3"  # the other process's move stands
    gate_entry = store.history("clf")[-1]
    assert (gate_entry["action"], gate_entry["from"], gate_entry["passed"]) == ("gate", "1", True)
    mv = store.promote("clf", "2", gate=gate, who="ci")
    assert mv.version == "2" and store.history("clf")[-1]["from"] == "3"
    assert store.history("clf")[-1]["gate"]["current_version"] == "3"
