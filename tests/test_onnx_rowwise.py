"""Row semantics decided from the graph: row-wise ONNX models are validated, batched and
split by row; any other graph gets its tensors whole (static shapes, a ``shape`` or scalar
``theta`` input, a reduction over the batch, a [1, C, H, W] image model), and batching it
is refused. Formats that declare no shapes are row-wise unless saved with row_wise=False."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

import embedml
from helpers_models import BatchCentered, dataset, onnx_linear, sk_logreg

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, check=True):
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if check:  # the checker wants every graph input's shape; ONNX Runtime does not
        onnx.checker.check_model(model)
    return model


def _vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def static_double():
    """y = 2x on exactly [4, 3]."""
    return _model(
        [helper.make_node("Add", ["x", "x"], ["y"])], [_vi("x", [4, 3])], [_vi("y", [4, 3])]
    )


def reshape_by_input():
    """y = reshape(x, shape): ``shape`` is an operand of the call, not a row."""
    return _model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        [_vi("x", [None, 6]), _vi("shape", [3], TensorProto.INT64)],
        [_vi("y", [None, None, None])],
    )


def scaled_by_theta():
    """y = x * theta with a scalar theta."""
    return _model(
        [helper.make_node("Mul", ["x", "theta"], ["y"])],
        [_vi("x", [None, 3]), _vi("theta", [])],
        [_vi("y", [None, 3])],
    )


def batch_sum():
    """y = the sum of x over the batch axis: one output for all rows."""
    return _model(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)],
        [_vi("x", ["batch", 3]), _vi("axes", [1], TensorProto.INT64)],
        [_vi("y", [3])],
    )


def image_model():
    """A [1, 3, 8, 8] image -> per-channel means [1, 3]."""
    return _model(
        [
            helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["means"]),
        ],
        [_vi("image", [1, 3, 8, 8])],
        [_vi("means", [1, 3])],
    )


def renamed(first_in, first_out):
    return _model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [_vi("x", [first_in, 4])],
        [_vi("y", [first_out, 4])],
    )


def test_static_shape_model_takes_its_tensor_whole(store):
    store.save("static", static_double())
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    with store.load("static") as h:
        assert not h.row_wise
        np.testing.assert_array_equal(h.predict_batch(x), 2 * x)
        np.testing.assert_array_equal(h.predict_batch({"x": x}), 2 * x)
        with pytest.raises(embedml.SchemaError, match="dimension 0 must be 4") as exc:
            h.predict_batch(x[:2])  # the declared first dimension is checked, before the model
        assert exc.value.field == "x"
    with pytest.raises(embedml.ConfigurationError, match="fixed first dimension 4"):
        store.load("static", batching=True)


def test_shape_operand_is_passed_whole(store):
    store.save("reshape", reshape_by_input())
    x = np.arange(30, dtype=np.float32).reshape(5, 6)
    with store.load("reshape") as h:
        out = h.predict_batch({"x": x, "shape": np.array([5, 2, 3])})
        np.testing.assert_array_equal(out, x.reshape(5, 2, 3))
        with pytest.raises(embedml.SchemaError, match="dimension 0 must be 3"):
            h.predict_batch({"x": x, "shape": np.array([5, 6])})
    with pytest.raises(embedml.ConfigurationError, match="'shape' has the fixed first dimension 3"):
        store.load("reshape", batching=embedml.Batching(max_batch_size=8))


def test_scalar_theta_input(store):
    store.save("theta", scaled_by_theta())
    x = np.ones((4, 3), dtype=np.float32)
    with store.load("theta") as h:
        assert h.input_schema.specs[1] == embedml.TensorSpec("theta", "float32", ())
        np.testing.assert_array_equal(h.predict_batch({"x": x, "theta": 2.5}), 2.5 * x)
        with pytest.raises(embedml.SchemaError, match="expected 0 dimensions") as exc:
            h.predict_batch({"x": x, "theta": [2.5, 1.0]})
        assert exc.value.field == "theta"
    with pytest.raises(embedml.ConfigurationError, match="'theta' is a scalar"):
        store.load("theta", batching=True)


def test_reduction_over_the_batch_is_never_split(store):
    """Batching would join callers' rows and cut the sum across them: a wrong answer."""
    store.save("sum", batch_sum())
    x = np.arange(9, dtype=np.float32).reshape(3, 3)
    axes = np.array([0])
    with store.load("sum") as h:
        np.testing.assert_array_equal(h.predict_batch({"x": x, "axes": axes}), x.sum(axis=0))
        np.testing.assert_array_equal(h.predict_batch({"x": x[:2], "axes": axes}), x[:2].sum(0))
    with pytest.raises(embedml.ConfigurationError, match="not row-wise"):
        store.load("sum", batching=True)


