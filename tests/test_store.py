"""ModelStore: saving every kind of model, manifests, listing, aliases, deletion, atomicity
and concurrent saves from several processes."""

from __future__ import annotations

import hashlib
import json
import pickle
import platform
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import joblib
import numpy as np
import pytest
from pydantic import BaseModel, Field

import embedml
from embedml.store.manifest import MANIFEST_FILE
from helpers_models import (
    CrashOnPickle,
    FailOnPickle,
    Tagged,
    child_env,
    dataset,
    sk_logreg,
    skl2onnx_logreg,
    torch_exported,
    torch_reference,
    torch_scripted,
)


class Features(BaseModel):
    a: float
    b: float = Field(ge=0)
    c: float
    d: float


def test_store_creates_its_folder(tmp_path):
    root = tmp_path / "deep" / "er" / "store"
    store = embedml.ModelStore(root)
    assert root.is_dir()
    assert store.models() == []


# ---------------------------------------------------------------- saving each kind of model


def _saved_kinds(tmp_path: Path):
    """(what, model-or-path, expected format) for every kind of input ``save`` accepts."""
    import torch

    onx = skl2onnx_logreg()
    files = tmp_path / "files"
    files.mkdir()
    (files / "m.onnx").write_bytes(onx.SerializeToString())
    torch.jit.save(torch_scripted(), str(files / "m.pt"))
    torch.export.save(torch_exported(), str(files / "m.pt2"))
    (files / "m.pkl").write_bytes(pickle.dumps(sk_logreg()))
    joblib.dump(sk_logreg(), files / "m.joblib")
    return [
        ("object", sk_logreg(), "joblib"),
        ("onnx-proto", onx, "onnx"),
        ("onnx-bytes", onx.SerializeToString(), "onnx"),
        ("scriptmodule", torch_scripted(), "torchscript"),
        ("exported", torch_exported(), "torch_export"),
        ("path-onnx", files / "m.onnx", "onnx"),
        ("path-pt", str(files / "m.pt"), "torchscript"),
        ("path-pt2", files / "m.pt2", "torch_export"),
        ("path-pkl", files / "m.pkl", "pickle"),
        ("path-joblib", files / "m.joblib", "joblib"),
    ]


def test_save_every_kind_infers_format_and_loads(store, tmp_path):
    X, _ = dataset()
    # pickle/joblib/TorchScript/.pt2 files need the caller to vouch for them (docs/security.md)
    vouch = {"path-pkl": {"trust": True}, "path-pt": {"trust": True}, "path-pt2": {"trust": True}}
    for what, model, fmt in _saved_kinds(tmp_path):
        if what == "path-joblib":
            vouch[what] = {"sha256": hashlib.sha256(Path(model).read_bytes()).hexdigest()}
        mv = store.save(what, model, **vouch.get(what, {}))
        assert (mv.name, mv.version, mv.manifest.format) == (what, "1", fmt), what
        assert mv.artifact_path.is_file()
        assert (
            mv.artifact_path.suffix
            == {
                "joblib": ".joblib",
                "pickle": ".pkl",
                "onnx": ".onnx",
                "torchscript": ".pt",
                "torch_export": ".pt2",
            }[fmt]
        )
        with store.load(what) as h:
            assert h.format == fmt
            out = h.predict_batch(X[:5])
        if fmt in ("joblib", "pickle"):
            np.testing.assert_array_equal(out, sk_logreg().predict(X[:5]))
        elif fmt == "onnx":
            np.testing.assert_array_equal(out["label"], sk_logreg().predict(X[:5]))
        else:
            np.testing.assert_allclose(out, torch_reference(X[:5]), rtol=1e-6)


def test_plain_pickle_format_for_objects(store):
    mv = store.save("p", sk_logreg(), format="pickle")
    assert mv.manifest.format == "pickle"
    # it is a plain pickle, readable without embedml or joblib
    restored = pickle.loads(mv.artifact_path.read_bytes())
    X, _ = dataset()
    np.testing.assert_array_equal(restored.predict(X), sk_logreg().predict(X))


