"""Test helpers for code that uses embedml, and for third-party model formats.

Nothing here is imported by ``import embedml``; import it in tests::

    from embedml.testing import FakeClock, FormatContract, check_format

* :class:`FakeClock`: an :class:`embedml.clock.Clock` that moves only when a test calls
  :meth:`FakeClock.advance`, for testing interval logic (drift checks, alias polling) without
  sleeping. Components take it as ``clock=``.
* :func:`check_format` and :class:`FormatContract`: the conformance kit of the
  :class:`~embedml.ModelFormat` / :class:`~embedml.Runtime` contract
  (``embedml/formats/base.py``). Every built-in format passes it; a third-party format runs
  the same checks. A broken rule raises :class:`FormatContractError` naming the rule (see
  :data:`RULES`). The kit runs the real format on real files and threads; it cannot prove a
  runtime thread-safe, only catch races that show under several threads.

See ``docs/testing.md``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .errors import EmbedMLError, UnsupportedFormatError, UntrustedArtifactError
from .formats import (
    FormatOptions,
    ModelFormat,
    Runtime,
    available_formats,
    format_for_object,
    format_for_path,
    get_format,
    register_format,
    unregister_format,
)
from .schema import TensorSpec
from .serving.load import ModelStore
from .tensors import ClassProbabilities, split

__all__ = [
    "RULES",
    "FakeClock",
    "FormatContract",
    "FormatContractError",
    "check_format",
]


# ---------------------------------------------------------------- the fake clock


class FakeClock:
    """A clock that stands still until :meth:`advance` moves it (thread-safe).

    ``monotonic()`` starts at ``start``; ``time()`` is ``monotonic()`` plus a fixed offset
    (``wall`` at the start). Components waiting for an interval on this clock (an alias
    follower between polls) wake when :meth:`advance` reaches their deadline, never on
    their own; :meth:`wait_for_sleepers` tells a test when they are back to waiting, so it
    can assert on what they did in between. Example, a drift monitor that checks at most
    once a minute::

        clock = FakeClock()
        monitor = embedml.DriftMonitor(reference, check_interval=60, clock=clock, ...)
        ...                  # a check ran; later rows make another one due
        clock.advance(60)    # now it may run, on the monitor's next look

    Raises ``ValueError`` for a negative or non-finite step.
    """

    def __init__(self, start: float = 0.0, *, wall: float = 1_700_000_000.0) -> None:
        self._cond = threading.Condition()  # guards the time and the sleepers
        self._now = float(start)
        self._offset = float(wall) - float(start)
        # Conditions of threads waiting for time to pass, by waiter; advance() wakes and
        # forgets them all, and each one that goes back to waiting registers again.
        self._sleepers: dict[object, threading.Condition] = {}

    def monotonic(self) -> float:
        """The fake monotonic seconds."""
        with self._cond:
            return self._now

    def time(self) -> float:
        """The fake Unix time: ``monotonic()`` plus the offset set by ``wall``."""
        with self._cond:
            return self._now + self._offset

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (>= 0) and wake every thread waiting on it,
        so that each sees the new time."""
        seconds = float(seconds)
        if not 0.0 <= seconds < math.inf:
            raise ValueError(f"a FakeClock only moves forward by a finite step, got {seconds!r}")
        with self._cond:
            self._now += seconds
            woken = list(self._sleepers.values())
            self._sleepers.clear()
        for cond in woken:  # not under self._cond: waiters take cond first, then self._cond
            with cond:
                cond.notify_all()

    @property
    def sleepers(self) -> int:
        """How many threads are waiting for this clock to reach a deadline."""
        with self._cond:
            return len(self._sleepers)

    def wait_for_sleepers(self, count: int = 1, timeout: float = 30.0) -> None:
        """Block until at least ``count`` threads wait on this clock, at most ``timeout``
        real seconds (a bound against a hung test, not a speed check). After
        :meth:`advance` a woken thread counts again only once it is back to waiting, so
        ``advance(); wait_for_sleepers()`` returns after the threads did what the new time
        allowed. Raises ``TimeoutError``."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._sleepers) >= count, timeout):
                raise TimeoutError(
                    f"{len(self._sleepers)} thread(s) wait on the FakeClock after {timeout} s, expected {count}"
                )

    def wait_for(
        self, cond: threading.Condition, predicate: Callable[[], Any], timeout: float | None
    ) -> Any:
        """``cond.wait_for(predicate, timeout)`` with ``timeout`` in fake seconds: returns
        when the predicate is true (after ``cond`` is notified) or this clock has advanced
        ``timeout`` seconds. Call it with ``cond`` held (see :func:`embedml.clock.wait_for`)."""
        if timeout is None:
            return cond.wait_for(predicate)
        with self._cond:
            deadline = self._now + timeout
        result = predicate()
        while not result:
            waiter = object()
            with self._cond:  # the time check and the registration are one step for advance()
                if self._now >= deadline:
                    break
                self._sleepers[waiter] = cond
                self._cond.notify_all()
            try:
                cond.wait()  # notified by advance() (which needs cond: we are waiting by then)
            finally:
                with self._cond:
                    self._sleepers.pop(waiter, None)
                    self._cond.notify_all()
            result = predicate()
        return result

    def __repr__(self) -> str:
        return f"FakeClock(monotonic={self.monotonic()!r})"


# ---------------------------------------------------------------- the format conformance kit

#: The rules :func:`check_format` checks, by name, in the order it runs them.
RULES: dict[str, str] = {
    "name": "name is a lower-case word (letters, digits, '_', '-', '.'); suffixes is a non-empty "
    "tuple of lower-case '.ext' strings (file suffixes are matched lower-cased); "
    "unsafe_to_load, takes_method and declares_shapes are bools",
    "registry": "the format is registered under its name; registering the name again is refused "
    "(ValueError) and keeps the first; an unknown name is refused with UnsupportedFormatError "
    "listing the registered names; each suffix leads format_for_path to this format; a plain "
    "object still goes to the joblib fallback (claims() does not take everything)",
    "dump-load": "dump writes one file, at the path it is given; load builds a Runtime from "
    "those bytes alone (the file is gone by then); two loads of the same bytes predict the "
    "same; with expected=, the loaded model predicts what the in-memory one does",
    "batch": "for a row-wise runtime, predict on n rows returns one output per row (an array, "
    "or a dict or tuple of arrays, each with n entries on axis 0), and a row predicted alone "
    "gives its row of the batch's output",
    "interface": "the declared interface is typed as Runtime documents it and agrees with what "
    "predict accepts and returns: input_names / input_specs name the inputs (a dict batch has "
    "exactly those keys; one array means one input), specs' dtypes and fixed dimensions match "
    "the arrays, n_features and feature_names match the columns, output_specs match the "
    "outputs, classes match labels or probability columns, row_wise=False says why, "
    "signature() is JSON",
    "options": "load refuses with an embedml error each option that does not apply to the format "
    "(method= unless takes_method, and session_options= / outputs= unless given in options=), "
    "and a method the model does not have; options that apply load",
    "thread-safety": "predict called from 8 threads at once returns what it returns alone",
    "close": "Runtime.close() can be called twice, and closing one runtime leaves another loaded "
    "from the same bytes working",
    "store": "ModelStore.save of the in-memory model, then load and predict_batch, gives the "
    "runtime's outputs",
    "unsafe-to-load": "a file of a format marked unsafe_to_load is refused by ModelStore.save "
    "without trust=True or sha256= (UntrustedArtifactError, nothing saved) and saved with "
    "either; inspect() does not load such a file; a file of a safe format needs no voucher",
}


class FormatContractError(AssertionError):
    """A format broke a rule of the contract: ``rule`` names it (a key of :data:`RULES`),
    ``format_name`` the format. An ``AssertionError``, so test runners report it as a
    failure."""

    def __init__(self, rule: str, format_name: str, detail: str) -> None:
        super().__init__(f"format {format_name!r} breaks rule {rule!r}: {detail}")
        self.rule = rule
        self.format_name = format_name
        self.detail = detail


def check_format(
    format: type[ModelFormat] | ModelFormat,
    make_model: Callable[[], Any],
    make_inputs: Callable[[int], Any],
    *,
    expected: Callable[[Any, Any], Any] | None = None,
    options: Mapping[str, Any] | None = None,
    rules: Sequence[str] | None = None,
) -> None:
    """Check a :class:`~embedml.ModelFormat` and its runtimes against the contract.

    ``make_model()`` returns a fresh in-memory model the format can ``dump``;
    ``make_inputs(n)`` a batch of ``n`` rows as its runtime's ``predict`` takes it (an array,
    or a dict of arrays by input name), different for each call is best. ``expected(model,
    inputs)``, if given, is what the in-memory model predicts. ``options`` are the load
    options that apply to the format, with a working value (``{"session_options": {...}}``);
    ``method=`` applies when the format ``takes_method``. ``rules`` picks rules by name
    (default: all of :data:`RULES`).

    An unregistered format is registered for the duration of the check (and removed after).
    Raises :class:`FormatContractError` (an ``AssertionError``) for the first broken rule,
    ``ValueError`` for an unknown rule name.
    """
    chosen = list(RULES) if rules is None else list(rules)
    unknown = [r for r in chosen if r not in RULES]
    if unknown:
        raise ValueError(f"unknown rule(s) {unknown}; the rules are {list(RULES)}")
    cls = format if isinstance(format, type) else type(format)
    name = getattr(cls, "name", None)
    with (
        _registered(cls, str(name)) as fmt,
        tempfile.TemporaryDirectory(prefix="embedml-kit-") as tmp,
    ):
        kit = _Kit(fmt, make_model, make_inputs, expected, dict(options or {}), Path(tmp))
        for rule in chosen:
            getattr(kit, "check_" + rule.replace("-", "_"))()


class FormatContract:
    """A mixin that turns the conformance kit into one test per rule (as cachetools'
    ``CacheTestMixin`` does for caches). Subclass it in a test module::

        class TestMyFormat(FormatContract):
            format = MyFormat

            def make_model(self):
                return MyModel(...)

            def make_inputs(self, n):
                return np.random.default_rng(n).normal(size=(n, 3))

    It has a ``test_format_<rule>`` method per rule of :data:`RULES` (``test_format_batch``,
    ``test_format_thread_safety``...). Set ``load_options`` to the options that apply (see
    :func:`check_format`) and override :meth:`expected` to compare with the in-memory
    model. Works under pytest and, mixed with ``unittest.TestCase``, under unittest.
    """

    format: ClassVar[type[ModelFormat] | ModelFormat]
    load_options: ClassVar[Mapping[str, Any]] = {}

    def make_model(self) -> Any:
        """A fresh in-memory model the format can dump."""
        raise NotImplementedError("a FormatContract subclass defines make_model()")

    def make_inputs(self, n: int) -> Any:
        """A batch of ``n`` rows as the runtime's ``predict`` takes it."""
        raise NotImplementedError("a FormatContract subclass defines make_inputs(n)")

    def expected(self, model: Any, inputs: Any) -> Any:
        """What the in-memory model predicts on ``inputs``; ``NotImplemented`` (the
        default) skips that comparison."""
        return NotImplemented

    def check_rule(self, rule: str) -> None:
        """Run one rule of the kit on this class's format."""
        probe = self.expected(self.make_model(), self.make_inputs(1))
        expected = None if probe is NotImplemented else self.expected
        check_format(
            self.format, self.make_model, self.make_inputs,
            expected=expected, options=self.load_options, rules=[rule],
        )  # fmt: skip


