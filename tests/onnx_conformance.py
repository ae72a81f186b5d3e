"""The onnx package's backend test suite, run through embedml and compared with raw ONNX Runtime.

Cases: the small models shipped under ``onnx/backend/test/data`` (``light``,
``pytorch-converted``, ``pytorch-operator``, ``simple``; each a ``model.onnx`` with
``test_data_set_*/input_*.pb``; the ``light`` models ship no inputs, so seeded ones are
made from their declared shapes) and the operator ("node") tests that
``onnx.backend.test.case.node.collect_testcases()`` generates. The wheel leaves the
generated node folder out: they are written once to a cache folder keyed by the onnx version.

For every case raw ``onnxruntime.InferenceSession.run`` is the reference: a case counts when
raw ONNX Runtime loads the graph and runs it on tensor inputs to tensor outputs; embedml must
then give the same outputs (``store.save`` the graph, load it, ``predict_batch`` with the named
inputs; rtol 1e-5, NaN equal, same dtypes and shapes). Cases that feed NaN or infinity on
purpose are loaded with ``allow_nan=True``.

As a script (the figures in ``docs/concepts.md`` come from it)::

    PYTHONPATH=src python tests/onnx_conformance.py [--jobs 2] [--sample N] [--seed S] [-v]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# outcome statuses: the first two are the cases that count
PASS, FAIL = "pass", "fail"
ORT_REFUSES, NOT_TENSORS, NONDETERMINISTIC = "ort-refuses", "not-tensors", "nondeterministic"
RTOL = 1e-5


@dataclass(frozen=True)
class Case:
    """One model and one data set of inputs (``inputs`` empty: seeded from the declared shapes)."""

    name: str  # "<kind>/<test name>[/<data set>]"
    model: Path
    inputs: tuple[Path, ...]


@dataclass(frozen=True)
class Outcome:
    name: str
    status: str
    detail: str = ""


def cache_dir() -> Path:
    """Where the generated node tests are kept: ``$EMBEDML_ONNX_CACHE`` or a temp folder."""
    import onnx

    root = os.environ.get("EMBEDML_ONNX_CACHE") or tempfile.gettempdir()
    return Path(root) / f"embedml-onnx-backend-{onnx.__version__}"


def _write_node_tests(root: Path) -> None:
    """Write every generated node test as ``<name>/model.onnx`` + ``test_data_set_*/input_*.pb``
    (atomically: a concurrent writer or an interrupted run leaves no half folder)."""
    import warnings

    import onnx
    from onnx import numpy_helper
    from onnx.backend.test.case import node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generators divide by zero etc. on purpose
        cases = node.collect_testcases(None)
    tmp = Path(tempfile.mkdtemp(prefix=".node-", dir=root))
    for case in cases:
        folder = tmp / case.name
        folder.mkdir()
        (folder / "model.onnx").write_bytes(case.model.SerializeToString())
        graph_inputs = list(case.model.graph.input)
        for i, (inputs, _outputs) in enumerate(case.data_sets):
            data = folder / f"test_data_set_{i}"
            data.mkdir()
            for j, value in enumerate(inputs):
                t = graph_inputs[j].type
                if t.HasField("sequence_type"):
                    proto: Any = numpy_helper.from_list(value, graph_inputs[j].name)
                elif t.HasField("optional_type"):
                    proto = numpy_helper.from_optional(value, graph_inputs[j].name)
                elif t.HasField("map_type"):
                    proto = numpy_helper.from_dict(value, graph_inputs[j].name)
                elif isinstance(value, onnx.TensorProto):
                    proto = value
                else:
                    proto = numpy_helper.from_array(np.asarray(value), graph_inputs[j].name)
                (data / f"input_{j}.pb").write_bytes(proto.SerializeToString())
    try:
        tmp.rename(root / "node")
    except OSError:  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def node_dir() -> Path:
    root = cache_dir()
    if not (root / "node").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        _write_node_tests(root)
    return root / "node"


def cases() -> list[Case]:
    """Every case, sorted by name."""
    import onnx

    data = Path(onnx.__file__).parent / "backend" / "test" / "data"
    found = []
    for kind, folder in [
        ("node", node_dir()),
        *((k, data / k) for k in ("pytorch-converted", "pytorch-operator", "simple")),
    ]:
        for test in sorted(p for p in folder.iterdir() if (p / "model.onnx").is_file()):
            sets = sorted(test.glob("test_data_set_*"))
            for ds in sets:
                label = f"{kind}/{test.name}" + (f"/{ds.name[-1]}" if len(sets) > 1 else "")
                found.append(Case(label, test / "model.onnx", tuple(sorted(ds.glob("input_*.pb")))))
    for model in sorted((data / "light").glob("light_*.onnx")):
        found.append(Case(f"light/{model.stem}", model, ()))
    return sorted(found, key=lambda c: c.name)


def sample(all_cases: list[Case], n: int, seed: int) -> list[Case]:
    """A seeded random subset of ``n`` cases (all when ``n`` is larger)."""
    if n >= len(all_cases):
        return list(all_cases)
    return sorted(random.Random(seed).sample(all_cases, n), key=lambda c: c.name)


def _inputs(case: Case, model: Any) -> dict[str, Any] | None:
    """The case's feed by graph input name, or ``None`` when an input is not a tensor."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in inits]
    if any(not i.type.HasField("tensor_type") for i in graph_inputs):
        return None
    if not case.inputs:  # a light model: seeded values of the declared shapes
        rng = np.random.default_rng(0)
        feed = {}
        for i in graph_inputs:
            tt = i.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
            feed[i.name] = rng.standard_normal(shape).astype(dtype)
        return feed
    feed = {}
    for i, path in zip(graph_inputs, case.inputs):
        t = onnx.TensorProto()
        t.ParseFromString(path.read_bytes())
        feed[i.name] = numpy_helper.to_array(t)
    return feed


