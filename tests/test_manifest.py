"""The manifest: keywords in, JSON out and back, extra keys kept, bad keys named; and the
load path of a fresh process never imports pydantic (or packaging.specifiers) unless a
schema needs it."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError

import pytest

import embedml
from embedml.store.manifest import MANIFEST_FILE, Manifest
from helpers_models import run_python_json, skl2onnx_logreg

REQUIRED = {
    "name": "fraud",
    "version": "1",
    "format": "onnx",
    "artifact": "model.onnx",
    "sha256": "ab" * 32,
    "size": 10,
}


def test_keywords_defaults_and_round_trip():
    m = Manifest(**REQUIRED, metadata={"owner": "risk"}, extra_files={"profile.json": "cd" * 32})
    assert (m.name, m.version, m.size, m.manifest_version) == ("fraud", "1", 10, 1)
    assert m.input_schema is None and m.preprocess is None and m.frameworks == {}
    assert m.created_at and m.python
    back = Manifest.from_json(m.to_json())
    assert back == m
    assert back.to_json() == m.to_json()
    assert json.loads(m.to_json()) == m.model_dump(mode="json")
    assert list(json.loads(m.to_json())) == sorted(json.loads(m.to_json()))  # stable bytes
    with pytest.raises(FrozenInstanceError):
        m.name = "other"  # type: ignore[misc]


def test_extra_keys_are_kept_and_written_back():
    m = Manifest(**REQUIRED, future_key="sig-bytes")
    assert m.future_key == "sig-bytes"
    assert m.model_extra == {"future_key": "sig-bytes"}
    back = Manifest.from_json(m.to_json())
    assert back.future_key == "sig-bytes" and back == m
    with pytest.raises(AttributeError):
        _ = m.no_such_key
    copy = m.model_copy(update={"extra_files": {"p.json": "ef" * 32}})
    assert copy.extra_files == {"p.json": "ef" * 32} and copy.future_key == "sig-bytes"
    assert m.extra_files == {}


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda d: d.pop("sha256"), "sha256"),
        (lambda d: d.update(size="10"), "size"),
        (lambda d: d.update(size=True), "size"),
        (lambda d: d.update(name=None), "name"),
        (lambda d: d.update(frameworks={"torch": 2}), "frameworks"),
        (lambda d: d.update(input_schema=[1, 2]), "input_schema"),
        (lambda d: d.update(metadata=[]), "metadata"),
    ],
)
def test_bad_key_is_named(change, key):
    d = json.loads(Manifest(**REQUIRED).to_json())
    change(d)
    with pytest.raises(embedml.IntegrityError, match=rf"^where\.json is not a valid manifest: {key}:"):
        Manifest.from_json(json.dumps(d), where="where.json")


@pytest.mark.parametrize("text", ["", "{", "[1]", '"x"', b"\xff\xfe"])
def test_not_an_object(text):
    with pytest.raises(embedml.IntegrityError, match="not a valid manifest: \\(root\\)"):
        Manifest.from_json(text)


def test_store_keeps_unknown_keys_of_newer_writers(store):
    mv = store.save("m", skl2onnx_logreg())
    path = mv.path / MANIFEST_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "signed_by": "ci"}))
    again = store.resolve("m", "1")
    assert again.manifest.signed_by == "ci"
    assert json.loads(again.manifest.to_json())["signed_by"] == "ci"
    with store.load("m") as h:
        assert h.manifest.signed_by == "ci"


_FRESH = """
import json, sys
import embedml
seen = {}
def mods():
    return sorted(m for m in ("pydantic", "packaging.specifiers") if m in sys.modules)
store = embedml.ModelStore(sys.argv[1])
with embedml.load("tensors", store=store) as h:
    h.predict([0.1, 0.2, 0.3, 0.4])
seen["tensor schema"] = mods()
with embedml.load("record", "@production", store=store) as h:
    h.predict({"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0})
    h.predict_batch([{"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}])
seen["record schema"] = mods()
with embedml.load("outputs", ">=1,<2", store=store) as h:
    seen["output type"] = type(h.predict([0.1, 0.2, 0.3, 0.4])).__name__
seen["output schema"] = mods()
print(json.dumps(seen))
"""


def test_fresh_process_imports_pydantic_only_for_output_instances(store, subprocess_env):
    from pydantic import BaseModel

    class Features(BaseModel):
        a: float
        b: float
        c: float
        d: float

    class Label(BaseModel):
        label: int

    onx = skl2onnx_logreg()
    store.save("tensors", onx)
    store.save("record", onx, input_schema=Features)
    store.set_alias("record", "production", "1")
    store.save("outputs", onx, output_schema=Label, metadata={"k": [1, 2]})
    seen = run_python_json(_FRESH, str(store.root), env=subprocess_env)
    assert seen["tensor schema"] == []
    assert seen["record schema"] == []  # records are checked by embedml, not by pydantic
    assert seen["output type"] == "Label"
    assert seen["output schema"] == ["packaging.specifiers", "pydantic"]