def test_image_model_with_batch_of_one(store):
    store.save("image", image_model())
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 8, 8)).astype(np.float32)
    with store.load("image") as h:
        one = h.predict(image)  # one example: the declared batch axis of 1 is added and removed
        np.testing.assert_allclose(one, image.mean(axis=(1, 2)), rtol=1e-5)
        np.testing.assert_allclose(h.predict_batch(image[None]), one[None], rtol=1e-5)
        with pytest.raises(embedml.SchemaError, match="dimension 0 must be 1"):
            h.predict_batch(np.stack([image, image]))
    with pytest.raises(embedml.ConfigurationError, match="fixed first dimension 1"):
        store.load("image", batching=True)


def test_zipmap_classifier_is_row_wise_and_batches(store):
    """skl2onnx writes [None] inputs and a ZipMap sequence output: one element per row."""
    from skl2onnx import to_onnx

    X, _ = dataset()
    raw = sk_logreg()
    store.save("zm", to_onnx(raw, X[:1].astype(np.float32)))
    results: dict[int, object] = {}
    with store.load("zm", batching=embedml.Batching(max_wait_ms=20)) as h:
        assert h.row_wise
        threads = [
            threading.Thread(target=lambda i=i: results.__setitem__(i, h.predict(X[i])))
            for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    for i in range(8):
        assert results[i]["output_label"] == raw.predict(X[i : i + 1])[0]
        proba = results[i]["output_probability"]
        np.testing.assert_allclose(
            [proba[0], proba[1]], raw.predict_proba(X[i : i + 1])[0], atol=1e-5
        )


def test_single_input_by_name(store):
    store.save("linear", onnx_linear())
    x = np.ones((2, 3), dtype=np.float32)
    with store.load("linear") as h:
        assert h.row_wise
        np.testing.assert_array_equal(h.predict_batch({"x": x}), h.predict_batch(x))
        np.testing.assert_array_equal(h.predict({"x": x[0]}), h.predict(x[0]))


@pytest.mark.parametrize(
    "first_in,first_out,why",
    [
        ("batch", "batch", None),
        (None, None, None),
        ("batch", "n", "different names"),
        ("batch", None, None),  # ONNX Runtime's shape inference names the output's
        (None, "batch", "unnamed first dimension"),
        ("unk__0", "unk__1", None),  # shape inference's names for unknown dimensions
        (None, "unk__7", None),
    ],
)
def test_first_dimensions_named_alike(store, first_in, first_out, why):
    store.save("m", renamed(first_in, first_out))
    with store.load("m") as h:
        assert h.row_wise is (why is None)
        assert h.input_schema.specs[0].shape == (first_in or -1, 4)
    if why is not None:
        with pytest.raises(embedml.ConfigurationError, match=why):
            store.load("m", batching=True)


def test_batch_symbol_on_another_axis_is_not_row_wise(store):
    square = _model(
        [helper.make_node("Identity", ["x"], ["y"])], [_vi("x", ["n", "n"])], [_vi("y", ["n", "n"])]
    )
    store.save("square", square)
    with pytest.raises(
        embedml.ConfigurationError, match="uses its first dimension 'n' on another axis"
    ):
        store.load("square", batching=True)


def test_undeclared_shape_and_zero_size_dimensions(store):
    model = _model(
        [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["e"], ["f"])],
        [_vi("x", None), _vi("e", [None, 0])],
        [_vi("y", None), _vi("f", [None, 0])],
        check=False,
    )
    store.save("loose", model)
    with store.load("loose") as h:
        assert [s.shape for s in h.input_schema.specs] == [None, (-1, 0)]
        out = h.predict_batch(
            {"x": np.ones((2, 2, 2), np.float32), "e": np.ones((5, 0), np.float32)}
        )
        assert out["y"].shape == (2, 2, 2) and out["f"].shape == (5, 0)


