"""Integrity: the artifact is hashed before anything is deserialised; tampered, truncated or
malicious artifacts and broken manifests raise IntegrityError; a fresh process that has only
the store directory enforces the saved schema."""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import subprocess
import sys
import textwrap
from typing import Literal

import joblib
import numpy as np
import pytest
from pydantic import BaseModel, Field

import embedml
from embedml.store.manifest import MANIFEST_FILE
from helpers_models import Tagged, dataset, onnx_linear, sk_logreg, torch_scripted


class Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _malicious_bytes(fmt: str, marker: pathlib.Path, tmp_path: pathlib.Path) -> bytes:
    if fmt == "pickle":
        return pickle.dumps(Payload(marker))
    path = tmp_path / "payload.joblib"
    joblib.dump(Payload(marker), path)
    return path.read_bytes()


@pytest.mark.parametrize("fmt", ["pickle", "joblib"])
def test_payload_is_live_when_trusted(store, tmp_path, fmt):
    """Control: the payload really runs code when its hash matches (so the next test means
    something). A correctly saved pickle is trusted by design."""
    marker = tmp_path / "pwned"
    store.save("evil", Payload(marker), format=fmt)
    assert not marker.exists()  # saving does not run it
    with pytest.raises(embedml.EmbedMLError):  # the "model" (None) has no predict ...
        store.load("evil")
    assert marker.exists()  # ... but unpickling ran the payload


@pytest.mark.parametrize("fmt", ["pickle", "joblib"])
@pytest.mark.parametrize("keep_size", [False, True])
def test_replaced_pickle_never_runs(store, tmp_path, fmt, keep_size):
    marker = tmp_path / "pwned"
    mv = store.save("fraud", sk_logreg(), format=fmt)  # saved by the trusted path
    evil = _malicious_bytes(fmt, marker, tmp_path)
    if keep_size:  # same length as the original, so only the hash can tell
        original = mv.artifact_path.read_bytes()
        assert len(evil) < len(original)
        evil = evil + b"\0" * (len(original) - len(evil))
        assert len(evil) == mv.manifest.size
    mv.artifact_path.write_bytes(evil)
    with pytest.raises(embedml.IntegrityError, match="fraud@1") as exc:
        store.load("fraud")
    assert ("SHA-256" if keep_size else "bytes") in str(exc.value)
    assert not marker.exists()
    assert store.verify("fraud")["fraud@1"] is not None
    # the padded payload is still a working pickle: had it been loaded, it would have run
    if keep_size and fmt == "pickle":
        pickle.loads(evil)
        assert marker.exists()


def test_tampered_artifacts_of_every_format(store, tmp_path):
    import torch

    (tmp_path / "m.pt").write_bytes(b"")
    torch.jit.save(torch_scripted(), str(tmp_path / "m.pt"))
    for name, model in (
        ("joblib", sk_logreg()),
        ("onnx", onnx_linear()),
        ("torchscript", tmp_path / "m.pt"),
    ):
        mv = store.save(name, model, trust=name == "torchscript")  # a .pt file needs a voucher
        data = bytearray(mv.artifact_path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # flip one byte in the middle
        mv.artifact_path.write_bytes(bytes(data))
        with pytest.raises(embedml.IntegrityError, match="SHA-256"):
            store.load(name)


def test_truncated_and_missing_artifact(store):
    mv = store.save("m", sk_logreg())
    good = mv.artifact_path.read_bytes()
    mv.artifact_path.write_bytes(good[: len(good) // 2])
    with pytest.raises(embedml.IntegrityError, match="truncated"):
        store.load("m")
    mv.artifact_path.write_bytes(good)
    assert store.load("m").predict(dataset()[0][0]) == sk_logreg().predict(dataset()[0][:1])[0]
    mv.artifact_path.unlink()
    with pytest.raises(embedml.IntegrityError, match="missing"):
        store.load("m")


def test_verify_reports_each_version(store):
    store.save("m", Tagged("a"))
    mv = store.save("m", Tagged("b"))
    store.save("n", Tagged("c"))
    assert store.verify() == {"m@1": None, "m@2": None, "n@1": None}
    mv.artifact_path.write_bytes(b"junk")
    report = store.verify()
    assert report["m@1"] is None and report["n@1"] is None
    assert "m@2" in report["m@2"]


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda text: text[: len(text) // 2],  # truncated JSON
        lambda text: "not json at all",
        lambda text: json.dumps({**json.loads(text), "sha256": None}),  # wrong type
        lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "artifact"}),
        lambda text: json.dumps({**json.loads(text), "version": "9"}),  # describes another version
        lambda text: json.dumps({**json.loads(text), "artifact": "../../other/1/model.joblib"}),
        lambda text: json.dumps({**json.loads(text), "artifact": "manifest.json"}),
    ],
    ids=["truncated", "not-json", "wrong-type", "no-artifact", "other-version", "escape", "self"],
)
def test_broken_manifest_is_integrity_error(store, corrupt):
    mv = store.save("m", Tagged("x"))
    path = mv.path / MANIFEST_FILE
    path.write_text(corrupt(path.read_text()))
    with pytest.raises(embedml.IntegrityError):
        store.load("m")
    with pytest.raises(embedml.IntegrityError):
        store.resolve("m", "1")


