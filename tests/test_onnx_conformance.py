"""The onnx package's own backend tests through embedml, against raw ONNX Runtime.

A seeded subset runs with the suite; the whole set (about 2,000 cases, a minute on two
cores) with ``pytest -m conformance`` or ``python tests/onnx_conformance.py`` (see there).
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("onnx")

import onnx_conformance as oc  # noqa: E402 - after the skip

SUBSET = 100
# These cover the kinds of graph embedml once refused: a scalar input, broadcast operands,
# a reduction over the first axis, a [1, C, H, W] image model, string tensors, NaN inputs.
ALWAYS = {
    "node/test_range_float_type_positive_delta",
    "node/test_and_bcast4v3d",
    "node/test_reduce_sum_keepdims_example",
    "node/test_isnan",
    "light/light_squeezenet",
    "node/test_string_concat_broadcasting",
    "simple/test_expand_shape_model1",
}


def _report(outcomes: list[oc.Outcome]) -> str:
    failed = [f"{o.name}: {o.detail}" for o in outcomes if o.status == oc.FAIL]
    return "\n".join([oc.summary(outcomes), *failed])


def test_seeded_subset_gives_raw_onnxruntime_outputs():
    seed = int(os.environ.get("EMBEDML_CONFORMANCE_SEED", "0"))
    every = oc.cases()
    chosen = oc.sample(every, SUBSET, seed)
    chosen += [c for c in every if c.name in ALWAYS and c not in chosen]
    assert {c.name for c in chosen} >= ALWAYS  # the cases above still exist
    outcomes = oc.run_all(chosen)
    assert all(o.status != oc.FAIL for o in outcomes), _report(outcomes)
    # most cases count (raw ONNX Runtime runs them), so the test cannot pass on nothing
    assert sum(o.status == oc.PASS for o in outcomes) >= 0.7 * len(chosen), _report(outcomes)


@pytest.mark.conformance
def test_every_backend_case_gives_raw_onnxruntime_outputs():
    outcomes = oc.run_all(oc.cases(), jobs=os.cpu_count() or 1)
    assert all(o.status != oc.FAIL for o in outcomes), _report(outcomes)
    assert sum(o.status == oc.PASS for o in outcomes) >= 1500, _report(outcomes)
