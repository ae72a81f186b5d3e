"""Import a model from an MLflow registry or run into an embedml store.

:func:`import_model` resolves ``models:/churn@champion``, ``models:/churn/3``,
``models:/churn/latest``, ``models:/<model_id>`` (an MLflow 3 logged model) or
``runs:/<run_id>/model`` (pinning an alias to the version it points to *now*), downloads
that one MLflow model, loads it through MLflow's own flavour loader, and saves it as a new
embedml version:

=========  =====================================================  ==============
flavour    what MLflow's loader returns                           embedml format
=========  =====================================================  ==============
sklearn    the estimator or pipeline                              joblib
onnx       the ``onnx.ModelProto``                                onnx
pytorch    a ``torch.export`` archive (MLflow's default, ``pt2``) torch_export
pytorch    a scripted module (``torch.jit.script`` logged)        torchscript
pytorch    a pickled ``nn.Module`` that ``torch.jit.script``       torchscript
           compiles
=========  =====================================================  ==============

The MLflow signature becomes the input schema: a column-based signature a record schema
(its columns, in its order, with their types), a tensor-based one ``TensorSpec`` s. embedml's
save then checks it against what the model itself declares (scikit-learn's feature names,
the ONNX graph's or the module's inputs) and a disagreement is refused: the model's own
interface is the contract. Provenance (source URI, registered name, version, alias, run
id, model id, flavour, MLflow version, the MLflow signature) goes in the version's
metadata under ``"mlflow"``.

Importing loads the artifact with MLflow's loader, which may unpickle it: it trusts the
registry you point to (see ``docs/security.md``). Install with ``pip install
'embedml[mlflow]'`` (mlflow-skinny; the flavour's own framework is needed as well).
"""

from __future__ import annotations

import importlib
import os
import re
import tempfile
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import (
    ConfigurationError,
    EmbedMLError,
    InvalidNameError,
    MissingExtraError,
    ModelNotFoundError,
    NotFoundError,
    StoreError,
    UnsupportedFormatError,
    UntrustedArtifactError,
    VersionNotFoundError,
    import_extra,
)
from ..formats.torch import _script_arguments
from ..schema import FieldSpec, RecordSchema, TensorSpec
from ..store import ModelVersion, Store

__all__ = ["import_model", "SUPPORTED_FLAVORS"]

SUPPORTED_FLAVORS = ("onnx", "sklearn", "pytorch")
"""The MLflow flavours :func:`import_model` takes, in the order it picks them when a model
has several."""
# each flavour's framework: (the embedml extra that installs it, the package it imports)
_FRAMEWORKS = {
    "onnx": ("onnx", "onnx"),
    "sklearn": ("sklearn", "sklearn"),
    "pytorch": ("torch", "torch"),
}

# MLflow column types -> record field kinds. Binary, datetime, arrays, objects and maps have
# no record-field kind: such a signature is refused, naming the column.
_COLUMN_KINDS = {
    "boolean": "boolean",
    "integer": "integer",
    "long": "integer",
    "float": "number",
    "double": "number",
    "string": "string",
}
_REGISTERED = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/@]+)|@(?P<alias>[^/@]+))$")
_LOGGED = re.compile(r"^models:/(?P<model_id>[^/@]+)$")
_RUN = re.compile(r"^runs:/(?P<run_id>[^/]+)/(?P<path>.+)$")
_URI_FORMS = (
    "models:/<name>/<version>, models:/<name>@<alias>, models:/<name>/latest, "
    "models:/<model_id> or runs:/<run_id>/<artifact path>"
)


@dataclass
class _Source:
    """Where the model comes from: what was asked for and what it resolved to."""

    uri: str  # as the caller gave it
    download_uri: str  # pinned: the artifact location of the version an alias points to now
    name: str | None = None  # registered model name
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _import_mlflow() -> Any:
    return import_extra(
        "mlflow", "importing from MLflow", "mlflow", "mlflow.artifacts", "mlflow.models"
    )[0]


def _flavour_loader(flavour: str) -> Any:
    """MLflow's loader module of ``flavour``; a missing framework names its embedml extra."""
    extra, package = _FRAMEWORKS[flavour]
    try:
        importlib.import_module(package)
        return importlib.import_module(f"mlflow.{flavour}")
    except ImportError as exc:
        raise MissingExtraError(
            f"the MLflow {flavour} flavour needs {package}, which cannot be imported ({exc}): "
            f"pip install 'embedml[{extra}]'",
            extra=extra,
            name=package,
        ) from exc