def test_unknown_suffix_and_missing_file(store, tmp_path):
    odd = tmp_path / "model.xyz"
    odd.write_bytes(b"whatever")
    with pytest.raises(embedml.UnsupportedFormatError, match=r"\.onnx"):
        store.save("m", odd)
    with pytest.raises(embedml.StoreError, match="no model file"):
        store.save("m", tmp_path / "absent.onnx")
    assert store.models() == []


# ---------------------------------------------------------------- versions on save


def test_auto_versions_are_next_major(store):
    assert [store.save("m", Tagged(str(i))).version for i in range(3)] == ["1", "2", "3"]
    store.save("m", Tagged("x"), version="7.5")
    assert store.save("m", Tagged("y")).version == "8"
    assert store.versions("m") == ["1", "2", "3", "7.5", "8"]


def test_explicit_version_and_immutability(store):
    mv = store.save("m", Tagged("first"), version="1.2")
    assert mv.version == "1.2"
    before = mv.artifact_path.read_bytes()
    with pytest.raises(embedml.VersionExistsError, match="immutable"):
        store.save("m", Tagged("second"), version="1.2")
    assert isinstance(embedml.VersionExistsError("x"), embedml.EmbedMLError)
    # the existing version is untouched, and no temporary folder is left behind
    assert mv.artifact_path.read_bytes() == before
    assert store.load("m", "1.2").predict_batch(np.zeros((1, 1)))[0] == "first"
    assert sorted(p.name for p in (store.root / "m").iterdir() if not p.name.startswith(".l")) == [
        "1.2"
    ]


# ---------------------------------------------------------------- the manifest


