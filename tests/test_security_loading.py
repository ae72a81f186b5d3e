"""What loading a version may run (issue 12: High 1, High 2, Medium 9).

* manifest import paths (``preprocess`` / ``postprocess``) under ``restricted=True``;
* no exception from model, pre- or post-processing code escapes a prediction untyped, on
  every path a model call takes (direct, batched on threads and on the event loop,
  streaming, scoring);
* allow-listed scikit-learn gadget chains, held callables and method-naming attributes;
* the ``skops`` format;
* TorchScript / ``torch.export`` files need a voucher.

Every attack here is a real crafted artifact; a test that checks a file is *not* written
points it into ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle

import numpy as np
import pytest
from pydantic import BaseModel

import embedml
import helpers_prepost
from embedml.store.manifest import MANIFEST_FILE
from helpers_models import dataset, sk_logreg


def _rewrite_manifest(mv, **changes) -> None:
    """What an attacker with write access to the store (and no signing key) does."""
    path = mv.path / MANIFEST_FILE
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


class RunsShell:
    """Unpickling this runs a shell command (the classic payload)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _dummy_returning(values: np.ndarray):
    """A fitted, allow-listed ``DummyRegressor`` whose every output row is ``values``."""
    from sklearn.dummy import DummyRegressor

    model = DummyRegressor().fit(np.zeros((2, 1)), np.zeros(2))
    model.constant_ = values.reshape(1, -1)
    model.n_outputs_ = values.size
    return model


# ---------------------------------------------------------------- High 1: import paths


def test_manifest_import_path_is_refused_by_a_restricted_load(store):
    X, _ = dataset()
    mv = store.save("lr", sk_logreg())
    _rewrite_manifest(mv, preprocess="sys:exit")  # unsigned; the artifact is untouched
    with pytest.raises(embedml.UntrustedArtifactError) as exc:
        store.load("lr", restricted=True)
    assert exc.value.type_name == "sys:exit"
    assert "preprocess" in str(exc.value) and "trusted_callables" in str(exc.value)
    # the user's allow-list re-opens exactly that one (and the step is then contained)
    with store.load("lr", restricted=True, trusted_callables=["sys:exit"]) as h:
        with pytest.raises(embedml.PredictionError) as pe:
            h.predict(X[0])
        assert pe.value.stage == "preprocess" and isinstance(pe.value.__cause__, SystemExit)


def test_postprocess_pickle_loads_gadget_is_refused_at_load(store, tmp_path):
    marker = tmp_path / "pwned-by-postprocess"
    payload = np.frombuffer(pickle.dumps(RunsShell(f"touch {marker}")), dtype=np.uint8)
    store.save("dummy", _dummy_returning(payload))
    mv = store.resolve("dummy")
    _rewrite_manifest(mv, postprocess="pickle:loads")
    with (
        pytest.raises(embedml.UntrustedArtifactError, match="postprocess.*pickle:loads"),
        store.load("dummy", restricted=True) as h,
    ):
        h.predict(np.zeros(1))  # before the fix: runs `touch`
    assert not marker.exists()


def test_verify_reports_what_a_restricted_load_would_refuse(store):
    store.save("a", sk_logreg(), preprocess="helpers_prepost:double")
    mv = store.save("b", sk_logreg())
    _rewrite_manifest(mv, postprocess="pickle:loads")
    assert store.verify() == {"a@1": None, "b@1": None}  # integrity only: both are intact
    report = store.verify(restricted=True)
    assert "helpers_prepost:double" in report["a@1"] and "preprocess" in report["a@1"]
    assert "pickle:loads" in report["b@1"] and "postprocess" in report["b@1"]
    trusted = store.verify(restricted=True, trusted_callables=["helpers_prepost:double"])
    assert trusted["a@1"] is None and "pickle:loads" in trusted["b@1"]


def test_cli_verify_restricted(store, capsys):
    from embedml.cli import main

    store.save("a", sk_logreg(), preprocess="helpers_prepost:double")
    assert main(["--store", str(store.root), "verify"]) == 0
    assert main(["--store", str(store.root), "verify", "--restricted"]) == 1
    assert "helpers_prepost:double" in capsys.readouterr().out
    trusted = ["--trusted-callable", "helpers_prepost:double"]
    assert main(["--store", str(store.root), "verify", "--restricted", *trusted]) == 0