def _safe_uri(uri: str | None) -> str | None:
    """A tracking or registry URI without credentials or query (safe to keep in metadata)."""
    if not uri:
        return uri
    parts = urllib.parse.urlsplit(uri)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _registry_error(exc: Exception, source: str, what: str) -> EmbedMLError:
    """An MLflow client failure as an embedml error (not found vs. anything else)."""
    code = getattr(exc, "error_code", None)
    message = f"{source}: {what}: {getattr(exc, 'message', None) or exc}"
    if code == "RESOURCE_DOES_NOT_EXIST":
        return NotFoundError(message)
    return StoreError(f"{message} (MLflow error {code or type(exc).__name__})")


def _run_model_location(client: Any, run: Any, path: str) -> str:
    """Where ``runs:/<run>/<path>`` keeps its files, resolved with this client: the
    artifacts of the model logged under that name by the run (MLflow 3), else the run's own
    artifact folder (MLflow 2). MLflow's downloader would resolve the first with the global
    tracking URI, not this client's."""
    name, _, rest = path.partition("/")
    search = getattr(client, "search_logged_models", None)
    if search is not None:
        token = None
        while True:
            page = search(
                experiment_ids=[run.info.experiment_id], filter_string=f"name = '{name}'",
                page_token=token,
            )  # fmt: skip
            for logged in page:
                if logged.source_run_id == run.info.run_id:
                    location = logged.artifact_location.rstrip("/")
                    return f"{location}/{rest}" if rest else location
            token = page.token
            if not token:
                break
    return f"{run.info.artifact_uri.rstrip('/')}/{path}"


def _resolve(model_uri: str, client: Any) -> _Source:
    """Pin ``model_uri`` to one model: the version an alias or ``latest`` points to now."""
    if m := _RUN.match(model_uri):
        run_id, path = m["run_id"], m["path"]
        try:
            run = client.get_run(run_id)
        except Exception as exc:  # noqa: BLE001 - MLflow's client raises MlflowException or network errors
            raise _registry_error(
                exc, model_uri, f"no run {run_id!r} in the tracking store"
            ) from exc
        location = _run_model_location(client, run, path)
        return _Source(model_uri, location, run_id=run_id, extra={"artifact_path": path})
    if m := _LOGGED.match(model_uri):
        model_id = m["model_id"]
        try:
            logged = client.get_logged_model(model_id)
        except Exception as exc:  # noqa: BLE001
            raise _registry_error(exc, model_uri, f"no logged model {model_id!r}") from exc
        return _Source(model_uri, logged.artifact_location, run_id=logged.source_run_id)
    m = _REGISTERED.match(model_uri)
    if m is None:
        raise InvalidNameError(
            f"{model_uri!r} is not an MLflow model URI embedml imports; use {_URI_FORMS}"
        )
    name = m["name"]
    try:
        registered = client.get_registered_model(name)
    except Exception as exc:  # noqa: BLE001
        err = _registry_error(exc, model_uri, f"no registered model {name!r}")
        if isinstance(err, NotFoundError):
            raise ModelNotFoundError(str(err)) from exc
        raise err from exc
    aliases = dict(getattr(registered, "aliases", None) or {})
    spec = m["alias"] or m["version"]
    if m["alias"] is not None:
        if spec not in aliases:
            raise VersionNotFoundError(
                f"{model_uri}: registered model {name!r} has no alias {spec!r}"
                f" (its aliases: {aliases or 'none'})"
            )
        version = str(aliases[spec])
    elif spec.lower() == "latest":
        found = client.search_model_versions(f"name='{name}'")
        if not found:
            raise VersionNotFoundError(f"{model_uri}: registered model {name!r} has no versions")
        version = str(max(int(v.version) for v in found))
    elif spec.isdigit():
        version = spec
    else:
        raise InvalidNameError(
            f"{model_uri!r}: {spec!r} is neither a version number, 'latest' nor '@alias'"
            " (MLflow stages are deprecated: point an alias at the version); use " + _URI_FORMS
        )
    try:
        mv = client.get_model_version(name, version)
    except Exception as exc:  # noqa: BLE001
        err = _registry_error(exc, model_uri, f"no version {version} of {name!r}")
        if isinstance(err, NotFoundError):
            raise VersionNotFoundError(str(err)) from exc
        raise err from exc
    try:
        # the version's own artifact location: a models:/ URI handed to MLflow's downloader
        # is resolved with the global tracking URI, not this client's
        location = client.get_model_version_download_uri(name, version)
    except Exception as exc:  # noqa: BLE001
        raise _registry_error(
            exc, model_uri, f"no artifacts for version {version} of {name!r}"
        ) from exc
    return _Source(
        model_uri,
        location,
        name=name,
        version=version,
        alias=m["alias"],
        run_id=mv.run_id,
        extra={
            "aliases": sorted(a for a, v in aliases.items() if str(v) == version),
            "model_version_source": mv.source,
        },
    )