def test_manifest_fields(store):
    import onnx
    import onnxruntime
    import sklearn
    import torch

    mv = store.save(
        "fraud",
        sk_logreg(),
        input_schema=Features,
        output_schema=embedml.TensorSpec("label", "int64", (-1,)),
        metadata={"owner": "risk", "auc": 0.91, "tags": ["a", "b"]},
    )
    on_disk = json.loads((mv.path / MANIFEST_FILE).read_text())
    assert on_disk == mv.manifest.model_dump(mode="json")
    m = mv.manifest
    assert (m.name, m.version, m.format, m.artifact) == ("fraud", "1", "joblib", "model.joblib")
    data = mv.artifact_path.read_bytes()
    assert m.sha256 == hashlib.sha256(data).hexdigest()
    assert m.size == len(data)
    assert datetime.fromisoformat(m.created_at).tzinfo is not None
    assert m.input_schema == {
        "kind": "record",
        "title": "Features",
        "fields": [
            {"name": "a", "kind": "number"},
            {"name": "b", "kind": "number", "minimum": 0},
            {"name": "c", "kind": "number"},
            {"name": "d", "kind": "number"},
        ],
    }
    assert m.output_schema == {
        "kind": "tensors",
        "tensors": [{"name": "label", "dtype": "int64", "shape": [-1]}],
    }
    assert m.metadata == {"owner": "risk", "auc": 0.91, "tags": ["a", "b"]}
    assert m.python == platform.python_version()
    assert m.embedml == embedml.__version__
    assert m.frameworks["scikit-learn"] == sklearn.__version__
    assert m.frameworks["numpy"] == np.__version__
    assert "joblib" in m.frameworks

    onx = store.save("o", skl2onnx_logreg()).manifest
    assert onx.frameworks == {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    ts = store.save("t", torch_scripted()).manifest
    assert ts.frameworks == {"torch": torch.__version__}
    ep = store.save("e", torch_exported()).manifest
    assert ep.frameworks == {"torch": torch.__version__}
    # torch.export programs carry their input specs, stored as the input schema
    assert ep.input_schema == {
        "kind": "tensors",
        "tensors": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
    }


def test_manifest_metadata_must_be_json(store):
    with pytest.raises(embedml.InvalidNameError, match="JSON"):
        store.save("m", Tagged("x"), metadata={"when": object()})
    assert store.models() == []


def test_import_path_strings_are_validated(store):
    for bad in ("no_colon", "a:b:c", ":f", "m:"):
        with pytest.raises(embedml.InvalidNameError, match="import path"):
            store.save("m", Tagged("x"), preprocess=bad)
    mv = store.save("m", Tagged("x"), preprocess="pkg.mod:fn", postprocess="pkg:g")
    assert (mv.manifest.preprocess, mv.manifest.postprocess) == ("pkg.mod:fn", "pkg:g")


def test_bad_schema_is_refused_at_save(store):
    with pytest.raises(embedml.SchemaError, match="pydantic model class"):
        store.save("m", Tagged("x"), input_schema={"a": float})
    assert store.models() == []


# ---------------------------------------------------------------- listing, resolving, errors


def test_models_versions_resolve_aliases(store):
    for name in ("zeta", "alpha", "mid"):
        store.save(name, Tagged(name))
    store.save("alpha", Tagged("alpha2"))
    assert store.models() == ["alpha", "mid", "zeta"]
    assert store.versions("alpha") == ["1", "2"]
    mv = store.resolve("alpha")
    assert (mv.name, mv.version, str(mv)) == ("alpha", "2", "alpha@2")
    assert mv.path == store.root / "alpha" / "2"
    assert mv.manifest == store.manifest("alpha", "2")
    assert store.aliases("alpha") == {}
    assert store.set_alias("alpha", "production", "1").version == "1"
    assert store.aliases("alpha") == {"production": "1"}
    assert json.loads((store.root / "alpha" / "aliases.json").read_text()) == {"production": "1"}


def test_not_found_errors_list_what_exists(store):
    store.save("fraud", Tagged("1"))
    store.save("fraud", Tagged("2"), version="2.1")
    store.set_alias("fraud", "production", "1")
    with pytest.raises(embedml.ModelNotFoundError) as exc:
        store.resolve("churn")
    assert isinstance(exc.value, LookupError)
    assert "churn" in str(exc.value) and "fraud" in str(exc.value)
    with pytest.raises(embedml.ModelNotFoundError):
        store.versions("churn")
    for spec in ("3", ">=5", "@staging"):
        with pytest.raises(embedml.VersionNotFoundError) as exc:
            store.resolve("fraud", spec)
        assert isinstance(exc.value, LookupError)
        msg = str(exc.value)
        assert spec in msg and "1, 2.1" in msg and "@production -> 1" in msg, msg
    with pytest.raises(embedml.ModelNotFoundError):
        store.load("churn")


def test_delete(store):
    for i in range(3):
        store.save("m", Tagged(str(i)))
    store.set_alias("m", "production", "2")
    with pytest.raises(embedml.StoreError, match="@production"):
        store.delete("m", "2")
    assert store.versions("m") == ["1", "2", "3"]
    store.delete("m", "1")
    assert store.versions("m") == ["2", "3"]
    with pytest.raises(embedml.VersionNotFoundError):
        store.delete("m", "1")
    # once the alias moves, the version can go
    store.set_alias("m", "production", "3")
    store.delete("m", "2.0")
    assert store.versions("m") == ["3"]
    assert not any(p.name.startswith(".trash") for p in (store.root / "m").iterdir())
    # a deleted version's number is not reused while a higher one exists
    assert store.save("m", Tagged("n")).version == "4"


def test_deleting_the_last_version_removes_the_model(store):
    store.save("m", Tagged("only"))
    store.save("keep", Tagged("k"))
    store.delete("m", "1")
    assert store.models() == ["keep"]
    with pytest.raises(embedml.ModelNotFoundError, match="keep"):
        store.resolve("m")
    with pytest.raises(embedml.ModelNotFoundError):
        store.set_alias("m", "production", "1")
    assert store.save("m", Tagged("again")).version == "1"


# ---------------------------------------------------------------- atomic saves


def test_leftover_tmp_folder_is_invisible(store):
    store.save("m", Tagged("good"))
    # a crashed save: a complete-looking version folder that never got renamed into place
    tmp = store.root / "m" / ".tmp-deadbeef"
    tmp.mkdir()
    (tmp / "model.joblib").write_bytes(b"half")
    (tmp / MANIFEST_FILE).write_text(
        json.dumps({"name": "m", "version": "2", "format": "joblib", "artifact": "model.joblib"})
    )
    # and a model that only ever had a crashed save
    (store.root / "ghost" / ".tmp-0").mkdir(parents=True)
    assert store.models() == ["m"]
    assert store.versions("m") == ["1"]
    assert store.resolve("m").version == "1"
    assert store.load("m").predict_batch(np.zeros((1, 1)))[0] == "good"
    with pytest.raises(embedml.ModelNotFoundError):
        store.resolve("ghost")
    assert store.save("m", Tagged("next")).version == "2"


def test_failed_save_leaves_nothing(store):
    store.save("m", Tagged("good"))
    with pytest.raises(RuntimeError, match="cannot pickle"):
        store.save("m", FailOnPickle())
    assert store.versions("m") == ["1"]
    assert [p.name for p in (store.root / "m").iterdir() if p.name.startswith(".tmp")] == []


@pytest.mark.timeout(120)
def test_process_killed_mid_save_leaves_no_version(store, subprocess_env):
    store.save("m", Tagged("good"))
    code = (
        "import sys, embedml, helpers_models\n"
        "store = embedml.ModelStore(sys.argv[1])\n"
        "store.save('m', helpers_models.CrashOnPickle())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(store.root)],
        env=child_env(subprocess_env),
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == 17, proc.stderr  # it died inside joblib.dump, mid-save
    leftovers = [p for p in (store.root / "m").iterdir() if p.name.startswith(".tmp-")]
    assert len(leftovers) == 1  # the half-written folder is there ...
    assert store.versions("m") == ["1"]  # ... but invisible
    assert store.load("m").predict_batch(np.zeros((1, 1)))[0] == "good"
    assert store.save("m", Tagged("after")).version == "2"
    _ = CrashOnPickle  # imported for the child; never pickled here


# ---------------------------------------------------------------- concurrent saves

_SAVER = """
import json, sys
import embedml, helpers_models
store = embedml.ModelStore(sys.argv[1])
who = sys.argv[2]
sys.stdin.readline()  # start together
got, explicit = [], None
for i in range(10):
    got.append([store.save("shared", helpers_models.Tagged(f"{who}-{i}")).version, f"{who}-{i}"])
    if i == 4:  # both processes race for the same explicit version of another model
        try:
            store.save("pinned", helpers_models.Tagged(who), version="1.5")
            explicit = "won"
        except embedml.VersionExistsError:
            explicit = "lost"
print(json.dumps({"got": got, "explicit": explicit}))
"""


@pytest.mark.timeout(180)
def test_concurrent_saves_from_two_processes(store, subprocess_env):
    env = child_env(subprocess_env)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SAVER, str(store.root), who],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in ("A", "B")
    ]
    for p in procs:  # both are importing; release them at once
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=150)
        assert p.returncode == 0, err
        results.append(json.loads(out))

    saved = {v: tag for r in results for v, tag in r["got"]}
    assert len(saved) == 20  # every save got its own version
    assert sorted(r["explicit"] for r in results) == ["lost", "won"]
    winner = "A" if results[0]["explicit"] == "won" else "B"
    assert store.versions("shared") == [str(i) for i in range(1, 21)]
    assert store.versions("pinned") == ["1.5"]
    assert store.load("pinned").predict_batch(np.zeros((1, 1)))[0] == winner
    assert [p.name for p in (store.root / "shared").iterdir() if p.name.startswith(".tmp")] == []
    for version, tag in saved.items():
        mv = store.resolve("shared", version)  # every manifest parses and matches its folder
        assert mv.manifest.version == version
        with store.load("shared", version) as h:  # every artifact matches its hash and loads
            assert h.predict_batch(np.zeros((1, 1)))[0] == tag
    # each process saw its own saves in increasing order
    for r in results:
        mine = [float(v) for v, _ in r["got"]]
        assert mine == sorted(mine)
