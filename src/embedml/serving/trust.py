"""What is checked about a version before its artifact is opened.

:func:`check_before_load` runs first when a version is loaded
(:func:`~embedml.serving.pipeline.load_model`): the manifest signature
(see :mod:`embedml.store.signing`) and the framework versions recorded in the manifest against
the installed ones. The artifact's hash is checked afterwards, by
:meth:`ModelStore.read_artifact`, on the very bytes that get deserialised.
"""

from __future__ import annotations

import functools
import importlib
import warnings

from packaging.version import InvalidVersion, Version

from ..errors import (
    FrameworkVersionError,
    FrameworkVersionWarning,
    SignatureError,
)
from ..store.manifest import (
    IMPORT_PATH_FIELDS,
    MANIFEST_FILE,
    Manifest,
    import_paths_error,
    refused_import_paths,
)
from ..store.model_store import ModelVersion
from ..store.signing import resolve_key, verify_signature
from .options import LoadOptions

__all__ = [
    "IMPORT_PATH_FIELDS",
    "WATCHED_FRAMEWORKS",
    "check_before_load",
    "framework_skew",
    "import_paths_error",
    "refused_import_paths",
]

#: Distributions whose version must match the manifest's for a model to behave the same.
WATCHED_FRAMEWORKS = ("scikit-learn", "torch", "onnxruntime")

# The module of each watched distribution, whose ``__version__`` is the installed version.
# A version lists only the frameworks its format loads with, so the load imports the module
# anyway; importlib.metadata would add ~20 ms to a fresh process's first load.
_MODULES = {"scikit-learn": "sklearn", "torch": "torch", "onnxruntime": "onnxruntime"}


def _same_release(saved: str, installed: str) -> bool:
    try:  # "2.13.0+cpu" and "2.13.0" are the same release
        return Version(saved).release == Version(installed).release and (
            Version(saved).pre == Version(installed).pre
        )
    except InvalidVersion:
        return saved == installed


@functools.cache
def _installed(dist: str) -> str | None:
    """Installed version of ``dist``, ``None`` when it cannot be imported (once per process)."""
    try:
        module = importlib.import_module(_MODULES[dist])
    except Exception:  # not installed, or broken: the load says how
        return None
    version = getattr(module, "__version__", None)
    return version if isinstance(version, str) else None


def framework_skew(manifest: Manifest) -> dict[str, tuple[str, str | None]]:
    """``{dist: (saved, installed or None)}`` for watched frameworks whose version differs."""
    skew: dict[str, tuple[str, str | None]] = {}
    for dist, saved in manifest.frameworks.items():
        if dist not in WATCHED_FRAMEWORKS:
            continue
        installed = _installed(dist)
        if installed is None or not _same_release(saved, installed):
            skew[dist] = (saved, installed)
    return skew


def check_before_load(mv: ModelVersion, options: LoadOptions) -> None:
    """Verify the manifest signature, import paths and framework versions of ``mv`` per
    ``options``.

    Raises :class:`SignatureError` (unsigned with ``require_signature=True``, or a signature
    that does not match), :class:`UntrustedArtifactError` (with ``restricted=True``, a
    ``preprocess`` / ``postprocess`` import path of the manifest that is not in
    ``trusted_callables``; the caller's own steps override the manifest's and are not
    checked), :class:`FrameworkVersionError` (skew with ``strict_versions=True``);
    otherwise skew is a :class:`FrameworkVersionWarning`.
    """
    key = resolve_key(options.signing_key)
    if key is not None or options.require_signature:
        path = mv.path / MANIFEST_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise SignatureError(f"{mv}: {path} disappeared before loading") from None
        signed = verify_signature(
            mv.path, data, key, required=options.require_signature, label=str(mv)
        )
        # the manifest resolve() parsed must be the one that was signed
        if signed and Manifest.from_json(data, where=str(path)) != mv.manifest:
            raise SignatureError(f"{mv}: the manifest changed while loading; refusing it")
    if options.restricted:
        overridden = tuple(f for f in IMPORT_PATH_FIELDS if getattr(options, f) is not None)
        refused = refused_import_paths(mv.manifest, options.trusted_callables, overridden)
        if refused:
            raise import_paths_error(str(mv), refused)
    skew = framework_skew(mv.manifest)
    if not skew:
        return
    text = "; ".join(
        f"{dist} {saved} when saved, {installed or 'not installed'} now"
        for dist, (saved, installed) in sorted(skew.items())
    )
    if options.strict_versions:
        raise FrameworkVersionError(
            f"{mv} was saved with other framework versions: {text} (strict_versions=True)"
        )
    warnings.warn(
        f"{mv} was saved with other framework versions: {text}; results may differ "
        "(load with strict_versions=True to refuse)",
        FrameworkVersionWarning,
        stacklevel=4,
    )