@pytest.mark.parametrize(
    "trusted",
    [
        ["helpers_prepost:double"],
        ["helpers_prepost.double"],
        [helpers_prepost.double],
    ],
)
def test_trusted_callables_admit_the_users_steps(store, trusted):
    X, _ = dataset()
    store.save("lr", sk_logreg(), preprocess="helpers_prepost:double")
    with pytest.raises(embedml.UntrustedArtifactError, match="helpers_prepost:double"):
        store.load("lr", restricted=True)
    with store.load("lr", restricted=True, trusted_callables=trusted) as h:
        np.testing.assert_array_equal(h.predict_batch(X[:5]), sk_logreg().predict(X[:5] * 2))


def test_steps_given_by_the_caller_need_no_allow_list(store):
    X, _ = dataset()
    store.save("lr", sk_logreg())
    for step in ("helpers_prepost:double", helpers_prepost.double):
        with store.load("lr", restricted=True, preprocess=step) as h:
            np.testing.assert_array_equal(h.predict_batch(X[:3]), sk_logreg().predict(X[:3] * 2))


@pytest.mark.parametrize("bad", ["helpers_prepost:double", [42], [None], 7])
def test_trusted_callables_option_is_validated(store, bad):
    store.save("lr", sk_logreg())
    with pytest.raises(embedml.ConfigurationError, match="trusted_callables"):
        store.load("lr", trusted_callables=bad)


# --------------------------------------- High 1: nothing from model code escapes untyped


class ExitOnPoison:
    """Sums each row; a row holding 13 makes it raise ``exc_type`` (``SystemExit`` ...)."""

    def __init__(self, exc_type: type[BaseException]) -> None:
        self.exc_type = exc_type

    def predict(self, X):
        X = np.asarray(X, dtype=float)
        if (X == 13).any():
            raise self.exc_type("model code raised this")
        return X.sum(axis=1)


class AB(BaseModel):
    a: float
    b: float


GOOD, POISON = {"a": 1.0, "b": 2.0}, {"a": 13.0, "b": 0.0}


def _assert_contained(exc_info) -> None:
    assert isinstance(exc_info.value, embedml.PredictionError)
    assert isinstance(exc_info.value.__cause__, SystemExit)


@pytest.mark.parametrize("batching", [None, embedml.Batching(max_wait_ms=0)])
def test_system_exit_from_model_code_is_a_prediction_error(store, batching, threads_checked):
    store.save("m", ExitOnPoison(SystemExit), input_schema=AB)
    with store.load("m", batching=batching) as h:
        for _ in range(2):  # and the handle keeps serving
            with pytest.raises(embedml.PredictionError) as exc:
                h.predict(POISON)
            _assert_contained(exc)
            assert exc.value.stage == "model"
            with pytest.raises(embedml.PredictionError) as exc:
                h.predict_batch([GOOD, POISON])
            _assert_contained(exc)
            assert h.predict(GOOD) == 3.0
        assert h.metrics()["errors"] == 4


def test_system_exit_from_steps_is_a_prediction_error(store):
    store.save("m", ExitOnPoison(ValueError), input_schema=AB)
    for stage in ("preprocess", "postprocess"):
        with store.load("m", **{stage: "sys:exit"}) as h:
            with pytest.raises(embedml.PredictionError) as exc:
                h.predict(GOOD)
            _assert_contained(exc)
            assert exc.value.stage == stage


@pytest.mark.parametrize("inline_ms", [0.0, 60_000.0])
def test_system_exit_in_batches_run_by_asyncio_tasks(store, inline_ms, threads_checked):
    """``inline_ms=0``: batches run on the batcher's worker thread; ``60000``: on the event
    loop itself, in the task that leads the batch. Either way only the poisoned call fails."""
    store.save("m", ExitOnPoison(SystemExit), input_schema=AB)
    settings = embedml.Batching(max_batch_size=8, max_wait_ms=5, inline_ms=inline_ms)

    async def poisoned_round(h):
        calls = [h.apredict(POISON if i == 3 else GOOD) for i in range(8)]
        return await asyncio.gather(*calls, return_exceptions=True)

    with store.load("m", batching=settings) as h:
        assert asyncio.run(h.apredict(GOOD)) == 3.0  # measures the batch cost
        # a round may still be led by the worker thread that ran the first batch: repeat
        # until one ran on the loop (the first or second, in practice)
        for _ in range(100):
            results = asyncio.run(poisoned_round(h))
            assert results[:3] + results[4:] == [3.0] * 7
            assert isinstance(results[3], embedml.PredictionError)
            assert isinstance(results[3].__cause__, SystemExit)
            if not inline_ms or h.batching_stats().inline_batches:
                break
        assert bool(h.batching_stats().inline_batches) == bool(inline_ms)


def test_system_exit_in_apredict_without_batching(store):
    store.save("m", ExitOnPoison(SystemExit), input_schema=AB)
    with store.load("m") as h:
        with pytest.raises(embedml.PredictionError) as exc:
            asyncio.run(h.apredict(POISON))
        _assert_contained(exc)


