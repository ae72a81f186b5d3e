"""The store under an attacker with write access but no key (issue 12, Medium 4 and 5, Low).

* Medium 4: the signed store record covers what decides which bytes are served: aliases,
  the set of versions ("latest"), and which store a version belongs to.
* Medium 5: no store write follows a planted symlink; every value read from store
  metadata is validated like user input.
* Low: tampered metadata gives ``IntegrityError`` and ``verify()`` audits the rest;
  ``manifest()`` validates its version; over-long versions are refused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

import embedml
from embedml.cli import main
from embedml.store.manifest import MANIFEST_FILE
from embedml.store.safe_io import locked
from embedml.store.signing import SIGNATURE_FILE
from helpers_models import dataset, sk_logreg

KEY = "store-record-key"
SIGNED = {"require_signature": True, "signing_key": KEY}
RECORD = ".embedml-record.json"


def _three_signed_versions(store: embedml.ModelStore) -> None:
    for _ in range(3):
        store.save("m", sk_logreg(), signing_key=KEY)


# ---------------------------------------------------------------- Medium 4: signed store record


def test_edited_aliases_json_is_refused_and_reported(store):
    _three_signed_versions(store)
    store.set_alias("m", "production", "1", signing_key=KEY)
    with store.load("m", "@production", **SIGNED) as h:
        assert h.version == "1"
    (store.root / "m" / "aliases.json").write_text(json.dumps({"production": "3"}))
    assert store.history("m")[-1]["to"] == "1"  # the history still names the signed one
    with pytest.raises(embedml.SignatureError, match="production"):
        store.load("m", "@production", **SIGNED)
    report = store.verify(signing_key=KEY, require_signature=True)
    assert "signed store record" in report["m@production"]
    assert report["m@1"] is None and report["m@3"] is None


def test_hidden_newest_version_is_refused_and_reported(store):
    _three_signed_versions(store)
    os.rename(store.root / "m" / "3", store.root / "m" / ".hidden")
    with pytest.raises(embedml.SignatureError, match="missing"):
        store.load("m", **SIGNED)
    with pytest.raises(embedml.SignatureError, match="missing"):
        store.load("m", ">=2", **SIGNED)
    assert "missing" in store.verify(signing_key=KEY)["m@3"]
    store.load("m", "2", **SIGNED).close()  # what is still there and signed loads


def test_version_copied_from_a_staging_store_with_the_same_key_is_refused(store, tmp_path):
    staging = embedml.ModelStore(tmp_path / "staging")
    store.save("m", sk_logreg(), signing_key=KEY)
    store.set_alias("m", "production", "1", signing_key=KEY)
    staging.save("m", sk_logreg(), signing_key=KEY)
    copied = staging.save("m", sk_logreg(), signing_key=KEY)  # version 2, validly signed
    shutil.copytree(copied.path, store.root / "m" / "2")
    with pytest.raises(embedml.SignatureError, match="not in the signed store record"):
        store.load("m", **SIGNED)  # as "latest"
    with pytest.raises(embedml.SignatureError, match="not in the signed store record"):
        store.load("m", "2", **SIGNED)
    (store.root / "m" / "aliases.json").write_text(json.dumps({"production": "2"}))
    with pytest.raises(embedml.SignatureError):
        store.load("m", "@production", **SIGNED)  # served as production
    # the same version number replaced by the staging copy: the manifest digest differs
    shutil.rmtree(store.root / "m" / "2")
    shutil.rmtree(store.root / "m" / "1")
    shutil.copytree(staging.root / "m" / "1", store.root / "m" / "1")
    (store.root / "m" / "aliases.json").write_text(json.dumps({"production": "1"}))
    with pytest.raises(embedml.SignatureError, match="manifest"):
        store.load("m", "@production", **SIGNED)
    assert "manifest" in store.verify(signing_key=KEY)["m@1"]


def test_the_whole_record_of_another_store_is_refused_when_the_identity_is_pinned(tmp_path):
    prod = embedml.ModelStore(tmp_path / "prod", store_id="prod")
    staging = embedml.ModelStore(tmp_path / "staging", store_id="staging")
    prod.save("m", sk_logreg(), signing_key=KEY)
    staging.save("m", sk_logreg(), signing_key=KEY)
    shutil.copy(staging.root / RECORD, prod.root / RECORD)
    shutil.rmtree(prod.root / "m")
    shutil.copytree(staging.root / "m", prod.root / "m")
    with pytest.raises(embedml.SignatureError, match="staging"):
        prod.load("m", **SIGNED)


def test_a_replayed_older_record_is_refused_by_a_store_that_saw_a_newer_one(store):
    store.save("m", sk_logreg(), signing_key=KEY)
    store.set_alias("m", "production", "1", signing_key=KEY)
    old_record = (store.root / RECORD).read_bytes()
    old_aliases = (store.root / "m" / "aliases.json").read_bytes()
    store.save("m", sk_logreg(), signing_key=KEY)
    store.set_alias("m", "production", "2", signing_key=KEY)
    store.load("m", "@production", **SIGNED).close()
    (store.root / RECORD).write_bytes(old_record)
    (store.root / "m" / "aliases.json").write_bytes(old_aliases)
    shutil.rmtree(store.root / "m" / "2")
    with pytest.raises(embedml.SignatureError, match="older"):
        store.load("m", "@production", **SIGNED)


def test_alias_moves_are_signed_and_history_cannot_steer_a_signed_rollback(store):
    _three_signed_versions(store)
    for v in ("1", "2", "3"):
        store.promote("m", v, signing_key=KEY)
    with store.load("m", "@production", **SIGNED) as h:
        assert h.version == "3"
    # an attacker rewrites the history so that a rollback would pick version 1
    (store.root / "m" / "history.jsonl").write_text(
        json.dumps({"action": "promote", "alias": "production", "from": "1", "to": "3"}) + "\n"
    )
    assert store.rollback("m", signing_key=KEY).version == "2"  # from the signed record
    with store.load("m", "@production", **SIGNED) as h:
        assert h.version == "2"
    store.set_alias("m", "staging", "1", signing_key=KEY)
    store.remove_alias("m", "staging", signing_key=KEY)
    with pytest.raises(embedml.VersionNotFoundError):
        store.load("m", "@staging", **SIGNED)
    store.set_alias("m", "canary", "1")  # without the key: not part of the signed store
    with pytest.raises(embedml.SignatureError, match="canary"):
        store.load("m", "@canary", **SIGNED)
    store.load("m", "@canary").close()  # unsigned loads follow aliases.json as before


def test_signed_alias_move_needs_a_signed_target(store):
    store.save("m", sk_logreg())  # unsigned
    with pytest.raises(embedml.SignatureError, match="not signed"):
        store.set_alias("m", "production", "1", signing_key=KEY)
    assert store.aliases("m") == {}


def test_follow_and_swap_resolve_through_the_record(store):
    X, _ = dataset()
    _three_signed_versions(store)
    store.set_alias("m", "production", "1", signing_key=KEY)
    with store.load("m", "@production", **SIGNED) as h:
        (store.root / "m" / "aliases.json").write_text(json.dumps({"production": "3"}))
        with pytest.raises(embedml.SignatureError):
            h.swap("@production")
        assert h.version == "1"
        h.predict_batch(X[:2])
    (store.root / "m" / "aliases.json").write_text(json.dumps({"production": "1"}))
    with store.load("m", "@production", follow=True, poll_s=0.01, **SIGNED) as h:
        (store.root / "m" / "aliases.json").write_text(json.dumps({"production": "3"}))
        follower = h.follower
        assert follower is not None
        _wait_for(lambda: follower.errors > 0, "the follower's next poll")
        assert follower.stop(timeout=30)  # no poll after the one that failed
        assert h.version == "1" and follower.swaps == 0
        assert "signed store record" in (follower.last_error or "")


def _wait_for(cond, what: str, timeout: float = 60.0) -> None:
    """Poll ``cond`` (a liveness bound, not a speed check: the machine is shared)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_unsigned_store_needs_migration_and_sign_store_migrates_it(store):
    store.save("m", sk_logreg())
    store.sign("m", "1", signing_key=KEY)  # signs the manifest and records the version
    store.save("m", sk_logreg())  # unsigned: left out of the record
    store.set_alias("m", "production", "1")
    with pytest.raises(embedml.SignatureError, match="signed store record at nothing"):
        store.load("m", "@production", **SIGNED)
    with pytest.raises(embedml.SignatureError, match="not in the signed store record"):
        store.load("m", "2", **SIGNED)
    report = store.sign_store(signing_key=KEY)
    assert report["m@1"] is None and "not signed" in report["m@2"]
    with store.load("m", "@production", **SIGNED) as h:
        assert h.version == "1"


