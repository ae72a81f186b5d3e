"""The ModelFormat conformance kit (embedml.testing): every built-in format passes it, a
small third-party format passes it (through check_format and through the FormatContract
mixin), and a format that breaks a rule fails it with that rule's name."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import embedml
from embedml.formats import FormatOptions, ModelFormat, Runtime, available_formats, get_format
from embedml.testing import RULES, FormatContract, FormatContractError, check_format
from helpers_models import onnx_linear, sk_logreg, torch_exported, torch_reference, torch_scripted


def rows(n: int, width: int = 4, dtype: Any = np.float64) -> np.ndarray:
    return np.random.default_rng(n).normal(size=(n, width)).astype(dtype)


# ---------------------------------------------------------------- the built-in formats

BUILT_IN = {
    # format: (make_model, make_inputs, expected, options that apply)
    "joblib": (sk_logreg, rows, lambda m, x: m.predict(x), {}),
    "pickle": (sk_logreg, rows, lambda m, x: m.predict_proba(x), {"method": "predict_proba"}),
    "skops": (sk_logreg, rows, lambda m, x: m.predict(x), {}),
    "onnx": (
        onnx_linear,
        lambda n: rows(n, 3, np.float32),
        None,
        {"session_options": {"intra_op_num_threads": 1}, "outputs": "y"},
    ),
    "torchscript": (
        torch_scripted,
        lambda n: rows(n, 4, np.float32),
        lambda m, x: torch_reference(x),
        {},
    ),
    "torch_export": (
        torch_exported,
        lambda n: rows(n, 4, np.float32),
        lambda m, x: torch_reference(x),
        {},
    ),
}


def test_every_built_in_format_is_covered():
    built_in = {
        n for n in available_formats() if type(get_format(n)).__module__.startswith("embedml.")
    }
    assert set(BUILT_IN) == built_in


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_built_in_format_passes_the_kit(name, threads_checked):
    make_model, make_inputs, expected, options = BUILT_IN[name]
    check_format(get_format(name), make_model, make_inputs, expected=expected, options=options)


# ---------------------------------------------------------------- a third-party format


class Linear:
    """A plain linear model: ``x @ W + b``."""

    def __init__(self, W: np.ndarray, b: np.ndarray) -> None:
        self.W, self.b = W, b


def make_linear() -> Linear:
    rng = np.random.default_rng(7)
    return Linear(rng.normal(size=(3, 2)), rng.normal(size=2))


def linear_inputs(n: int) -> np.ndarray:
    return rows(n, 3)


class LinearRuntime(Runtime):
    def __init__(self, W: np.ndarray, b: np.ndarray) -> None:
        self.W, self.b = W, b
        self.input_names = ("x",)
        self.input_specs = [embedml.TensorSpec("x", "float64", (-1, W.shape[0]))]
        self.output_specs = [embedml.TensorSpec("y", "float64", (-1, W.shape[1]))]
        self.n_features = W.shape[0]

    def predict(self, inputs: Any) -> Any:
        return np.asarray(inputs, dtype=np.float64) @ self.W + self.b


class LinearFormat(ModelFormat):
    """Weights in a ``.npz`` (no pickle: safe to load); what a plug-in author writes."""

    name = "linear-npz"
    suffixes = (".linz",)

    def claims(self, obj: Any) -> bool:
        return isinstance(obj, Linear)

    def dump(self, obj: Any, path: Path) -> None:
        if not isinstance(obj, Linear):
            raise embedml.UnsupportedFormatError(
                f"{self.name} writes Linear models, not {type(obj).__name__}"
            )
        with open(path, "wb") as f:
            np.savez(f, W=obj.W, b=obj.b)

    def load(self, data: bytes, options: FormatOptions) -> Runtime:
        for option in ("method", "session_options", "outputs"):
            if getattr(options, option) is not None:
                raise embedml.UnsupportedFormatError(
                    f"load option {option}= does not apply to {self.name} models"
                )
        arrays = np.load(io.BytesIO(data), allow_pickle=False)
        return self.runtime(arrays["W"], arrays["b"])

    def runtime(self, W: np.ndarray, b: np.ndarray) -> Runtime:
        return LinearRuntime(W, b)


def with_runtime(name: str, runtime: type[LinearRuntime]) -> type[LinearFormat]:
    """``LinearFormat`` under another name, loading its weights into ``runtime``."""
    return type(name, (LinearFormat,), {"name": name, "runtime": lambda self, W, b: runtime(W, b)})


def linear_expected(model: Linear, inputs: np.ndarray) -> np.ndarray:
    return inputs @ model.W + model.b


def test_a_third_party_format_passes_the_kit(threads_checked):
    assert "linear-npz" not in available_formats()
    check_format(LinearFormat, make_linear, linear_inputs, expected=linear_expected)
    assert "linear-npz" not in available_formats()  # registered only for the check


class TestLinearFormatContract(FormatContract):
    """The same format through the mixin: one pytest test per rule."""

    format = LinearFormat

    def make_model(self) -> Linear:
        return make_linear()

    def make_inputs(self, n: int) -> np.ndarray:
        return linear_inputs(n)

    def expected(self, model: Linear, inputs: np.ndarray) -> np.ndarray:
        return linear_expected(model, inputs)


def test_the_mixin_has_one_test_per_rule():
    tests = {name for name in dir(FormatContract) if name.startswith("test_format_")}
    assert tests == {"test_format_" + rule.replace("-", "_") for rule in RULES}


# ---------------------------------------------------------------- broken formats fail it


class BadSuffix(LinearFormat):
    name = "bad-suffix"
    suffixes = (".LINZ",)  # never matches: file suffixes are lower-cased before the lookup


class StealsOnnxSuffix(LinearFormat):
    name = "steals-onnx"
    suffixes = (".onnx",)  # already the onnx format's: files would never reach this one


class ClaimsEverything(LinearFormat):
    name = "claims-everything"

    def claims(self, obj: Any) -> bool:
        return True  # would take every object saved after it is registered


class SideFile(LinearFormat):
    """Writes the weights next to the artifact, which the store does not keep."""

    name = "side-file"

    def dump(self, obj: Any, path: Path) -> None:
        side = path.with_name("weights.npz")
        with open(side, "wb") as f:
            np.savez(f, W=obj.W, b=obj.b)
        path.write_text(str(side))

    def load(self, data: bytes, options: FormatOptions) -> Runtime:
        return super().load(Path(data.decode()).read_bytes(), options)


class _Centering(LinearRuntime):
    def predict(self, inputs: Any) -> Any:
        x = np.asarray(inputs, dtype=np.float64)
        return (x - x.mean(axis=0)) @ self.W + self.b  # each row depends on the others


# claims row-wise outputs (the default) but centres each batch on its own mean
MixesRows = with_runtime("mixes-rows", _Centering)


class _WrongCount(LinearRuntime):
    def __init__(self, W: np.ndarray, b: np.ndarray) -> None:
        super().__init__(W, b)
        self.n_features = W.shape[0] + 1


WrongFeatureCount = with_runtime("wrong-features", _WrongCount)


class IgnoresOptions(LinearFormat):
    name = "ignores-options"

    def load(self, data: bytes, options: FormatOptions) -> Runtime:
        return super().load(data, FormatOptions())  # accepts method=, outputs=... silently


class _SharedScratch(LinearRuntime):
    """Keeps the call's input in the runtime (a race). To make the race certain rather
    than likely, the first two calls from worker threads wait for each other inside
    predict, between storing their input and reading it back."""

    def __init__(self, W: np.ndarray, b: np.ndarray) -> None:
        super().__init__(W, b)
        self._meet = threading.Barrier(2)
        self._lock = threading.Lock()
        self._entered = 0

    def predict(self, inputs: Any) -> Any:
        self._scratch = np.asarray(inputs, dtype=np.float64)
        if threading.current_thread() is not threading.main_thread():
            with self._lock:
                self._entered += 1
                meet = self._entered <= 2
            if meet:
                self._meet.wait(60)
        return self._scratch @ self.W + self.b


NotThreadSafe = with_runtime("not-thread-safe", _SharedScratch)


class _CloseOnce(LinearRuntime):
    closed = False

    def close(self) -> None:
        if self.closed:
            raise RuntimeError("already closed")
        self.closed = True


CloseTwiceFails = with_runtime("close-twice", _CloseOnce)


class InspectsUnsafeFile(LinearFormat):
    """Marked unsafe to load, yet reads a file given by path when it is saved."""

    name = "inspects-unsafe"
    unsafe_to_load = True

    def inspect(self, obj: Any, path: Path, options: FormatOptions) -> Runtime | None:
        return self.load(path.read_bytes(), options)


class SpecsDisagree(LinearFormat):
    """The specs read from the in-memory model (recorded at save) name another input than
    the loaded runtime."""

    name = "specs-disagree"

    def tensor_specs(self, obj: Any) -> Any:
        return [embedml.TensorSpec("features", "float64", (-1, 3))], None


class NoFrameworks(LinearFormat):
    """``frameworks()`` must return a list of distribution names (stamped into the
    manifest); ``None`` breaks saving."""

    name = "no-frameworks"

    def frameworks(self, obj: Any | None = None) -> Any:
        return None


BROKEN = [
    (BadSuffix, "name"),
    (StealsOnnxSuffix, "registry"),
    (ClaimsEverything, "registry"),
    (SideFile, "dump-load"),
    (MixesRows, "batch"),
    (WrongFeatureCount, "interface"),
    (IgnoresOptions, "options"),
    (NotThreadSafe, "thread-safety"),
    (SpecsDisagree, "interface"),
    (CloseTwiceFails, "close"),
    (NoFrameworks, "store"),
    (InspectsUnsafeFile, "unsafe-to-load"),
]


def test_every_rule_has_a_broken_format():
    assert {rule for _, rule in BROKEN} == set(RULES)


@pytest.mark.parametrize(("fmt", "rule"), BROKEN, ids=[cls.name for cls, _ in BROKEN])
def test_a_format_that_breaks_a_rule_fails_the_kit_naming_it(fmt, rule, threads_checked):
    before = available_formats()
    # the whole kit: the rules before this one pass, and this one fails
    with pytest.raises(FormatContractError) as info:
        check_format(fmt, make_linear, linear_inputs)
    assert info.value.rule == rule
    assert f"breaks rule {rule!r}" in str(info.value)
    assert isinstance(info.value, AssertionError)  # a test failure to pytest and unittest
    # that rule alone catches it too
    with pytest.raises(FormatContractError) as alone:
        check_format(fmt, make_linear, linear_inputs, rules=[rule])
    assert alone.value.rule == rule
    assert available_formats() == before


def test_the_message_says_what_is_wrong():
    with pytest.raises(FormatContractError, match=r"n_features=4 but predict takes 3 columns"):
        check_format(WrongFeatureCount, make_linear, linear_inputs, rules=["interface"])
    with pytest.raises(FormatContractError, match=r"row 0 predicted alone differs"):
        check_format(MixesRows, make_linear, linear_inputs, rules=["batch"])
    with pytest.raises(
        FormatContractError, match=r"dump\(\) wrote \['model.linz', 'weights.npz'\]"
    ):
        check_format(SideFile, make_linear, linear_inputs, rules=["dump-load"])


def test_expected_outputs_are_compared_after_the_round_trip():
    with pytest.raises(
        FormatContractError, match="does not predict what the in-memory one does"
    ) as info:
        check_format(
            MixesRows, make_linear, linear_inputs, expected=linear_expected, rules=["dump-load"]
        )
    assert info.value.rule == "dump-load"


def test_a_name_taken_by_another_format_is_refused():
    class Impostor(LinearFormat):
        name = "onnx"

    with pytest.raises(
        FormatContractError, match="registered to another format, OnnxFormat"
    ) as info:
        check_format(Impostor, make_linear, linear_inputs, rules=["name"])
    assert info.value.rule == "registry"
    assert type(get_format("onnx")).__name__ == "OnnxFormat"


def test_unknown_rules_are_refused():
    with pytest.raises(ValueError, match="no-such-rule"):
        check_format(LinearFormat, make_linear, linear_inputs, rules=["no-such-rule"])
