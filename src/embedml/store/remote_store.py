"""``RemoteStore``: the :class:`~embedml.store.Store` API over an object store (``s3://``, ``gs://``).

``Store("s3://bucket/prefix")`` (and :class:`embedml.ModelStore` with a URL) makes one of
these. It keeps the local store's public methods and guarantees with conditional writes
instead of file locks (see ``docs/remote-stores.md``). Objects under the prefix::

    .embedml-store.json                          marker: create-only by the first writer
    .embedml-record.json                         the signed store record (compare-and-swap)
    blobs/sha256/<hex>                           artifacts and extra files, by content
    models/<name>/versions/<v>/manifest.json     create-only: one publisher wins a version
    models/<name>/versions/<v>/manifest.sig      its signature
    models/<name>/index.json                     seq, versions (with their manifests' SHA-256), aliases
    models/<name>/log/<seq, 20 digits>.json      one change per object, create-only slots

Every change of a model's index (a published version, an alias move, a gate outcome, a
deletion) first takes the next log slot with a create-only write, then moves the index to
that slot with a compare-and-swap on its ETag. Two writers cannot take one slot, so no
change is lost and the log is the complete, ordered history; a writer that died between
its slot and the index is rolled forward by the next writer (the slot holds the whole
change). A version is visible once the index lists it: its blobs and manifest are written
before, so a crash mid-save leaves nothing visible.

Reading: aliases and ``latest`` come from the index, fetched with a conditional GET (a
``304`` when it did not change); manifests (immutable) and artifacts are kept in the
verified local cache (:class:`~embedml.store.local_cache.LocalCache`), downloaded once
per machine and hashed before anything is deserialised. ``offline=True`` (or
``EMBEDML_OFFLINE=1``) serves the last index and the manifests the cache holds, and logs
that it does.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from packaging.version import Version

from ..errors import (
    CacheMissError,
    ConfigurationError,
    EmbedMLError,
    IntegrityError,
    NotAStoreError,
    ObjectExistsError,
    ObjectNotFoundError,
    PreconditionFailedError,
    StoreError,
    VersionExistsError,
    VersionNotFoundError,
)
from . import versions as V
from .local_cache import LocalCache
from .manifest import (
    MANIFEST_FILE,
    Manifest,
)
from .model_store import (
    _ANY,
    ModelVersion,
    Store,
    _alias_moved,
    _check_manifest,
    _check_signed_digest,
    _Listing,
    _record_version,
    _same_version,
    _sign_alias_move,
    check_import,
    current_user,
)
from .objects import ObjectStore, open_object_store
from .record import (
    RECORD_FILE,
    ModelRecord,
    StoreRecord,
    check_store_id,
    manifest_digest,
)
from .remote_layout import (
    MARKER,
    MARKER_KEY,
    ModelIndex,
    blob_key,
    index_key,
    log_entry,
    log_key,
    now_fields,
    version_key,
)
from .safe_io import read_metadata, write_atomic
from .signing import SIGNATURE_FILE, resolve_key, signature_document, verify_signature

__all__ = ["MARKER_KEY", "RemoteStore"]

log = logging.getLogger("embedml.store")

# Bounded retries of a compare-and-swap that keeps losing (each loss is another writer's
# progress, so this is only reached under extreme contention).
_MAX_ROUNDS = 1000
_HISTORY_ACTIONS = ("set_alias", "promote", "rollback", "remove_alias", "gate")


class RemoteStore(Store, remote=True):
    """A model store in an object store: ``Store("s3://bucket/prefix")``, ``"gs://..."``.

    The same methods as the folder store (:class:`~embedml.store.Store`), with the same
    guarantees, kept with conditional writes (see the module docstring and
    ``docs/remote-stores.md``). ``storage_options`` go to the object store (for S3, s3fs's
    ``key``, ``secret``, ``endpoint_url``, ``client_kwargs``...; by default botocore's
    chain: ``AWS_*`` variables, profiles, instance roles; for GCS, gcsfs's ``token``,
    ``project``, ``endpoint_url``...; by default google-auth's chain). ``offline`` (default:
    ``EMBEDML_OFFLINE``) serves only what the local cache holds; ``cache_dir`` (default
    ``EMBEDML_CACHE_DIR``) is that cache. ``retries``, ``connect_timeout``,
    ``read_timeout``, ``backoff`` tune the object store's retries.

    Raises :class:`ConfigurationError` for an unsupported URL scheme,
    :class:`~embedml.errors.MissingExtraError` without the ``s3`` / ``gcs`` extra; on first use,
    :class:`~embedml.errors.NotAStoreError` when the prefix holds something that is not an
    embedml store, and the :class:`~embedml.errors.RemoteStoreError` family (naming the URL
    and operation) when the store cannot be reached or refuses the credentials.
    """

    _aliases_kept_in = "the store's index"
    _history_kept_in = "log"

    def __init__(
        self,
        root: str,
        *,
        store_id: str | None = None,
        storage_options: dict[str, Any] | None = None,
        offline: bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        **object_options: Any,
    ) -> None:
        if not isinstance(root, str):
            raise ConfigurationError(f"a remote store takes a URL, got {root!r}")
        self.objects: ObjectStore = open_object_store(
            root, storage_options=storage_options, **object_options
        )
        self.url = self.objects.url
        self.root = self.url  # type: ignore[assignment]  (a URL: what errors and caches name)
        self.storage_options = dict(storage_options or {})
        self.cache = LocalCache(cache_dir, offline=offline)
        self.offline = self.cache.offline
        self.store_id = check_store_id(store_id) if store_id is not None else None
        self._generation = -1
        self._meta = self.cache.root / "stores" / hashlib.sha256(self.url.encode()).hexdigest()[:16]
        self._indexes: dict[str, ModelIndex] = {}
        self._log_cache: dict[str, dict[str, Any]] = {}
        self._checked = False
        self._said_offline: set[str] = set()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}{', offline=True' if self.offline else ''})"

    def close(self) -> None:
        """Closes the object store's connections (they reopen when the store is used)."""
        self.objects.close()

    def as_class(self, cls: type[RemoteStore]) -> RemoteStore:
        """This store as an instance of ``cls`` (a subclass, e.g. with ``load``), sharing
        its object store, cache and caches."""
        other = object.__new__(cls)
        other.__dict__.update(self.__dict__)
        return other

    # -- the marker: an empty prefix is an empty store, anything else must be a store
    def _check_store(self, *, writing: bool = False) -> None:
        if self._checked or self.offline:
            return
        try:
            marker = self.objects.get(MARKER_KEY)
        except ObjectNotFoundError:
            found = self.objects.list("")
            # The first writer puts the marker before anything else: if objects appeared
            # since our GET, the marker did too.
            if found and not any(o.key == MARKER_KEY for o in found):
                raise NotAStoreError(
                    f"holds {len(found)} object(s) (e.g. {found[0].key!r}) but no "
                    f"{MARKER_KEY}: not an embedml store; refusing to read or write it "
                    "(give an empty prefix or an existing store)",
                    url=self.url,
                    operation="open",
                ) from None
            if found:
                marker = self.objects.get(MARKER_KEY)
            elif not writing:
                return  # an empty store (until someone saves)
            else:
                try:
                    self.objects.put_new(MARKER_KEY, json.dumps(MARKER, sort_keys=True).encode())
                except ObjectExistsError:  # another first writer: check theirs
                    marker = self.objects.get(MARKER_KEY)
                else:
                    self._checked = True
                    return
        try:
            doc = json.loads(marker.data)
            ok = isinstance(doc, dict) and doc.get("format") == MARKER["format"]
        except (ValueError, RecursionError):
            ok = False
        if not ok:
            raise NotAStoreError(
                f"{MARKER_KEY} is not an embedml store marker", url=self.url, operation="open"
            )
        self._checked = True

    def _writing(self) -> None:
        """Refuses a change offline; otherwise checks the marker (the first writer puts it)."""
        if self.offline:
            raise ConfigurationError(f"{self.url} is opened offline: it cannot be changed")
        self._check_store(writing=True)

    # -- paths (names only: nothing is local but the cache)
    def _model_dir(self, name: str) -> Path:
        return self._meta / "models" / V.check_name(name)

    def _staging_dir(self, name: str) -> Path:
        V.check_name(name)
        return Path(tempfile.mkdtemp(prefix="embedml-save-"))

    # -- the index and the log
    def _say_offline(self, what: str) -> None:
        if what not in self._said_offline:
            self._said_offline.add(what)
            log.warning(
                "%s: offline (EMBEDML_OFFLINE / offline=True): serving %s as the local cache "
                "at %s last saw it; the store may have moved on",
                self.url, what, self.cache.root,
            )  # fmt: skip

    def _index(self, name: str) -> ModelIndex:
        """The model's index from the store (a conditional GET when one is held); offline,
        the last one this machine saw."""
        V.check_name(name)
        cached = self._model_dir(name) / "index.json"
        if self.offline:
            try:
                data = read_metadata(cached)
            except FileNotFoundError:
                raise CacheMissError(
                    f"offline: the cache at {self.cache.root} holds no index of {name!r}",
                    url=self.url, operation="get", key=index_key(name),
                ) from None  # fmt: skip
            self._say_offline(f"the aliases and versions of {name!r}")
            return ModelIndex.parse(data, None, str(cached))
        self._check_store()
        key = index_key(name)
        held = self._indexes.get(name)
        try:
            got = (
                self.objects.get_if_changed(key, held.etag)
                if held and held.etag
                else self.objects.get(key)
            )
        except ObjectNotFoundError:
            return ModelIndex()
        if got is None:
            assert held is not None
            return held
        index = ModelIndex.parse(got.data, got.etag, f"{self.url}/{key}")
        self._keep(name, index, got.data)
        return index

    def _keep(self, name: str, index: ModelIndex, data: bytes) -> None:
        """Remembers the index read or written last (in memory: its ETag for the next
        conditional GET; on disk: for offline mode)."""
        self._indexes[name] = index
        with contextlib.suppress(OSError):  # the offline copy is a convenience
            cached = self._model_dir(name) / "index.json"
            cached.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(cached, data)

    def _slot(self, name: str, seq: int) -> dict[str, Any] | None:
        key = log_key(name, seq)
        entry = self._log_cache.get(key)
        if entry is not None:
            return entry
        try:
            got = self.objects.get(key)
        except ObjectNotFoundError:
            return None
        entry = log_entry(got.data, f"{self.url}/{key}")
        if entry["seq"] != seq:
            raise IntegrityError(f"{self.url}/{key} says seq {entry['seq']}")
        self._log_cache[key] = entry
        return entry

    def _advance(self, name: str, index: ModelIndex, entry: dict[str, Any]) -> None:
        """Moves the index to ``entry``'s slot (compare-and-swap); a lost race means
        another writer applied that very slot (the only way the index can move)."""
        new = index.applied(entry)
        data = new.to_bytes()
        try:
            if index.etag is None:
                new.etag = self.objects.put_new(index_key(name), data)
            else:
                new.etag = self.objects.put_if(index_key(name), data, index.etag)
        except PreconditionFailedError:  # ObjectExistsError too
            self._indexes.pop(name, None)
            return
        self._keep(name, new, data)

    def _commit(self, name: str, make: Callable[[ModelIndex], dict[str, Any]]) -> dict[str, Any]:
        """Appends the entry ``make(index)`` returns to the model's log, then moves the index
        to it. ``make`` sees the current index and may raise to refuse the change."""
        self._writing()
        for _ in range(_MAX_ROUNDS):
            index = self._index(name)
            slot = index.seq + 1
            pending = self._slot(name, slot)
            if pending is not None:  # taken by a writer that has not moved the index (yet)
                self._advance(name, index, pending)
                continue
            entry = {**now_fields(), **make(index), "seq": slot}
            data = json.dumps(entry, sort_keys=True, default=str).encode()
            try:
                self.objects.put_new(log_key(name, slot), data)
            except ObjectExistsError:
                continue
            self._log_cache[log_key(name, slot)] = entry
            self._advance(name, index, entry)
            return entry
        raise StoreError(
            f"{self.url}: could not change {name!r}: {_MAX_ROUNDS} writers got in first"
        )

    # -- listing
    def models(self) -> list[str]:
        """Names of the models that have at least one version, sorted."""
        if self.offline:
            root = self._meta / "models"
            names = (
                sorted(p.name for p in root.iterdir() if (p / "index.json").is_file())
                if root.is_dir()
                else []
            )
        else:
            self._check_store()
            names = sorted(
                {
                    o.key.split("/")[1]
                    for o in self.objects.list("models")
                    if o.key.endswith("/index.json") and o.key.count("/") == 2
                }
            )
        return [n for n in names if self._index(n).versions]

    def versions(self, name: str) -> list[str]:
        """Versions of ``name``, ascending by PEP 440, each spelled as it was saved; raises
        :class:`ModelNotFoundError`."""
        index = self._index(name)
        if not index.versions:
            raise self._no_model(name)
        return [index.spelling(v) for v in index.parsed()]  # type: ignore[misc]

    def aliases(self, name: str) -> dict[str, str]:
        """The aliases of ``name`` and the versions they point to (read from the store)."""
        return dict(self._index(name).aliases)

    # -- versions: manifests in the cache
    def _folder(
        self,
        name: str,
        version: str,
        digest: str | None = None,
        *,
        refresh_signature: bool = False,
    ) -> Path:
        """The cache folder holding the version's manifest (and signature, if any),
        fetched from the store the first time (a published manifest never changes).

        ``digest`` is the manifest's SHA-256 as the index lists it: a cached manifest of
        other bytes (the version was deleted and published again) is fetched again, and
        a stored one of other bytes is an :class:`IntegrityError`.
        """
        folder_name = V.canonical_version(version)
        folder = self._model_dir(name) / "versions" / folder_name
        manifest_path = folder / MANIFEST_FILE
        have = manifest_path.is_file()
        if have and digest is not None and manifest_digest(read_metadata(manifest_path)) != digest:
            if self.offline:
                raise IntegrityError(
                    f"offline: the cached manifest of {name}@{version} is not the one the "
                    "last index seen lists"
                )
            have, refresh_signature = False, True  # replaced in the store: fetch it again
        if have and not refresh_signature:
            return folder
        if self.offline:
            if have:
                return folder
            raise CacheMissError(
                f"offline: the cache at {self.cache.root} does not hold {name}@{version}",
                url=self.url, operation="get", key=version_key(name, folder_name, MANIFEST_FILE),
            )  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        try:
            sig = self.objects.get(version_key(name, folder_name, SIGNATURE_FILE)).data
            write_atomic(folder / SIGNATURE_FILE, sig)
        except ObjectNotFoundError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / SIGNATURE_FILE)
        if not have:
            try:
                data = self.objects.get(version_key(name, folder_name, MANIFEST_FILE)).data
            except ObjectNotFoundError:
                raise IntegrityError(
                    f"{name}@{version} is listed in the index of {self.url} but its manifest is missing"
                ) from None
            if digest is not None and manifest_digest(data) != digest:
                raise IntegrityError(
                    f"the manifest of {name}@{version} in {self.url} is not the one its index "
                    "lists (replaced after publishing); refusing it"
                )
            write_atomic(manifest_path, data)  # last: a folder with a manifest is complete
        return folder

    def _read_manifest(
        self, name: str, version: str, digest: str | None = None
    ) -> tuple[Manifest, bytes]:
        folder = self._folder(name, version, digest)
        path = folder / MANIFEST_FILE
        data = read_metadata(path)
        manifest = Manifest.from_json(
            data, where=f"{self.url}/{version_key(name, folder.name, MANIFEST_FILE)}"
        )
        return _check_manifest(manifest, path, name, version), data

    # -- what one resolution reads of a model: the index, fetched once
    def _snapshot(self, name: str) -> ModelIndex:
        return self._index(name)

    def _listed(self, snap: ModelIndex) -> list[Version]:
        return snap.parsed()

    def _spelled(self, snap: ModelIndex, version: Version) -> str:
        return snap.spelling(version)  # type: ignore[return-value]

    def _aliases_in(self, name: str, snap: ModelIndex) -> dict[str, str]:
        return snap.aliases

    def _open(
        self, name: str, snap: ModelIndex, version: str, *, signed: bool = False
    ) -> tuple[ModelVersion, bytes]:
        spelling = snap.spelling(version)
        if spelling is None:
            raise self._not_found(name, version, snap)
        digest = snap.digest(spelling)
        if signed:  # fetch a signature added since the manifest was cached
            cached = self._model_dir(name) / "versions" / V.canonical_version(spelling)
            missing = not (cached / SIGNATURE_FILE).is_file()
            self._folder(name, spelling, digest, refresh_signature=missing)
        manifest, data = self._read_manifest(name, spelling, digest)
        folder = self._folder(name, spelling, digest)
        return ModelVersion(name, manifest.version, folder, manifest), data

    def manifest(self, name: str, version: str) -> Manifest:
        """The manifest of one exact version (any spelling). Raises
        :class:`VersionNotFoundError`, :class:`IntegrityError`."""
        return self._open(name, self._index(name), V.canonical_version(version))[0].manifest

    @contextlib.contextmanager
    def _reading(self, name: str) -> Iterator[None]:
        yield  # the snapshot is one index: nothing to hold

    # -- artifacts: through the verified local cache
    def _cached_bytes(self, mv: ModelVersion, what: str, sha256: str, size: int | None) -> bytes:
        for attempt in (0, 1):
            try:
                path = self.cache.fetch(
                    self.objects, blob_key(sha256), sha256, size=size, verify=False
                )
            except ObjectNotFoundError:
                raise IntegrityError(f"{what} of {mv} is missing from {self.url}") from None
            except IntegrityError as exc:
                raise IntegrityError(
                    f"{what} of {mv}: the store holds other bytes: {exc}"
                ) from None
            data = read_metadata(path, 1 << 62)
            if (size is None or len(data) == size) and hashlib.sha256(data).hexdigest() == sha256:
                return data
            if attempt == 0 and not self.offline:  # damaged in the cache: fetch it again
                log.warning(
                    "%s of %s: the cached copy at %s is damaged; fetching it again", what, mv, path
                )
                self.cache.discard(sha256)
        raise IntegrityError(
            f"{what} of {mv} does not match its SHA-256 in the manifest; not loading it"
        )

    def read_artifact(self, mv: ModelVersion) -> bytes:
        """The artifact's bytes, from the local cache (downloaded once per machine), after
        checking size and SHA-256 against the manifest. Raises :class:`IntegrityError`,
        :class:`~embedml.errors.CacheMissError` offline, and the store's errors."""
        return self._cached_bytes(mv, "artifact", mv.manifest.sha256, mv.manifest.size)

    def read_extra_file(self, mv: ModelVersion, filename: str) -> bytes:
        """An extra file of the version after checking its SHA-256 against the manifest."""
        expected = mv.manifest.extra_files.get(filename)
        if expected is None:
            raise IntegrityError(f"{mv} lists no extra file {filename!r}")
        return self._cached_bytes(mv, f"extra file {filename!r}", expected, None)

    # -- saving
    def _put_blob(self, path: Path, sha256: str) -> None:
        """Uploads a file under its content address (already there: nothing to do)."""
        with contextlib.suppress(ObjectExistsError):
            self.objects.put_new(blob_key(sha256), path.read_bytes())

    def _publish(
        self,
        name: str,
        tmp: Path,
        fields: dict[str, Any],
        explicit: str | None,
        key: bytes | None = None,
    ) -> ModelVersion:
        """Blobs first, then the manifest (create-only: one publisher wins the version),
        its signature, then the log entry that makes the index list it."""
        self._writing()
        self._put_blob(tmp / fields["artifact"], fields["sha256"])
        for filename, digest in fields["extra_files"].items():
            self._put_blob(tmp / filename, digest)
        for _ in range(_MAX_ROUNDS):
            index = self._index(name)
            version = explicit or V.next_major(index.parsed())
            manifest = Manifest(version=version, **fields)
            data = manifest.to_json().encode()
            folder_name = V.canonical_version(version)
            try:
                self.objects.put_new(version_key(name, folder_name, MANIFEST_FILE), data)
            except ObjectExistsError:
                if index.spelling(version) is None:
                    self._roll_forward(name, version)
                if explicit is not None:
                    raise VersionExistsError(
                        f"{name}@{explicit} already exists in {self.url}; versions are "
                        "immutable, save a new version"
                    ) from None
                continue
            if key is not None:
                self.objects.put_new(
                    version_key(name, folder_name, SIGNATURE_FILE), signature_document(data, key)
                )
            self._list_version(name, version, data)
            if key is not None:
                self._update_record(key, functools.partial(_record_version, name, version, data))
            folder = self._folder(name, version, manifest_digest(data))
            return ModelVersion(name, version, folder, manifest)
        raise StoreError(f"could not find a free version number for {name!r}")

    def _roll_forward(self, name: str, version: str) -> None:
        """Lists a version whose manifest exists but which the index does not list: its
        publisher is about to, or stopped after the manifest (written after the blobs, so
        the version is whole). Listing it twice is harmless."""
        manifest, data = self._read_manifest(name, version)
        self._list_version(name, manifest.version, data)

    def _list_version(self, name: str, version: str, manifest_bytes: bytes) -> None:
        """Commits the log entry that makes the index list a version (its manifest stored)."""
        entry = {
            "action": "publish",
            "version": version,
            "manifest": manifest_digest(manifest_bytes),
            "who": current_user(),
        }
        self._commit(name, lambda _index: entry)

    # -- the signed store record (compare-and-swap)
    @property
    def _record_location(self) -> str:
        return f"{self.url}/{RECORD_FILE}"

    def _fetch_record(self, key: bytes) -> tuple[StoreRecord | None, str | None]:
        cached = self._meta / RECORD_FILE
        if self.offline:
            try:
                data, etag = read_metadata(cached), None
            except FileNotFoundError:
                return None, None
        else:
            self._check_store()
            try:
                got = self.objects.get(RECORD_FILE)
            except ObjectNotFoundError:
                return None, None
            data, etag = got.data, got.etag
        record = self._checked_record(data, key)
        if not self.offline:
            with contextlib.suppress(OSError):
                cached.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(cached, data)
        return record, etag

    def _read_record(self, key: bytes) -> StoreRecord | None:
        return self._fetch_record(key)[0]

    def _update_record(self, key: bytes, change: Callable[[StoreRecord], Any]) -> StoreRecord:
        """Reads, changes, signs and writes the record with a compare-and-swap (again on a
        lost race: ``change`` runs on the newer record)."""
        if self.offline:
            raise ConfigurationError(f"{self.url} is opened offline: it cannot be changed")
        for _ in range(_MAX_ROUNDS):
            record, etag = self._fetch_record(key)
            record = record or StoreRecord.new(self.store_id)
            change(record)
            record.generation += 1
            data = record.to_bytes(key)
            try:
                if etag is None:
                    self.objects.put_new(RECORD_FILE, data)
                else:
                    self.objects.put_if(RECORD_FILE, data, etag)
            except PreconditionFailedError:
                continue
            self._generation = max(self._generation, record.generation)
            return record
        raise StoreError(f"{self.url}: could not update the store record: too many writers")

    # -- aliases
    def _move_alias(  # type: ignore[override]
        self,
        name: str,
        alias: str,
        target: ModelVersion,
        action: str,
        who: str | None,
        key: bytes | None,
        *,
        expected: Any = _ANY,
        **extra: Any,
    ) -> None:
        """Moves ``alias`` to ``target`` through the log (only if it still points at
        ``expected``, when given); with a key, then signs the alias into the store record
        if the index still says what this move set (a later move signs its own)."""
        digest = manifest_digest(self._signed_manifest(target, key)) if key is not None else None
        who = who or current_user()

        def make(index: ModelIndex) -> dict[str, Any]:
            if index.spelling(target.version) is None:
                raise VersionNotFoundError(f"{target} was deleted; not moving @{alias} to it")
            previous = index.aliases.get(alias)
            if expected is not _ANY and not _same_version(previous, expected):
                raise _alias_moved(name, alias, expected, previous, target)
            rollback = previous is not None and V.parse_version(target.version) < V.parse_version(
                previous
            )
            return {
                "action": action, "alias": alias, "from": previous, "to": target.version,
                "rollback": rollback, "who": who, **extra,
            }  # fmt: skip

        entry = self._commit(name, make)
        if key is None:
            return

        def change(record: StoreRecord) -> None:
            signed = record.model(name)
            _check_signed_digest(signed, target, digest, "not signing the move")  # type: ignore[arg-type]
            if not _same_version(self._index(name).aliases.get(alias), target.version):
                return  # moved again since: that move signs its own target
            _sign_alias_move(signed, alias, target, digest, action, entry["from"])  # type: ignore[arg-type]

        self._update_record(key, change)

    def remove_alias(
        self,
        name: str,
        alias: str,
        *,
        who: str | None = None,
        signing_key: str | bytes | None = None,
    ) -> None:
        """Removes an alias; raises :class:`VersionNotFoundError` if it does not exist."""
        alias = V.check_alias(alias)
        key = resolve_key(signing_key)
        who = who or current_user()

        def make(index: ModelIndex) -> dict[str, Any]:
            previous = index.aliases.get(alias)
            if previous is None:
                raise self._not_found(name, f"@{alias}", index)
            return {
                "action": "remove_alias",
                "alias": alias,
                "from": previous,
                "to": None,
                "rollback": False,
                "who": who,
            }

        self._commit(name, make)
        if key is not None:

            def change(record: StoreRecord) -> None:
                if alias not in self._index(name).aliases:
                    record.model(name).aliases.pop(alias, None)

            self._update_record(key, change)

    def _log_gate(self, name: str, entry: dict[str, Any]) -> None:
        self._commit(name, lambda _index: entry)

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
        """The gate ran first (outside any lock); the alias moves only if it still points
        where it did (compare-and-swap)."""
        if gate_entry is None:
            self._move_alias(name, alias, target, "promote", who, key)
            return target
        self._commit(name, lambda _index: gate_entry)
        self._move_alias(
            name, alias, target, "promote", who, key,
            expected=previous, gate=gate_entry["scores"],
        )  # fmt: skip
        return target

    def history(self, name: str, *, alias: str | None = None) -> list[dict[str, Any]]:
        """As :meth:`Store.history <embedml.store.Store.history>`: the model's log up to
        the index's position, oldest first (each entry also has its ``seq``)."""
        index = self._index(name)
        entries = []
        if self.offline:
            keys = [k for k in self._log_cache if k.startswith(f"models/{name}/log/")]
        else:
            keys = [o.key for o in self.objects.list(f"models/{name}/log")]
        for key in sorted(keys):
            try:
                seq = int(key.rsplit("/", 1)[1].split(".")[0])
            except ValueError:
                raise IntegrityError(f"{self.url}/{key}: not a log entry") from None
            if seq > index.seq:
                continue  # a change not applied (yet)
            entry = self._slot(name, seq)
            if entry is None or entry["action"] not in _HISTORY_ACTIONS:
                continue
            if alias is None or entry.get("alias") == alias:
                entries.append(entry)
        return entries

    def delete(
        self, name: str, version: str | int, *, signing_key: str | bytes | None = None
    ) -> None:
        """Deletes one version (its manifest; its blobs may be shared and stay). Refuses
        (:class:`StoreError`) while an alias points to it."""
        key = resolve_key(signing_key)
        target = self.resolve(name, V.canonical_version(version))
        here = V.parse_version(target.version)

        def make(index: ModelIndex) -> dict[str, Any]:
            if index.spelling(target.version) is None:
                raise self._not_found(name, target.version, index)
            pointing = sorted(a for a, v in index.aliases.items() if V.parse_version(v) == here)
            if pointing:
                raise StoreError(
                    f"{target} is in use by alias(es) {', '.join('@' + a for a in pointing)}; move them first"
                )
            return {"action": "delete", "version": target.version, "who": current_user()}

        if key is not None:
            self._update_record(key, lambda r: r.model(name).drop_version(target.version))
        self._commit(name, make)
        folder_name = V.canonical_version(target.version)
        for file in (SIGNATURE_FILE, MANIFEST_FILE):
            self.objects.delete(version_key(name, folder_name, file))
        shutil.rmtree(self._model_dir(name) / "versions" / folder_name, ignore_errors=True)

    # -- copying versions between stores (embedml.store.transfer)
    def version_documents(self, mv: ModelVersion) -> tuple[bytes, bytes | None]:
        """The version's manifest and signature bytes as stored (the signature read from
        the store: it may have been added since the manifest was cached)."""
        if not self.offline:
            self._folder(mv.name, mv.version, refresh_signature=True)
        return super().version_documents(mv)

    def import_version(
        self,
        name: str,
        manifest_bytes: bytes,
        signature: bytes | None,
        files: Mapping[str, bytes],
        *,
        signing_key: str | bytes | None = None,
    ) -> bool:
        """As :meth:`Store.import_version <embedml.store.Store.import_version>`: the files
        under their content addresses, then the manifest (create-only), its signature, and
        the log entry that lists it."""
        manifest = check_import(name, manifest_bytes, files)
        key = resolve_key(signing_key)
        label = f"{name}@{manifest.version}"
        if key is not None:
            self._read_record(key)
            with tempfile.TemporaryDirectory() as tmp:  # the signature must verify with it
                if signature is not None:
                    Path(tmp, SIGNATURE_FILE).write_bytes(signature)
                verify_signature(Path(tmp), manifest_bytes, key, required=True, label=label)
        self._writing()
        for data in files.values():
            with contextlib.suppress(ObjectExistsError):
                self.objects.put_new(blob_key(hashlib.sha256(data).hexdigest()), data)
        folder_name = V.canonical_version(manifest.version)
        added = True
        try:
            self.objects.put_new(version_key(name, folder_name, MANIFEST_FILE), manifest_bytes)
        except ObjectExistsError:
            stored = self.objects.get(version_key(name, folder_name, MANIFEST_FILE)).data
            if stored != manifest_bytes:
                raise VersionExistsError(
                    f"{label} already exists in {self.url} with another manifest"
                ) from None
            added = False
        if signature is not None:
            with contextlib.suppress(ObjectExistsError):
                self.objects.put_new(version_key(name, folder_name, SIGNATURE_FILE), signature)
        if self._index(name).spelling(manifest.version) is None:
            self._list_version(name, manifest.version, manifest_bytes)
            added = True
        if key is not None:
            record_it = functools.partial(_record_version, name, manifest.version, manifest_bytes)
            self._update_record(key, record_it)
        return added

    def _write_signature(self, mv: ModelVersion, document: bytes) -> None:
        """``manifest.sig`` in the store (created, or replaced by compare-and-swap), then
        its copy in the cache."""
        sig_key = version_key(mv.name, mv.path.name, SIGNATURE_FILE)
        try:
            self.objects.put_new(sig_key, document)
        except ObjectExistsError:
            self.objects.put_if(sig_key, document, self.objects.get(sig_key).etag)
        write_atomic(mv.path / SIGNATURE_FILE, document)

    def _record_model(
        self, model: str, signed: ModelRecord, key: bytes, report: dict[str, str | None]
    ) -> None:
        """As the folder store's, once the signatures in the cache are the store's."""
        index = self._index(model)
        for version in self.versions(model):
            with contextlib.suppress(EmbedMLError):
                self._folder(model, version, index.digest(version), refresh_signature=True)
        super()._record_model(model, signed, key, report)

    # -- no locks: every change is a conditional write
    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def _holding_all(self, models: list[str]) -> Iterator[None]:
        yield

    def _replace_record(self, key: bytes, record: StoreRecord, old: StoreRecord | None) -> None:
        def replace(current: StoreRecord) -> None:
            current.store_id, current.models = record.store_id, record.models

        self._update_record(key, replace)

    # -- verify: the index lists the versions and aliases
    def _listing(
        self, model: str, key: bytes | None, report: dict[str, str | None]
    ) -> _Listing | None:
        try:
            index = self._index(model)
        except EmbedMLError as exc:
            report[f"{model}/index.json"] = str(exc)
            return None

        def open_version(version: str) -> ModelVersion:
            # hashes the artifacts: downloaded into the cache if needed
            self._folder(model, version, index.digest(version), refresh_signature=key is not None)
            return self._open(model, index, version)[0]

        return _Listing(
            versions={v: index.spelling(v) for v in index.parsed()},  # type: ignore[misc]
            open=open_version,
            aliases=lambda: dict(index.aliases),
        )