def test_legacy_store_without_a_record_is_refused_with_the_fix(tmp_path):
    store = embedml.ModelStore(tmp_path / "s")
    store.save("m", sk_logreg(), signing_key=KEY)
    (store.root / RECORD).unlink()  # as written by an embedml before the record existed
    with pytest.raises(embedml.SignatureError, match="sign_store"):
        store.load("m", **SIGNED)
    assert "sign_store" in store.verify(signing_key=KEY, require_signature=True)["(store record)"]
    store.sign_store(signing_key=KEY)
    store.load("m", **SIGNED).close()


def test_record_signed_with_another_key_is_never_extended(store):
    store.save("m", sk_logreg(), signing_key=KEY)
    with pytest.raises(embedml.SignatureError, match="another key"):
        store.save("m", sk_logreg(), signing_key="other")
    with pytest.raises(embedml.SignatureError, match="another key"):
        store.load("m", require_signature=True, signing_key="other")


_SAVER = """
import sys, embedml, helpers_models
store = embedml.ModelStore(sys.argv[1])
model = helpers_models.sk_logreg()
print("ready", flush=True)
sys.stdin.readline()
for i in range(int(sys.argv[3])):
    store.save(sys.argv[2], model, signing_key="store-record-key")
for i in range(30):  # signed alias moves: more record updates racing the other processes
    store.set_alias(sys.argv[2], "prod", str(i % int(sys.argv[3]) + 1), signing_key="store-record-key")
"""