def test_system_exit_in_streams_and_scoring(store, tmp_path):
    store.save("m", ExitOnPoison(SystemExit), input_schema=AB)
    with store.load("m") as h:
        out = list(h.predict_stream([GOOD, POISON, GOOD], batch_size=2, on_error="yield"))
        assert out[0] == 3.0 and out[2] == 3.0
        assert isinstance(out[1], embedml.PredictionError)

        async def collect():
            async def records():
                for r in (GOOD, POISON):
                    yield r

            return [r async for r in h.apredict_stream(records(), on_error="yield")]

        aout = asyncio.run(collect())
        assert aout[0] == 3.0 and isinstance(aout[1], embedml.PredictionError)

        src = tmp_path / "in.csv"
        src.write_text("a,b\n1,2\n13,0\n2,2\n")
        summary = embedml.score(h, src, tmp_path / "out.csv")
        assert (summary.scored, summary.rejected) == (2, 1)
        rejects = (tmp_path / "out.csv.rejects.jsonl").read_text().splitlines()
        assert json.loads(rejects[0])["row"] == 2


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, GeneratorExit])
def test_interrupts_keep_propagating(store, exc_type):
    store.save("m", ExitOnPoison(exc_type), input_schema=AB)
    with store.load("m") as h:
        with pytest.raises(exc_type):
            h.predict(POISON)
        assert h.predict(GOOD) == 3.0
        assert h.metrics()["in_flight"] == 0


def test_cancellation_keeps_propagating(store):
    store.save("m", ExitOnPoison(asyncio.CancelledError), input_schema=AB)
    with store.load("m") as h:
        with pytest.raises(asyncio.CancelledError):
            h.predict(POISON)
        assert h.predict(GOOD) == 3.0


# ------------------------------------------- High 2: allow-listed scikit-learn gadget chains


def _stacking(estimators, methods):
    """A fitted-looking ``StackingRegressor`` whose ``estimators_`` / ``stack_method_`` are
    set by hand, the way a crafted pickle sets them."""
    from sklearn.ensemble import StackingRegressor
    from sklearn.linear_model import LinearRegression

    s = StackingRegressor([("lr", LinearRegression())])
    s.estimators_ = estimators
    s.stack_method_ = methods
    s.final_estimator_ = LinearRegression()
    return s


