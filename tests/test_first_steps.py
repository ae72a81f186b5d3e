"""Small things a new user hit: ``load("churn@production")``, a bare alias given as a
version, version spellings, warm-up inputs within every bound, and store URLs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from pydantic import BaseModel, Field
from sklearn.linear_model import LinearRegression

import embedml
from embedml.cli import main
from embedml.schema import synthetic
from helpers_models import dataset, sk_logreg

# ---------------------------------------------------------------- NAME@SPEC


@pytest.fixture
def churn(store):
    store.save("churn", sk_logreg(), version="1")
    store.save("churn", sk_logreg(), version="2")
    store.set_alias("churn", "production", "1")
    return store


@pytest.mark.parametrize(
    ("ref", "version"),
    [("churn@production", "1"), ("churn@@production", "1"), ("churn@2", "2"),
     ("churn@1.0", "1"), ("churn@<2", "1"), ("churn@latest", "2"), ("churn", "2")],
)  # fmt: skip
def test_load_takes_name_at_spec_as_the_cli_does(churn, ref, version):
    with embedml.load(ref, store=churn, cache=False) as h:
        assert (h.name, h.version) == ("churn", version)
    with churn.load(ref) as h:
        assert h.version == version


def test_a_bare_alias_as_version_says_did_you_mean(churn):
    with pytest.raises(embedml.InvalidNameError, match="did you mean '@production'"):
        embedml.load("churn", "production", store=churn, cache=False)
    with pytest.raises(embedml.InvalidNameError, match="did you mean '@production'"):
        churn.resolve("churn", "production")


def test_name_at_spec_and_a_version_is_refused(churn):
    with pytest.raises(embedml.InvalidNameError, match="already says which version"):
        churn.load("churn@production", "2")


def test_a_bad_reference_is_refused(churn):
    for ref in ("churn@", "churn@nope!", "../churn@1"):
        with pytest.raises(embedml.InvalidNameError):
            churn.load(ref)


# ---------------------------------------------------------------- version spellings


def test_a_version_keeps_its_spelling_and_its_identity(store, capsys):
    mv = store.save("m", sk_logreg(), version="2.0rc1")
    assert mv.version == "2.0rc1" and str(mv) == "m@2.0rc1"
    assert mv.path.name == "2rc1"  # the folder is the identity: "2rc1" and "2.0rc1" are one
    assert store.versions("m") == ["2.0rc1"]
    for spec in ("2rc1", "2.0rc1", "2.0.0rc1", "latest", ">=2rc1"):
        assert store.resolve("m", spec).version == "2.0rc1"
    with pytest.raises(embedml.VersionExistsError):
        store.save("m", sk_logreg(), version="2rc1")
    store.save("m", sk_logreg(), version="1.0")
    with pytest.raises(embedml.VersionExistsError):
        store.save("m", sk_logreg(), version="1")
    assert store.versions("m") == ["1.0", "2.0rc1"]
    store.set_alias("m", "canary", "2rc1")
    assert store.aliases("m") == {"canary": "2.0rc1"}
    with store.load("m@canary") as h:
        assert h.version == "2.0rc1"
    with pytest.raises(embedml.StoreError, match="canary"):
        store.delete("m", "2.0.0rc1")
    assert main(["--store", str(store.root), "ls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["versions"] == ["1.0", "2.0rc1"]
    assert main(["--store", str(store.root), "show", "m@2rc1"]) == 0
    shown = capsys.readouterr().out
    assert (
        "m@2.0rc1" in shown and " 2.0rc1 " in shown and "2rc1 " not in shown.replace("2.0rc1", "")
    )


def test_stores_written_before_spellings_were_kept_still_work(store):
    """Earlier versions of embedml wrote the canonical spelling into the manifest."""
    X, _ = dataset()
    mv = store.save("m", sk_logreg(), version="3.0")
    data = json.loads((mv.path / "manifest.json").read_text())
    data["version"] = "3"
    (mv.path / "manifest.json").write_text(json.dumps(data))
    assert store.versions("m") == ["3"]
    with store.load("m", "3.0") as h:
        assert h.version == "3"
        assert h.predict_batch(X[:2]).tolist() == sk_logreg().predict(X[:2]).tolist()
    assert store.verify() == {"m@3": None}


# ---------------------------------------------------------------- warm-up inputs


class Bounded(BaseModel):
    share: int = Field(gt=0, le=1)
    count: int = Field(ge=3, lt=5)
    odd: int = Field(gt=-3, lt=-1)
    rate: float = Field(gt=0, lt=1e-9)
    both: float = Field(ge=-10, gt=5)
    plain: int


def test_warmup_builds_inputs_within_every_bound(store):
    X = np.array([[1, 3, -2, 0.0, 6, 0], [1, 4, -2, 0.0, 7, 1]], dtype=float)
    store.save("b", LinearRegression().fit(X, [0.0, 1.0]), input_schema=Bounded)
    with store.load("b") as h:
        assert h.warmup() >= 0 and h.health()["warmed_up"]
    row = synthetic.synthetic_rows(embedml.RecordSchema.from_model(Bounded), 1)[0]
    assert row["share"] == 1 and row["count"] in (3, 4) and row["odd"] == -2
    assert 0 < row["rate"] < 1e-9 and row["both"] > 5
    Bounded(**row)  # pydantic agrees
    for seeded in synthetic.synthetic_rows(embedml.RecordSchema.from_model(Bounded), 50, seed=1):
        Bounded(**seeded)


def test_warmup_and_bench_say_which_field_admits_no_value(store, capsys):
    class Empty(BaseModel):
        x: int = Field(gt=0, lt=1)

    store.save(
        "e", LinearRegression().fit(np.array([[0.0], [1.0]]), [0.0, 1.0]), input_schema=Empty
    )
    with store.load("e") as h, pytest.raises(embedml.ConfigurationError, match="'x'"):
        h.warmup()
    assert main(["--store", str(store.root), "bench", "e", "--seconds", "0.01"]) == 1
    assert "'x'" in capsys.readouterr().err


def test_bench_uses_the_same_builder(store, capsys):
    X = np.array([[1, 3, -2, 0.0, 6, 0], [1, 4, -2, 0.0, 7, 1]], dtype=float)
    store.save("b", LinearRegression().fit(X, [0.0, 1.0]), input_schema=Bounded)
    args = ["--store", str(store.root), "bench", "b", "--seconds", "0.01", "--threads", "2"]
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["single"]["calls"] >= 5


# ---------------------------------------------------------------- store roots


@pytest.mark.parametrize(
    "url", ["az://b/x", "http://host/models", "file://otherhost/x"]
)
def test_store_urls_are_refused_not_made_into_folders(tmp_path, monkeypatch, url):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(embedml.ConfigurationError, match="URL"):
        embedml.ModelStore(url)
    with pytest.raises(embedml.ConfigurationError, match="URL"):
        embedml.load("m", store=url)
    monkeypatch.setenv("EMBEDML_STORE", url)
    with pytest.raises(embedml.ConfigurationError, match="URL"):
        embedml.default_store()
    assert main(["--store", url, "ls"]) == 1
    assert os.listdir(tmp_path) == []


def test_a_file_url_is_its_path(tmp_path):
    store = embedml.ModelStore((tmp_path / "s").as_uri())
    assert store.root == tmp_path / "s" and store.root.is_dir()
    assert embedml.ModelStore(f"file://localhost{tmp_path / 's'}").root == tmp_path / "s"