@pytest.mark.timeout(300)
def test_concurrent_signed_saves_from_processes_lose_no_record_entry(store, subprocess_env):
    env = dict(subprocess_env)
    env["PYTHONPATH"] = os.path.dirname(__file__) + os.pathsep + env["PYTHONPATH"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SAVER, str(store.root), name, "4"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "a", "b", "c")  # "b" and "c" race "a" for the store lock
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:  # all start at once
        p.stdin.write("go\n")
        p.stdin.close()
    for p in procs:
        assert p.wait(240) == 0
        p.stdout.close()
    assert store.versions("a") == [str(v) for v in range(1, 9)]
    # every version and every alias move is in the record: nothing reported
    report = store.verify(signing_key=KEY, require_signature=True)
    assert len(report) == 16 and all(v is None for v in report.values()), report
    for name in ("a", "b", "c"):
        with store.load(name, "@prod", **SIGNED) as h:
            assert h.version == store.aliases(name)["prod"]
    with store.load("a", **SIGNED) as h:
        assert h.version == "8"


# ---------------------------------------------------------------- Medium 5: planted symlinks


def test_planted_history_symlink_is_never_written_through(store, tmp_path):
    store.save("m", sk_logreg())
    store.set_alias("m", "prod", "1")
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    (store.root / "m" / "history.jsonl").unlink()
    (store.root / "m" / "history.jsonl").symlink_to(outside)
    with pytest.raises(embedml.StoreError, match="symlink"):
        store.remove_alias("m", "prod")
    with pytest.raises(embedml.StoreError, match="symlink"):
        store.set_alias("m", "prod", "1")
    assert outside.read_text() == "precious\n"


