"""``Store``: versioned model artifacts in a directory. It never loads or serves a model (at
save it only reads the model's declared interface and runs an ``input_example`` once);
:class:`embedml.ModelStore` (:mod:`embedml.serving.load`) is this class plus ``load``.

Layout::

    root/
      <name>/
        <version>/            immutable: the artifact and manifest.json
          model.onnx
          manifest.json
        aliases.json          {"production": "2"}
        history.jsonl         append-only log of alias moves and promotion gates
        .lock                 serialises publishing and alias moves between processes
      .embedml-record.json    the signed store record (embedml.store.record), when a key is used
      .lock                   serialises updates of the record

Every file is read and written without following symlinks (:mod:`embedml.store.safe_io`), and
every value read from it is validated like user input: a tampered file is an
:class:`IntegrityError`, never a raw exception or a write outside the store.

A version becomes visible in one ``rename`` of a fully written, fsynced temporary folder,
so a crash mid-save leaves nothing half-visible, and two processes saving the same name
at once each get their own version (or :class:`VersionExistsError` for an explicit one).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import getpass
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from packaging.version import Version

from .._version import __version__
from ..errors import (
    AliasMovedError,
    ConfigurationError,
    EmbedMLError,
    GateFailedError,
    IntegrityError,
    InvalidNameError,
    ModelNotFoundError,
    SignatureError,
    StoreError,
    UnsupportedFormatError,
    UntrustedArtifactError,
    VersionExistsError,
    VersionNotFoundError,
)
from ..formats import (
    FormatOptions,
    ModelFormat,
    Runtime,
    format_for_object,
    format_for_path,
    get_format,
)
from ..formats.signature import signature_at_save
from ..schema import TensorSchema, schema_from_dict, schema_to_dict
from ..schema.profile import PROFILE_FILE, profile_for_schema
from . import versions as V
from .manifest import (
    MANIFEST_FILE,
    STANDARD_METHODS,
    Manifest,
    environment,
    import_paths_error,
    method_problem,
    refused_import_paths,
)
from .record import (
    RECORD_FILE,
    ModelRecord,
    StoreRecord,
    check_store_id,
    manifest_digest,
    missing_record,
    parse_record,
)
from .safe_io import append_line, fsync_dir, locked, read_metadata, write_atomic
from .signing import KEY_ENV, SIGNATURE_FILE, resolve_key, signature_document, verify_signature

__all__ = ["ModelStore", "ModelVersion", "PromotionGate", "Store"]

_ALIASES = "aliases.json"
_HISTORY = "history.jsonl"
_LOCK = ".lock"
_MOVES = ("set_alias", "promote")
_ANY = object()  # _move_alias(expected=_ANY): whatever the alias points at
log = logging.getLogger("embedml.store")
_CHUNK = 1 << 20
# The model lock files each thread holds (by path, whatever Store object took them):
# flock locks belong to open files, so taking one again in the same thread would deadlock.
_held = threading.local()


def _held_locks() -> set[Path]:
    return _held.__dict__.setdefault("paths", set())


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

    @property
    def signature(self) -> dict[str, Any] | None:
        """The interface the model declared when it was saved (inputs, outputs, feature
        names, classes, ``batch_invariant``...), or ``None`` if nothing was recorded."""
        return self.manifest.signature

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (never through a symlink), fsynced on the way."""
    h = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise StoreError(f"cannot open {path}: {exc.strerror}") from None
    with open(fd, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
        os.fsync(fd)
    return h.hexdigest()


def _create_exclusive(path: Path) -> int:
    """Create ``path`` for writing; a file or symlink planted there is an error."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StoreError(f"cannot create {path}: {exc.strerror}") from None


def _load_json(data: bytes, path: Path) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: deeply nested JSON
        raise IntegrityError(f"{path} is not valid JSON: {type(exc).__name__}: {exc}") from None


def _stored_version(value: Any, where: str) -> str:
    """A version read from store metadata, validated like user input."""
    if not isinstance(value, str):
        raise IntegrityError(f"{where}: expected a version string, got {type(value).__name__}")
    try:
        V.parse_version(value)
    except InvalidNameError as exc:
        raise IntegrityError(f"{where}: {exc}") from None
    return value


def _history_entry(entry: Any, where: str) -> dict[str, Any]:
    """A history line, validated like user input (the fields rollback and the CLI read)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("action"), str):
        raise IntegrityError(f"{where}: expected an object with an 'action', got {entry!r:.60}")
    if "alias" in entry:
        try:
            if not isinstance(entry["alias"], str) or V.check_alias(entry["alias"]) != entry["alias"]:
                raise InvalidNameError(f"invalid alias {entry['alias']!r:.60}")
        except InvalidNameError as exc:
            raise IntegrityError(f"{where}: {exc}") from None
    for key in ("from", "to"):
        if entry.get(key) is not None:
            _stored_version(entry[key], f"{where}: {key!r}")
    return entry


def _record_version(name: str, version: str, manifest_bytes: bytes, record: StoreRecord) -> None:
    record.model(name).set_version(version, manifest_digest(manifest_bytes))


def _check_signed_digest(
    signed: ModelRecord, target: ModelVersion, digest: str, refusing: str
) -> None:
    """Raises :class:`SignatureError` (ending in ``refusing``: what is not done) when the
    model's signed record holds another manifest digest for ``target``."""
    recorded = signed.digest_of(target.version)
    if recorded is not None and recorded != digest:
        raise SignatureError(
            f"the manifest of {target} differs from the one in the signed store "
            f"record (replaced, or copied from another store); {refusing}"
        )


def _sign_alias_move(
    signed: ModelRecord,
    alias: str,
    target: ModelVersion,
    digest: str,
    action: str,
    previous: str | None,
) -> None:
    """Records in the model's signed record ``target`` (with its manifest ``digest``) and
    ``alias`` pointing at it; a ``set_alias`` / ``promote`` from ``previous`` also goes on
    the alias's trail of moves (what a signed rollback walks back)."""
    signed.set_version(target.version, digest)
    if action in _MOVES:
        signed.move(alias, previous, target.version)
    signed.aliases[alias] = target.version


def check_import(name: str, manifest_bytes: bytes, files: Mapping[str, bytes]) -> Manifest:
    """The manifest of a version being copied in, once it names ``name`` and ``files``
    hold exactly the files it lists, with their SHA-256. Raises :class:`IntegrityError`."""
    manifest = Manifest.from_json(manifest_bytes, where=f"the manifest of {name} being copied")
    if manifest.name != name:
        raise IntegrityError(f"the manifest being copied describes {manifest.name!r}, not {name!r}")
    expected = {manifest.artifact: manifest.sha256, **manifest.extra_files}
    if set(files) != set(expected):
        raise IntegrityError(f"{name}@{manifest.version}: expected the files {sorted(expected)}, got {sorted(files)}")
    for filename, digest in expected.items():
        if Path(filename).name != filename or filename in ("", ".", "..", MANIFEST_FILE, SIGNATURE_FILE):
            raise IntegrityError(f"{name}@{manifest.version}: invalid file name {filename!r}")
        if hashlib.sha256(files[filename]).hexdigest() != digest:
            raise IntegrityError(f"{name}@{manifest.version}: {filename} does not match its SHA-256")
    return manifest