def _rule_test(rule: str) -> Callable[[FormatContract], None]:
    def test(self: FormatContract) -> None:
        self.check_rule(rule)

    test.__name__ = "test_format_" + rule.replace("-", "_")
    test.__qualname__ = f"FormatContract.{test.__name__}"
    test.__doc__ = f"Rule {rule!r}: {RULES[rule]}."
    return test


# One test per rule: test_format_name, test_format_registry, ..., test_format_unsafe_to_load.
for _rule in RULES:
    _test = _rule_test(_rule)
    setattr(FormatContract, _test.__name__, _test)


@contextmanager
def _registered(cls: type[ModelFormat], name: str) -> Iterator[ModelFormat]:
    """The registered instance of ``cls``, registering it for the block if needed."""
    if name in available_formats():
        fmt = get_format(name)
        if type(fmt) is not cls:
            raise FormatContractError(
                "registry", name, f"the name is registered to another format, {type(fmt).__name__}"
            )
        yield fmt
        return
    try:
        register_format(cls)
    except (ValueError, TypeError) as exc:
        raise FormatContractError("name", name, f"register_format refuses it: {exc}") from exc
    try:
        yield get_format(name)
    finally:
        unregister_format(name)


@dataclass
class _Kit:
    """The checks of one :func:`check_format` call (each ``check_*`` method is a rule)."""

    THREADS: ClassVar[int] = 8
    CALLS_PER_THREAD: ClassVar[int] = 25

    fmt: ModelFormat
    make_model: Callable[[], Any]
    make_inputs: Callable[[int], Any]
    expected: Callable[[Any, Any], Any] | None
    options: dict[str, Any]
    tmp: Path
    _data: bytes | None = None  # the artifact's bytes, dumped once
    _count: int = 0  # folders made

    # -- helpers
    def fail(self, rule: str, detail: str) -> FormatContractError:
        return FormatContractError(rule, self.fmt.name, detail)

    def folder(self) -> Path:
        self._count += 1
        path = self.tmp / f"case-{self._count}"
        path.mkdir()
        return path

    def dump(self, rule: str, model: Any | None = None) -> Path:
        """Dump a model into an empty folder; the artifact's path."""
        path = self.folder() / ("model" + self.fmt.suffixes[0])
        try:
            self.fmt.dump(self.make_model() if model is None else model, path)
        except Exception as exc:
            raise self.fail(rule, f"dump() raised {type(exc).__name__}: {exc}") from exc
        if not path.is_file():
            raise self.fail(rule, f"dump() wrote no file at the path it was given ({path.name})")
        return path

    def data(self, rule: str) -> bytes:
        """The bytes of a dumped artifact (dumped once)."""
        if self._data is None:
            path = self.dump(rule)
            self._data = path.read_bytes()
            shutil.rmtree(path.parent)
        return self._data

    def load(self, rule: str, **options: Any) -> Runtime:
        try:
            runtime = self.fmt.load(self.data(rule), self.format_options(**options))
        except Exception as exc:
            raise self.fail(rule, f"load() raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(runtime, Runtime):
            raise self.fail(
                rule, f"load() returned {type(runtime).__name__}, not an embedml Runtime"
            )
        return runtime

    def format_options(self, **options: Any) -> FormatOptions:
        if self.fmt.takes_method:
            options.setdefault("method", self.options.get("method"))
        return FormatOptions(**options)

    def predict(self, rule: str, runtime: Runtime, inputs: Any, what: str = "") -> Any:
        try:
            return runtime.predict(inputs)
        except Exception as exc:
            raise self.fail(
                rule, f"predict() raised {type(exc).__name__}: {exc}{what and ' (' + what + ')'}"
            ) from exc

    # -- the rules
    def check_name(self) -> None:
        fmt = self.fmt
        if not isinstance(fmt.name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", fmt.name):
            raise self.fail("name", f"name {fmt.name!r} is not a lower-case word")
        suffixes = fmt.suffixes
        if not isinstance(suffixes, tuple) or not suffixes:
            raise self.fail("name", f"suffixes must be a non-empty tuple, got {suffixes!r}")
        for suffix in suffixes:
            if not isinstance(suffix, str) or not re.fullmatch(r"\.[a-z0-9_-]+", suffix):
                raise self.fail(
                    "name",
                    f"suffix {suffix!r} is not a lower-case '.ext' (file suffixes are matched lower-cased)",
                )
        for flag in ("unsafe_to_load", "takes_method", "declares_shapes"):
            if not isinstance(getattr(fmt, flag), bool):
                raise self.fail("name", f"{flag} must be a bool, got {getattr(fmt, flag)!r}")

    def check_registry(self) -> None:
        fmt, name, cls = self.fmt, self.fmt.name, type(self.fmt)
        if name not in available_formats() or get_format(name) is not fmt:
            raise self.fail("registry", "get_format(name) does not return the registered format")
        try:
            register_format(cls)
        except ValueError:
            pass
        else:
            raise self.fail("registry", "registering the name a second time was accepted")
        if get_format(name) is not fmt:
            raise self.fail("registry", "a refused second registration replaced the first")
        unknown = name + "-not-registered"
        try:
            get_format(unknown)
        except UnsupportedFormatError as exc:
            missing = [n for n in available_formats() if n not in str(exc)]
            if missing:
                raise self.fail(
                    "registry", f"the error for an unknown name does not list {missing}: {exc}"
                ) from None
        else:
            raise self.fail("registry", f"get_format({unknown!r}) did not raise")
        for suffix in fmt.suffixes:
            try:
                found = format_for_path("model" + suffix.upper())
            except UnsupportedFormatError as exc:
                raise self.fail(
                    "registry", f"format_for_path does not know {suffix!r}: {exc}"
                ) from None
            if found is not fmt:
                raise self.fail(
                    "registry",
                    f"suffix {suffix!r} leads format_for_path to {found!r}, registered first",
                )
        try:
            fallback = format_for_object(object())
        except Exception as exc:
            raise self.fail(
                "registry", f"claims(object()) raised {type(exc).__name__}: {exc}"
            ) from exc
        if fallback.name != "joblib":
            raise self.fail(
                "registry", f"a plain object() is claimed by {fallback!r}, not the joblib fallback"
            )

    def check_dump_load(self) -> None:
        path = self.dump("dump-load")
        written = sorted(p.name for p in path.parent.iterdir())
        if written != [path.name]:
            raise self.fail(
                "dump-load",
                f"dump() wrote {written}; the store keeps only the file at the path given",
            )
        data = path.read_bytes()
        shutil.rmtree(path.parent)  # a loader must need nothing but the verified bytes
        self._data = data
        first, second = self.load("dump-load"), self.load("dump-load")
        try:
            inputs = self.make_inputs(3)
            a = self.predict("dump-load", first, inputs)
            b = self.predict("dump-load", second, inputs)
            why = _differs(a, b)
            if why:
                raise self.fail(
                    "dump-load", f"two loads of the same bytes predict differently: {why}"
                )
            if self.expected is not None:
                want = self.expected(self.make_model(), inputs)
                why = _differs(want, a)
                if why:
                    raise self.fail(
                        "dump-load",
                        f"the loaded model does not predict what the in-memory one does: {why}",
                    )
        finally:
            first.close()
            second.close()

    def check_batch(self) -> None:
        runtime = self.load("batch")
        try:
            if not runtime.row_wise:
                self.predict("batch", runtime, self.make_inputs(3))
                return
            for n in (1, 2, 5):
                inputs = self.make_inputs(n)
                out = self.predict("batch", runtime, inputs, f"a batch of {n} rows")
                counts = _row_counts(out)
                if counts is None or any(c != n for c in counts):
                    raise self.fail(
                        "batch",
                        f"a batch of {n} rows gave {_describe(out)}: expected {n} entries on axis 0 "
                        "(or declare the runtime row_wise=False)",
                    )
            rows = split(inputs, [1] * n)
            parts = split(out, [1] * n)
            for i, (row, part) in enumerate(zip(rows, parts)):
                alone = self.predict("batch", runtime, row, f"row {i} alone")
                why = _differs(part, alone)
                if why:
                    raise self.fail(
                        "batch",
                        f"row {i} predicted alone differs from its row in a batch of {n}: {why}",
                    )
        finally:
            runtime.close()

    def check_interface(self) -> None:
        runtime = self.load("interface")
        try:
            self._interface(runtime)
        finally:
            runtime.close()

    def _interface(self, rt: Runtime) -> None:
        def fail(detail: str) -> FormatContractError:
            return self.fail("interface", detail)

        for attr in ("input_specs", "output_specs"):
            specs = getattr(rt, attr)
            if specs is not None and (
                not isinstance(specs, list) or not all(isinstance(s, TensorSpec) for s in specs)
            ):
                raise fail(f"{attr} must be None or a list of TensorSpec, got {specs!r}")
        for attr in ("input_names", "feature_names", "classes"):
            value = getattr(rt, attr)
            if value is not None and not isinstance(value, tuple):
                raise fail(f"{attr} must be None or a tuple, got {value!r}")
        names = rt.input_names
        if names is not None and (
            not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names)
        ):
            raise fail(f"input_names must be distinct strings, got {names!r}")
        if names is not None and rt.input_specs and tuple(s.name for s in rt.input_specs) != names:
            raise fail(
                f"input_names {names} and input_specs {[s.name for s in rt.input_specs]} name other inputs"
            )
        if rt.feature_names is not None and not all(isinstance(n, str) for n in rt.feature_names):
            raise fail(f"feature_names must be strings, got {rt.feature_names!r}")
        if rt.n_features is not None and (
            isinstance(rt.n_features, bool)
            or not isinstance(rt.n_features, int)
            or rt.n_features < 0
        ):
            raise fail(f"n_features must be None or an int >= 0, got {rt.n_features!r}")
        if (
            rt.feature_names is not None
            and rt.n_features is not None
            and len(rt.feature_names) != rt.n_features
        ):
            raise fail(f"{len(rt.feature_names)} feature_names but n_features={rt.n_features}")
        if not isinstance(rt.row_wise, bool):
            raise fail(f"row_wise must be a bool, got {rt.row_wise!r}")
        if not rt.row_wise and not (isinstance(rt.row_wise_reason, str) and rt.row_wise_reason):
            raise fail("row_wise is False but row_wise_reason does not say why")
        if rt.method is not None and not isinstance(rt.method, str):
            raise fail(f"method must be None or a str, got {rt.method!r}")

        inputs = self.make_inputs(3)
        by_name = _by_name(inputs, rt, fail)
        try:
            saved, _ = self.fmt.tensor_specs(self.make_model())
        except Exception as exc:
            raise fail(f"tensor_specs() raised {type(exc).__name__}: {exc}") from exc
        for what, declared in (("input_specs", rt.input_specs), ("tensor_specs() at save", saved)):
            if not declared:
                continue
            if rt.input_names is not None and tuple(s.name for s in declared) != rt.input_names:
                raise fail(
                    f"{what} name inputs {[s.name for s in declared]}, the runtime's input_names "
                    f"are {list(rt.input_names)}"
                )
            specs = {s.name: s for s in declared}
            for key, array in by_name.items():
                spec = specs.get(key) if key is not None else declared[0]
                why = _spec_mismatch(spec, array) if spec is not None else ""
                if why:
                    raise fail(f"{what}: input {spec.name!r}: {why}, yet predict is given it")  # type: ignore[union-attr]
        single = by_name.get(None)
        if single is not None and np.ndim(single) == 2:
            columns = np.shape(single)[1]
            if rt.n_features is not None and rt.n_features != columns:
                raise fail(f"n_features={rt.n_features} but predict takes {columns} columns")
            if rt.feature_names is not None and len(rt.feature_names) != columns:
                raise fail(
                    f"{len(rt.feature_names)} feature_names but predict takes {columns} columns"
                )

        out = self.predict("interface", rt, inputs)
        if rt.output_specs:
            if isinstance(out, Mapping):
                extra = [s.name for s in rt.output_specs if s.name not in out]
                if extra:
                    raise fail(
                        f"output_specs name {extra}, which predict does not return (it returns {list(out)})"
                    )
                pairs = [(s, out[s.name]) for s in rt.output_specs]
            elif isinstance(out, tuple):
                if len(out) != len(rt.output_specs):
                    raise fail(
                        f"{len(rt.output_specs)} output_specs but predict returns {len(out)} outputs"
                    )
                pairs = list(zip(rt.output_specs, out))
            else:
                if len(rt.output_specs) != 1:
                    raise fail(f"{len(rt.output_specs)} output_specs but predict returns one array")
                pairs = [(rt.output_specs[0], out)]
            for spec, value in pairs:
                why = _spec_mismatch(spec, value)
                if why:
                    raise fail(f"output {spec.name!r}: {why}")
        if rt.classes is not None and rt.method in (None, "predict", "predict_proba"):
            values = out["probabilities"] if isinstance(out, ClassProbabilities) else out
            if isinstance(values, np.ndarray):
                k = len(rt.classes)
                if values.ndim == 2 and values.shape[1] == k:
                    pass  # one probability column per class
                elif values.ndim == 1 and set(values.tolist()) <= set(rt.classes):
                    pass  # labels
                else:
                    raise fail(
                        f"classes {list(rt.classes)} match neither the labels nor the columns of "
                        f"{_describe(values)} from {rt.method or 'predict'}"
                    )
        try:
            sig = rt.signature()
            json.dumps(sig)
        except Exception as exc:
            raise fail(f"signature() is not plain JSON: {type(exc).__name__}: {exc}") from exc
        missing = _SIGNATURE_KEYS - set(sig)
        if missing:
            raise fail(f"signature() lacks {sorted(missing)}")

    def check_options(self) -> None:
        data = self.data("options")
        probes: dict[str, Any] = {"method": "predict", "session_options": {}, "outputs": "y"}
        applies = dict(self.options)
        if self.fmt.takes_method:
            applies.setdefault("method", "predict")
        for option, probe in probes.items():
            if option in applies:
                self.load("options", **{option: applies[option]}).close()
                continue
            try:
                runtime = self.fmt.load(data, FormatOptions(**{option: probe}))
            except EmbedMLError:
                continue
            except Exception as exc:
                raise self.fail(
                    "options",
                    f"{option}={probe!r} does not apply, and load raised {type(exc).__name__} "
                    "instead of an embedml error (UnsupportedFormatError)",
                ) from exc
            runtime.close()
            raise self.fail(
                "options", f"load accepted {option}={probe!r}, which does not apply to it"
            )
        if self.fmt.takes_method:
            try:
                runtime = self.fmt.load(data, FormatOptions(method="no_such_method_for_the_kit"))
            except EmbedMLError:
                return
            except Exception as exc:
                raise self.fail(
                    "options", f"a missing method raised {type(exc).__name__}, not an embedml error"
                ) from exc
            runtime.close()
            raise self.fail("options", "load accepted method='no_such_method_for_the_kit'")

    def check_thread_safety(self) -> None:
        runtime = self.load("thread-safety")
        try:
            # a size per thread: two calls that swap inputs cannot give the same results
            batches = [self.make_inputs(1 + i) for i in range(self.THREADS)]
            alone = [self.predict("thread-safety", runtime, b) for b in batches]
            start = threading.Barrier(self.THREADS)
            problems: list[str] = []

            def run(i: int) -> None:
                try:
                    start.wait(60)
                    for call in range(self.CALLS_PER_THREAD):
                        why = _differs(alone[i], runtime.predict(batches[i]))
                        if why:
                            problems.append(f"thread {i}, call {call}: {why}")
                            return
                except Exception as exc:
                    problems.append(f"thread {i}: {type(exc).__name__}: {exc}")

            threads = [
                threading.Thread(target=run, args=(i,), name=f"embedml-kit-{i}", daemon=True)
                for i in range(self.THREADS)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(600)
            if any(t.is_alive() for t in threads):
                raise self.fail(
                    "thread-safety", "predict did not return within 600 s under 8 threads"
                )
            if problems:
                raise self.fail(
                    "thread-safety",
                    f"{self.THREADS} threads calling predict at once got other results than one at a "
                    f"time: {problems[0]} ({len(problems)} thread(s) affected)",
                )
        finally:
            runtime.close()

    def check_close(self) -> None:
        first, second = self.load("close"), self.load("close")
        inputs = self.make_inputs(2)
        before = self.predict("close", second, inputs)
        try:
            first.close()
            first.close()
        except Exception as exc:
            raise self.fail(
                "close", f"close() a second time raised {type(exc).__name__}: {exc}"
            ) from exc
        after = self.predict("close", second, inputs, "after another runtime was closed")
        why = _differs(before, after)
        second.close()
        if why:
            raise self.fail("close", f"closing one runtime changed another's results: {why}")

    def check_unsafe_to_load(self) -> None:
        fmt = self.fmt
        path = self.dump("unsafe-to-load")
        store = ModelStore(self.folder() / "store")
        if not fmt.unsafe_to_load:
            try:
                store.save("kit", path)
            except Exception as exc:
                raise self.fail(
                    "unsafe-to-load",
                    f"a file of a safe format could not be saved without a voucher: {type(exc).__name__}: {exc}",
                ) from exc
            return
        try:
            store.save("kit", path)
        except UntrustedArtifactError:
            pass
        except Exception as exc:
            raise self.fail(
                "unsafe-to-load",
                f"an unvouched file raised {type(exc).__name__}, not UntrustedArtifactError",
            ) from exc
        else:
            raise self.fail(
                "unsafe-to-load", "the store saved a file of an unsafe format nobody vouched for"
            )
        if store.models():
            raise self.fail("unsafe-to-load", "a refused file left a model in the store")
        try:
            runtime = fmt.inspect(None, path, self.format_options())
        except Exception as exc:
            raise self.fail(
                "unsafe-to-load",
                f"inspect() of a file given by path raised {type(exc).__name__}: {exc}",
            ) from exc
        if runtime is not None:
            runtime.close()
            raise self.fail(
                "unsafe-to-load",
                "inspect() loaded a file given by path (obj=None): for an unsafe format it must return None",
            )
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        try:
            store.save("kit", path, sha256=digest)
            store.save("kit", path, trust=True)
        except Exception as exc:
            raise self.fail(
                "unsafe-to-load", f"a vouched-for file was refused: {type(exc).__name__}: {exc}"
            ) from exc

    def check_store(self) -> None:
        store = ModelStore(self.folder() / "store")
        model = self.make_model()
        try:
            store.save("kit", model, format=self.fmt.name)
        except Exception as exc:
            raise self.fail(
                "store", f"ModelStore.save failed: {type(exc).__name__}: {exc}"
            ) from exc
        runtime = self.load("store")
        inputs = self.make_inputs(4)
        want = self.predict("store", runtime, inputs)
        runtime.close()
        try:
            with store.load(
                "kit", **({"method": self.options["method"]} if "method" in self.options else {})
            ) as h:
                got = h.predict_batch(inputs)
        except Exception as exc:
            raise self.fail(
                "store", f"a saved version does not load and predict: {type(exc).__name__}: {exc}"
            ) from exc
        why = _differs(want, got)
        if why:
            raise self.fail("store", f"the handle's outputs differ from the runtime's: {why}")


# ---------------------------------------------------------------- comparing outputs

_SIGNATURE_KEYS = {"inputs", "outputs", "input_names", "feature_names", "n_features", "classes"}


def _differs(a: Any, b: Any, path: str = "output") -> str:
    """Why two outputs differ ("" when equal; floats within rtol 1e-5, atol 1e-6)."""
    if isinstance(a, ClassProbabilities):
        a = a["probabilities"]
    if isinstance(b, ClassProbabilities):
        b = b["probabilities"]
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        if not (isinstance(a, Mapping) and isinstance(b, Mapping)) or set(a) != set(b):
            return f"{path}: {_describe(a)} vs {_describe(b)}"
        return next((w for k in a if (w := _differs(a[k], b[k], f"{path}[{k!r}]"))), "")
    if isinstance(a, tuple) or isinstance(b, tuple):
        if not (isinstance(a, tuple) and isinstance(b, tuple)) or len(a) != len(b):
            return f"{path}: {_describe(a)} vs {_describe(b)}"
        return next(
            (w for i, (x, y) in enumerate(zip(a, b)) if (w := _differs(x, y, f"{path}[{i}]"))), ""
        )
    try:
        x, y = np.asarray(a), np.asarray(b)
    except Exception:  # noqa: BLE001 - not arrays: compare as values
        return "" if a == b else f"{path}: {a!r} vs {b!r}"
    if x.shape != y.shape:
        return f"{path}: shape {x.shape} vs {y.shape}"
    if x.dtype.kind in "fc" or y.dtype.kind in "fc":
        try:
            same = np.allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True)
        except TypeError:
            same = np.array_equal(x, y)
    else:
        same = np.array_equal(x, y)
    return "" if same else f"{path}: values differ ({_describe(x)})"


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} ({value.dtype})"
    if isinstance(value, Mapping):
        return "a dict {" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in value.items()) + "}"
    if isinstance(value, tuple):
        return "a tuple (" + ", ".join(_describe(v) for v in value) + ")"
    return f"a {type(value).__name__}"


