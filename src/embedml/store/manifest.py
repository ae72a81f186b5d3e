"""The on-disk manifest of one model version (``manifest.json``), as a frozen dataclass.

It is parsed with :mod:`json` and checked field by field here (not with pydantic), because
every ``load`` reads one: importing pydantic would cost a fresh process more than building
the ONNX Runtime session itself.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any

from ..errors import IntegrityError, UntrustedArtifactError
from ..formats.restricted import callable_names, callable_trusted

__all__ = [
    "IMPORT_PATH_FIELDS",
    "MANIFEST_FILE",
    "STANDARD_METHODS",
    "Manifest",
    "environment",
    "import_paths_error",
    "method_problem",
    "refused_import_paths",
]

MANIFEST_FILE = "manifest.json"

#: Manifest fields that name code (``"package.module:function"``) a load imports and calls.
IMPORT_PATH_FIELDS = ("preprocess", "postprocess")

#: The methods a version saved with ``method=`` may name and still load with
#: ``restricted=True``: the artifact's owner chose the name, so anything else is refused.
STANDARD_METHODS = (
    "predict", "predict_proba", "predict_log_proba", "decision_function", "transform",
)  # fmt: skip

_SCHEMA = (dict, list, type(None))
# The JSON types each known key may hold; a key outside this table is kept as an extra.
_TYPES: dict[str, tuple[type, ...]] = {
    "manifest_version": (int,),
    "name": (str,),
    "version": (str,),
    "format": (str,),
    "artifact": (str,),
    "sha256": (str,),
    "size": (int,),
    "created_at": (str,),
    "input_schema": _SCHEMA,
    "output_schema": _SCHEMA,
    "preprocess": (str, type(None)),
    "postprocess": (str, type(None)),
    "metadata": (dict,),
    "python": (str,),
    "embedml": (str,),
    "frameworks": (dict,),
    "extra_files": (dict,),
    "method": (str, type(None)),
    "row_wise": (bool, type(None)),
    "signature": (dict, type(None)),
}
_STR_MAPS = ("frameworks", "extra_files")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _check(key: str, value: Any, where: str) -> None:
    allowed = _TYPES[key]
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    if ok and key in ("input_schema", "output_schema") and isinstance(value, list):
        ok = all(isinstance(v, dict) for v in value)
    if ok and key in _STR_MAPS:
        ok = all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    if not ok:
        expected = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        if key in _STR_MAPS:
            expected = "an object of strings"
        raise IntegrityError(
            f"{where} is not a valid manifest: {key}: expected {expected}, got {type(value).__name__} {value!r:.60}"
        )


@dataclass(frozen=True, init=False, eq=False)
class Manifest:
    """What the store knows about one immutable model version.

    Built with keywords (``Manifest(name=..., version=..., ...)``); keys it does not know
    are kept as extra attributes and written back by :meth:`to_json`. ``frameworks`` maps
    distribution names (``scikit-learn``, ``onnxruntime``, ``torch`` ...) to the versions
    installed when the version was saved; ``python`` and ``embedml`` likewise.
    ``extra_files`` maps other files in the version folder (for example a reference profile)
    to their SHA-256, so that they are verified like the artifact. ``method`` is the method
    called on sklearn-style objects (``store.save(..., method="predict_proba")``; ``None``:
    ``predict``). ``row_wise`` is the save-time ``row_wise=`` (``None``: decided by the
    model, see ``docs/concepts.md``). ``signature`` is the interface the model declared
    when it was saved (``None`` in manifests written before it was recorded; see
    :mod:`embedml.formats.signature`). A missing or mistyped field raises
    :class:`~embedml.IntegrityError` naming it.
    """

    manifest_version: int
    name: str
    version: str
    format: str
    artifact: str
    sha256: str
    size: int
    created_at: str
    input_schema: dict[str, Any] | list[dict[str, Any]] | None
    output_schema: dict[str, Any] | list[dict[str, Any]] | None
    preprocess: str | None
    postprocess: str | None
    metadata: dict[str, Any]
    python: str
    embedml: str
    frameworks: dict[str, str]
    extra_files: dict[str, str]
    method: str | None
    row_wise: bool | None
    signature: dict[str, Any] | None

    def __init__(self, **data: Any) -> None:
        self._fill(data, "manifest")

    def _fill(self, data: dict[str, Any], where: str) -> None:
        defaults: dict[str, Any] = {
            "manifest_version": 1, "created_at": _now, "input_schema": None,
            "output_schema": None, "preprocess": None, "postprocess": None, "metadata": dict,
            "python": platform.python_version, "embedml": "", "frameworks": dict,
            "extra_files": dict, "method": None, "row_wise": None, "signature": None,
        }  # fmt: skip
        for key in _TYPES:
            if key in data:
                value = data.pop(key)
            elif key in defaults:
                default = defaults[key]
                value = default() if callable(default) else default
            else:
                raise IntegrityError(f"{where} is not a valid manifest: {key}: field required")
            _check(key, value, where)
            object.__setattr__(self, key, value)
        #: Keys this version of embedml does not know (kept, and written back by to_json).
        object.__setattr__(self, "model_extra", data)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fields: serve the extra keys as attributes.
        extra = self.__dict__.get("model_extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Manifest):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]  # holds dicts, like the pydantic model did

    def model_dump(self, *, mode: str = "python") -> dict[str, Any]:
        """All keys (known and extra) as a plain dict; ``mode`` is accepted for compatibility."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(self.model_extra)
        return d

    def model_copy(self, *, update: dict[str, Any] | None = None) -> Manifest:
        """A copy with some keys replaced (validated again)."""
        return type(self)(**{**self.model_dump(), **(update or {})})

    def to_json(self) -> str:
        """Serialise with sorted keys (stable bytes, so a signature over them is stable)."""
        return json.dumps(self.model_dump(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, *, where: str = "manifest") -> Manifest:
        """Parse a manifest; raise :class:`IntegrityError` if it is not valid JSON or incomplete."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # RecursionError: deeply nested JSON
            raise IntegrityError(f"{where} is not a valid manifest: (root): invalid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise IntegrityError(
                f"{where} is not a valid manifest: (root): expected an object, got {type(data).__name__}"
            )
        manifest = cls.__new__(cls)
        manifest._fill(data, where)
        return manifest


def method_problem(manifest: Manifest) -> str | None:
    """Why a restricted load refuses the version's saved ``method``, or ``None`` when it is
    unset or one of :data:`STANDARD_METHODS`."""
    method = manifest.method
    if method is None or method in STANDARD_METHODS:
        return None
    return (
        f"{manifest.name}@{manifest.version} was saved with method={method!r}, which is not one "
        f"of {', '.join(STANDARD_METHODS)}: a restricted load does not call a method the "
        "artifact's owner named (pass method= to load() to choose one yourself)"
    )


def environment(distributions: list[str]) -> dict[str, str]:
    """Installed versions of the given distributions (missing ones are left out)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in distributions:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return found


def refused_import_paths(
    manifest: Manifest, trusted_callables: Any = (), skip: tuple[str, ...] = ()
) -> dict[str, str]:
    """``{field: import path}`` of the manifest's import paths that a ``restricted=True``
    load refuses: those not on ``trusted_callables`` (see
    :func:`~embedml.formats.restricted.callable_names`). Fields in ``skip`` are not
    read (the caller overrides them)."""
    trusted = callable_names(trusted_callables)
    refused = {}
    for field in IMPORT_PATH_FIELDS:
        path = getattr(manifest, field)
        if field in skip or path is None:
            continue
        module, _, attr = path.partition(":")
        if not callable_trusted(module, attr, trusted):
            refused[field] = path
    return refused


def import_paths_error(label: str, refused: dict[str, str]) -> UntrustedArtifactError:
    """The error (and ``verify()`` report) for :func:`refused_import_paths`' findings."""
    fields = ", ".join(f"{field}={path!r}" for field, path in refused.items())
    paths = ", ".join(repr(p) for p in refused.values())
    return UntrustedArtifactError(
        f"{label}: the manifest names code to import and call ({fields}); a restricted load "
        f"only runs callables on its allow-list. If you trust it, pass trusted_callables=[{paths}]",
        type_name=next(iter(refused.values())),
    )
