"""Edge: convert scikit-learn models to ONNX and quantise ONNX versions to int8.

::

    from embedml.offline.export import ExportReport, quantize, to_onnx

    mv = to_onnx(store, "churn", fitted_sklearn_model, X_holdout)   # churn@N, format onnx
    q = quantize(store, "churn", mv.version, X_holdout)             # churn@N+1, int8 weights
    print(ExportReport.of(q))                                       # sizes and agreement

Both functions save a *new* version (versions are immutable) and measure, before saving,
how closely the new model's outputs follow the reference on ``sample``: the sklearn model
for :func:`to_onnx`, the source version for :func:`quantize`. The measurement is an
:class:`ExportReport`, stored in the new version's manifest (``metadata["export"]``), so
it travels with the artifact and ``embedml show`` prints it; read it back with
:meth:`ExportReport.of`.

skl2onnx (``embedml[sklearn]``) and ``onnxruntime.quantization`` (which needs the ``onnx``
package, ``embedml[onnx]``) are imported when a function is called, not with this module.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import pickle
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, PredictionError, UnsupportedFormatError
from ..formats import FormatOptions, get_format
from ..schema import FieldSpec, RecordSchema, name_difference, schema_from_dict, schema_to_dict
from ..serving.options import LoadOptions
from ..serving.pipeline import LoadedModel, Pipeline, build_pipeline, pipeline_on
from ..store import ModelVersion, Store
from ..store.manifest import Manifest

__all__ = ["ExportReport", "quantize", "to_onnx"]

log = logging.getLogger("embedml.offline.export")

#: Key of the report in the new version's ``manifest.metadata``.
METADATA_KEY = "export"


@dataclass(frozen=True)
class ExportReport:
    """What an export or a quantisation changed, measured on the caller's sample.

    * ``kind``: ``"to_onnx"`` or ``"quantize"``.
    * ``source``: the model class (``"sklearn.Pipeline"``) or ``"name@version"``.
    * ``size_before``: bytes of the reference: the pickled sklearn model (0 if it cannot be
      pickled), or the source version's artifact. ``size_after``: bytes of the new ONNX artifact.
    * ``rows``: rows of the sample compared. ``outputs``: the ONNX outputs compared, in
      order (for a classifier ``label`` then ``probabilities``).
    * ``agreement``: fraction of rows with the same prediction. When the model has a
      discrete output (class labels) it is the fraction of rows whose labels are equal;
      otherwise (regressors, transformers) the fraction whose every value is within
      ``tolerance`` (relative and absolute, as ``numpy.isclose``).
    * ``max_abs_diff``: largest absolute difference over the float outputs (probabilities,
      regression values), or ``None`` when the model has none.
    """

    kind: str
    source: str
    size_before: int
    size_after: int
    rows: int
    outputs: tuple[str, ...]
    agreement: float
    max_abs_diff: float | None
    tolerance: float

    @property
    def size_ratio(self) -> float:
        """``size_after / size_before`` (below 1 means the new artifact is smaller)."""
        return self.size_after / self.size_before if self.size_before else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in the manifest."""
        d = asdict(self)
        d["outputs"] = list(self.outputs)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExportReport:
        """Rebuild a report from :meth:`to_dict` output."""
        return cls(**{**d, "outputs": tuple(d["outputs"])})

    @classmethod
    def of(cls, mv: ModelVersion) -> ExportReport:
        """The report stored in a version made by :func:`to_onnx` or :func:`quantize`.

        Raises :class:`ConfigurationError` when ``mv`` was not made by them.
        """
        d = mv.manifest.metadata.get(METADATA_KEY)
        if not isinstance(d, dict):
            raise ConfigurationError(
                f"{mv} has no export report: it was not made by embedml.offline.export.to_onnx or quantize"
            )
        return cls.from_dict(d)

    def __str__(self) -> str:
        diff = "n/a" if self.max_abs_diff is None else f"{self.max_abs_diff:.3g}"
        return (
            f"{self.kind} of {self.source}: {self.size_before} -> {self.size_after} bytes "
            f"({self.size_ratio:.2f}x), agreement {self.agreement:.2%} on {self.rows} rows, "
            f"max abs diff {diff}"
        )