def _column_schema(inputs: Any, where: str) -> RecordSchema:
    """A column-based MLflow signature as a record schema: its columns in its order."""
    fields = []
    for col in inputs.inputs:
        type_name = getattr(col.type, "name", None)
        if col.name is None:
            raise ConfigurationError(
                f"{where}: the MLflow signature has an unnamed column; embedml matches inputs by"
                " name: log the model with a signature inferred from a DataFrame"
            )
        kind = _COLUMN_KINDS.get(type_name) if isinstance(type_name, str) else None
        if kind is None:
            raise ConfigurationError(
                f"{where}: column {col.name!r} of the MLflow signature has type {col.type!r},"
                f" which a record schema cannot hold (it takes {sorted(_COLUMN_KINDS)})"
            )
        # MLflow lets an optional column be left out and the model sees a missing value;
        # embedml takes null for it (a record must still name the column).
        fields.append(FieldSpec(col.name, kind, nullable=not getattr(col, "required", True)))  # type: ignore[arg-type]
    return RecordSchema(fields, title="MLflowSignature")


def _tensor_schema(
    inputs: Any, model_inputs: tuple[str, ...] | None, where: str
) -> list[TensorSpec]:
    """A tensor-based MLflow signature as TensorSpecs. An unnamed tensor (MLflow's usual
    single input) takes the name of the model's one input; several unnamed ones are
    refused, as matching them would be by position."""
    specs = list(inputs.inputs)
    unnamed = [s for s in specs if not s.name]
    if unnamed and len(specs) > 1:
        raise ConfigurationError(
            f"{where}: the MLflow signature has {len(specs)} tensors, some unnamed; embedml"
            " matches tensors by name: log the model with named tensor specs"
        )
    if unnamed and model_inputs is not None and len(model_inputs) != 1:
        raise ConfigurationError(
            f"{where}: the MLflow signature declares one unnamed tensor, but the model takes"
            f" {len(model_inputs)} inputs {list(model_inputs)}: log named tensor specs"
        )
    out = []
    for s in specs:
        name = s.name or (model_inputs[0] if model_inputs else "input")
        try:
            out.append(TensorSpec(name, str(s.type), tuple(s.shape)))
        except ValueError as exc:
            raise ConfigurationError(f"{where}: MLflow tensor {name!r}: {exc}") from None
    return out


def _input_schema(signature: Any, fmt: str, model: Any, where: str) -> Any:
    """The MLflow signature's inputs as the embedml input schema (``None`` without one)."""
    if signature is None or signature.inputs is None:
        return None
    if signature.inputs.is_tensor_spec():
        return _tensor_schema(signature.inputs, _model_inputs(fmt, model), where)
    return _column_schema(signature.inputs, where)


def _signature_json(signature: Any) -> dict[str, Any] | None:
    """The MLflow signature as plain JSON (MLflow's own ``to_dict`` nests JSON strings)."""
    if signature is None:
        return None
    return {
        part: getattr(signature, part).to_dict() if getattr(signature, part) is not None else None
        for part in ("inputs", "outputs")
    }


def _onnx_inputs(model: Any) -> tuple[str, ...]:
    initializers = {i.name for i in model.graph.initializer}
    return tuple(i.name for i in model.graph.input if i.name not in initializers)


