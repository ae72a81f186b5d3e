"""``ModelStore``: versioned model artifacts in a directory. It never loads or runs a model.

Layout::

    root/
      <name>/
        <version>/            immutable: the artifact and manifest.json
          model.onnx
          manifest.json
        aliases.json          {"production": "2"}
        history.jsonl         append-only log of alias moves and promotion gates
        .lock                 serialises alias updates between processes

A version becomes visible in one ``rename`` of a fully written, fsynced temporary folder,
so a crash mid-save leaves nothing half-visible, and two processes saving the same name
at once each get their own version (or :class:`VersionExistsError` for an explicit one).
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import logging
import os
import re
import shutil
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.version import Version

from . import versions as V
from ._version import __version__
from .errors import (
    ConfigurationError,
    IntegrityError,
    InvalidNameError,
    ModelNotFoundError,
    StoreError,
    UntrustedArtifactError,
    VersionExistsError,
    VersionNotFoundError,
)
from .formats import ModelFormat, format_for_object, format_for_path, get_format
from .manifest import MANIFEST_FILE, STANDARD_METHODS, Manifest, environment, method_problem
from .schema import TensorSchema, schema_from_dict, schema_to_dict
from .signing import KEY_ENV, SIGNATURE_FILE, resolve_key, signature_document, verify_signature

if TYPE_CHECKING:
    from .cache import ModelCache
    from .handle import ModelHandle
    from .promotion import Gate

__all__ = ["ModelStore", "ModelVersion"]

_ALIASES = "aliases.json"
_HISTORY = "history.jsonl"
log = logging.getLogger("embedml.store")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelVersion:
    """One saved version: its name, version string, folder and manifest."""

    name: str
    version: str
    path: Path
    manifest: Manifest

    @property
    def artifact_path(self) -> Path:
        """The artifact file inside the version folder."""
        return self.path / self.manifest.artifact

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def current_user() -> str:
    """The OS user name (``uid:N`` when it cannot be found), recorded in the history."""
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry and no $USER (some containers)
        return f"uid:{os.getuid()}"


def _check_row_wise(row_wise: Any, fmt: ModelFormat, in_schema: Any, out_schema: Any) -> None:
    """Refuse a ``row_wise=`` that is not a bool or None, or a ``True`` the model contradicts."""
    if row_wise is not None and not isinstance(row_wise, bool):
        raise ConfigurationError(f"row_wise must be True, False or None, got {row_wise!r}")
    if row_wise is not True:
        return
    if fmt.declares_shapes:
        raise ConfigurationError(
            f"row_wise=True does not apply to {fmt.name} models: the shapes the graph declares "
            "decide whether it is row-wise (row_wise=False can still mark it as not row-wise)"
        )
    for what, d in (("input", in_schema), ("output", out_schema)):
        schema = schema_from_dict(d)
        if isinstance(schema, TensorSchema) and not schema.rows:
            flat = next(s.name for s in schema.specs if not s.shape)
            raise ConfigurationError(
                f"row_wise=True contradicts the {what} schema: tensor {flat!r} has no first dimension"
            )


def _check_import_path(value: str | None, what: str) -> str | None:
    if value is not None and (
        not isinstance(value, str) or value.count(":") != 1 or not all(value.split(":"))
    ):
        raise InvalidNameError(
            f"{what} must be an import path 'package.module:function', got {value!r}"
        )
    return value


def _check_trust(path: Any, fmt: str, trust: bool, sha256: str | None) -> str | None:
    """Refuse a pickle/joblib file nobody vouched for; normalise a given ``sha256``."""
    if sha256 is not None:
        digest = sha256.strip().lower() if isinstance(sha256, str) else ""
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigurationError(f"sha256 must be 64 hex digits, got {sha256!r}")
        return digest
    if trust is not True:
        raise UntrustedArtifactError(
            f"{os.fspath(path)!r} is a {fmt} file: loading it runs whatever code it contains, "
            "and nothing vouches for its bytes. Pass sha256='<expected hex digest>' "
            "(checked before saving) or trust=True if you know where it came from; "
            "see docs/security.md"
        )
    return None


def _check_method(method: str | None, fmt: Any, model: Any) -> None:
    """Refuse a ``method=`` the format does not take, that is not a public method name, or
    that the in-memory ``model`` does not have."""
    if method is None:
        return
    if not isinstance(method, str) or not method.isidentifier() or method.startswith("_"):
        raise ConfigurationError(
            f"method must be a public method name such as 'predict_proba', got {method!r}"
        )
    if not fmt.takes_method:
        raise ConfigurationError(
            f"method= applies to pickle and joblib models (objects with methods), not {fmt.name}"
        )
    if model is not None and not callable(getattr(model, method, None)):
        has = [m for m in STANDARD_METHODS if callable(getattr(model, m, None))]
        raise ConfigurationError(
            f"the model ({type(model).__name__}) has no method {method!r}; "
            f"it has {', '.join(has) or 'none of ' + ', '.join(STANDARD_METHODS)}"
        )


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def store_root(root: str | os.PathLike[str]) -> Path:
    """The absolute local folder ``root`` names. ``file:///path`` is that path; any other
    URL (``s3://``, ``gs://``, ``http://``...) raises :class:`ConfigurationError` instead of
    becoming a folder named ``s3:``."""
    text = os.fspath(root)
    if isinstance(text, str) and _URL.match(text):
        parsed = urllib.parse.urlsplit(text)
        if parsed.scheme.lower() != "file" or parsed.netloc not in ("", "localhost"):
            raise ConfigurationError(
                f"model store {text!r} is a URL; embedml stores live in a local folder "
                "(remote stores are not supported yet): give a path such as './models'"
            )
        text = urllib.request.url2pathname(parsed.path)
    return Path(text).expanduser().absolute()


class ModelStore:
    """A directory of models, each with immutable PEP 440 versions and movable aliases.

    ``ModelStore(root)`` creates the folder if needed. Alias updates are serialised with
    an advisory file lock (POSIX ``flock``), so several processes may share one store.
    ``root`` is a local folder (``file:///path`` is read as that path); a URL such as
    ``s3://bucket/models`` raises :class:`ConfigurationError`: remote stores do not exist yet.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = store_root(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._real_root = self.root.resolve()

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r})"

    # -- paths
    def _model_dir(self, name: str) -> Path:
        path = self.root / V.check_name(name)
        if path.is_symlink() or (path.exists() and self._real_root not in path.resolve().parents):
            raise StoreError(f"model folder {path} leaves the store root {self.root}; refusing it")
        return path

    def _version_dir(self, name: str, version: str) -> Path:
        path = self._model_dir(name) / version
        if path.is_symlink():
            raise StoreError(f"version folder {path} is a symlink; refusing it")
        return path

    # -- listing
    def models(self) -> list[str]:
        """Names of the models that have at least one version, sorted."""
        names = []
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and not entry.name.startswith(".") and self._versions(entry):
                names.append(entry.name)
        return names

    @staticmethod
    def _versions(model_dir: Path) -> list[Version]:
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in model_dir.iterdir():
                if entry.name[:1].isdigit() and (entry / MANIFEST_FILE).is_file():
                    with contextlib.suppress(InvalidNameError):
                        found.append(V.parse_version(entry.name))
        return sorted(found)

    def versions(self, name: str) -> list[str]:
        """Versions of ``name``, ascending by PEP 440, each spelled as it was saved
        (``"2.0rc1"``); raises :class:`ModelNotFoundError`."""
        model_dir = self._model_dir(name)
        found = self._versions(model_dir)
        if not found:
            raise ModelNotFoundError(
                f"no model {name!r} in {self.root}; models: {self.models() or 'none'}"
            )
        return [self._spelling(model_dir, v) for v in found]

    @staticmethod
    def _spelling(model_dir: Path, version: Version) -> str:
        """The spelling in the version's manifest; its folder name when the manifest does
        not say (stores written before spellings were kept) or cannot be read (``verify``
        reports that)."""
        folder = V.canonical_version(version)
        with contextlib.suppress(OSError, ValueError, AttributeError, InvalidNameError):
            saved = json.loads((model_dir / folder / MANIFEST_FILE).read_bytes()).get("version")
            if isinstance(saved, str) and V.parse_version(saved) == version:
                return saved
        return folder

    def aliases(self, name: str) -> dict[str, str]:
        """The aliases of ``name`` and the versions they point to."""
        path = self._model_dir(name) / _ALIASES
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as exc:
            raise IntegrityError(f"{path} is not valid JSON: {exc}") from exc
        return {str(k): str(v) for k, v in data.items()}

    # -- resolving
    def manifest(self, name: str, version: str) -> Manifest:
        """Read the manifest of one exact version (any spelling: ``"1.0"`` is ``"1"``)."""
        version = V.canonical_version(version)
        path = self._version_dir(name, version) / MANIFEST_FILE
        if path.is_symlink():
            raise IntegrityError(f"{path} is a symlink; refusing it")
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            raise self._not_found(name, version) from None
        manifest = Manifest.from_json(text, where=str(path))
        if manifest.name != name or V.canonical_version(manifest.version) != version:
            raise IntegrityError(
                f"{path} describes {manifest.name}@{manifest.version}, not {name}@{version}"
            )
        artifact = Path(manifest.artifact)
        if artifact.name != manifest.artifact or artifact.name in ("", ".", "..", MANIFEST_FILE):
            raise IntegrityError(
                f"{path}: artifact {manifest.artifact!r} must be a file name inside the version folder"
            )
        return manifest

    def resolve(self, name: str, spec: str | int | Version | None = "latest") -> ModelVersion:
        """The version that ``spec`` picks: ``"latest"``, ``"1.2"``, ``">=1,<2"`` or ``"@alias"``.

        Raises :class:`ModelNotFoundError` or :class:`VersionNotFoundError` (whose message
        lists the versions and aliases that exist), or :class:`InvalidNameError`.
        """
        parsed = V.parse_spec(spec)
        existing = self._versions(self._model_dir(name))
        if not existing:
            raise ModelNotFoundError(
                f"no model {name!r} in {self.root}; models: {self.models() or 'none'}"
            )
        if parsed.alias is not None:
            target = self.aliases(name).get(parsed.alias)
            if target is None:
                raise self._not_found(name, parsed.text)
            chosen: Version | None = V.parse_version(target)
        else:
            chosen = V.select(parsed, existing)
        if chosen is None:
            raise self._not_found(name, parsed.text)
        folder = V.canonical_version(chosen)
        manifest = self.manifest(name, folder)
        # shown and recorded (aliases, history) as saved: "2.0rc1", not its folder "2rc1"
        return ModelVersion(name, manifest.version, self._version_dir(name, folder), manifest)

    def _not_found(self, name: str, spec: str) -> VersionNotFoundError:
        model_dir = self._model_dir(name)
        existing = [self._spelling(model_dir, v) for v in self._versions(model_dir)]
        aliases = self.aliases(name)
        alias_text = ", ".join(f"@{a} -> {v}" for a, v in sorted(aliases.items())) or "none"
        return VersionNotFoundError(
            f"no version of {name!r} matches {spec!r}; versions: {', '.join(existing) or 'none'}; aliases: {alias_text}"
        )

    # -- saving
    def save(
        self,
        name: str,
        model: Any,
        *,
        version: str | int | None = None,
        format: str | None = None,
        input_schema: Any = None,
        output_schema: Any = None,
        metadata: Mapping[str, Any] | None = None,
        preprocess: str | None = None,
        postprocess: str | None = None,
        reference_data: Any = None,
        reference_outputs: Any = None,
        trust: bool = False,
        sha256: str | None = None,
        signing_key: str | bytes | None = None,
        method: str | None = None,
        row_wise: bool | None = None,
    ) -> ModelVersion:
        """Save ``model`` as a new immutable version of ``name`` and return it.

        ``model`` is a Python object (joblib by default, ``format="pickle"`` for pickle), an
        ``onnx.ModelProto`` or ONNX bytes, a ``torch.jit.ScriptModule``, a
        ``torch.export.ExportedProgram``, or a path to a ``.onnx``/``.pt``/``.pt2``/``.pkl``/
        ``.joblib`` file. ``version=None`` takes the next major version. Schemas are a
        pydantic model class (one record) or :class:`TensorSpec` (or a list of them).
        ``preprocess`` / ``postprocess`` are import paths ``"package.module:function"``.
        ``reference_data`` (training inputs: records, 2-D array or DataFrame, checked
        against the input schema) and ``reference_outputs`` store a reference profile in
        the version for :class:`~embedml.DriftMonitor` (see ``docs/observability.md``).
        ``method`` (pickle / joblib objects) is the method loads call, e.g.
        ``"predict_proba"`` (default ``predict``; ``load(..., method=)`` overrides it); a
        ``restricted=True`` load accepts only :data:`~embedml.manifest.STANDARD_METHODS`.

        A pickle or joblib *file* runs code when loaded, so saving one needs ``trust=True``
        or its expected ``sha256="<hex>"`` (checked on the copied bytes); otherwise
        :class:`UntrustedArtifactError` is raised before the file is opened. With a signing
        key (``signing_key=`` or ``$EMBEDML_SIGNING_KEY``) the manifest is signed
        (``manifest.sig``, see ``docs/security.md``).

        ``row_wise=False`` marks a model whose outputs are not one per input row (it mixes
        rows, or takes whole tensors): calls then pass their inputs whole and batching is
        refused. ``None`` (default) lets the model decide: an ONNX graph by its declared
        shapes; other formats are row-wise unless a declared tensor has no first dimension
        (shape ``()`` or ``None``; see ``docs/concepts.md``).

        Raises :class:`VersionExistsError`, :class:`InvalidNameError`,
        :class:`UnsupportedFormatError`, :class:`UntrustedArtifactError`,
        :class:`SchemaError` or :class:`ConfigurationError` (a bad ``method``;
        ``row_wise=True`` on an ONNX graph, whose shapes decide, or on a tensor schema
        without a batch dimension).
        """
        model_dir = self._model_dir(name)
        key = resolve_key(signing_key)
        is_path = isinstance(model, str | os.PathLike)
        if format is not None:
            fmt = get_format(format)
        elif is_path:
            fmt = format_for_path(model)
        else:
            fmt = format_for_object(model)
        if is_path and fmt.unsafe_to_load:
            sha256 = _check_trust(model, fmt.name, trust, sha256)
        _check_method(method, fmt, None if is_path else model)
        explicit = V.display_version(version) if version is not None else None
        in_schema = schema_to_dict(input_schema)
        if in_schema is None and not is_path:
            specs, _ = fmt.tensor_specs(model)
            in_schema = TensorSchema(specs).to_dict() if specs else None
        out_schema = schema_to_dict(output_schema)
        _check_row_wise(row_wise, fmt, in_schema, out_schema)
        _check_import_path(preprocess, "preprocess")
        _check_import_path(postprocess, "postprocess")
        try:
            json.dumps(dict(metadata or {}))
        except (TypeError, ValueError) as exc:
            raise InvalidNameError(f"metadata must be JSON-serialisable: {exc}") from None
        profile = None
        if reference_data is not None:
            from .profile import profile_for_schema

            profile = profile_for_schema(reference_data, reference_outputs, in_schema).to_json()

        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = model_dir / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            artifact = "model" + fmt.suffixes[0]
            if is_path:
                src = Path(model)
                if not src.is_file():
                    raise StoreError(f"no model file at {src}")
                shutil.copyfile(src, tmp / artifact)
            else:
                fmt.dump(model, tmp / artifact)
            digest = sha256_file(tmp / artifact)
            if is_path and sha256 is not None and digest != sha256:
                raise UntrustedArtifactError(
                    f"{os.fspath(model)} has SHA-256 {digest}, not the {sha256} you vouched for; not saving it"
                )
            with open(tmp / artifact, "rb+") as f:
                os.fsync(f.fileno())
            extra_files = {}
            if profile is not None:
                from .profile import PROFILE_FILE

                _write_atomic(tmp / PROFILE_FILE, profile.encode())
                extra_files[PROFILE_FILE] = sha256_file(tmp / PROFILE_FILE)
            fields = {
                "name": name, "format": fmt.name, "artifact": artifact, "sha256": digest,
                "size": (tmp / artifact).stat().st_size, "input_schema": in_schema,
                "output_schema": out_schema, "preprocess": preprocess, "postprocess": postprocess,
                "metadata": dict(metadata or {}), "embedml": __version__,
                "frameworks": environment(fmt.frameworks(None if is_path else model)),
                "extra_files": extra_files, "method": method, "row_wise": row_wise,
            }  # fmt: skip
            return self._publish(model_dir, tmp, fields, explicit, key)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _publish(
        self,
        model_dir: Path,
        tmp: Path,
        fields: dict[str, Any],
        explicit: str | None,
        key: bytes | None = None,
    ) -> ModelVersion:
        """Rename the finished folder into place; on a clash take the next major version."""
        for _ in range(1000):
            version = explicit or V.next_major(self._versions(model_dir))
            manifest = Manifest(version=version, **fields)
            data = manifest.to_json().encode()
            _write_atomic(tmp / MANIFEST_FILE, data)
            if key is not None:
                _write_atomic(tmp / SIGNATURE_FILE, signature_document(data, key))
            final = model_dir / V.canonical_version(version)  # "1.0" and "1" share a folder
            try:
                os.rename(tmp, final)
            except OSError:
                if explicit is not None:
                    raise VersionExistsError(
                        f"{fields['name']}@{explicit} already exists; versions are immutable, save a new version"
                    ) from None
                continue
            _fsync_dir(model_dir)
            return ModelVersion(fields["name"], version, final, manifest)
        raise StoreError(f"could not find a free version number for {fields['name']!r}")

    # -- aliases
    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        model_dir = self._model_dir(name)
        model_dir.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a planted ".lock" symlink must not make us create files elsewhere
        try:
            fd = os.open(model_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open the lock file in {model_dir}: {exc}") from exc
        with open(fd, "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _write_aliases(self, name: str, aliases: dict[str, str]) -> None:
        _write_atomic(
            self._model_dir(name) / _ALIASES,
            json.dumps(aliases, indent=2, sort_keys=True).encode(),
        )

    def _append_history(self, name: str, entry: dict[str, Any]) -> dict[str, Any]:
        """Append one entry to ``history.jsonl`` (caller holds the lock) and return it."""
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "ts": time.time(), **entry}
        line = json.dumps(entry, sort_keys=True, default=str) + "\n"
        fd = os.open(self._model_dir(name) / _HISTORY, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = "\n" + line  # a writer died mid-line: keep that torn line apart
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return entry

    def _move_alias(
        self, name: str, alias: str, target: ModelVersion, action: str, who: str | None,
        **extra: Any,
    ) -> None:
        """Point ``alias`` at ``target`` and record the move (caller holds the lock)."""
        aliases = self.aliases(name)
        previous = aliases.get(alias)
        aliases[alias] = target.version
        self._write_aliases(name, aliases)
        rollback = previous is not None and V.parse_version(target.version) < V.parse_version(previous)
        self._append_history(name, {
            "action": action, "alias": alias, "from": previous, "to": target.version,
            "rollback": rollback, "who": who or current_user(), **extra,
        })  # fmt: skip

    def set_alias(
        self, name: str, alias: str, version: str | int, *, who: str | None = None
    ) -> ModelVersion:
        """Point ``alias`` (e.g. ``"production"``) at an existing version; returns that version.

        The move is appended to :meth:`history` with ``who`` (default: the OS user); a move
        to an older version than before is marked as a rollback.
        """
        alias = V.check_alias(alias)
        with self._lock(name):
            target = self.resolve(name, V.canonical_version(version))
            self._move_alias(name, alias, target, "set_alias", who)
        return target

    def remove_alias(self, name: str, alias: str, *, who: str | None = None) -> None:
        """Remove an alias; raises :class:`VersionNotFoundError` if it does not exist."""
        alias = V.check_alias(alias)
        with self._lock(name):
            aliases = self.aliases(name)
            previous = aliases.pop(alias, None)
            if previous is None:
                raise self._not_found(name, f"@{alias}")
            self._write_aliases(name, aliases)
            self._append_history(name, {
                "action": "remove_alias", "alias": alias, "from": previous, "to": None,
                "rollback": False, "who": who or current_user(),
            })  # fmt: skip

    def promote(
        self,
        name: str,
        version: str | int,
        alias: str = "production",
        *,
        gate: Gate | None = None,
        who: str | None = None,
    ) -> ModelVersion:
        """Point ``alias`` at ``version`` if it passes ``gate`` (an :class:`~embedml.Gate`).

        The gate scores the candidate, and the version the alias points to now, on its
        holdout set; the outcome and scores are appended to :meth:`history` either way
        (an ``action="gate"`` entry, then the ``"promote"`` move when it passed).
        Raises :class:`GateFailedError` (carrying the scores; the alias is not moved), and
        the errors of :meth:`resolve` and :meth:`load`.
        """
        alias = V.check_alias(alias)
        with self._lock(name):
            # Scored under the lock so that the version compared against cannot move meanwhile.
            target = self.resolve(name, V.canonical_version(version))
            previous = self.aliases(name).get(alias)
            extra: dict[str, Any] = {}
            if gate is not None:
                from .errors import GateFailedError

                try:
                    scores = gate.evaluate(self, target, previous)
                except GateFailedError as exc:
                    self._append_history(name, {
                        "action": "gate", "alias": alias, "from": previous, "to": target.version,
                        "passed": False, "scores": exc.scores, "who": who or current_user(),
                    })  # fmt: skip
                    raise
                self._append_history(name, {
                    "action": "gate", "alias": alias, "from": previous, "to": target.version,
                    "passed": True, "scores": scores, "who": who or current_user(),
                })  # fmt: skip
                extra = {"gate": scores}
            self._move_alias(name, alias, target, "promote", who, **extra)
        return target

    def rollback(self, name: str, alias: str = "production", *, who: str | None = None) -> ModelVersion:
        """Move ``alias`` back to the version it had before the move that set its current one.

        Repeated rollbacks walk further back (3 -> 2 -> 1); the move is recorded with
        ``action="rollback"``. Returns that version. Raises :class:`StoreError` when the history has no earlier
        version for the alias.
        """
        alias = V.check_alias(alias)
        with self._lock(name):
            current = self.aliases(name).get(alias)
            for entry in reversed(self.history(name, alias=alias)):
                if entry.get("action") in ("set_alias", "promote") and entry["to"] == current:
                    if entry.get("from") is None:
                        break
                    target = self.resolve(name, entry["from"])
                    self._move_alias(name, alias, target, "rollback", who)
                    return target
            raise StoreError(f"the history of {name}@{alias} has no earlier version to roll back to")

    def history(self, name: str, *, alias: str | None = None) -> list[dict[str, Any]]:
        """Alias moves and gate outcomes of ``name``, oldest first (optionally of one alias).

        Each entry has ``time`` (UTC, ISO 8601), ``ts``, ``action`` (``"set_alias"``,
        ``"promote"``, ``"rollback"``, ``"remove_alias"`` or ``"gate"``), ``alias``,
        ``from`` / ``to`` versions, ``who``; moves have ``rollback`` (true when the alias
        went to an older version), promotions ``gate`` (the scores); gate entries have
        ``passed`` and ``scores``. Unreadable lines are skipped with a warning.
        """
        path = self._model_dir(name) / _HISTORY
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return []
        entries = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s line %d is not valid JSON; skipped", path, i)
                continue
            if alias is None or entry.get("alias") == alias:
                entries.append(entry)
        return entries

    def delete(self, name: str, version: str | int) -> None:
        """Delete one version. Refuses (:class:`StoreError`) while an alias points to it."""
        with self._lock(name):
            target = self.resolve(name, V.canonical_version(version))
            here = V.parse_version(target.version)
            pointing = sorted(
                a for a, v in self.aliases(name).items() if V.parse_version(v) == here
            )
            if pointing:
                raise StoreError(
                    f"{target} is in use by alias(es) {', '.join('@' + a for a in pointing)}; move them first"
                )
            trash = target.path.with_name(f".trash-{uuid.uuid4().hex}")
            os.rename(target.path, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def sign(self, name: str, version: str | int, *, signing_key: str | bytes | None = None) -> Path:
        """Sign (or re-sign) an existing version's manifest; returns the ``manifest.sig`` path.

        Use it to sign versions saved before signing was turned on, after checking them
        (for example with :meth:`verify`). Raises :class:`ConfigurationError` without a key.
        """
        key = resolve_key(signing_key)
        if key is None:
            raise ConfigurationError(f"sign() needs a key: pass signing_key= or set ${KEY_ENV}")
        mv = self.resolve(name, V.canonical_version(version))
        data = (mv.path / MANIFEST_FILE).read_bytes()
        Manifest.from_json(data, where=str(mv.path / MANIFEST_FILE))
        _write_atomic(mv.path / SIGNATURE_FILE, signature_document(data, key))
        return mv.path / SIGNATURE_FILE

    # -- reading artifacts
    def read_artifact(self, mv: ModelVersion) -> bytes:
        """The artifact's bytes, after checking size and SHA-256 against the manifest.

        The bytes returned are the ones hashed, so nothing can change the file between the
        check and the load. Raises :class:`IntegrityError` on any mismatch.
        """
        path = mv.artifact_path
        real = path.resolve()
        if (
            path.is_symlink()
            or real.parent != mv.path.resolve()
            or self._real_root not in real.parents
        ):
            raise IntegrityError(
                f"artifact of {mv} ({path}) points outside its version folder; refusing it"
            )
        try:
            data = real.read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"artifact of {mv} is missing: {path}") from None
        if len(data) != mv.manifest.size:
            raise IntegrityError(
                f"artifact of {mv} has {len(data)} bytes, the manifest says {mv.manifest.size}; it was changed or truncated, not loading it"
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest != mv.manifest.sha256:
            raise IntegrityError(
                f"artifact of {mv} has SHA-256 {digest[:16]}..., the manifest says {mv.manifest.sha256[:16]}...; it was changed after saving, not loading it"
            )
        return data

    def read_extra_file(self, mv: ModelVersion, filename: str) -> bytes:
        """An extra file of the version (e.g. the reference profile), after checking its
        SHA-256 against ``manifest.extra_files``. Raises :class:`IntegrityError` when it is
        not listed, missing, outside the folder, or changed."""
        expected = mv.manifest.extra_files.get(filename)
        path = mv.path / filename
        if expected is None or path.name != filename or filename in ("", ".", ".."):
            raise IntegrityError(f"{mv} lists no extra file {filename!r}")
        if path.is_symlink() or path.resolve().parent != mv.path.resolve():
            raise IntegrityError(f"extra file {filename!r} of {mv} points outside its folder")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"extra file {filename!r} of {mv} is missing") from None
        if hashlib.sha256(data).hexdigest() != expected:
            raise IntegrityError(
                f"extra file {filename!r} of {mv} does not match its SHA-256 in the manifest; it was changed after saving"
            )
        return data

    def verify(
        self,
        name: str | None = None,
        *,
        signing_key: str | bytes | None = None,
        require_signature: bool = False,
    ) -> dict[str, str | None]:
        """Re-hash every artifact and extra file (of ``name``, or of all models):
        ``{"name@version": error or None}``.

        With a key (argument or ``$EMBEDML_SIGNING_KEY``) signatures are checked too, and
        with ``require_signature=True`` an unsigned version is reported. A version saved with
        a ``method`` outside :data:`~embedml.manifest.STANDARD_METHODS` is reported too
        (``restricted=True`` loads refuse it).
        """
        key = resolve_key(signing_key)
        report: dict[str, str | None] = {}
        for model in [name] if name else self.models():
            for version in self.versions(model):
                label = f"{model}@{version}"
                try:
                    mv = self.resolve(model, version)
                    if key is not None or require_signature:
                        data = (mv.path / MANIFEST_FILE).read_bytes()
                        verify_signature(mv.path, data, key, required=require_signature, label=label)
                    self.read_artifact(mv)
                    for extra in mv.manifest.extra_files:
                        self.read_extra_file(mv, extra)
                    report[label] = method_problem(mv.manifest)
                except IntegrityError as exc:
                    report[label] = str(exc)
        return report

    # -- loading (delegated: the store itself never loads a model)
    def load(
        self,
        name: str,
        version: str | int = "latest",
        *,
        method: str | None = None,
        session_options: Any = None,
        outputs: str | list[str] | None = None,
        preprocess: Any = None,
        postprocess: Any = None,
        strict: bool = True,
        allow_extra: bool = False,
        batching: Any = None,
        hooks: list[Any] | tuple[Any, ...] = (),
        follow: bool = False,
        poll_s: float = 1.0,
        cache: ModelCache | bool = False,
        allow_nan: bool = False,
        max_batch_rows: int | None = None,
        max_string_length: int | None = None,
        require_signature: bool = False,
        signing_key: str | bytes | None = None,
        restricted: bool = False,
        trusted_types: list[Any] | tuple[Any, ...] = (),
        strict_versions: bool = False,
    ) -> ModelHandle:
        """Resolve ``version`` and open a :class:`~embedml.ModelHandle` on it.

        ``follow=True`` keeps the handle on whatever ``version`` resolves to (typically an
        alias such as ``"@production"``): every ``poll_s`` seconds a background thread
        re-resolves it and hot-swaps the handle when it changed (see
        :meth:`ModelHandle.swap`); ``close()`` stops the thread. ``cache=True`` takes the
        loaded model from the process-wide :func:`~embedml.default_cache` (or pass a
        :class:`~embedml.ModelCache`), so loading the same version again costs nothing.

        Options: ``method`` (sklearn-style objects: ``"predict"``, ``"predict_proba"``...),
        ``session_options`` (ONNX Runtime, dict or ``SessionOptions``), ``outputs`` (ONNX
        output name or names), ``preprocess`` / ``postprocess`` (callables on a batch;
        override the manifest's), ``strict`` (only lossless casts), ``allow_extra`` (ignore
        unknown fields), ``batching`` (an :class:`~embedml.Batching`, or ``True`` for its
        defaults: concurrent calls are joined into batched model calls), ``hooks`` (sinks or
        callables that receive a :class:`~embedml.PredictionRecord` per call, see
        ``docs/observability.md``). An unknown option is a ``TypeError``. Raises the errors of
        :meth:`resolve` and :meth:`read_artifact`, :class:`UnsupportedFormatError`, and
        :class:`ConfigurationError` for a bad option.
        Hardening (``docs/security.md``): ``allow_nan`` (default ``False``: NaN/inf in
        numeric inputs is a :class:`SchemaError`), ``max_batch_rows``, ``max_string_length``;
        ``require_signature`` with ``signing_key`` (or ``$EMBEDML_SIGNING_KEY``) refuses
        unsigned or wrongly signed versions (:class:`SignatureError`) before the artifact is
        read; ``restricted=True`` unpickles pickle/joblib with an allow-list plus
        ``trusted_types`` (:class:`UntrustedArtifactError` names a refused type);
        ``strict_versions=True`` turns a framework version skew warning into
        :class:`FrameworkVersionError`.

        ``name`` may carry its spec as the command line does (``"churn@production"``,
        ``"churn@1.2"``); then ``version`` must be left out.
        """
        from .handle import LoadOptions, ModelHandle

        if isinstance(name, str) and "@" in name:
            if version != "latest":
                raise InvalidNameError(
                    f"{name!r} already says which version to load; do not pass version={version!r} too"
                )
            name, version = V.parse_ref(name)

        options = LoadOptions(
            method=method, session_options=session_options, outputs=outputs, preprocess=preprocess,
            postprocess=postprocess, strict=strict, allow_extra=allow_extra, batching=batching,
            hooks=tuple(hooks), allow_nan=allow_nan,
            max_batch_rows=max_batch_rows, max_string_length=max_string_length,
            require_signature=require_signature, signing_key=signing_key, restricted=restricted,
            trusted_types=trusted_types, strict_versions=strict_versions,
        )  # fmt: skip
        if cache is True:
            from .cache import default_cache

            cache = default_cache()
        # Not `cache or None`: an empty ModelCache has len() 0.
        handle = ModelHandle.open(
            self, self.resolve(name, version), options, None if cache is False else cache
        )
        if follow:
            from .follow import Follower

            try:
                handle._follower = Follower(handle, self, str(version), poll_s)
            except BaseException:
                handle.close()
                raise
        return handle
