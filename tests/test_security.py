"""Trusted artifacts: signed manifests, vouching for pickle files, restricted unpickling,
framework version skew, store path containment; and the per-handle input limits."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import pickle
import warnings

import joblib
import numpy as np
import pytest
from pydantic import BaseModel

import embedml
from embedml.store.manifest import MANIFEST_FILE
from embedml.store.signing import SIGNATURE_FILE
from helpers_models import CountingModel, RowEcho, dataset, onnx_linear, sk_logreg

KEY = "s3cret-signing-key"


class Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


class CallsNumpyLoad:
    """Unpickling this calls ``numpy.load`` (a function of an allowed package)."""

    def __reduce__(self):
        return (np.load, ("/nonexistent.npy",))


def _rewrite_manifest(mv, **changes) -> None:
    path = mv.path / MANIFEST_FILE
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


# ---------------------------------------------------------------- signed manifests


def test_signed_save_loads_with_required_signature(store):
    X, _ = dataset()
    mv = store.save("lr", sk_logreg(), signing_key=KEY)
    sig = json.loads((mv.path / SIGNATURE_FILE).read_text())
    assert sig["algorithm"] == "hmac-sha256" and len(sig["signature"]) == 64
    assert KEY not in (mv.path / SIGNATURE_FILE).read_text()
    with store.load("lr", require_signature=True, signing_key=KEY) as h:
        np.testing.assert_array_equal(h.predict_batch(X[:5]), sk_logreg().predict(X[:5]))


def test_key_from_environment(store, monkeypatch):
    monkeypatch.setenv("EMBEDML_SIGNING_KEY", KEY)
    mv = store.save("lr", sk_logreg())
    assert (mv.path / SIGNATURE_FILE).is_file()
    store.load("lr", require_signature=True).close()
    monkeypatch.setenv("EMBEDML_SIGNING_KEY", "another-key")
    with pytest.raises(embedml.SignatureError, match="another key"):
        store.load("lr")  # a present but wrong signature is refused even when not required


def test_unsigned_version_is_refused_before_the_artifact_is_read(store, tmp_path):
    marker = tmp_path / "pwned"
    store.save("evil", Payload(marker), format="pickle")  # no key: unsigned
    with pytest.raises(embedml.SignatureError, match="not signed"):
        store.load("evil", require_signature=True, signing_key=KEY)
    assert not marker.exists()


def test_require_signature_needs_a_key(store, monkeypatch):
    monkeypatch.delenv("EMBEDML_SIGNING_KEY", raising=False)
    store.save("lr", sk_logreg(), signing_key=KEY)
    with pytest.raises(embedml.ConfigurationError, match="EMBEDML_SIGNING_KEY"):
        store.load("lr", require_signature=True)


def test_tampered_manifest_is_detected(store):
    mv = store.save("lr", sk_logreg(), signing_key=KEY)
    _rewrite_manifest(mv, metadata={"owner": "mallory"})
    with pytest.raises(embedml.SignatureError, match="does not match"):
        store.load("lr", require_signature=True, signing_key=KEY)


@pytest.mark.parametrize("fmt", ["pickle", "joblib"])
def test_tampered_artifact_is_detected_and_never_runs(store, tmp_path, fmt):
    marker = tmp_path / "pwned"
    mv = store.save("lr", sk_logreg(), format=fmt, signing_key=KEY)
    evil = pickle.dumps(Payload(marker))
    mv.artifact_path.write_bytes(evil)
    with pytest.raises(embedml.IntegrityError):  # the signed hash no longer matches
        store.load("lr", require_signature=True, signing_key=KEY)
    # ... and with the manifest's hash and size forged to match the new bytes
    _rewrite_manifest(mv, sha256=hashlib.sha256(evil).hexdigest(), size=len(evil))
    with pytest.raises(embedml.SignatureError):
        store.load("lr", require_signature=True, signing_key=KEY)
    with pytest.raises(embedml.SignatureError):
        store.load("lr", signing_key=KEY)  # not required, but a key is known: still refused
    assert not marker.exists()


def test_garbage_signature_file(store):
    mv = store.save("lr", sk_logreg(), signing_key=KEY)
    (mv.path / SIGNATURE_FILE).write_text("not json")
    with pytest.raises(embedml.SignatureError, match="not a valid signature"):
        store.load("lr", require_signature=True, signing_key=KEY)


def test_sign_an_existing_version(store):
    store.save("lr", sk_logreg())
    with pytest.raises(embedml.SignatureError):
        store.load("lr", require_signature=True, signing_key=KEY)
    path = store.sign("lr", "1", signing_key=KEY)
    assert path.name == SIGNATURE_FILE
    store.load("lr", require_signature=True, signing_key=KEY).close()
    with pytest.raises(embedml.SignatureError):
        store.load("lr", require_signature=True, signing_key="wrong")


def test_verify_reports_signatures(store):
    store.save("lr", sk_logreg(), signing_key=KEY)
    mv = store.save("lr", sk_logreg(), signing_key=KEY)
    store.save("plain", sk_logreg())
    assert store.verify(signing_key=KEY) == {"lr@1": None, "lr@2": None, "plain@1": None}
    _rewrite_manifest(mv, metadata={"x": 1})
    report = store.verify(signing_key=KEY, require_signature=True)
    assert report["lr@1"] is None
    assert "does not match" in report["lr@2"] and "not signed" in report["plain@1"]
    assert store.verify()["lr@2"] is None  # without a key only hashes are checked


# ---------------------------------------------------------------- pickle files need a voucher


@pytest.mark.parametrize("suffix", [".pkl", ".joblib"])
def test_pickle_file_without_voucher_is_refused_before_opening(store, tmp_path, suffix):
    missing = tmp_path / f"never-written{suffix}"
    # the refusal comes before the file is even looked at (it does not exist)
    with pytest.raises(embedml.UntrustedArtifactError) as exc:
        store.save("m", missing)
    assert "trust=True" in str(exc.value) and "sha256=" in str(exc.value)
    assert store.models() == []
    assert list(store.root.iterdir()) == []


def test_pickle_file_with_trust_or_matching_sha256(store, tmp_path):
    X, _ = dataset()
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(sk_logreg()))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert store.save("a", path, trust=True).manifest.sha256 == digest
    assert store.save("b", path, sha256=digest.upper()).manifest.sha256 == digest
    with store.load("b") as h:
        np.testing.assert_array_equal(h.predict_batch(X[:3]), sk_logreg().predict(X[:3]))


def test_pickle_file_with_wrong_sha256_leaves_nothing(store, tmp_path):
    path = tmp_path / "m.joblib"
    joblib.dump(sk_logreg(), path)
    with pytest.raises(embedml.UntrustedArtifactError, match="not the"):
        store.save("m", path, sha256="0" * 64)
    assert store.models() == []
    assert [p.name for p in (store.root / "m").iterdir() if not p.name.startswith(".lock")] == []
    with pytest.raises(embedml.ConfigurationError):
        store.save("m", path, sha256="abc")


def test_other_files_and_objects_need_no_voucher(store, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(onnx_linear().SerializeToString())
    store.save("onnx", path)
    store.save("obj", sk_logreg())
    assert store.models() == ["obj", "onnx"]


# ---------------------------------------------------------------- restricted unpickling


@pytest.mark.parametrize("fmt", ["pickle", "joblib"])
def test_restricted_loads_sklearn_models(store, fmt):
    from sklearn.base import clone
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = dataset()
    models = {
        "lr": sk_logreg(),
        "rf": RandomForestClassifier(n_estimators=3, random_state=0).fit(X, y),
        "hgb": HistGradientBoostingClassifier(max_iter=3).fit(X, y),
        "pipe": make_pipeline(StandardScaler(), clone(sk_logreg())).fit(X, y),
    }
    for name, model in models.items():
        store.save(name, model, format=fmt)
        with store.load(name, restricted=True) as h:
            np.testing.assert_array_equal(h.predict_batch(X[:8]), model.predict(X[:8]), name)


def test_restricted_loads_compressed_joblib(store, tmp_path):
    X, _ = dataset()
    path = tmp_path / "m.joblib"
    joblib.dump(sk_logreg(), path, compress=3)
    store.save("m", path, trust=True)
    with store.load("m", restricted=True) as h:
        np.testing.assert_array_equal(h.predict_batch(X[:3]), sk_logreg().predict(X[:3]))


@pytest.mark.parametrize("fmt", ["pickle", "joblib"])
def test_restricted_refuses_code_and_names_the_type(store, tmp_path, fmt):
    marker = tmp_path / "pwned"
    store.save("evil", Payload(marker), format=fmt)
    with pytest.raises(embedml.UntrustedArtifactError) as exc:
        store.load("evil", restricted=True)
    assert exc.value.type_name.startswith("pathlib.")
    assert exc.value.type_name in str(exc.value) and "trusted_types" in str(exc.value)
    assert not marker.exists()
    store.save("np", CallsNumpyLoad(), format=fmt)  # functions of numpy are not classes
    with pytest.raises(embedml.UntrustedArtifactError, match="numpy.*load"):
        store.load("np", restricted=True)


class OpensAFile:
    """Unpickling this calls a class constructor that creates a file (a write primitive)."""

    def __init__(self, ctor, path):
        self.ctor, self.path = ctor, path

    def __reduce__(self):
        return (self.ctor, (str(self.path), "w+") if self.ctor is np.memmap else (str(self.path), "w"))


def test_restricted_refuses_classes_that_open_files(tmp_path):
    from scipy.io import FortranFile

    from embedml.formats.restricted import restricted_pickle_loads

    for ctor in (FortranFile, np.memmap):
        target = tmp_path / f"created-by-{ctor.__name__}"
        data = pickle.dumps(OpensAFile(ctor, target))
        with pytest.raises(embedml.UntrustedArtifactError, match=ctor.__name__):
            restricted_pickle_loads(data)
        assert not target.exists()


def test_restricted_allows_sparse_matrices_and_text_models(store):
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer

    from embedml.formats.restricted import restricted_pickle_loads

    m = sp.csr_matrix(np.eye(3))
    assert (restricted_pickle_loads(pickle.dumps(m)) != m).nnz == 0
    docs = ["alpha beta gamma", "beta gamma delta"]
    tfidf = TfidfVectorizer().fit(docs)
    back = restricted_pickle_loads(pickle.dumps(tfidf))
    assert (back.transform(docs) != tfidf.transform(docs)).nnz == 0


def test_trusted_types_admit_the_users_classes(store):
    X, _ = dataset()
    store.save("c", CountingModel("restricted", sk_logreg()))
    with pytest.raises(embedml.UntrustedArtifactError) as exc:
        store.load("c", restricted=True)
    assert exc.value.type_name == "helpers_models.CountingModel"
    for trusted in (["helpers_models.CountingModel"], [CountingModel]):
        with store.load("c", restricted=True, trusted_types=trusted) as h:
            np.testing.assert_array_equal(h.predict_batch(X[:2]), sk_logreg().predict(X[:2]))
    with pytest.raises(embedml.ConfigurationError):
        store.load("c", restricted=True, trusted_types="helpers_models.CountingModel")


def test_untrusted_error_survives_pickling():
    err = embedml.UntrustedArtifactError("refused", type_name="os.system")
    back = pickle.loads(pickle.dumps(err))
    assert (str(back), back.type_name) == ("refused", "os.system")
    assert issubclass(embedml.UntrustedArtifactError, embedml.IntegrityError)
    assert issubclass(embedml.SignatureError, embedml.IntegrityError)


def test_restricted_module_directly():
    from embedml.formats.restricted import restricted_joblib_loads, restricted_pickle_loads

    arr = np.arange(6.0).reshape(2, 3)
    assert np.array_equal(restricted_pickle_loads(pickle.dumps(arr)), arr)
    buf = io.BytesIO()
    joblib.dump({"a": arr, "b": np.array(["x", None], dtype=object)}, buf)
    back = restricted_joblib_loads(buf.getvalue())
    assert np.array_equal(back["a"], arr) and back["b"].tolist() == ["x", None]
    with pytest.raises(embedml.UntrustedArtifactError, match="posix.system|os.system"):
        restricted_pickle_loads(b"cos\nsystem\n(S'true'\ntR.")


# ---------------------------------------------------------------- framework skew


def test_framework_skew_warns_or_refuses(store):
    mv = store.save("lr", sk_logreg())
    assert "scikit-learn" in mv.manifest.frameworks
    with warnings.catch_warnings():
        warnings.simplefilter("error", embedml.FrameworkVersionWarning)
        store.load("lr").close()  # same versions: no warning
    _rewrite_manifest(mv, frameworks={**mv.manifest.frameworks, "scikit-learn": "0.20.1"})
    with pytest.warns(embedml.FrameworkVersionWarning, match=r"scikit-learn 0\.20\.1 when saved"):
        store.load("lr").close()
    with pytest.raises(embedml.FrameworkVersionError, match="scikit-learn"):
        store.load("lr", strict_versions=True)


def test_framework_missing_is_skew(store):
    mv = store.save("lr", sk_logreg())
    _rewrite_manifest(mv, frameworks={"torch": "2.13.0", "onnxruntime": "0.0.1"})
    with pytest.raises(embedml.FrameworkVersionError, match="onnxruntime 0.0.1") as exc:
        store.load("lr", strict_versions=True)
    assert "torch" not in str(exc.value)  # a local build suffix (+cpu) is the same release


# ---------------------------------------------------------------- store paths


@pytest.mark.parametrize(
    "name", ["../x", "/etc/passwd", "a/../../b", "m\x00", "m\n", "x" * 5000, "ｍ", "~", "."]
)
def test_hostile_names_never_touch_the_disk(store, tmp_path, name):
    for call in (
        lambda: store.save(name, sk_logreg()),
        lambda: store.load(name),
        lambda: store.set_alias(name, "prod", "1"),
        lambda: store.versions(name),
    ):
        with pytest.raises(embedml.InvalidNameError):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    assert list(store.root.iterdir()) == []


@pytest.mark.parametrize("version", ["../1", "1/../../x", "/1", "1\x00", "1\n2"])
def test_hostile_versions_and_aliases(store, version):
    store.save("m", sk_logreg())
    with pytest.raises(embedml.InvalidNameError):
        store.save("m", sk_logreg(), version=version)
    with pytest.raises(embedml.InvalidNameError):
        store.load("m", version)
    for alias in ("../prod", "prod\n", "@/x"):
        with pytest.raises(embedml.InvalidNameError):
            store.set_alias("m", alias, "1")
    assert store.versions("m") == ["1"]


def test_symlinked_model_and_version_folders_are_refused(store, tmp_path):
    other = embedml.ModelStore(tmp_path / "other")
    mv = other.save("m", sk_logreg())
    os.symlink(other.root / "m", store.root / "m")
    with pytest.raises(embedml.StoreError, match="leaves the store root"):
        store.load("m")
    store.save("n", sk_logreg())
    os.symlink(mv.path, store.root / "n" / "2")
    with pytest.raises(embedml.StoreError, match="symlink"):
        store.load("n", "2")
    store.load("n", "1").close()


def test_planted_symlinks_for_manifest_and_lock_are_refused(store, tmp_path):
    mv = store.save("m", sk_logreg())
    real = tmp_path / "elsewhere.json"
    real.write_bytes((mv.path / MANIFEST_FILE).read_bytes())
    (mv.path / MANIFEST_FILE).unlink()
    (mv.path / MANIFEST_FILE).symlink_to(real)
    with pytest.raises(embedml.IntegrityError, match="symlink"):
        store.load("m")
    target = tmp_path / "created-outside"
    (store.root / "m" / ".lock").unlink(missing_ok=True)
    (store.root / "m" / ".lock").symlink_to(target)
    with pytest.raises(embedml.StoreError, match="lock"):
        store.set_alias("m", "prod", "1")
    assert not target.exists()


def test_alias_file_pointing_outside_is_not_followed(store):
    store.save("m", sk_logreg())
    (store.root / "m" / "aliases.json").write_text(json.dumps({"prod": "../../../etc"}))
    with pytest.raises(embedml.IntegrityError, match="aliases.json"):  # tampered, not a caller's mistake
        store.load("m", "@prod")


# ---------------------------------------------------------------- input limits


class Rec(BaseModel):
    x: float
    n: int
    tag: str
    opt: float | None = None


@pytest.fixture
def echo(store):
    store.save("echo", RowEcho(), input_schema=Rec)
    return store


GOOD = {"x": 1.5, "n": 2, "tag": "a", "opt": None}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -np.inf, np.float32("nan")])
def test_nan_and_inf_are_refused_by_default(echo, bad):
    with echo.load("echo") as h:
        with pytest.raises(embedml.SchemaError) as exc:
            h.predict({**GOOD, "x": bad})
        assert exc.value.field == "x" and exc.value.index is None
        assert "allow_nan=True" in str(exc.value)
        with pytest.raises(embedml.SchemaError) as exc:
            h.predict_batch([GOOD, GOOD, {**GOOD, "x": bad}])
        assert (exc.value.field, exc.value.index) == ("x", 2)
        with pytest.raises(embedml.SchemaError) as exc:
            h.predict({**GOOD, "opt": np.inf})  # nullable: null is fine, infinity is not
        assert exc.value.field == "opt"
        assert h.predict(GOOD) == "[1.5, 2, 'a', nan]"  # null of a nullable field passes
    with echo.load("echo", allow_nan=True) as h:
        assert h.predict({**GOOD, "x": bad}) == f"[{float(bad)!r}, 2, 'a', nan]"


def test_nan_in_numeric_record_arrays_and_frames(store):
    import pandas as pd

    class Num(BaseModel):
        a: float
        b: float

    store.save("num", CountingModel("limits"), input_schema=Num)
    with store.load("num") as h:
        with pytest.raises(embedml.SchemaError) as exc:
            h.predict_batch(np.array([[1.0, 2.0], [3.0, np.nan]]))
        assert (exc.value.field, exc.value.index) == ("b", 1)
        with pytest.raises(embedml.SchemaError) as exc:
            h.predict_batch(pd.DataFrame({"a": [np.inf], "b": [0.0]}))
        assert (exc.value.field, exc.value.index) == ("a", 0)
        assert h.predict_batch(np.ones((2, 2))).tolist() == [2.0, 2.0]


def test_nan_in_tensors_and_schemaless_inputs(store):
    store.save("lin", onnx_linear())
    store.save("free", CountingModel("free"))
    x = np.zeros((3, 3), np.float32)
    x[1, 2] = np.nan
    with store.load("lin") as h:
        name = h.input_schema.specs[0].name
        with pytest.raises(embedml.SchemaError) as exc:
            h.predict_batch(x)
        assert (exc.value.field, exc.value.index) == (name, 1)
        with pytest.raises(embedml.SchemaError):
            h.predict(x[1])
    with store.load("free") as h:
        with pytest.raises(embedml.SchemaError) as exc:
            h.predict_batch(x)
        assert exc.value.index == 1
        with pytest.raises(embedml.SchemaError):
            h.predict_batch({"a": [1.0, float("inf")]})
    with store.load("free", allow_nan=True) as h:
        assert np.isnan(h.predict_batch(x)[1])


def test_max_batch_rows(store):
    from helpers_models import CALLS

    store.save("c", CountingModel("rows"))
    X = np.ones((11, 3))
    with store.load("c", max_batch_rows=10) as h:
        before = CALLS["rows"]
        with pytest.raises(embedml.SchemaError, match="max_batch_rows=10") as exc:
            h.predict_batch(X)
        assert exc.value.got == 11
        with pytest.raises(embedml.SchemaError):
            h.predict_batch(X.tolist())
        assert CALLS["rows"] == before  # the model was never called
        assert len(h.predict_batch(X[:10])) == 10


def test_max_batch_rows_for_records(echo):
    with echo.load("echo", max_batch_rows=2) as h:
        with pytest.raises(embedml.SchemaError, match="3 rows"):
            h.predict_batch([GOOD] * 3)
        assert len(h.predict_batch([GOOD] * 2)) == 2


def test_max_string_length(echo):
    with echo.load("echo", max_string_length=8) as h:
        with pytest.raises(embedml.SchemaError) as exc:
            h.predict_batch([GOOD, {**GOOD, "tag": "y" * 9}])
        assert (exc.value.field, exc.value.index, exc.value.got) == ("tag", 1, 9)
        assert h.predict({**GOOD, "tag": "y" * 8}) == "[1.5, 2, 'yyyyyyyy', nan]"
    with echo.load("echo") as h:  # no limit by default
        assert "y" * 10_000 in h.predict({**GOOD, "tag": "y" * 10_000})


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "10"])
def test_limit_options_are_validated(echo, bad):
    with pytest.raises(embedml.ConfigurationError, match="max_batch_rows"):
        echo.load("echo", max_batch_rows=bad)
    with pytest.raises(embedml.ConfigurationError, match="max_string_length"):
        echo.load("echo", max_string_length=bad)