def test_artifact_symlink_is_refused(store, tmp_path):
    mv = store.save("m", Tagged("x"))
    outside = tmp_path / "outside.joblib"
    outside.write_bytes(mv.artifact_path.read_bytes())  # same bytes: the hash would match
    mv.artifact_path.unlink()
    mv.artifact_path.symlink_to(outside)
    with pytest.raises(embedml.IntegrityError, match="outside"):
        store.load("m")


def test_broken_aliases_file_is_integrity_error(store):
    store.save("m", Tagged("x"))
    store.set_alias("m", "production", "1")
    (store.root / "m" / "aliases.json").write_text("{broken")
    with pytest.raises(embedml.IntegrityError):
        store.resolve("m", "@production")


# ---------------------------------------------------------------- a fresh process


class Loan(BaseModel):
    amount: float = Field(gt=0, le=1_000_000)
    term: int = Field(ge=1, le=360)
    grade: Literal["A", "B", "C"]
    first_home: bool


_CHILD = textwrap.dedent(
    """
    import json, sys
    import embedml
    store = embedml.ModelStore(sys.argv[1])
    handle = store.load("loans", "@production")
    out = {"schema": repr(handle.input_schema), "errors": {}}
    out["ok"] = handle.predict_batch(json.loads(sys.argv[2])).tolist()
    for what, record in json.loads(sys.argv[3]).items():
        try:
            handle.predict(record)
            out["errors"][what] = None
        except embedml.SchemaError as exc:
            out["errors"][what] = [exc.field, exc.message]
    out["modules"] = sorted(m for m in sys.modules if m.startswith(("test_", "helpers_")))
    print(json.dumps(out))
    """
)


@pytest.mark.timeout(120)
def test_fresh_process_enforces_saved_schema(store, subprocess_env):
    from sklearn.tree import DecisionTreeClassifier

    # a real model over the numeric encoding of Loan: amount, term, grade (as its string), first_home
    rng = np.random.default_rng(2)
    X = np.column_stack(
        [rng.uniform(1, 1e5, 200), rng.integers(1, 361, 200), rng.integers(0, 2, 200)]
    )
    y = (X[:, 0] > 5e4).astype(int)

    tree = DecisionTreeClassifier(max_depth=2, random_state=0).fit(X, y)
    store.save("loans", tree, version="1", input_schema=Loan, preprocess="embedml_test_enc:encode")
    # the preprocess step lives in a module written next to the store, not in the tests
    (store.root.parent / "embedml_test_enc.py").write_text(
        "import numpy as np\n"
        "def encode(batch):\n"
        "    return np.column_stack([batch[:, 0], batch[:, 1], batch[:, 3]]).astype(float)\n"
    )
    store.set_alias("loans", "production", "1")
    good = [
        {"amount": 90000.0, "term": 12, "grade": "A", "first_home": True},
        {"amount": 100.0, "term": 360, "grade": "C", "first_home": False},
    ]
    bad = {
        "missing": {"amount": 1.0, "term": 12, "grade": "A"},
        "unknown": {**good[0], "extra": 1},
        "range": {**good[0], "amount": 0.0},
        "enum": {**good[0], "grade": "Z"},
        "type": {**good[0], "term": "twelve"},
        "valid": good[1],
    }
    env = dict(subprocess_env)  # this checkout's src and the step's folder; not the tests
    env["PYTHONPATH"] = str(store.root.parent) + os.pathsep + env["PYTHONPATH"]
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(store.root), json.dumps(good), json.dumps(bad)],
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        cwd=store.root.parent,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] == list(tree.predict(np.array([[90000.0, 12, 1], [100.0, 360, 0]])))
    assert out["schema"].startswith("RecordSchema(amount: number, term: integer")
    assert out["errors"] == {
        "missing": ["first_home", "required field is missing"],
        "unknown": ["extra", out["errors"]["unknown"][1]],
        "range": ["amount", "value 0.0 is out of range (0, 1000000]"],
        "enum": ["grade", "expected one of ['A', 'B', 'C'], got 'Z'"],
        "type": ["term", "expected an integer, got str 'twelve'"],
        "valid": None,
    }
    assert out["modules"] == []  # the child never imported the tests (nor Loan)