def _load_pytorch(loader: Any, path: Path, data: str, where: str) -> tuple[Any, str]:
    """The logged PyTorch model as an object embedml can save without pickling code:
    a ``torch.export`` program or a TorchScript module. ``data`` is the flavour's
    ``model_data`` folder."""
    import torch

    module = loader.load_model(str(path))  # MLflow's loader: its checks, its pickle policy
    pt2 = path / data / "model.pt2"
    if pt2.is_file():
        # MLflow loaded (and, unless pickles are allowed, checked) this archive above; the
        # program itself, not MLflow's unlifted module, is what keeps its input specs.
        return torch.export.load(str(pt2)), "torch_export"
    if isinstance(module, torch.jit.ScriptModule):
        return module, "torchscript"
    try:
        return torch.jit.script(module), "torchscript"
    except Exception as exc:  # noqa: BLE001 - TorchScript's compiler raises many types
        raise UnsupportedFormatError(
            f"{where}: the PyTorch model was logged as a pickled {type(module).__name__}, which"
            " embedml does not store (pickled code), and torch.jit.script cannot compile it"
            f" ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Log it"
            " with mlflow.pytorch.log_model(model, serialization_format='pt2',"
            " input_example=...) (torch.export, MLflow's default) or log"
            " torch.jit.script(model) / torch.jit.trace(model, example)"
        ) from exc


def _load(flavour: str, conf: Mapping[str, Any], path: Path, where: str) -> tuple[Any, str]:
    """The model, loaded by MLflow's ``flavour`` loader, and the embedml format to save it in."""
    loader = _flavour_loader(flavour)
    try:
        if flavour == "pytorch":
            return _load_pytorch(loader, path, str(conf.get("model_data") or "data"), where)
        model = loader.load_model(str(path))
    except EmbedMLError:
        raise
    except Exception as exc:  # noqa: BLE001 - translate MLflow/framework failures at the boundary
        text = str(exc)
        # MLflow's policy refusal (MLFLOW_ALLOW_MODEL_CODE_EXECUTION=false) names its switch
        if "disallowed" in text and "MLFLOW_ALLOW_MODEL_CODE_EXECUTION" in text:
            raise UntrustedArtifactError(f"{where}: MLflow refused to load it: {text}") from exc
        raise UnsupportedFormatError(
            f"{where}: MLflow's {flavour} loader could not load it: {type(exc).__name__}: {text}"
        ) from exc
    return model, "onnx" if flavour == "onnx" else "joblib"


def _model_inputs(fmt: str, model: Any) -> tuple[str, ...] | None:
    """The input names the model declares, where they decide how a tensor is named."""
    if fmt == "onnx":
        return _onnx_inputs(model)
    if fmt == "torchscript":
        return _script_arguments(model)
    if fmt == "torch_export":
        from ..formats import get_format

        specs, _ = get_format("torch_export").tensor_specs(model)
        return tuple(s.name for s in specs) if specs else None
    return None