def _require(module: str, extra: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UnsupportedFormatError(
            f"{what} needs the {module.split('.')[0]!r} package, which is not installed: "
            f"pip install 'embedml[{extra}]'"
        ) from exc


def _n_rows(sample: Any) -> int:
    try:
        n = len(sample)
    except TypeError:
        raise ConfigurationError(
            f"sample must be a batch of rows (2-D array, DataFrame or list of records), got {type(sample).__name__}"
        ) from None
    if n == 0:
        raise ConfigurationError("sample is empty: give at least one row to compare predictions on")
    return n


def _check_tolerance(tolerance: float) -> None:
    if not isinstance(tolerance, int | float) or isinstance(tolerance, bool) or not tolerance >= 0:
        raise ConfigurationError(f"tolerance must be a number >= 0, got {tolerance!r}")


def _outputs(out: Any, runtime: Any) -> list[tuple[str, Any]]:
    """Raw pipeline outputs (one array, or a dict name -> array) as ordered (name, array)."""
    if isinstance(out, dict):
        return list(out.items())
    specs = getattr(runtime, "output_specs", None) or []
    return [(specs[0].name if len(specs) == 1 else "output", out)]


def _compare(
    refs: list[Any], outs: list[tuple[str, Any]], n: int, tolerance: float, where: str
) -> tuple[tuple[str, ...], float, float | None]:
    """Agreement and max abs difference of ``outs`` against ``refs``, paired in order."""
    import numpy as np

    pairs = list(zip(refs, outs))
    discrete = np.ones(n, dtype=bool)
    close = np.ones(n, dtype=bool)
    has_discrete = False
    max_diff: float | None = None
    for ref, (name, got) in pairs:
        a = np.asarray(ref).reshape(n, -1)
        b = np.asarray(got).reshape(n, -1)
        if a.shape != b.shape:
            raise PredictionError(
                f"{where}: output {name!r} has shape {b.shape[1:]} per row, the reference {a.shape[1:]}",
                stage="output",
            )
        if a.dtype.kind == "f" or b.dtype.kind == "f":
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            diff = float(np.max(np.abs(a64 - b64))) if a.size else 0.0
            max_diff = diff if max_diff is None else max(max_diff, diff)
            close &= np.isclose(b64, a64, rtol=tolerance, atol=tolerance).all(axis=1)
        else:
            has_discrete = True
            discrete &= (a == b).all(axis=1)
    agreement = float((discrete if has_discrete else close).mean())
    return tuple(name for _, (name, _) in pairs), agreement, max_diff


def _run(pipe: Pipeline, sample: Any, n: int) -> list[tuple[str, Any]]:
    """The sample through a pipeline exactly as ``predict_batch`` would validate and run it."""
    if not pipe.row_wise:  # the agreement below is counted row by row
        raise ConfigurationError(
            f"{pipe.label} is not row-wise ({pipe.row_wise_reason}); its outputs cannot be compared row by row"
        )
    return _outputs(pipe.run(pipe.prepare_many(sample), n), pipe.runtime)


@dataclass(frozen=True)
class _Unsaved:
    """A candidate version not saved yet (a :class:`~embedml.serving.pipeline.Versioned`):
    its name, a label for messages, and the manifest it would be saved with."""

    name: str
    version: str
    manifest: Manifest


def _candidate(name: str, data: bytes, manifest_fields: dict[str, Any], label: str) -> Pipeline:
    """An in-memory pipeline on ONNX bytes not saved yet, to measure it before saving."""
    runtime = get_format("onnx").load(data, FormatOptions())
    manifest = Manifest(
        name=name, version=label, format="onnx", artifact="model.onnx",
        sha256=hashlib.sha256(data).hexdigest(), size=len(data), **manifest_fields,
    )  # fmt: skip
    options = LoadOptions()
    return pipeline_on(LoadedModel(_Unsaved(name, label, manifest), runtime, options, 0.0), options)


def _sklearn_reference(model: Any, sample: Any) -> list[Any]:
    """What the sklearn model says, in the order skl2onnx emits outputs."""
    from sklearn.base import is_classifier

    if hasattr(model, "predict"):
        refs = [model.predict(sample)]
        if is_classifier(model) and hasattr(model, "predict_proba"):
            refs.append(model.predict_proba(sample))
        return refs
    return [model.transform(sample)]


def to_onnx(
    store: Store,
    name: str,
    sklearn_model: Any,
    sample: Any,
    *,
    version: str | int | None = None,
    input_schema: Any = None,
    metadata: dict[str, Any] | None = None,
    options: dict[Any, Any] | None = None,
    target_opset: int | None = None,
    tolerance: float = 1e-4,
) -> ModelVersion:
    """Convert a fitted scikit-learn model (or pipeline) to ONNX and save it as a new version.

    ``sample`` (2-D numeric array or DataFrame, a few hundred held-out rows is plenty) fixes
    the input type (float32, as many columns as the sample) and is scored by both models;
    the resulting :class:`ExportReport` is stored in ``metadata["export"]`` of the new
    version (read it with :meth:`ExportReport.of`) and logged. The input schema is
    ``input_schema`` (a pydantic record class or TensorSpecs, as for
    :meth:`ModelStore.save`) or else the tensor spec of the ONNX graph. Classifiers are
    converted without skl2onnx's ZipMap, so they output ``label`` and a ``probabilities``
    matrix; ``options`` and ``target_opset`` are passed to ``skl2onnx.to_onnx``.

    Raises :class:`UnsupportedFormatError` when skl2onnx is missing (``embedml[sklearn]``)
    or cannot convert the model (the message names its class), :class:`ConfigurationError`
    for an unfitted model, an empty or non-numeric sample or a bad ``tolerance``,
    :class:`SchemaError` when the sample does not match ``input_schema``,
    :class:`PredictionError` when the sklearn model raises on the sample, and the errors of
    :meth:`ModelStore.save`.
    """
    import numpy as np

    _check_tolerance(tolerance)
    n = _n_rows(sample)
    skl2onnx = _require("skl2onnx", "sklearn", "embedml.offline.export.to_onnx")
    from sklearn.base import is_classifier
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    kind = type(sklearn_model)
    # "sklearn.Pipeline" rather than the private "sklearn.pipeline._pipeline.Pipeline"
    cls = f"{kind.__module__.split('.')[0]}.{kind.__qualname__}"
    try:
        check_is_fitted(sklearn_model)
    except NotFittedError:
        raise ConfigurationError(f"{cls} is not fitted: fit it before exporting") from None
    except TypeError:
        pass  # not an estimator at all: skl2onnx says so below, with the class name
    try:
        first = np.asarray(sample[:1], dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"sample must be numeric rows (2-D array or DataFrame of numbers) to fix the ONNX input type: {exc}"
        ) from None
    if options is None and is_classifier(sklearn_model):
        options = {"zipmap": False}  # plain tensors: a ZipMap's list of dicts has no schema
    try:
        proto = skl2onnx.to_onnx(sklearn_model, first, options=options, target_opset=target_opset)
    except Exception as exc:  # skl2onnx raises RuntimeError, NameError, ... per converter
        raise UnsupportedFormatError(
            f"skl2onnx cannot convert {cls} to ONNX: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        ) from exc
    data = proto.SerializeToString()

    # Without a declared schema the pipeline takes the graph's input spec, which is saved.
    input_schema = _by_feature_names(sklearn_model, input_schema, cls)
    pipe = _candidate(name, data, {"input_schema": schema_to_dict(input_schema)}, "(exported)")
    in_schema = pipe.input_schema.to_dict()
    try:
        outs = _run(pipe, sample, n)
    finally:
        pipe.close()
    try:
        refs = _sklearn_reference(sklearn_model, sample)
    except Exception as exc:
        raise PredictionError(
            f"{cls} raised on the sample: {type(exc).__name__}: {exc}", stage="model"
        ) from exc
    names, agreement, max_diff = _compare(refs, outs, n, tolerance, f"{name} exported from {cls}")
    try:
        size_before = len(pickle.dumps(sklearn_model, protocol=5))
    except Exception:  # e.g. a lambda inside a FunctionTransformer: no pickled size to compare
        size_before = 0
    report = ExportReport(
        kind="to_onnx", source=cls, size_before=size_before,
        size_after=len(data), rows=n, outputs=names, agreement=agreement,
        max_abs_diff=max_diff, tolerance=float(tolerance),
    )  # fmt: skip
    meta = {**dict(metadata or {}), METADATA_KEY: report.to_dict()}
    mv = store.save(
        name,
        data,
        version=version,
        format="onnx",
        input_schema=_schema_object(in_schema),
        metadata=meta,
    )
    log.info("%s: %s", mv, report)
    return mv


def _by_feature_names(model: Any, input_schema: Any, cls: str) -> Any:
    """The input schema of the exported graph of a model fitted on a DataFrame.

    The graph takes one matrix whose columns are the model's ``feature_names_in_``, in
    that order, and has no names of its own: so records and DataFrames reach it by name
    through a record schema in that order (the one declared, reordered, or one made from
    the names). A declared record schema naming other columns is refused.
    """
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        return input_schema
    names = [str(n) for n in names]
    declared = schema_from_dict(schema_to_dict(input_schema))
    if declared is None:
        return RecordSchema([FieldSpec(n, "number") for n in names], title=cls.rsplit(".", 1)[-1])
    if not isinstance(declared, RecordSchema):
        return input_schema
    diff = name_difference(declared.names, names)
    if diff is not None:
        raise ConfigurationError(
            f"the input schema's fields do not match the feature names {cls} was fitted on: {diff}"
        )
    return declared.in_order(names)


def _schema_object(d: dict[str, Any] | None) -> Any:
    return schema_from_dict(d)


def quantize(
    store: Store,
    name: str,
    version: str | int,
    sample: Any,
    *,
    new_version: str | int | None = None,
    tolerance: float = 1e-2,
) -> ModelVersion:
    """Quantise the weights of ONNX version ``name@version`` to int8 and save a new version.

    Uses ONNX Runtime's dynamic quantisation (``quantize_dynamic``, signed int8 weights;
    activations are quantised on the fly): it shrinks models dominated by MatMul/Gemm
    weights (MLPs, transformers) about 4x and leaves others (trees, linear ``ai.onnx.ml``
    operators) as they are. The new version keeps the source's input/output schema and
    pre/post-processing steps, and its metadata is the source's plus ``quantized_from``
    (``"name@version"``) and the :class:`ExportReport` (sizes before/after, agreement and
    max abs difference against the source version on ``sample``; read it with
    :meth:`ExportReport.of`). ``version`` may be any spec :meth:`ModelStore.resolve` takes.

    Raises :class:`UnsupportedFormatError` when the source is not an ONNX version, when
    ``onnxruntime.quantization`` or ``onnx`` is missing (``embedml[onnx]``) or when the
    quantiser fails; :class:`ConfigurationError` for an empty sample or a bad
    ``tolerance``; :class:`SchemaError` when the sample does not match the schema; the
    errors of :meth:`ModelStore.resolve` and :meth:`ModelStore.save`.
    """
    _check_tolerance(tolerance)
    n = _n_rows(sample)
    src = store.resolve(name, version)
    if src.manifest.format != "onnx":
        raise UnsupportedFormatError(
            f"quantize works on ONNX versions; {src} is {src.manifest.format!r}: "
            "convert it first (embedml.offline.export.to_onnx for scikit-learn models)"
        )
    q = _require("onnxruntime.quantization", "onnx", "embedml.offline.export.quantize")
    data = store.read_artifact(src)  # hash-checked bytes
    with tempfile.TemporaryDirectory(prefix="embedml-quantize-") as tmp:
        before, after = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        before.write_bytes(data)
        try:
            q.quantize_dynamic(before, after, weight_type=q.QuantType.QInt8)
            quantized = after.read_bytes()
        except ValueError as exc:
            if "ai.onnx domain" not in str(exc):
                raise UnsupportedFormatError(
                    f"ONNX Runtime could not quantise {src}: {exc}"
                ) from exc
            # skl2onnx writes linear models, trees and scalers with ai.onnx.ml operators only
            raise UnsupportedFormatError(
                f"{src} has no standard ONNX operators (only ai.onnx.ml ones, as skl2onnx "
                "writes linear models, trees and scalers), so there are no weights to quantise"
            ) from exc
        except Exception as exc:
            raise UnsupportedFormatError(
                f"ONNX Runtime could not quantise {src}: {type(exc).__name__}: {exc}"
            ) from exc

    m = src.manifest
    steps = {
        "input_schema": m.input_schema, "output_schema": m.output_schema,
        "preprocess": m.preprocess, "postprocess": m.postprocess,
    }  # fmt: skip
    reference = build_pipeline(store, src, LoadOptions())
    try:
        refs = [a for _, a in _run(reference, sample, n)]
    finally:
        reference.close()
    pipe = _candidate(name, quantized, steps, f"{src.version}(int8)")
    try:
        outs = _run(pipe, sample, n)
    finally:
        pipe.close()
    names, agreement, max_diff = _compare(refs, outs, n, tolerance, f"{src} quantised")
    report = ExportReport(
        kind="quantize", source=str(src), size_before=len(data), size_after=len(quantized),
        rows=n, outputs=names, agreement=agreement, max_abs_diff=max_diff,
        tolerance=float(tolerance),
    )  # fmt: skip
    meta = {**m.metadata, "quantized_from": str(src), METADATA_KEY: report.to_dict()}
    mv = store.save(
        name, quantized, version=new_version, format="onnx",
        input_schema=_schema_object(m.input_schema), output_schema=_schema_object(m.output_schema),
        preprocess=m.preprocess, postprocess=m.postprocess, metadata=meta,
    )  # fmt: skip
    log.info("%s: %s", mv, report)
    return mv