def test_alias_value_from_aliases_json_is_validated_before_any_write(store, tmp_path):
    store.save("m", sk_logreg())
    outside = tmp_path / "outside.txt"
    outside.write_text("")
    (store.root / "m" / "aliases.json").write_text(json.dumps({"prod": "1\nattacker text"}))
    with pytest.raises(embedml.IntegrityError, match="aliases.json"):
        store.remove_alias("m", "prod")
    assert outside.read_text() == ""
    assert not (store.root / "m" / "history.jsonl").exists()


def test_planted_aliases_json_symlink_is_not_read(store, tmp_path):
    store.save("m", sk_logreg())
    outside = tmp_path / "aliases.json"
    outside.write_text(json.dumps({"prod": "1"}))
    (store.root / "m" / "aliases.json").symlink_to(outside)
    with pytest.raises(embedml.IntegrityError, match="symlink"):
        store.aliases("m")


def test_planted_symlink_at_a_temporary_name_is_not_written_through(store, tmp_path, monkeypatch):
    store.save("m", sk_logreg())
    fixed = uuid.UUID(int=7)
    monkeypatch.setattr(uuid, "uuid4", lambda: fixed)
    outside = tmp_path / "outside"
    outside.write_text("precious")
    (store.root / "m" / f".aliases.json.{fixed.hex}.tmp").symlink_to(outside)
    with pytest.raises(embedml.StoreError):
        store.set_alias("m", "prod", "1")
    assert outside.read_text() == "precious"


def test_planted_record_and_store_lock_symlinks_are_not_followed(store, tmp_path):
    outside = tmp_path / "outside"
    (store.root / ".lock").symlink_to(outside)
    with pytest.raises(embedml.StoreError, match="lock"):
        store.save("m", sk_logreg(), signing_key=KEY)
    assert not outside.exists()
    (store.root / ".lock").unlink()
    target = tmp_path / "record-outside"
    target.write_text("{}")
    (store.root / RECORD).symlink_to(target)
    with pytest.raises(embedml.IntegrityError, match="symlink"):
        store.save("m", sk_logreg(), signing_key=KEY)
    assert target.read_text() == "{}"


def test_history_entries_are_validated(store):
    store.save("m", sk_logreg())
    (store.root / "m" / "history.jsonl").write_text("[1, 2]\n")
    with pytest.raises(embedml.IntegrityError, match="line 1"):
        store.history("m")
    (store.root / "m" / "history.jsonl").write_text(
        json.dumps({"action": "set_alias", "alias": "p", "from": None, "to": "../x"}) + "\n"
    )
    with pytest.raises(embedml.IntegrityError, match="line 1"):
        store.history("m")
    # a torn last line (a writer killed mid-append) is still skipped with a warning
    (store.root / "m" / "history.jsonl").write_text('{"action": "set_al')
    assert store.history("m") == []


# ---------------------------------------------------------------- Low: tampered metadata


def test_non_ascii_signature_file_is_a_signature_error(store):
    mv = store.save("m", sk_logreg(), signing_key=KEY)
    doc = json.loads((mv.path / SIGNATURE_FILE).read_text())
    doc["signature"] = "é" * 64
    (mv.path / SIGNATURE_FILE).write_text(json.dumps(doc, ensure_ascii=False))
    with pytest.raises(embedml.SignatureError, match="not a valid signature"):
        store.load("m", **SIGNED)
    assert "not a valid signature" in store.verify(signing_key=KEY)["m@1"]