def import_model(
    model_uri: str,
    store: Store | str | os.PathLike[str],
    *,
    name: str | None = None,
    version: str | int | None = None,
    signing_key: str | bytes | None = None,
    metadata: Mapping[str, Any] | None = None,
    use_signature: bool = True,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
) -> ModelVersion:
    """Bring one MLflow model into ``store`` as a new embedml version and return it.

    ``model_uri`` is ``models:/<name>/<version>``, ``models:/<name>@<alias>``,
    ``models:/<name>/latest``, ``models:/<model_id>`` (an MLflow 3 logged model) or
    ``runs:/<run_id>/<artifact path>``; an alias or ``latest`` is resolved once and the
    version it points to is what is imported (and recorded). ``name`` is the embedml model
    name (default: the registered model's name; required for the other forms); ``version`` the embedml version (default: the next one);
    ``signing_key`` signs the new version as :meth:`Store.save` does. ``metadata`` is
    added to the version's metadata beside ``"mlflow"``: the provenance (``source_uri``,
    ``registered_model``, ``version``, ``alias``, ``aliases``, ``run_id``, ``model_id``,
    ``flavor``, ``mlflow_version``, ``signature``, ``registry_uri`` without credentials).

    The MLflow signature becomes the input schema (columns -> record schema in the
    signature's order; tensors -> :class:`TensorSpec`); ``use_signature=False`` ignores it
    and keeps only what the model declares. A logged input example is passed to save as
    ``input_example``. ``tracking_uri`` / ``registry_uri`` default to MLflow's own
    configuration (``MLFLOW_TRACKING_URI``, ``mlflow.set_tracking_uri``); MLflow's global
    state is not changed.

    Loading runs MLflow's flavour loader, which may unpickle the artifact: call this only on
    a registry you trust (``docs/security.md``).

    Raises :class:`MissingExtraError` (``mlflow`` extra, or the flavour's framework),
    :class:`InvalidNameError` (a URI of another form), :class:`ModelNotFoundError` /
    :class:`VersionNotFoundError` (no such registered model, version or alias),
    :class:`NotFoundError` (no such run or artifact), :class:`StoreError` (the tracking or
    registry server failed), :class:`UnsupportedFormatError` (no supported flavour, a
    PyTorch model that is neither exported nor scriptable, a loader failure),
    :class:`UntrustedArtifactError` (MLflow's pickle policy refused it),
    :class:`ConfigurationError` (the signature disagrees with the model, or cannot be
    expressed), and whatever :meth:`Store.save` raises.
    """
    mlflow = _import_mlflow()
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
    try:
        source = _resolve(model_uri, client)
    except EmbedMLError:
        raise
    except Exception as exc:  # noqa: BLE001 - the registry's own failures, translated here
        raise _registry_error(exc, model_uri, "cannot resolve it in the MLflow registry") from exc
    embedml_name = name or source.name
    if embedml_name is None:
        raise ConfigurationError(
            f"{model_uri}: pass name= (the embedml model name): the URI names no registered model"
        )
    with tempfile.TemporaryDirectory(prefix="embedml-mlflow-") as tmp:
        try:
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=source.download_uri,
                    dst_path=tmp,
                    tracking_uri=tracking_uri,
                    registry_uri=registry_uri,
                )
            )
            info = mlflow.models.Model.load(str(local))
        except Exception as exc:  # noqa: BLE001 - MLflow raises MlflowException, OSError...
            raise _registry_error(exc, model_uri, "cannot download the MLflow model") from exc
        where = model_uri if source.version is None else f"{model_uri} (version {source.version})"
        flavours = [f for f in SUPPORTED_FLAVORS if f in info.flavors]
        if not flavours:
            raise UnsupportedFormatError(
                f"{where}: MLflow flavours {sorted(info.flavors)}; embedml imports"
                f" {list(SUPPORTED_FLAVORS)} (a custom python_function model runs arbitrary"
                " code: log the underlying model with one of those flavours)"
            )
        flavour = flavours[0]
        model, fmt = _load(flavour, info.flavors[flavour], local, where)
        input_schema = _input_schema(info.signature, fmt, model, where) if use_signature else None
        example = None
        if use_signature and info.saved_input_example_info:
            try:
                example = info.load_input_example(str(local))
            except Exception:  # noqa: BLE001 - an unreadable example only costs the extra checks
                example = None
        method = None
        if flavour == "sklearn":
            predict_fn = info.flavors.get("python_function", {}).get("predict_fn", "predict")
            method = None if predict_fn == "predict" else predict_fn
        provenance = {
            "source_uri": model_uri,
            "registered_model": source.name,
            "version": source.version,
            "alias": source.alias,
            "run_id": source.run_id or info.run_id,
            "model_id": getattr(info, "model_id", None),
            "flavor": flavour,
            "mlflow_version": info.mlflow_version,
            "signature": _signature_json(info.signature),
            "registry_uri": _safe_uri(registry_uri or tracking_uri or mlflow.get_registry_uri()),
            **source.extra,
        }
        if not isinstance(store, Store):  # created only now: a failed import leaves no folder
            store = Store(store)
        try:
            return store.save(
                embedml_name, model, version=version, format=fmt, input_schema=input_schema,
                metadata={**dict(metadata or {}), "mlflow": provenance},
                signing_key=signing_key, method=method, input_example=example,
            )  # fmt: skip
        except ConfigurationError as exc:
            if input_schema is None or isinstance(exc, MissingExtraError):
                raise
            raise ConfigurationError(
                f"{where}: the MLflow signature does not agree with the model, so embedml"
                f" refuses it (the model's own interface is the contract): {exc}. Log the"
                " model with a signature inferred from its training input"
                " (mlflow.models.infer_signature), or import with use_signature=False to"
                " take only what the model declares"
            ) from exc
