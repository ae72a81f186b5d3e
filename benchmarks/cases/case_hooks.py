"""Hooks case of ``bench_compare.py``: bench_observability's CPU cost per call, one caller.

The model is bench_observability's MLP (20 -> 256 -> 256 -> 2, ONNX file written by the
parent), saved with its reference data (for the drift monitor) and loaded with
``Batching()`` and ``intra_op_num_threads=1``, as there. For each scenario a handle is loaded
and warmed up, then bench_observability's ``cpu_per_call`` runs ``predict`` on single rows
from one thread and counts the process CPU time, the sinks' writer threads included (it
waits until they have written everything):

* ``no hooks``; ``JsonlSink 100%`` (every record to a JSONL file); ``DriftMonitor``.

Scenarios are interleaved round by round. Prints ``{"cpu_us": {scenario: [per round]}}``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _child import emit, import_bench, import_embedml

SCENARIOS = ("no hooks", "JsonlSink 100%", "DriftMonitor")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path, help="the ONNX file of bench_observability's MLP")
    ap.add_argument("--calls", type=int, default=10_000, help="calls per scenario and round")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    embedml = import_embedml()
    obs = import_bench("bench_observability")

    rng = np.random.default_rng(1)  # bench_observability's reference data, then its rows
    reference = rng.normal(size=(20_000, obs.IN)).astype(np.float32)
    rows = rng.normal(size=(4096, obs.IN)).astype(np.float32)
    so = {"intra_op_num_threads": 1, "inter_op_num_threads": 1}
    cpu: dict[str, list[float]] = {name: [] for name in SCENARIOS}

    with tempfile.TemporaryDirectory(prefix="bench-compare-") as d:
        tmp = Path(d)
        store = embedml.ModelStore(tmp / "store")
        store.save("mlp", args.model.read_bytes(), reference_data=reference)

        def hooks(name: str, r: int) -> list:
            queue = {"max_queue": 10**7}  # as bench_observability: nothing is dropped
            if name == "JsonlSink 100%":
                return [embedml.JsonlSink(tmp / f"log-{r}.jsonl", **queue)]
            if name == "DriftMonitor":
                return [embedml.DriftMonitor(window=10_000, **queue)]
            return []

        for r in range(args.rounds):
            for name in SCENARIOS:
                h = store.load(
                    "mlp", session_options=so, hooks=hooks(name, r), batching=embedml.Batching()
                )
                h.warmup(10)
                cpu[name].append(obs.cpu_per_call(h.predict, h.hooks, rows, args.calls))
                h.close()
    emit({"cpu_us": cpu})


if __name__ == "__main__":
    main()