@pytest.mark.parametrize("content", ["[]", '"x"', '{"prod": 1}', '{"prod": ["1"]}', "{"])
def test_malformed_aliases_json_is_an_integrity_error(store, content):
    store.save("m", sk_logreg())
    (store.root / "m" / "aliases.json").write_text(content)
    with pytest.raises(embedml.IntegrityError, match="aliases.json"):
        store.aliases("m")
    with pytest.raises(embedml.IntegrityError):
        store.load("m", "@prod")
    store.load("m", "1").close()


def test_verify_audits_the_rest_of_a_tampered_store(store):
    for name in ("a", "b", "c", "d"):
        store.save(name, sk_logreg(), signing_key=KEY)
    (store.root / "a" / "1" / MANIFEST_FILE).write_text("[" * 100_000 + "]" * 100_000)
    sig = store.root / "b" / "1" / SIGNATURE_FILE
    sig.write_text(
        json.dumps({"algorithm": "hmac-sha256", "signature": "ü" * 64}, ensure_ascii=False)
    )
    (store.root / "c" / "aliases.json").write_text("[]")
    (store.root / "c" / "history.jsonl").write_text("[1, 2]\n")
    with pytest.raises(embedml.IntegrityError, match="not a valid manifest"):
        store.load("a")
    report = store.verify(signing_key=KEY)
    assert "not a valid manifest" in report["a@1"]
    assert "not a valid signature" in report["b@1"]
    assert "aliases.json" in report["c/aliases.json"]
    assert "line 1" in report["c/history.jsonl"]
    assert report["c@1"] is None and report["d@1"] is None


@pytest.mark.parametrize("version", ["../../outside", "/etc", "1/../../x", "1\x00"])
def test_manifest_validates_its_version(store, tmp_path, version):
    store.save("m", sk_logreg())
    (tmp_path / "outside").mkdir()
    shutil.copy(store.root / "m" / "1" / MANIFEST_FILE, tmp_path / "outside" / MANIFEST_FILE)
    with pytest.raises(embedml.InvalidNameError):
        store.manifest("m", version)


def test_versions_over_the_documented_limit_are_refused(store):
    store.save("m", sk_logreg())
    for version in ("1." + "0" * 127, "1." + "1" * 300):  # 129 and 302 characters
        with pytest.raises(embedml.InvalidNameError, match="128"):
            store.save("m", sk_logreg(), version=version)
        with pytest.raises(embedml.InvalidNameError, match="128"):
            store.load("m", version)
    store.save("m", sk_logreg(), version="2." + "1" * 126)  # 128 characters: fine
    assert store.versions("m") == ["1", "2." + "1" * 126]


def test_name_too_long_for_the_file_system_is_not_version_exists(tmp_path):
    # A root deep enough that the temporary folder fits in PATH_MAX but the version folder
    # (128 characters) does not: the rename fails with ENAMETOOLONG.
    root = tmp_path
    while len(str(root)) < 3960:
        root = root / ("d" * min(200, 3960 - len(str(root))))
    root.mkdir(parents=True)
    store = embedml.ModelStore(root)
    name = "m" * (3985 - len(str(root)) - 1)
    with pytest.raises(embedml.StoreError, match="File name too long") as exc:
        store.save(name, sk_logreg(), version="1." + "1" * 126)
    assert not isinstance(exc.value, embedml.VersionExistsError)


def test_signed_store_still_predicts(store):
    X, _ = dataset()
    store.save("m", sk_logreg(), signing_key=KEY)
    with store.load("m", **SIGNED) as h:
        np.testing.assert_array_equal(h.predict_batch(X[:5]), sk_logreg().predict(X[:5]))


# ---------------------------------------------------------------- the CLI


