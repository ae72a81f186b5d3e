"""The one error tree: every error is an EmbedMLError; some are also builtin errors; errors
survive pickling (they cross process boundaries in workers and pools)."""

from __future__ import annotations

import pickle

import pytest

import embedml

TREE = {
    "InvalidNameError": ValueError,
    "ConfigurationError": ValueError,
    "MissingExtraError": ImportError,
    "NotFoundError": LookupError,
    "ModelNotFoundError": LookupError,
    "VersionNotFoundError": LookupError,
    "VersionExistsError": FileExistsError,
    "StoreError": None,
    "IntegrityError": None,
    "UnsupportedFormatError": None,
    "SchemaError": ValueError,
    "PredictionError": None,
    "HandleClosedError": None,
    "OverloadedError": None,
    "PredictionTimeoutError": TimeoutError,
    "GateFailedError": None,
}


@pytest.mark.parametrize("name,builtin", TREE.items())
def test_every_error_is_an_embedml_error(name, builtin):
    cls = getattr(embedml, name)
    assert issubclass(cls, embedml.EmbedMLError)
    if builtin is not None:
        assert issubclass(cls, builtin)
    assert name in embedml.__all__


def test_not_found_errors_share_a_base():
    assert issubclass(embedml.ModelNotFoundError, embedml.NotFoundError)
    assert issubclass(embedml.VersionNotFoundError, embedml.NotFoundError)


def test_schema_error_attributes_and_pickling():
    err = embedml.SchemaError(
        "expected a number", field="age", index=3, expected="number", got="str"
    )
    assert str(err) == "record 3, field 'age': expected a number"
    err.model, err.version = "fraud", "2"
    assert str(err) == "fraud@2, record 3, field 'age': expected a number"
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is embedml.SchemaError
    assert (back.field, back.index, back.expected, back.got, back.model, back.version) == (
        "age",
        3,
        "number",
        "str",
        "fraud",
        "2",
    )
    assert str(back) == str(err)


def test_prediction_error_pickling():
    err = embedml.PredictionError("model raised", stage="postprocess", index=4)
    back = pickle.loads(pickle.dumps(err))
    assert (str(back), back.stage, back.index) == ("model raised", "postprocess", 4)
    gate = pickle.loads(pickle.dumps(embedml.GateFailedError("no", scores={"auc": 0.5})))
    assert gate.scores == {"auc": 0.5}


def test_missing_extra_error_is_a_configuration_and_import_error_and_pickles():
    message = "needs scipy: pip install 'embedml[drift]'"
    err = embedml.MissingExtraError(message, extra="drift", name="scipy")
    assert isinstance(err, embedml.ConfigurationError) and isinstance(err, ImportError)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is embedml.MissingExtraError
    assert (str(back), back.extra, back.name, back.msg) == (str(err), "drift", "scipy", str(err))