def _row_counts(out: Any) -> list[int] | None:
    """Entries on axis 0 of each part of an output; ``None`` when a part has no length."""
    if isinstance(out, ClassProbabilities):
        out = out["probabilities"]
    if isinstance(out, Mapping):
        parts = list(out.values())
    else:
        parts = list(out) if isinstance(out, tuple) else [out]
    counts = []
    for part in parts:
        shape = np.shape(part) if isinstance(part, np.ndarray | list) else ()
        if not shape:
            return None
        counts.append(shape[0])
    return counts


def _by_name(
    inputs: Any, rt: Runtime, fail: Callable[[str], FormatContractError]
) -> dict[str | None, Any]:
    """The kit's inputs by the runtime's input name (``None``: the single unnamed input)."""
    names = rt.input_names
    if isinstance(inputs, Mapping):
        if names is None:
            raise fail("predict takes a dict of inputs, but input_names does not name them")
        if set(inputs) != set(names):
            raise fail(f"predict takes inputs {sorted(inputs)}, but input_names is {list(names)}")
        return dict(inputs)
    if names is not None and len(names) > 1:
        raise fail(
            f"input_names declares {len(names)} inputs {list(names)}, but predict takes one array"
        )
    return {None: inputs}


def _spec_mismatch(spec: TensorSpec, value: Any) -> str:
    """Why an array does not fit a spec ("" when it does): dtype, rank, fixed dimensions."""
    if not isinstance(value, np.ndarray):
        return ""  # lists, strings: the pipeline converts them
    if spec.dtype not in ("str", "object") and value.dtype != spec.np_dtype:
        return f"declared {spec.dtype}, got {value.dtype}"
    if spec.shape is None:
        return ""
    if value.ndim != len(spec.shape):
        return f"declared shape {list(spec.shape)}, got an array of shape {value.shape}"
    for axis, (dim, size) in enumerate(zip(spec.shape, value.shape)):
        if isinstance(dim, int) and dim >= 0 and dim != size:
            return f"declared size {dim} on axis {axis}, got {size}"
    return ""
