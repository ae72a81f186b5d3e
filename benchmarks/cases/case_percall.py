"""Per-call case of ``bench_compare.py``: bench_foundation's figures, in one child process.

The model is bench_foundation's logistic regression on 20 float features (its ONNX file is
written by the parent). This process saves it into a fresh store with the embedml under
test, checks that every case gives the raw runtime's answers, then times call by call, cases
interleaved round by round (bench_foundation's ``time_calls``):

* one row: raw ``session.run``, ``handle.predict`` of a 1-D numpy row (tensor schema read
  from the graph), ``handle.predict`` of a dict of 20 floats (record schema from pydantic);
* 1,024 rows: raw ``session.run`` and ``handle.predict_batch`` on the same array.

Prints ``{"samples": {case: [ns, ...]}}`` as its last line.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _child import emit, import_bench, import_embedml

N_FEATURES = 20
BATCH = 1024
FIELDS = [f"f{i}" for i in range(N_FEATURES)]

RAW_ROW = "raw session.run, 1 row"
ROW = "embedml predict, numpy row"
RECORD = "embedml predict, dict record"
RAW_BATCH = f"raw session.run, {BATCH} rows"
BATCHED = f"embedml predict_batch, {BATCH} rows"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path, help="the ONNX file of bench_foundation's model")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=1000)
    ap.add_argument("--batch-rounds", type=int, default=10)
    ap.add_argument("--batch-per-round", type=int, default=50)
    args = ap.parse_args()

    embedml = import_embedml()
    time_calls = import_bench("bench_foundation").time_calls
    import onnxruntime as ort
    from pydantic import create_model

    data = args.model.read_bytes()
    # bench_foundation's X: the first draw of default_rng(0).
    X = np.random.default_rng(0).normal(size=(2000, N_FEATURES)).astype(np.float32)
    row, row2d = X[0], X[:1]
    record = {f: float(v) for f, v in zip(FIELDS, row)}
    batch = np.ascontiguousarray(np.resize(X, (BATCH, N_FEATURES)))
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name

    with tempfile.TemporaryDirectory(prefix="bench-compare-") as d:
        store = embedml.ModelStore(Path(d) / "store")
        store.save("lr", data)
        Features = create_model("Features", **{f: (float, ...) for f in FIELDS})
        store.save("lr_record", data, input_schema=Features)
        h_arr = store.load("lr")
        h_rec = store.load("lr_record")

        raw_label, raw_proba = sess.run(None, {in_name: row2d})
        for got in (h_arr.predict(row), h_rec.predict(record)):
            assert int(got["label"]) == int(raw_label[0]), got
            np.testing.assert_allclose(got["probabilities"], raw_proba[0], rtol=1e-5)
        np.testing.assert_array_equal(
            h_arr.predict_batch(batch)["label"], sess.run(None, {in_name: batch})[0]
        )

        samples = time_calls(
            {
                RAW_ROW: lambda: sess.run(None, {in_name: row2d}),
                ROW: lambda: h_arr.predict(row),
                RECORD: lambda: h_rec.predict(record),
            },
            args.rounds,
            args.per_round,
        )
        samples.update(
            time_calls(
                {
                    RAW_BATCH: lambda: sess.run(None, {in_name: batch}),
                    BATCHED: lambda: h_arr.predict_batch(batch),
                },
                args.batch_rounds,
                args.batch_per_round,
            )
        )
        h_arr.close()
        h_rec.close()
    emit({"samples": samples})


if __name__ == "__main__":
    main()