def _require_key(signing_key: str | bytes | None, what: str) -> bytes:
    """The signing key (argument or ``$EMBEDML_SIGNING_KEY``) that ``what`` needs; raises
    :class:`ConfigurationError` when there is none."""
    key = resolve_key(signing_key)
    if key is None:
        raise ConfigurationError(f"{what} needs a key: pass signing_key= or set ${KEY_ENV}")
    return key


def _check_manifest(manifest: Manifest, path: Any, name: str, version: str) -> Manifest:
    """``manifest`` (read from ``path``) once it describes ``name``@``version`` and names
    its artifact as a plain file name; raises :class:`IntegrityError`."""
    if manifest.name != name or V.canonical_version(manifest.version) != V.canonical_version(
        version
    ):
        raise IntegrityError(
            f"{path} describes {manifest.name}@{manifest.version}, not {name}@{version}"
        )
    artifact = Path(manifest.artifact)
    if artifact.name != manifest.artifact or artifact.name in ("", ".", "..", MANIFEST_FILE):
        raise IntegrityError(
            f"{path}: artifact {manifest.artifact!r} must be a file name inside the version folder"
        )
    return manifest


def _version_not_found(
    name: str, spec: str, existing: list[str], aliases: Mapping[str, str]
) -> VersionNotFoundError:
    alias_text = ", ".join(f"@{a} -> {v}" for a, v in sorted(aliases.items())) or "none"
    return VersionNotFoundError(
        f"no version of {name!r} matches {spec!r}; versions: {', '.join(existing) or 'none'}; "
        f"aliases: {alias_text}"
    )


@dataclass(frozen=True)
class _Listing:
    """What :meth:`Store.verify` reads of one model, however the store keeps it."""

    versions: dict[Version, str]  # each version found, as it was spelled at save
    open: Callable[[str], ModelVersion]  # a listed version, its manifest read
    aliases: Callable[[], dict[str, str]]  # raises EmbedMLError for unreadable metadata


def _alias_moved(
    name: str, alias: str, expected: str | None, found: str | None, target: ModelVersion
) -> AliasMovedError:
    return AliasMovedError(
        f"{name}@{alias} moved from {expected or 'nothing'} to {found or 'nothing'} "
        f"meanwhile; not moving it to {target.version}",
        expected=expected, found=found,
    )  # fmt: skip


def _same_version(a: str | None, b: str | None) -> bool:
    """Whether two versions read from store metadata are the same (``"1.0"`` is ``"1"``)."""
    if a is None or b is None:
        return a is b
    return V.parse_version(a) == V.parse_version(b)


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
            f"{os.fspath(path)!r} is a {fmt} file: loading or calling it runs code it "
            "contains, and nothing vouches for its bytes. Pass sha256='<expected hex digest>' "
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


def is_remote_url(root: Any) -> bool:
    """Whether ``root`` is a URL other than ``file://`` (``s3://bucket/prefix``, or a scheme
    a remote store refuses with :class:`ConfigurationError`)."""
    return isinstance(root, str) and bool(_URL.match(root)) and not root.lower().startswith("file://")


def store_root(root: str | os.PathLike[str]) -> Path:
    """The absolute local folder ``root`` names. ``file:///path`` is that path; any other
    URL (``s3://``, ``gs://``, ``http://``...) raises :class:`ConfigurationError` instead of
    becoming a folder named ``s3:``."""
    text = os.fspath(root)
    if isinstance(text, str) and _URL.match(text):
        parsed = urllib.parse.urlsplit(text)
        if parsed.scheme.lower() != "file" or parsed.netloc not in ("", "localhost"):
            raise ConfigurationError(
                f"model store {text!r} is a URL, not a local folder: a folder store takes a "
                "path such as './models' or file:///path; a remote store (s3://bucket/prefix) "
                "opens with embedml.ModelStore(url)"
            )
        # what urllib.request.url2pathname does on POSIX, without importing http.client
        text = urllib.parse.unquote(parsed.path)
    return Path(text).expanduser().absolute()


def _inspect(
    fmt: ModelFormat, obj: Any, path: Path, name: str, method: str | None
) -> Runtime | None:
    """A runtime (calling ``method``) to read the interface of a model being saved, or
    ``None`` (logged) when its format cannot build one here: the version is then saved
    without a signature, and loading it reports what is wrong, as before signatures were
    recorded."""
    try:
        return fmt.inspect(obj, path, FormatOptions(method=method))
    except UnsupportedFormatError as exc:
        log.warning("%s: saved without a signature: %s", name, exc)
        return None


class PromotionGate(Protocol):
    """What :meth:`Store.promote` needs of a gate (:class:`embedml.Gate` is one)."""

    def evaluate(self, store: Any, candidate: ModelVersion, current: str | None) -> dict[str, Any]:
        """Score ``candidate`` against ``current`` (the version the alias points to, if
        any); return the scores, or raise :class:`GateFailedError` carrying them."""
        ...