def _nonfinite(feed: dict[str, Any]) -> bool:
    return any(a.dtype.kind in "fc" and a.size and not np.isfinite(a).all() for a in feed.values())


def _same(want: np.ndarray, got: Any) -> str:
    """Empty when ``got`` equals ``want`` (same dtype and shape, rtol 1e-5, NaN equal)."""
    got = np.asarray(got)
    if got.dtype != want.dtype or got.shape != want.shape:
        return f"got {got.dtype}{list(got.shape)}, raw ONNX Runtime {want.dtype}{list(want.shape)}"
    if want.dtype.kind in "fc":
        ok = np.allclose(got, want, rtol=RTOL, atol=0.0, equal_nan=True)
    else:
        ok = np.array_equal(got, want)
    return "" if ok else "values differ"


def run_case(case: Case, store_dir: Path) -> Outcome:
    """Run one case raw and through embedml; never raises."""
    import onnx
    import onnxruntime as ort

    import embedml

    ort.set_default_logger_severity(4)  # the graphs' warnings are not ours to show
    try:
        data = case.model.read_bytes()
        model = onnx.load_from_string(data)
        feed = _inputs(case, model)
        if feed is None:
            return Outcome(case.name, NOT_TENSORS, "an input is not a tensor")
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        raw = session.run(names, feed)
        if not all(isinstance(r, np.ndarray) for r in raw):
            return Outcome(case.name, NOT_TENSORS, "an output is not a tensor")
        again = session.run(names, feed)
        if any(_same(a, b) for a, b in zip(raw, again)):
            return Outcome(case.name, NONDETERMINISTIC, "two raw runs differ")
    except Exception as exc:  # noqa: BLE001 - whatever raw ONNX Runtime refuses is out of scope
        return Outcome(case.name, ORT_REFUSES, f"{type(exc).__name__}: {str(exc)[:200]}")
    try:
        store = embedml.ModelStore(store_dir)
        mv = store.save(case.name.replace("/", "-").replace(".", "_"), data, format="onnx")
        with store.load(mv.name, mv.version, allow_nan=_nonfinite(feed)) as handle:
            out = handle.predict_batch(feed)
        got = out if isinstance(out, dict) else {names[0]: out}
        for name, want in zip(names, raw):
            if name not in got:
                return Outcome(case.name, FAIL, f"output {name!r} missing")
            diff = _same(want, got[name])
            if diff:
                return Outcome(case.name, FAIL, f"output {name!r}: {diff}")
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return Outcome(case.name, FAIL, f"{type(exc).__name__}: {str(exc)[:300]}")
    return Outcome(case.name, PASS)


def _run_chunk(chunk: list[Case]) -> list[Outcome]:
    # a store in memory when the system has one: saving fsyncs, which would dominate here
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="embedml-conformance-", dir=shm) as tmp:
        return [run_case(c, Path(tmp) / "store") for c in chunk]


def run_all(selected: list[Case], jobs: int = 1) -> list[Outcome]:
    """Outcomes of ``selected``, in order, on ``jobs`` processes."""
    if jobs <= 1 or len(selected) < 50:
        return _run_chunk(selected)
    chunks = [selected[i::jobs] for i in range(jobs)]
    with ProcessPoolExecutor(jobs) as pool:
        results = [o for part in pool.map(_run_chunk, chunks) for o in part]
    return sorted(results, key=lambda o: o.name)


def summary(outcomes: list[Outcome]) -> str:
    counts = Counter(o.status for o in outcomes)
    counted = counts[PASS] + counts[FAIL]
    return (
        f"{len(outcomes)} cases; raw ONNX Runtime runs {counted} with tensor inputs and outputs; "
        f"embedml gives the same outputs for {counts[PASS]} ({100 * counts[PASS] / max(counted, 1):.1f}%), "
        f"fails {counts[FAIL]}; not counted: {counts[ORT_REFUSES]} raw ONNX Runtime refuses, "
        f"{counts[NOT_TENSORS]} non-tensor inputs or outputs, {counts[NONDETERMINISTIC]} nondeterministic"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--sample", type=int, default=0, help="run a seeded subset of N cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-v", "--verbose", action="store_true", help="list every case not passing")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    selected = cases()
    if args.sample:
        selected = sample(selected, args.sample, args.seed)
    outcomes = run_all(selected, args.jobs)
    for o in outcomes:
        if o.status == FAIL or (args.verbose and o.status != PASS):
            print(f"{o.status:16} {o.name}: {o.detail}")
    print(summary(outcomes))
    print(f"{time.perf_counter() - start:.1f} s on {args.jobs} process(es)")
    return 1 if any(o.status == FAIL for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