def test_cli_verify_reports_an_unsigned_alias_move_and_sign_migrates(store, monkeypatch, capsys):
    store.save("m", sk_logreg(), signing_key=KEY)
    store.save("m", sk_logreg())  # unsigned
    store.set_alias("m", "production", "1")
    (store.root / RECORD).unlink()  # a store from before the record
    monkeypatch.setenv("EMBEDML_SIGNING_KEY", KEY)
    assert main(["--store", str(store.root), "verify", "--require-signature"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH  (store record)" in out and "MISMATCH  m@2" in out
    assert main(["--store", str(store.root), "sign"]) == 0
    out = capsys.readouterr().out
    assert "recorded  m@1" in out and "recorded  m@production" in out and "LEFT OUT  m@2" in out
    assert main(["--store", str(store.root), "sign", "m@2"]) == 0
    assert main(["--store", str(store.root), "verify", "--require-signature"]) == 0
    assert "0 mismatch(es) (signatures checked)" in capsys.readouterr().out
    (store.root / "m" / "aliases.json").write_text(json.dumps({"production": "2"}))
    assert main(["--store", str(store.root), "verify"]) == 1
    assert "MISMATCH  m@production: aliases.json points @production at 2" in capsys.readouterr().out
    assert main(["--store", str(store.root), "alias", "m", "production", "2"]) == 0  # signed move
    with store.load("m", "@production", **SIGNED) as h:
        assert h.version == "2"


def test_cli_sign_without_a_key_is_one_line_and_status_1(store, monkeypatch, capsys):
    monkeypatch.delenv("EMBEDML_SIGNING_KEY", raising=False)
    store.save("m", sk_logreg())
    assert main(["--store", str(store.root), "sign"]) == 1
    assert "EMBEDML_SIGNING_KEY" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_signed_promotion_gate_loads_under_the_model_lock_without_deadlock(store, tmp_path):
    from sklearn.metrics import accuracy_score

    X, y = dataset()
    _three_signed_versions(store)
    store.promote("m", "1", signing_key=KEY)
    other = embedml.ModelStore(store.root)  # another store object on the same folder
    gate = embedml.Gate(accuracy_score, X, y, min_score=0.5, load_options=SIGNED)
    assert other.promote("m", "2", gate=gate, signing_key=KEY).version == "2"
    with store.load("m", "@production", **SIGNED) as h:
        assert h.version == "2"


def test_record_follows_version_spellings(store):
    store.save("m", sk_logreg(), version="1.0", signing_key=KEY)
    store.save("m", sk_logreg(), version="2.0rc1", signing_key=KEY)
    store.set_alias("m", "production", "1", signing_key=KEY)  # "1" is "1.0"
    store.set_alias("m", "canary", "2.0rc1", signing_key=KEY)
    with store.load("m", "@production", **SIGNED) as h:
        assert h.version == "1.0"
    with store.load("m", "@canary", **SIGNED) as h:
        assert h.version == "2.0rc1"
    with store.load("m", **SIGNED) as h:  # "latest": the final release
        assert h.version == "1.0"
    assert store.verify(signing_key=KEY, require_signature=True) == {
        "m@1.0": None,
        "m@2.0rc1": None,
    }
    store.remove_alias("m", "canary", signing_key=KEY)
    store.delete("m", "2.0rc1", signing_key=KEY)
    assert store.verify(signing_key=KEY, require_signature=True) == {"m@1.0": None}


def test_a_child_forked_while_another_thread_holds_a_store_lock_does_not_keep_it(store):
    import fcntl
    import threading

    store.save("m", sk_logreg(), signing_key=KEY)
    holding, release = threading.Event(), threading.Event()

    def reader() -> None:  # what a follower thread does during a signed resolution
        with locked(store.root / "m" / ".lock", shared=True):
            holding.set()
            release.wait(60)

    t = threading.Thread(target=reader)
    t.start()
    assert holding.wait(60)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child (gunicorn-style worker) lives on, never touching the store
        os.close(write_end)
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    try:
        release.set()
        t.join(60)
        fd = os.open(store.root / "m" / ".lock", os.O_RDONLY)
        try:  # the reader released its lock: nobody may hold it now, the child included
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        os.close(write_end)
        os.waitpid(pid, 0)