def test_not_row_wise_models_refuse_streams_and_scoring(store, tmp_path):
    store.save("sum", batch_sum())
    with store.load("sum") as h:
        with pytest.raises(embedml.ConfigurationError, match="stream"):
            h.predict_stream(iter([]))
        (tmp_path / "in.csv").write_text("x\n1\n")
        with pytest.raises(embedml.ConfigurationError, match="score"):
            embedml.score(h, tmp_path / "in.csv", tmp_path / "out.csv")


def test_row_wise_false_at_save(store):
    """A pickled model that mixes rows: joining callers' rows would change their answers."""
    X = np.arange(6, dtype=np.float64).reshape(3, 2)
    mv = store.save("centered", BatchCentered(), row_wise=False)
    assert mv.manifest.row_wise is False
    assert json.loads((mv.path / "manifest.json").read_text())["row_wise"] is False
    with store.load("centered") as h:
        assert not h.row_wise
        np.testing.assert_allclose(h.predict_batch(X), BatchCentered().predict(X))
    with pytest.raises(embedml.ConfigurationError, match="saved with row_wise=False"):
        store.load("centered", batching=True)
    store.save("plain", BatchCentered())
    with store.load("plain") as h:
        assert h.row_wise and store.resolve("plain").manifest.row_wise is None


def test_row_wise_true_cannot_override_a_graph(store):
    with pytest.raises(embedml.ConfigurationError, match="shapes the graph declares"):
        store.save("static", static_double(), row_wise=True)
    with pytest.raises(embedml.ConfigurationError, match="True, False or None"):
        store.save("pickled", BatchCentered(), row_wise="yes")
    with pytest.raises(embedml.ConfigurationError, match="no first dimension"):
        store.save(
            "pickled", BatchCentered(), row_wise=True,
            input_schema=embedml.TensorSpec("x", "float64", ()),
        )  # fmt: skip


def test_cli_shows_and_refuses_what_is_not_row_wise(store, capsys):
    from embedml.cli import main

    specs = [
        embedml.TensorSpec("x", "float64", ("batch", 2)),
        embedml.TensorSpec("w", "float64", None),
    ]
    store.save("loose", BatchCentered(), input_schema=specs)
    assert main(["--store", str(store.root), "show", "loose"]) == 0
    out = capsys.readouterr().out
    assert "x: float64 ('batch', 2)" in out and "w: float64 (shape not declared)" in out
    assert main(["--store", str(store.root), "bench", "loose", "--seconds", "0.01"]) != 0
    assert "not row-wise" in capsys.readouterr().err


def test_warmup_and_as_frame_on_a_model_that_is_not_row_wise(store):
    store.save("theta", scaled_by_theta())
    x = np.ones((2, 3), dtype=np.float32)
    with store.load("theta") as h:
        assert h.warmup() >= 0  # synthetic whole tensors: x of one row, a scalar theta
        with pytest.raises(embedml.ConfigurationError, match="as_frame"):
            h.predict_batch({"x": x, "theta": 2.0}, as_frame=True)