def _file_writing_chain(target) -> object:
    """The reported chain, made only of allow-listed types: a stacking step turns any input
    into the bytes of ``target``'s path, ``FunctionTransformer(func=bytes)`` makes them a
    ``bytes`` path, and a stacking step with ``stack_method_ = ["tofile"]`` calls
    ``payload.tofile(path)``: the first ``predict`` writes the file."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    path = _dummy_returning(np.frombuffer(str(target).encode(), dtype=np.uint8))
    payload = np.array(b"written by an allow-listed pickle\n")
    return Pipeline(
        [
            ("path", _stacking([path], ["predict"])),
            ("bytes", FunctionTransformer(func=bytes)),
            ("write", _stacking([payload], ["tofile"])),
        ]
    )


def test_the_chain_writes_a_file_when_nothing_stops_it(tmp_path):
    """The artifact the next tests refuse is a working exploit (checked unrestricted)."""
    target = tmp_path / "written"
    chain = pickle.loads(pickle.dumps(_file_writing_chain(target)))
    with pytest.raises(AttributeError):  # after the write, the chain breaks
        chain.predict(np.zeros((1, 1)))
    assert target.read_bytes() == b"written by an allow-listed pickle\n"


@pytest.mark.parametrize("fmt", ["pickle", "joblib"])
def test_stacking_tofile_chain_is_refused_at_load(store, tmp_path, fmt):
    target = tmp_path / "written"
    path = tmp_path / f"chain.{'pkl' if fmt == 'pickle' else 'joblib'}"
    if fmt == "pickle":
        path.write_bytes(pickle.dumps(_file_writing_chain(target)))
    else:
        import joblib

        joblib.dump(_file_writing_chain(target), path)
    store.save("chain", path, trust=True)
    with pytest.raises(embedml.UntrustedArtifactError) as exc:
        h = store.load("chain", restricted=True)
        h.predict(np.zeros(1))  # before the fix: writes `target`
    assert "stack_method_" in str(exc.value) and "tofile" in str(exc.value)
    assert not target.exists()


def _variants(tmp_path):
    """Close variants of the chain, each one link of it or the same idea elsewhere."""
    import collections

    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.feature_selection import SelectFromModel
    from sklearn.gaussian_process.kernels import RBF
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.model_selection import FixedThresholdClassifier
    from sklearn.multioutput import ClassifierChain
    from sklearn.preprocessing import FunctionTransformer

    X, y = dataset()
    payload = np.array(b"payload")
    lr = LinearRegression().fit(X, X[:, 0])
    replaced = LinearRegression().fit(X, X[:, 0])
    replaced.predict = RBF()  # an allow-listed callable object in place of the method
    chain = ClassifierChain(LogisticRegression()).fit(X, np.c_[y, y])
    chain.chain_method_ = "tofile"
    fixed = FixedThresholdClassifier(LogisticRegression()).fit(X, y)
    fixed.response_method = "__reduce_ex__"
    getter = SelectFromModel(lr, prefit=True, importance_getter="__class__.__init__")
    held = LinearRegression().fit(X, X[:, 0])
    held.extra_ = np.array([bytes, 1], dtype=object)  # a callable hidden in an object array
    reader = CountVectorizer().fit(["alpha beta"])
    reader.input = "filename"
    return {
        "func=bytes": (FunctionTransformer(func=bytes), "builtins.bytes"),
        "stack_method_": (_stacking([payload], ["tofile"]), "tofile"),
        "stack_method_ dunder": (_stacking([lr], ["__class__"]), "__class__"),
        "chain_method_": (chain, "chain_method_"),
        "response_method": (fixed, "response_method"),
        "importance_getter": (getter, "importance_getter"),
        "method replaced": (replaced, "replaces the method"),
        "defaultdict factory": (
            {"model": lr, "cache": collections.defaultdict(bytes)},
            "builtins.bytes",
        ),
        "object array": (held, "builtins.bytes"),
        "vectorizer reads files": (reader, "input"),
    }


def test_close_variants_are_refused_at_load(tmp_path):
    from embedml.formats.restricted import restricted_joblib_loads, restricted_pickle_loads

    for label, (obj, expected) in _variants(tmp_path).items():
        with pytest.raises(embedml.UntrustedArtifactError, match=expected) as exc:
            restricted_pickle_loads(pickle.dumps(obj))
        assert "refused" in str(exc.value), label
        import io

        import joblib

        buf = io.BytesIO()
        joblib.dump(obj, buf)
        with pytest.raises(embedml.UntrustedArtifactError, match=expected):
            restricted_joblib_loads(buf.getvalue())


def test_held_functions_need_trusted_callables(store):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, y = dataset()
    model = make_pipeline(FunctionTransformer(np.abs), sk_logreg().__class__()).fit(X, y)
    store.save("m", model)
    with pytest.raises(embedml.UntrustedArtifactError) as exc:
        store.load("m", restricted=True)
    assert exc.value.type_name == "numpy.absolute" and "trusted_callables" in str(exc.value)
    # naming a function as a *type* lets it be unpickled, not kept and called
    with pytest.raises(embedml.UntrustedArtifactError, match="held at"):
        store.load("m", restricted=True, trusted_types=["numpy.absolute"])
    for trusted in (["numpy.absolute"], ["numpy:absolute"], [np.abs]):
        with store.load("m", restricted=True, trusted_callables=trusted) as h:
            np.testing.assert_array_equal(h.predict_batch(X[:5]), model.predict(X[:5]))


def test_what_models_legitimately_hold_still_loads(store):
    """Numeric dtypes kept as values, real stacking and chains, masked arrays in a search's
    ``cv_results_``, callable allow-listed objects (kernels): all load restricted."""
    from sklearn.ensemble import StackingClassifier
    from sklearn.gaussian_process import GaussianProcessClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.multioutput import ClassifierChain
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import KBinsDiscretizer, OneHotEncoder
    from sklearn.tree import DecisionTreeClassifier

    X, y = dataset()
    models = {
        "onehot": make_pipeline(
            KBinsDiscretizer(n_bins=3, encode="ordinal", quantile_method="averaged_inverted_cdf"),
            OneHotEncoder(dtype=np.float32),
            LogisticRegression(),
        ).fit(X, y),
        "stacking": StackingClassifier(
            [("lr", LogisticRegression()), ("dt", DecisionTreeClassifier(max_depth=2))]
        ).fit(X, y),
        "search": GridSearchCV(LogisticRegression(), {"C": [0.1, 1.0]}, cv=2).fit(X, y),
        "gp": GaussianProcessClassifier().fit(X[:40], y[:40]),
    }
    for name, model in models.items():
        store.save(name, model)
        with store.load(name, restricted=True) as h:
            np.testing.assert_array_equal(h.predict_batch(X[:8]), model.predict(X[:8]), name)
    chain = ClassifierChain(LogisticRegression(), chain_method="predict_proba").fit(X, np.c_[y, y])
    store.save("chain", chain)
    with store.load("chain", restricted=True) as h:
        np.testing.assert_array_equal(h.predict_batch(X[:8]), chain.predict(X[:8]))


# ------------------------------------------------------------------- High 2: skops format


def test_skops_file_lists_untrusted_types_and_loads_only_when_trusted(store, tmp_path):
    import skops.io
    from sklearn.ensemble import RandomForestClassifier

    from embedml.formats.skops import untrusted_types

    X, y = dataset()
    model = RandomForestClassifier(n_estimators=3, random_state=0).fit(X, y)
    path = tmp_path / "rf.skops"
    skops.io.dump(model, path)
    assert untrusted_types(path.read_bytes()) == ["sklearn.tree._tree.Tree"]
    store.save("rf", path)  # no voucher: loading a skops file runs no pickle
    for restricted in (False, True):  # the type check does not depend on restricted=
        with pytest.raises(embedml.UntrustedArtifactError) as exc:
            store.load("rf", restricted=restricted)
        assert exc.value.type_name == "sklearn.tree._tree.Tree"
        assert "trusted_types=['sklearn.tree._tree.Tree']" in str(exc.value)
    with store.load("rf", trusted_types=["sklearn.tree._tree.Tree"]) as h:
        assert h.format == "skops"
        np.testing.assert_array_equal(h.predict_batch(X[:8]), model.predict(X[:8]))


def test_skops_in_memory_save_and_plain_models(store):
    X, _ = dataset()
    mv = store.save("lr", sk_logreg(), format="skops")
    assert mv.artifact_path.suffix == ".skops" and "skops" in mv.manifest.frameworks
    with store.load("lr") as h:
        np.testing.assert_array_equal(h.predict_batch(X[:5]), sk_logreg().predict(X[:5]))


def test_skops_gets_the_object_graph_audit(store, tmp_path):
    """skops rebuilds the stacking half of the chain with no untrusted type at all, and the
    whole chain once ``builtins.bytes`` is trusted: the audit still refuses it."""
    import skops.io

    target = tmp_path / "written"
    path = tmp_path / "chain.skops"
    skops.io.dump(_file_writing_chain(target), path)
    store.save("chain", path)
    with pytest.raises(embedml.UntrustedArtifactError, match="builtins.bytes"):
        store.load("chain")
    with pytest.raises(embedml.UntrustedArtifactError, match="stack_method_"):
        h = store.load("chain", trusted_types=["builtins.bytes"])
        h.predict(np.zeros(1))
    assert not target.exists()


# --------------------------------------------- Medium 9: TorchScript and torch.export files


def _file_writing_torchscript(target):
    """A TorchScript module whose ``forward`` creates and writes ``target`` (what any
    TorchScript model may do when it is called)."""
    import torch

    class Writer(torch.nn.Module):
        def __init__(self, path: str) -> None:
            super().__init__()
            self.path = path

        def forward(self, x):
            mapped = torch.from_file(self.path, shared=True, size=8, dtype=torch.uint8)
            mapped.fill_(65)  # written through to the file
            return x.sum(dim=1) + mapped[0].to(torch.float32) * 0

    return torch.jit.script(Writer(str(target)))


@pytest.mark.parametrize("suffix", [".pt", ".pt2"])
def test_torch_files_need_a_voucher(store, tmp_path, suffix):
    import hashlib

    import torch

    from helpers_models import torch_exported

    path = tmp_path / f"model{suffix}"
    if suffix == ".pt":
        torch.jit.save(_file_writing_torchscript(tmp_path / "unused"), str(path))
    else:
        torch.export.save(torch_exported(), str(path))
    with pytest.raises(embedml.UntrustedArtifactError, match="trust=True") as exc:
        store.save("m", path)
    assert "sha256=" in str(exc.value)
    assert store.models() == []
    store.save("m", path, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    store.save("m", path, trust=True)
    assert store.versions("m") == ["1", "2"]


def test_what_a_vouched_torchscript_model_can_do(store, tmp_path):
    """The documented limit: a vouched-for TorchScript model runs its own code when called;
    this one writes a file. (Objects passed in memory are the caller's own: no voucher.)"""
    target = tmp_path / "written-by-forward"
    store.save("ts", _file_writing_torchscript(target))
    with store.load("ts") as h:
        assert not target.exists()
        np.testing.assert_allclose(h.predict_batch(np.ones((2, 3), np.float32)), [3.0, 3.0])
    assert target.read_bytes() == b"A" * 8