class Store:
    """A directory of models, each with immutable PEP 440 versions and movable aliases.

    This is the store layer's class, which never loads a model; :class:`embedml.ModelStore`
    (use that one) subclasses it and adds :meth:`~embedml.ModelStore.load`, so
    ``isinstance(s, embedml.store.Store)`` holds for every store.

    ``Store(root)`` creates the folder if needed. Alias updates are serialised with an
    advisory file lock (POSIX ``flock``), so several processes may share one store.
    ``root`` is a local folder (``file:///path`` is read as that path); a remote URL such as
    ``s3://bucket/models`` makes a :class:`~embedml.store.RemoteStore` instead (same methods;
    another scheme raises :class:`ConfigurationError`).

    ``store_id`` pins the identity of the store: with ``require_signature=True``, a signed
    store record naming another store (copied from a staging store that uses the same
    key) is refused, and a new record is created under this name (default: a random id).
    Raises :class:`InvalidNameError` for an invalid ``store_id``.
    """

    #: The class :meth:`__new__` makes for a remote URL (``s3://``); set by a subclass
    #: declared with ``remote=True`` (:class:`embedml.store.remote_store.RemoteStore`).
    _remote_class: type[Store] | None = None
    _is_remote = False
    #: Where aliases are kept and the history of a model, as errors and reports name them.
    _aliases_kept_in = _ALIASES
    _history_kept_in = _HISTORY

    def __init_subclass__(cls, remote: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if remote:
            cls._is_remote = True
            # the first base that keeps a local folder opens URLs as this class
            local = next(b for b in cls.__mro__[1:] if issubclass(b, Store) and not b._is_remote)
            local._remote_class = cls

    def __new__(cls, root: Any = None, *args: Any, **kwargs: Any) -> Store:
        """A remote URL (anything but a path or ``file://``) opens the remote variant of
        the class (:class:`~embedml.store.remote_store.RemoteStore` for ``Store``); the
        same public methods, the same guarantees."""
        if not cls._is_remote and is_remote_url(root):
            remote = cls.__dict__.get("_remote_class")
            if remote is None:
                raise ConfigurationError(
                    f"{cls.__name__} keeps models in a local folder; open {root!r} with "
                    "embedml.ModelStore(url) or embedml.store.Store(url)"
                )
            return super().__new__(remote)
        return super().__new__(cls)

    def __init__(self, root: str | os.PathLike[str], *, store_id: str | None = None) -> None:
        self.root = store_root(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._real_root = self.root.resolve()
        self.store_id = check_store_id(store_id) if store_id is not None else None
        # The newest record generation verified by this object: an older one is a replay.
        # No lock (a fork must not inherit a held one): a lost race only forgets a newer
        # generation for a moment, it never accepts a record older than one stored here.
        self._generation = -1

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    # -- paths
    def _model_dir(self, name: str) -> Path:
        path = self.root / V.check_name(name)
        if path.is_symlink() or (path.exists() and self._real_root not in path.resolve().parents):
            raise StoreError(f"model folder {path} leaves the store root {self.root}; refusing it")
        return path

    def _version_dir(self, name: str, version: str) -> Path:
        V.parse_version(version)  # validated like every entry point: no "..", "/", NUL
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
            raise self._no_model(name)
        return [self._spelling(model_dir, v) for v in found]

    @staticmethod
    def _spelling(model_dir: Path, version: Version) -> str:
        """The spelling in the version's manifest; its folder name when the manifest does
        not say (stores written before spellings were kept) or cannot be read (``verify``
        reports that)."""
        folder = V.canonical_version(version)
        # IntegrityError: a symlink or a huge file; RecursionError: deeply nested JSON
        with contextlib.suppress(OSError, ValueError, AttributeError, EmbedMLError, RecursionError):
            saved = json.loads(read_metadata(model_dir / folder / MANIFEST_FILE)).get("version")
            if isinstance(saved, str) and V.parse_version(saved) == version:
                return saved
        return folder

    def aliases(self, name: str) -> dict[str, str]:
        """The aliases of ``name`` and the versions they point to."""
        path = self._model_dir(name) / _ALIASES
        try:
            data = _load_json(read_metadata(path), path)
        except FileNotFoundError:
            return {}
        if not isinstance(data, dict):
            raise IntegrityError(f"{path} must hold an object of alias -> version, got {type(data).__name__}")
        aliases = {}
        for alias, version in data.items():
            try:
                if V.check_alias(alias) != alias:
                    raise InvalidNameError(f"invalid alias {alias!r:.60}")
            except InvalidNameError as exc:
                raise IntegrityError(f"{path}: {exc}") from None
            aliases[alias] = _stored_version(version, f"{path}: @{alias}")
        return aliases

    # -- resolving
    def manifest(self, name: str, version: str) -> Manifest:
        """Read the manifest of one exact version (any spelling: ``"1.0"`` is ``"1"``).

        Raises :class:`InvalidNameError` for an invalid version, :class:`VersionNotFoundError`,
        :class:`IntegrityError` for a manifest that is a symlink, invalid, or of another version.
        """
        return self._read_manifest(name, version)[0]

    def _read_manifest(self, name: str, version: str) -> tuple[Manifest, bytes]:
        version = V.canonical_version(version)
        path = self._version_dir(name, version) / MANIFEST_FILE
        try:
            text = read_metadata(path)
        except FileNotFoundError:
            raise self._not_found(name, version) from None
        return _check_manifest(Manifest.from_json(text, where=str(path)), path, name, version), text

    def resolve(
        self,
        name: str,
        spec: str | int | Version | None = "latest",
        *,
        require_signature: bool = False,
        signing_key: str | bytes | None = None,
    ) -> ModelVersion:
        """The version that ``spec`` picks: ``"latest"``, ``"1.2"``, ``">=1,<2"`` or ``"@alias"``.

        With ``require_signature=True`` the answer must agree with the signed store record
        (key: ``signing_key`` or ``$EMBEDML_SIGNING_KEY``): an alias must point where the
        record says, the version ``"latest"`` or a specifier picks must be the one it picks
        among the recorded versions, and the manifest must be the recorded one; otherwise
        :class:`SignatureError` says what differs (see ``docs/security.md``).

        Raises :class:`ModelNotFoundError` or :class:`VersionNotFoundError` (whose message
        lists the versions and aliases that exist), :class:`InvalidNameError`, and
        :class:`IntegrityError` for tampered store metadata.
        """
        parsed = V.parse_spec(spec)
        if require_signature:
            return self._resolve_signed(name, parsed, signing_key)
        snap = self._snapshot(name)
        existing = self._listed(snap)
        if not existing:
            raise self._no_model(name)
        if parsed.alias is not None:
            target = self._aliases_in(name, snap).get(parsed.alias)
            if target is None:
                raise self._not_found(name, parsed.text, snap)
            chosen: Version | None = V.parse_version(target)
        else:
            chosen = V.select(parsed, existing)
        if chosen is None:
            raise self._not_found(name, parsed.text, snap)
        return self._open(name, snap, V.canonical_version(chosen))[0]

    def _resolve_signed(self, name: str, parsed: V.Spec, signing_key: str | bytes | None) -> ModelVersion:
        key = _require_key(signing_key, "require_signature=True")
        with self._reading(name):  # no alias move or delete half done while we look
            snap = self._snapshot(name)
            record = self._read_record(key)
            if record is None:
                # the version's own signature first: "not signed" says more than "no record"
                self._signed_manifest(self.resolve(name, parsed.text), key)
                raise missing_record(self._record_location)
            signed = record.models.get(name, ModelRecord())
            listed = self._listed(snap)
            recorded = {V.parse_version(v): digest for v, digest in signed.versions.items()}
            if not listed and not recorded:
                raise self._no_model(name)
            if parsed.alias is not None:
                target = self._aliases_in(name, snap).get(parsed.alias)
                expected = signed.aliases.get(parsed.alias)
                if not _same_version(target, expected):
                    raise SignatureError(
                        f"{name}@{parsed.alias}: {self._aliases_kept_in} points it at {target or 'nothing'}, "
                        f"the signed store record at {expected or 'nothing'}; it was moved without "
                        "the key (or a move did not finish): move it again with signing_key="
                    )
                chosen = V.parse_version(target) if target is not None else None
            else:
                chosen = V.select(parsed, listed)
                signed_choice = V.select(parsed, recorded)
                if signed_choice is not None and signed_choice not in listed:
                    raise self._missing(name, signed_choice)
            if chosen is None:
                raise self._not_found(name, parsed.text, snap)
            if chosen not in listed:
                raise self._missing(name, chosen)
            if chosen not in recorded:
                raise SignatureError(
                    f"{name}@{self._spelled(snap, chosen)} is not in the signed store record (saved "
                    "without the key, copied from another store, or its save was interrupted); "
                    "refusing it. If it is yours, sign it: store.sign(name, version, signing_key=...)"
                )
            mv, data = self._open(name, snap, V.canonical_version(chosen), signed=True)
            verify_signature(mv.path, data, key, required=True, label=str(mv))
            if manifest_digest(data) != recorded[chosen]:
                raise SignatureError(
                    f"the manifest of {mv} differs from the one in the signed store "
                    "record (replaced, or copied from another store); refusing it"
                )
        return mv

    # -- what one resolution reads of a model: its folder here (the remote store: its index)
    def _snapshot(self, name: str) -> Any:
        return self._model_dir(name)

    def _listed(self, snap: Any) -> list[Version]:
        """The versions in ``snap``, ascending."""
        return self._versions(snap)

    def _spelled(self, snap: Any, version: Version) -> str:
        """How a listed version was spelled at save."""
        return self._spelling(snap, version)

    def _aliases_in(self, name: str, snap: Any) -> dict[str, str]:
        return self.aliases(name)

    def _open(
        self, name: str, snap: Any, version: str, *, signed: bool = False
    ) -> tuple[ModelVersion, bytes]:
        """A listed version and its manifest's bytes (``signed``: its signature at hand)."""
        manifest, data = self._read_manifest(name, version)
        # shown and recorded (aliases, history) as saved: "2.0rc1", not its folder "2rc1"
        return ModelVersion(name, manifest.version, self._version_dir(name, version), manifest), data

    def _no_model(self, name: str) -> ModelNotFoundError:
        try:
            models = self.models()
        except EmbedMLError:
            models = []
        return ModelNotFoundError(f"no model {name!r} in {self.root}; models: {models or 'none'}")

    def _missing(self, name: str, version: Version) -> SignatureError:
        return SignatureError(
            f"{name}@{version} is in the signed store record but missing from the store "
            "(deleted or hidden without the key); refusing to serve another version instead"
        )

    def _not_found(self, name: str, spec: str, snap: Any = None) -> VersionNotFoundError:
        snap = self._snapshot(name) if snap is None else snap
        existing = [self._spelled(snap, v) for v in self._listed(snap)]
        return _version_not_found(name, spec, existing, self._aliases_in(name, snap))

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
        input_example: Any = None,
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
        ``restricted=True`` load accepts only :data:`~embedml.store.manifest.STANDARD_METHODS`.

        The interface the model declares is read and recorded in the manifest
        (``signature``: scikit-learn feature names, count and classes; ONNX graph inputs
        and outputs with their dimensions; TorchScript argument names; ``torch.export``
        input specs; not read from pickle/joblib *files*, which are not unpickled at
        save). A declared ``input_schema`` that names other inputs than the model is
        refused with :class:`ConfigurationError` naming the difference. ``input_example``
        (a DataFrame, a record, a list of records or an array) adds the column types to
        the signature, is run once to record the outputs, and records ``batch_invariant``:
        whether predicting its rows one at a time gives the outputs of predicting them
        together (a version where it does not refuses ``batching=`` at load).

        A pickle or joblib *file* runs code when loaded, and a TorchScript (``.pt``) or
        ``torch.export`` (``.pt2``) file when called, so saving one needs ``trust=True``
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
        :class:`SchemaError`, :class:`ConfigurationError` (a bad ``method``;
        ``row_wise=True`` on an ONNX graph, whose shapes decide, or on a tensor schema
        without a batch dimension; a schema that names other inputs than the model), with a
        key, :class:`SignatureError` when the store record is not signed with it (checked
        before anything is written), or :class:`PredictionError` (the model failed on
        ``input_example``).
        """
        self._model_dir(name)  # an invalid name fails before anything is written
        key = resolve_key(signing_key)
        if key is not None:
            self._read_record(key)  # fail before writing, not after publishing
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
            profile = profile_for_schema(reference_data, reference_outputs, in_schema).to_json()

        tmp = self._staging_dir(name)
        try:
            artifact = "model" + fmt.suffixes[0]
            if is_path:
                src = Path(model)
                if not src.is_file():
                    raise StoreError(f"no model file at {src}")
                with open(src, "rb") as fin, open(_create_exclusive(tmp / artifact), "wb") as fout:
                    shutil.copyfileobj(fin, fout, _CHUNK)
            else:
                os.close(_create_exclusive(tmp / artifact))
                fmt.dump(model, tmp / artifact)
            digest = sha256_file(tmp / artifact)
            if is_path and sha256 is not None and digest != sha256:
                raise UntrustedArtifactError(
                    f"{os.fspath(model)} has SHA-256 {digest}, not the {sha256} you vouched for; not saving it"
                )
            runtime = _inspect(fmt, None if is_path else model, tmp / artifact, name, method)
            try:
                signature = signature_at_save(
                    runtime, in_schema, input_example, where=f"{name} (saving)",
                    preprocess=preprocess, postprocess=postprocess,
                )  # fmt: skip
            finally:
                if runtime is not None:
                    runtime.close()
            extra_files = {}
            if profile is not None:
                write_atomic(tmp / PROFILE_FILE, profile.encode())
                extra_files[PROFILE_FILE] = sha256_file(tmp / PROFILE_FILE)
            fields = {
                "name": name, "format": fmt.name, "artifact": artifact, "sha256": digest,
                "size": (tmp / artifact).stat().st_size, "input_schema": in_schema,
                "output_schema": out_schema, "preprocess": preprocess, "postprocess": postprocess,
                "metadata": dict(metadata or {}), "embedml": __version__,
                "frameworks": environment(fmt.frameworks(None if is_path else model)),
                "extra_files": extra_files, "method": method, "row_wise": row_wise,
                "signature": signature,
            }  # fmt: skip
            return self._publish(name, tmp, fields, explicit, key)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _staging_dir(self, name: str) -> Path:
        """A new private folder that :meth:`save` fills before :meth:`_publish` (removed after)."""
        model_dir = self._model_dir(name)
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = model_dir / f".tmp-{uuid.uuid4().hex}"
        # Private while it is filled, so that nobody else can plant a symlink in it for a
        # format's writer to follow; given the model folder's permissions before publishing.
        tmp.mkdir(mode=0o700)
        return tmp

    def _publish(
        self,
        name: str,
        tmp: Path,
        fields: dict[str, Any],
        explicit: str | None,
        key: bytes | None = None,
    ) -> ModelVersion:
        """Rename the finished folder into place; on a clash take the next major version.

        Under the model's lock, so that a signed reader never sees the version on disk
        before it is in the store record.
        """
        model_dir = self._model_dir(name)
        os.chmod(tmp, stat.S_IMODE(os.stat(model_dir).st_mode))
        with self._lock(name):
            for _ in range(1000):
                version = explicit or V.next_major(self._versions(model_dir))
                manifest = Manifest(version=version, **fields)
                data = manifest.to_json().encode()
                write_atomic(tmp / MANIFEST_FILE, data)
                if key is not None:
                    write_atomic(tmp / SIGNATURE_FILE, signature_document(data, key))
                final = model_dir / V.canonical_version(version)  # "1.0" and "1" share a folder
                try:
                    os.rename(tmp, final)
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise StoreError(f"cannot publish {name}@{version} as {final}: {exc.strerror}") from None
                    if explicit is not None:
                        raise VersionExistsError(
                            f"{name}@{explicit} already exists; versions are immutable, save a new version"
                        ) from None
                    continue
                fsync_dir(model_dir)
                if key is not None:  # a crash here leaves a version the record does not list
                    self._update_record(key, functools.partial(_record_version, name, version, data))
                return ModelVersion(name, version, final, manifest)
        raise StoreError(f"could not find a free version number for {name!r}")

    # -- locks and the signed store record
    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        """The model's exclusive lock (re-entrant within a thread); never follows a symlink."""
        model_dir = self._model_dir(name)
        model_dir.mkdir(parents=True, exist_ok=True)
        path, held = model_dir / _LOCK, _held_locks()
        if path in held:
            yield
            return
        with locked(path):
            held.add(path)
            try:
                yield
            finally:
                held.discard(path)

    @contextlib.contextmanager
    def _reading(self, name: str) -> Iterator[None]:
        """A shared hold on the model's lock for a signed resolution (skipped when this
        thread already holds it exclusively, e.g. a promotion gate loading a version)."""
        path = self._model_dir(name) / _LOCK
        if path in _held_locks():
            yield
            return
        with locked(path, shared=True):
            yield

    def _read_record(self, key: bytes) -> StoreRecord | None:
        """The verified store record, or ``None`` when the store has none.

        Raises :class:`SignatureError` (wrong key, tampered, another store's, replayed) or
        :class:`IntegrityError` (a symlink, not a regular file).
        """
        try:
            raw = read_metadata(self.root / RECORD_FILE)
        except FileNotFoundError:
            return None
        return self._checked_record(raw, key)

    @property
    def _record_location(self) -> str:
        """Where the signed store record lives, as errors and reports name it."""
        return str(self.root / RECORD_FILE)

    def _checked_record(self, data: bytes, key: bytes) -> StoreRecord:
        """The record in ``data`` once it is signed with ``key``, names this store (when its
        id is pinned) and is not older than one this object verified before; raises
        :class:`SignatureError` / :class:`IntegrityError`."""
        where = self._record_location
        record = parse_record(data, key, where)
        if self.store_id is not None and record.store_id != self.store_id:
            raise SignatureError(
                f"{where} is the record of store {record.store_id!r}, not of {self.store_id!r} "
                "(copied from another store signed with the same key?); refusing it"
            )
        if record.generation < self._generation:
            raise SignatureError(
                f"{where} has generation {record.generation}, older than generation "
                f"{self._generation} already verified by this store object: an older record "
                "was put back; refusing it"
            )
        self._generation = max(self._generation, record.generation)
        return record

    def _update_record(self, key: bytes, change: Callable[[StoreRecord], Any]) -> StoreRecord:
        """Read, change, sign and replace the store record under the store's lock."""
        with locked(self.root / _LOCK):
            record = self._read_record(key) or StoreRecord.new(self.store_id)
            change(record)
            record.generation += 1
            write_atomic(self.root / RECORD_FILE, record.to_bytes(key))
            self._generation = max(self._generation, record.generation)
        return record

    def _signed_manifest(self, mv: ModelVersion, key: bytes) -> bytes:
        """The manifest bytes of ``mv`` after checking its signature with ``key``."""
        path = mv.path / MANIFEST_FILE
        data = read_metadata(path)
        verify_signature(mv.path, data, key, required=True, label=str(mv))
        if Manifest.from_json(data, where=str(path)) != mv.manifest:
            raise SignatureError(f"{mv}: the manifest changed while it was being signed; refusing it")
        return data

    # -- aliases
    def _write_aliases(self, name: str, aliases: dict[str, str]) -> None:
        write_atomic(
            self._model_dir(name) / _ALIASES,
            json.dumps(aliases, indent=2, sort_keys=True).encode(),
        )

    def _append_history(self, name: str, entry: dict[str, Any]) -> dict[str, Any]:
        """Append one entry to ``history.jsonl`` (caller holds the lock) and return it."""
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "ts": time.time(), **entry}
        line = json.dumps(entry, sort_keys=True, default=str) + "\n"
        append_line(self._model_dir(name) / _HISTORY, line.encode())
        return entry

    def _move_alias(
        self, name: str, alias: str, target: ModelVersion, action: str, who: str | None,
        key: bytes | None, *, expected: Any = _ANY, **extra: Any,
    ) -> None:
        """Point ``alias`` at ``target`` (only if it still points at ``expected``, when
        given) and record the move (caller holds the lock).

        With a key the target's manifest signature is checked and the move is signed into
        the store record first (then ``aliases.json``, then the history).
        """
        aliases = self.aliases(name)
        previous = aliases.get(alias)
        if expected is not _ANY and not _same_version(previous, expected):
            raise _alias_moved(name, alias, expected, previous, target)
        if key is not None:
            digest = manifest_digest(self._signed_manifest(target, key))

            def change(record: StoreRecord) -> None:
                signed = record.model(name)
                _check_signed_digest(signed, target, digest, "not moving the alias")
                _sign_alias_move(signed, alias, target, digest, action, signed.aliases.get(alias))

            self._update_record(key, change)
        aliases[alias] = target.version
        self._write_aliases(name, aliases)
        rollback = previous is not None and V.parse_version(target.version) < V.parse_version(previous)
        self._append_history(name, {
            "action": action, "alias": alias, "from": previous, "to": target.version,
            "rollback": rollback, "who": who or current_user(), **extra,
        })  # fmt: skip

    def set_alias(
        self,
        name: str,
        alias: str,
        version: str | int,
        *,
        who: str | None = None,
        signing_key: str | bytes | None = None,
    ) -> ModelVersion:
        """Point ``alias`` (e.g. ``"production"``) at an existing version; returns that version.

        The move is appended to :meth:`history` with ``who`` (default: the OS user); a move
        to an older version than before is marked as a rollback. With a key (``signing_key``
        or ``$EMBEDML_SIGNING_KEY``) the move is signed into the store record, and the
        version must be signed with that key (:class:`SignatureError` otherwise).
        """
        alias = V.check_alias(alias)
        key = resolve_key(signing_key)
        with self._lock(name):
            target = self.resolve(name, V.canonical_version(version))
            self._move_alias(name, alias, target, "set_alias", who, key)
        return target

    def remove_alias(
        self,
        name: str,
        alias: str,
        *,
        who: str | None = None,
        signing_key: str | bytes | None = None,
    ) -> None:
        """Remove an alias; raises :class:`VersionNotFoundError` if it does not exist.

        With a key the removal is signed into the store record too.
        """
        alias = V.check_alias(alias)
        key = resolve_key(signing_key)
        with self._lock(name):
            aliases = self.aliases(name)
            previous = aliases.pop(alias, None)
            if previous is None:
                raise self._not_found(name, f"@{alias}")
            if key is not None:
                self._update_record(key, lambda r: r.model(name).aliases.pop(alias, None))
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
        gate: PromotionGate | None = None,
        who: str | None = None,
        signing_key: str | bytes | None = None,
    ) -> ModelVersion:
        """Point ``alias`` at ``version`` if it passes ``gate`` (an :class:`~embedml.Gate`).

        The gate scores the candidate, and the version the alias points to now, on its
        holdout set; the outcome and scores are appended to :meth:`history` either way
        (an ``action="gate"`` entry, then the ``"promote"`` move when it passed). With a
        key the move is signed as in :meth:`set_alias`.

        The gate runs outside the store's lock (it loads and runs models: other processes
        may move aliases meanwhile); the alias is then moved only if it still points where
        it did when the gate started (compare-and-set under the lock). If it moved,
        :class:`AliasMovedError` is raised and nothing is moved: promote again to score
        against the new version.
        Raises :class:`GateFailedError` (carrying the scores; the alias is not moved),
        :class:`AliasMovedError`, and the errors of :meth:`resolve`, the gate's loads and
        :meth:`set_alias`.
        """
        alias = V.check_alias(alias)
        key = resolve_key(signing_key)
        target = self.resolve(name, V.canonical_version(version))
        previous = self.aliases(name).get(alias)
        gate_entry = None
        if gate is not None:
            gate_entry = {
                "action": "gate", "alias": alias, "from": previous, "to": target.version,
                "who": who or current_user(),
            }  # fmt: skip
            try:
                scores = gate.evaluate(self, target, previous)
            except GateFailedError as exc:
                self._log_gate(name, {**gate_entry, "passed": False, "scores": exc.scores})
                raise
            gate_entry.update(passed=True, scores=scores)
        return self._promote_move(name, alias, target, previous, gate_entry, who, key)

    def _log_gate(self, name: str, entry: dict[str, Any]) -> None:
        """Records a gate's outcome in the history."""
        with self._lock(name):
            self._append_history(name, entry)

    def _promote_move(
        self,
        name: str,
        alias: str,
        target: ModelVersion,
        previous: str | None,
        gate_entry: dict[str, Any] | None,
        who: str | None,
        key: bytes | None,
    ) -> ModelVersion:
        """The end of :meth:`promote`: records the passed gate and moves the alias, if it
        still points at ``previous`` when a gate ran. Returns the version promoted."""
        extra = {"gate": gate_entry["scores"]} if gate_entry is not None else {}
        with self._lock(name):
            if gate_entry is not None:
                self._append_history(name, gate_entry)
            now = self.aliases(name).get(alias)
            if gate_entry is not None and not _same_version(now, previous):
                raise AliasMovedError(
                    f"{name}@{alias} moved from {previous or 'nothing'} to {now or 'nothing'} "
                    f"while the gate scored {target}; not promoting it (promote again to "
                    "score against the new version)",
                    expected=previous,
                    found=now,
                )
            # the version may have been deleted (or replaced) while the gate ran
            current = self.resolve(name, target.version)
            if current.manifest.sha256 != target.manifest.sha256:
                raise IntegrityError(f"{target} changed while its gate ran; not promoting it")
            self._move_alias(name, alias, current, "promote", who, key, **extra)
        return current

    def rollback(
        self,
        name: str,
        alias: str = "production",
        *,
        who: str | None = None,
        signing_key: str | bytes | None = None,
    ) -> ModelVersion:
        """Move ``alias`` back to the version it had before the move that set its current one.

        Repeated rollbacks walk further back (3 -> 2 -> 1); the move is recorded with
        ``action="rollback"``. Returns that version. With a key and a signed store record
        the earlier version comes from the record's signed moves (the history file is not
        signed), and the move is signed. Raises :class:`StoreError` when there is no earlier
        version for the alias, :class:`SignatureError` when ``aliases.json`` disagrees
        with the record.
        """
        alias = V.check_alias(alias)
        key = resolve_key(signing_key)
        with self._lock(name):
            current = self.aliases(name).get(alias)
            record = self._read_record(key) if key is not None else None
            if record is not None:
                signed = record.models.get(name, ModelRecord())
                if not _same_version(signed.aliases.get(alias), current):
                    raise SignatureError(
                        f"{name}@{alias}: {self._aliases_kept_in} points it at {current or 'nothing'}, the "
                        f"signed store record at {signed.aliases.get(alias) or 'nothing'}; not "
                        "rolling back from a state the key did not sign"
                    )
                moves = [(before, to) for before, to in signed.moves.get(alias, [])]
            else:
                moves = [
                    (entry.get("from"), entry.get("to"))
                    for entry in self.history(name, alias=alias)
                    if entry["action"] in _MOVES
                ]
            for before, to in reversed(moves):
                if to is not None and _same_version(to, current):
                    if before is None:
                        break
                    target = self.resolve(name, before)
                    self._move_alias(name, alias, target, "rollback", who, key, expected=current)
                    return target
            raise StoreError(f"the history of {name}@{alias} has no earlier version to roll back to")

    def history(self, name: str, *, alias: str | None = None) -> list[dict[str, Any]]:
        """Alias moves and gate outcomes of ``name``, oldest first (optionally of one alias).

        Each entry has ``time`` (UTC, ISO 8601), ``ts``, ``action`` (``"set_alias"``,
        ``"promote"``, ``"rollback"``, ``"remove_alias"`` or ``"gate"``), ``alias``,
        ``from`` / ``to`` versions, ``who``; moves have ``rollback`` (true when the alias
        went to an older version), promotions ``gate`` (the scores); gate entries have
        ``passed`` and ``scores``. Lines that are not JSON (a writer killed mid-line) are
        skipped with a warning; a JSON line that is not a valid entry (tampering) raises
        :class:`IntegrityError` naming the line. The history is not signed: signed
        rollbacks use the store record instead.
        """
        path = self._model_dir(name) / _HISTORY
        try:
            lines = read_metadata(path, 1 << 30).split(b"\n")
        except FileNotFoundError:
            return []
        entries = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except (ValueError, RecursionError):
                log.warning("%s line %d is not valid JSON; skipped", path, i)
                continue
            entry = _history_entry(entry, f"{path} line {i}")
            if alias is None or entry.get("alias") == alias:
                entries.append(entry)
        return entries

    def delete(self, name: str, version: str | int, *, signing_key: str | bytes | None = None) -> None:
        """Delete one version. Refuses (:class:`StoreError`) while an alias points to it.

        In a signed store pass the key (or set ``$EMBEDML_SIGNING_KEY``): the version leaves
        the store record first; deleted without it, signed loads report it missing.
        """
        key = resolve_key(signing_key)
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
            if key is not None:
                self._update_record(key, lambda r: r.model(name).drop_version(target.version))
            trash = target.path.with_name(f".trash-{uuid.uuid4().hex}")
            os.rename(target.path, trash)
            shutil.rmtree(trash, ignore_errors=True)

    # -- copying versions between stores (embedml.store.transfer)
    def version_documents(self, mv: ModelVersion) -> tuple[bytes, bytes | None]:
        """The version's ``manifest.json`` and ``manifest.sig`` bytes as stored (``None``:
        unsigned), for a byte-identical copy. Raises :class:`IntegrityError` when the
        manifest is not the one ``mv`` was resolved from."""
        data = read_metadata(mv.path / MANIFEST_FILE)
        if Manifest.from_json(data, where=str(mv.path / MANIFEST_FILE)) != mv.manifest:
            raise IntegrityError(f"{mv}: the manifest changed since it was resolved")
        try:
            signature: bytes | None = read_metadata(mv.path / SIGNATURE_FILE, 1 << 16)
        except FileNotFoundError:
            signature = None
        return data, signature

    def import_version(
        self,
        name: str,
        manifest_bytes: bytes,
        signature: bytes | None,
        files: Mapping[str, bytes],
        *,
        signing_key: str | bytes | None = None,
    ) -> bool:
        """Adds a version copied from another store, keeping its manifest and signature
        bytes; ``files`` are the artifact and extra files the manifest names (each checked
        against its SHA-256). Returns ``False`` if the store already holds this very
        manifest (nothing to do), ``True`` once added.

        With a key the version is recorded in this store's signed record, which needs its
        signature to verify with that key (:class:`SignatureError` otherwise, before
        anything is written). Raises :class:`VersionExistsError` when the store holds
        another manifest under that version, :class:`IntegrityError` for files that do not
        match the manifest.
        """
        manifest = check_import(name, manifest_bytes, files)
        key = resolve_key(signing_key)
        folder = V.canonical_version(manifest.version)
        with self._lock(name):
            final = self._version_dir(name, folder)
            if (final / MANIFEST_FILE).is_file():
                if read_metadata(final / MANIFEST_FILE) == manifest_bytes:
                    return False
                raise VersionExistsError(f"{name}@{manifest.version} already exists with another manifest")
            if key is not None:
                self._read_record(key)  # refuse a record of another key before writing anything
            tmp = self._staging_dir(name)
            try:
                for filename, data in files.items():
                    write_atomic(tmp / filename, data)
                write_atomic(tmp / MANIFEST_FILE, manifest_bytes)
                if signature is not None:
                    write_atomic(tmp / SIGNATURE_FILE, signature)
                if key is not None:
                    verify_signature(tmp, manifest_bytes, key, required=True, label=f"{name}@{manifest.version}")
                os.chmod(tmp, stat.S_IMODE(os.stat(self._model_dir(name)).st_mode))
                try:
                    os.rename(tmp, final)
                except OSError as exc:
                    if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                        raise VersionExistsError(f"{name}@{manifest.version} already exists") from None
                    raise StoreError(f"cannot publish {name}@{manifest.version} as {final}: {exc.strerror}") from None
                fsync_dir(final.parent)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            if key is not None:
                self._update_record(
                    key, functools.partial(_record_version, name, manifest.version, manifest_bytes)
                )
        return True

    def sign(self, name: str, version: str | int, *, signing_key: str | bytes | None = None) -> Path:
        """Sign (or re-sign) an existing version's manifest and add it to the signed store
        record; returns the ``manifest.sig`` path.

        Use it to sign versions saved before signing was turned on, after checking them
        (for example with :meth:`verify`). Raises :class:`ConfigurationError` without a key,
        :class:`SignatureError` when the store record is signed with another key.
        """
        key = _require_key(signing_key, "sign()")
        with self._lock(name):
            mv = self.resolve(name, V.canonical_version(version))
            path = mv.path / MANIFEST_FILE
            data = read_metadata(path)
            if Manifest.from_json(data, where=str(path)) != mv.manifest:
                raise IntegrityError(f"{mv}: the manifest changed while it was being signed")
            self._read_record(key)  # refuse a record of another key before writing anything
            self._write_signature(mv, signature_document(data, key))
            self._update_record(key, functools.partial(_record_version, name, mv.version, data))
        return mv.path / SIGNATURE_FILE

    def _write_signature(self, mv: ModelVersion, document: bytes) -> None:
        """Stores ``manifest.sig`` of ``mv`` (replacing one that is there)."""
        write_atomic(mv.path / SIGNATURE_FILE, document)

    def sign_store(self, *, signing_key: str | bytes | None = None) -> dict[str, str | None]:
        """Write the signed store record from what the store holds now (the migration of a
        store made before the record existed, or a rebuild after checking a tampered one).

        Records every version whose manifest signature verifies with the key and whose
        files match their hashes, the aliases pointing to those versions, and the alias
        moves of the history. Returns ``{"name@version" or "name@alias": None if recorded,
        else why not}``; versions of an older record missing from the store are reported.
        Run :meth:`verify` first: this vouches for the store as it is. Raises
        :class:`ConfigurationError` without a key.
        """
        key = _require_key(signing_key, "sign_store()")
        report: dict[str, str | None] = {}
        models = self.models()
        with self._holding_all(models):
            try:
                old = self._read_record(key)
            except IntegrityError:
                old = None
            record = StoreRecord.new(self.store_id or (old.store_id if old else None))
            for model in models:
                self._record_model(model, record.model(model), key, report)
            for model, signed in (old.models.items() if old else ()):
                for version in signed.versions:
                    if record.model(model).digest_of(version) is None and f"{model}@{version}" not in report:
                        report[f"{model}@{version}"] = "in the old store record but missing from the store: dropped"
            self._replace_record(key, record, old)
        return report

    @contextlib.contextmanager
    def _holding_all(self, models: list[str]) -> Iterator[None]:
        """The locks of ``models`` (sorted: one order for every caller, so no deadlock)
        and of the store record."""
        with contextlib.ExitStack() as stack:
            for model in models:
                stack.enter_context(self._lock(model))
            stack.enter_context(locked(self.root / _LOCK))
            yield

    def _replace_record(self, key: bytes, record: StoreRecord, old: StoreRecord | None) -> None:
        """Writes ``record`` in place of ``old`` (caller holds :meth:`_holding_all`)."""
        record.generation = max(self._generation, old.generation if old else 0) + 1
        write_atomic(self.root / RECORD_FILE, record.to_bytes(key))
        self._generation = max(self._generation, record.generation)

    def _record_model(self, model: str, signed: ModelRecord, key: bytes, report: dict[str, str | None]) -> None:
        for version in self.versions(model):
            label = f"{model}@{version}"
            try:
                mv = self.resolve(model, version)
                digest = manifest_digest(self._signed_manifest(mv, key))
                self.read_artifact(mv)
                for extra in mv.manifest.extra_files:
                    self.read_extra_file(mv, extra)
            except EmbedMLError as exc:
                report[label] = str(exc)
                continue
            signed.set_version(version, digest)
            report[label] = None
        try:
            aliases = self.aliases(model)
        except EmbedMLError as exc:
            report[f"{model}/{_ALIASES}"] = str(exc)
            return
        try:
            history = self.history(model)
        except EmbedMLError as exc:  # the aliases are recorded; a rollback has no moves yet
            report[f"{model}/{_HISTORY}"] = str(exc)
            history = []
        for alias, version in sorted(aliases.items()):
            if signed.digest_of(version) is not None:
                signed.aliases[alias] = version
                report[f"{model}@{alias}"] = None
            else:
                report[f"{model}@{alias}"] = f"points at {version}, which is not recorded"
        for entry in history:
            alias, to = entry.get("alias"), entry.get("to")
            if entry["action"] in _MOVES and alias in signed.aliases and to and signed.digest_of(to):
                signed.move(alias, entry.get("from"), to)

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
        restricted: bool = False,
        trusted_callables: list[Any] | tuple[Any, ...] = (),
    ) -> dict[str, str | None]:
        """Audit the store (or one model): ``{"name@version": error or None}``.

        Every artifact and extra file is re-hashed. With a key (argument or
        ``$EMBEDML_SIGNING_KEY``) manifest signatures and the signed store record are
        checked too: a version whose manifest differs from the recorded one, a recorded
        version missing from the store (``"name@version"``), and an alias that
        ``aliases.json`` points elsewhere than the record (``"name@alias"``) are reported;
        with ``require_signature=True`` so are unsigned versions, versions and aliases the
        record does not hold, and a store without a record (``"(store record)"``).
        A version saved with a ``method`` outside :data:`~embedml.store.manifest.STANDARD_METHODS`
        is reported too (``restricted=True`` loads refuse it). With ``restricted=True`` the
        audit is for ``load(..., restricted=True, trusted_callables=...)``: manifest import
        paths such a load refuses (``preprocess`` / ``postprocess`` not in
        ``trusted_callables``) are reported too; artifacts are not deserialised (the types
        inside a pickle are checked when it loads).
        Unreadable metadata is reported as ``"name/aliases.json"`` / ``"name/history.jsonl"``
        / ``"(store record)"``; a problem in one place never stops the audit of the rest.
        Aliases and metadata files appear only when something is wrong with them.
        """
        key = (
            _require_key(signing_key, "require_signature=True")
            if require_signature
            else resolve_key(signing_key)
        )
        report: dict[str, str | None] = {}
        callables = tuple(trusted_callables) if restricted else None  # None: not audited
        record: StoreRecord | None = None
        if key is not None:
            try:
                record = self._read_record(key)
                if record is None and require_signature:
                    report["(store record)"] = str(missing_record(self._record_location))
            except IntegrityError as exc:
                report["(store record)"] = str(exc)
        models = [name] if name else sorted(set(self.models()) | set(record.models if record else ()))
        for model in models:
            signed = record.models.get(model, ModelRecord()) if record else None
            self._verify_model(model, key, require_signature, signed, report, callables)
        return report

    def _verify_model(
        self,
        model: str,
        key: bytes | None,
        require_signature: bool,
        signed: ModelRecord | None,
        report: dict[str, str | None],
        trusted_callables: tuple[Any, ...] | None = None,
    ) -> None:
        recorded = {V.parse_version(v): v for v in signed.versions} if signed else {}
        listing = self._listing(model, key, report)
        if listing is None:
            return
        for version in listing.versions.values():
            label = f"{model}@{version}"
            try:
                mv = listing.open(version)
                if key is not None:
                    data = read_metadata(mv.path / MANIFEST_FILE)
                    verify_signature(mv.path, data, key, required=require_signature, label=label)
                    digest = signed.digest_of(version) if signed is not None else None
                    if digest is not None and digest != manifest_digest(data):
                        raise SignatureError(
                            f"the manifest of {label} differs from the one in the signed store "
                            "record (replaced, or copied from another store)"
                        )
                    if digest is None and signed is not None and require_signature:
                        raise SignatureError(f"{label} is not in the signed store record")
                self.read_artifact(mv)
                for extra in mv.manifest.extra_files:
                    self.read_extra_file(mv, extra)
                problem = method_problem(mv.manifest)
                if trusted_callables is not None:  # verify(restricted=True)
                    refused = refused_import_paths(mv.manifest, trusted_callables)
                    if refused:
                        paths = str(import_paths_error(label, refused))
                        problem = paths if problem is None else f"{problem}; {paths}"
                report[label] = problem
            except EmbedMLError as exc:
                report[label] = str(exc)
        for parsed, spelling in recorded.items():
            if parsed not in listing.versions:
                report[f"{model}@{spelling}"] = (
                    "listed in the signed store record but missing from the store "
                    "(deleted or hidden without the key)"
                )
        try:
            aliases: dict[str, str] | None = listing.aliases()
        except EmbedMLError as exc:
            report[f"{model}/{self._aliases_kept_in}"] = str(exc)
            aliases = None
        if signed is not None and aliases is not None:
            for alias in sorted(set(aliases) | set(signed.aliases)):
                target, expected = aliases.get(alias), signed.aliases.get(alias)
                if not _same_version(target, expected) and (expected is not None or require_signature):
                    report[f"{model}@{alias}"] = (
                        f"{self._aliases_kept_in} points @{alias} at {target or 'nothing'}, the "
                        f"signed store record at {expected or 'nothing'} (moved without the key?)"
                    )
        try:
            self.history(model)
        except EmbedMLError as exc:
            report[f"{model}/{self._history_kept_in}"] = str(exc)

    def _listing(self, model: str, key: bytes | None, report: dict[str, str | None]) -> _Listing | None:
        """What :meth:`verify` checks of ``model`` (``None``, reported, when it cannot be
        listed at all)."""
        model_dir = self._model_dir(model)
        return _Listing(
            versions={v: self._spelling(model_dir, v) for v in self._versions(model_dir)},
            open=lambda version: self.resolve(model, version),
            aliases=lambda: self.aliases(model),
        )


#: The name this class had before :mod:`embedml.serving.load` added loading to it.
ModelStore = Store
