"""The objects of a remote store (:mod:`embedml.store.remote_store`): their keys, a model's index and its
log entries, each read back and validated like user input (a tampered object is an
:class:`~embedml.errors.IntegrityError`)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from packaging.version import Version

from ..errors import IntegrityError
from . import versions as V
from .model_store import _MOVES, _history_entry, _stored_version

__all__ = [
    "INDEX_FORMAT",
    "MARKER",
    "MARKER_KEY",
    "ModelIndex",
    "blob_key",
    "check_digest",
    "index_key",
    "log_entry",
    "log_key",
    "now_fields",
    "version_key",
]

MARKER_KEY = ".embedml-store.json"
MARKER = {"format": "embedml-store", "layout": 1}
INDEX_FORMAT = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")


def index_key(name: str) -> str:
    return f"models/{name}/index.json"


def log_key(name: str, seq: int) -> str:
    return f"models/{name}/log/{seq:020d}.json"


def version_key(name: str, folder: str, file: str) -> str:
    return f"models/{name}/versions/{folder}/{file}"


def blob_key(sha256: str) -> str:
    return f"blobs/sha256/{sha256}"


def now_fields() -> dict[str, Any]:
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "ts": time.time()}


@dataclass
class ModelIndex:
    """A model's index: the log position it reflects, its versions and aliases."""

    seq: int = 0
    versions: dict[str, str] = field(default_factory=dict)  # canonical -> spelling
    aliases: dict[str, str] = field(default_factory=dict)
    etag: str | None = None
    # canonical -> SHA-256 of the manifest: a cached manifest is checked against it, so a
    # version deleted and published again is never served from a stale cache
    digests: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: bytes, etag: str | None, where: str) -> ModelIndex:
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise IntegrityError(f"{where} is not valid JSON: {exc}") from None
        if (
            not isinstance(doc, dict)
            or doc.get("format") != INDEX_FORMAT
            or not isinstance(doc.get("seq"), int)
            or doc["seq"] < 0
            or not isinstance(doc.get("versions"), dict)
            or not isinstance(doc.get("aliases"), dict)
        ):
            raise IntegrityError(f"{where}: not a model index (format {INDEX_FORMAT})")
        versions, digests = {}, {}
        for v, digest in doc["versions"].items():
            spelling = _stored_version(v, f"{where}: versions")
            versions[V.canonical_version(spelling)] = spelling
            digests[V.canonical_version(spelling)] = check_digest(digest, f"{where}: {v}")
        aliases = {}
        for alias, target in doc["aliases"].items():
            entry = _history_entry({"action": "index", "alias": alias, "to": target}, where)
            aliases[entry["alias"]] = entry["to"]
        return cls(doc["seq"], versions, aliases, etag, digests)

    def to_bytes(self) -> bytes:
        versions = {spelling: self.digests[c] for c, spelling in self.versions.items()}
        doc = {
            "format": INDEX_FORMAT,
            "seq": self.seq,
            "versions": versions,
            "aliases": self.aliases,
        }
        return json.dumps(doc, indent=1, sort_keys=True).encode()

    def parsed(self) -> list[Version]:
        return sorted(V.parse_version(v) for v in self.versions.values())

    def spelling(self, version: str | Version) -> str | None:
        return self.versions.get(V.canonical_version(version))

    def digest(self, version: str | Version) -> str | None:
        """The SHA-256 of the listed version's manifest (``None``: not listed)."""
        return self.digests.get(V.canonical_version(version))

    def applied(self, entry: dict[str, Any]) -> ModelIndex:
        """A copy with ``entry`` (a log slot) applied, at its ``seq``."""
        new = ModelIndex(
            entry["seq"], dict(self.versions), dict(self.aliases), self.etag, dict(self.digests)
        )
        action = entry["action"]
        if action == "publish":
            new.versions[V.canonical_version(entry["version"])] = entry["version"]
            new.digests[V.canonical_version(entry["version"])] = entry["manifest"]
        elif action == "delete":
            new.versions.pop(V.canonical_version(entry["version"]), None)
            new.digests.pop(V.canonical_version(entry["version"]), None)
        elif action == "remove_alias":
            new.aliases.pop(entry["alias"], None)
        elif action in (*_MOVES, "rollback"):
            new.aliases[entry["alias"]] = entry["to"]
        return new


def check_digest(value: Any, where: str) -> str:
    """``value`` if it is a SHA-256 as 64 lowercase hex digits, else :class:`IntegrityError`."""
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise IntegrityError(f"{where}: expected a SHA-256 (64 hex digits), got {value!r:.80}")
    return value


def log_entry(data: bytes, where: str) -> dict[str, Any]:
    try:
        entry = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise IntegrityError(f"{where} is not valid JSON: {exc}") from None
    entry = _history_entry(entry, where)
    if not isinstance(entry.get("seq"), int) or entry["seq"] < 1:
        raise IntegrityError(f"{where}: a log entry needs its 'seq'")
    if entry["action"] in ("publish", "delete"):
        _stored_version(entry.get("version"), f"{where}: 'version'")
    if entry["action"] == "publish":
        check_digest(entry.get("manifest"), f"{where}: 'manifest'")
    elif entry["action"] in (*_MOVES, "rollback") and (
        entry.get("to") is None or "alias" not in entry
    ):
        raise IntegrityError(f"{where}: an alias move needs 'alias' and 'to'")
    return entry
