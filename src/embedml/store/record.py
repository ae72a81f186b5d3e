"""The signed store record: which versions and aliases a store holds, signed with its key.

A manifest signature proves that a version was published by a key holder, not *which store*
it belongs to or *which version* an alias or ``"latest"`` should pick. The record closes
that gap. It is one file at the store root, ``.embedml-record.json``, replaced atomically::

    {"algorithm": "hmac-sha256", "key_id": "3f2a9c1e", "signature": "<hex>",
     "record": 1, "store_id": "prod-eu", "generation": 42,
     "models": {"fraud": {"versions": {"1": "<SHA-256 of manifest.json>", ...},
                          "aliases": {"production": "1"},
                          "moves": {"production": [[null, "1"]]}}}}

* ``store_id`` names the store: a record copied from another store signed with the same key
  is refused by a store opened with ``ModelStore(root, store_id=...)``.
* ``versions`` binds each version to the SHA-256 of its manifest bytes (which hold the
  artifact's hash), so a version folder copied from another store, or a hidden one, no
  longer matches. Manifests themselves carry no store identity: a copied version stays
  byte-identical, and the destination store records it with its own key.
* ``aliases`` is what ``aliases.json`` must say; ``moves`` keeps the last
  :data:`MAX_MOVES` ``set_alias`` / ``promote`` moves of each alias for a signed rollback.
* ``generation`` grows by one with every write; a store object refuses a record older
  than one it has already verified (a replayed old record).

The signature is an HMAC-SHA256 over the canonical JSON (sorted keys, no spaces, ASCII) of
every key but ``"signature"``. Every field is validated like user input before use.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidNameError, SignatureError
from . import versions as V
from .signing import ALGORITHM, KEY_ENV, key_id, sign_bytes

__all__ = [
    "MAX_MOVES",
    "RECORD_FILE",
    "ModelRecord",
    "StoreRecord",
    "check_store_id",
    "manifest_digest",
    "parse_record",
]

RECORD_FILE = ".embedml-record.json"
#: The alias moves kept per alias for a signed rollback.
MAX_MOVES = 100
_FORMAT = 1
_STORE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MIGRATE = "run store.sign_store() (CLI: embedml sign) with the key after checking the store"


def check_store_id(store_id: str) -> str:
    """Return ``store_id`` if valid (letters, digits, ``_.:-``, at most 128), else raise
    :class:`InvalidNameError`."""
    if not isinstance(store_id, str) or not _STORE_ID.fullmatch(store_id):
        raise InvalidNameError(
            f"invalid store_id {store_id!r}: letters, digits, '_', '.', ':' and '-', "
            "starting with a letter or digit, at most 128 characters"
        )
    return store_id


def manifest_digest(manifest_bytes: bytes) -> str:
    """Hex SHA-256 of a version's ``manifest.json`` bytes, as recorded."""
    return hashlib.sha256(manifest_bytes).hexdigest()


@dataclass
class ModelRecord:
    """The signed state of one model: ``versions`` (version -> manifest SHA-256),
    ``aliases`` (alias -> version), ``moves`` (alias -> ``[from, to]`` pairs, oldest first)."""

    versions: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    moves: dict[str, list[list[str | None]]] = field(default_factory=dict)

    def digest_of(self, version: str) -> str | None:
        """The recorded manifest SHA-256 of ``version`` (any spelling: ``"1.0"`` is ``"1"``)."""
        wanted = V.parse_version(version)
        for recorded, digest in self.versions.items():
            if V.parse_version(recorded) == wanted:
                return digest
        return None

    def set_version(self, version: str, digest: str) -> None:
        """Record ``version`` (replacing any other spelling of it) with its manifest digest."""
        self.drop_version(version)
        self.versions[version] = digest

    def drop_version(self, version: str) -> None:
        """Forget ``version`` (any spelling)."""
        wanted = V.parse_version(version)
        for recorded in [v for v in self.versions if V.parse_version(v) == wanted]:
            del self.versions[recorded]

    def move(self, alias: str, previous: str | None, target: str) -> None:
        """Record a ``set_alias`` / ``promote`` move (the trail a rollback walks back)."""
        trail = self.moves.setdefault(alias, [])
        trail.append([previous, target])
        del trail[:-MAX_MOVES]


@dataclass
class StoreRecord:
    """The content of the store record (see the module docstring)."""

    store_id: str
    generation: int = 0
    models: dict[str, ModelRecord] = field(default_factory=dict)

    @classmethod
    def new(cls, store_id: str | None = None) -> StoreRecord:
        """An empty record for a store named ``store_id`` (default: a random one)."""
        return cls(check_store_id(store_id) if store_id is not None else uuid.uuid4().hex)

    def model(self, name: str) -> ModelRecord:
        """The record of ``name`` (an empty one if the store has none yet)."""
        return self.models.setdefault(name, ModelRecord())

    def _body(self, key: bytes) -> dict[str, Any]:
        models = {
            name: {"versions": m.versions, "aliases": m.aliases, "moves": m.moves}
            for name, m in sorted(self.models.items())
            if m.versions or m.aliases or m.moves
        }
        return {
            "algorithm": ALGORITHM, "key_id": key_id(key), "record": _FORMAT,
            "store_id": self.store_id, "generation": self.generation, "models": models,
        }  # fmt: skip

    def to_bytes(self, key: bytes) -> bytes:
        """The signed file content."""
        body = self._body(key)
        body["signature"] = sign_bytes(_canonical(body), key)
        return json.dumps(body, indent=1, sort_keys=True).encode()


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _fail(where: str, what: str) -> SignatureError:
    return SignatureError(f"{where} is not a valid signed store record: {what}")


def _version(value: Any, where: str, what: str) -> str:
    try:
        if not isinstance(value, str):
            raise InvalidNameError(f"expected a string, got {type(value).__name__}")
        V.parse_version(value)
    except InvalidNameError as exc:
        raise _fail(where, f"{what}: {exc}") from None
    return value


def _alias(value: Any, where: str, what: str) -> str:
    try:
        if not isinstance(value, str) or V.check_alias(value) != value:
            raise InvalidNameError(f"invalid alias {value!r}")
    except InvalidNameError as exc:
        raise _fail(where, f"{what}: {exc}") from None
    return value


def _object(value: Any, where: str, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"{what}: expected an object, got {type(value).__name__}")
    return value


def _model(name: str, data: Any, where: str) -> ModelRecord:
    data = _object(data, where, name)
    if set(data) != {"versions", "aliases", "moves"}:
        raise _fail(where, f"{name}: expected the keys versions, aliases and moves")
    versions = {}
    for version, digest in _object(data["versions"], where, f"{name}.versions").items():
        _version(version, where, f"{name}.versions")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise _fail(where, f"{name}.versions[{version!r}]: expected 64 hex digits")
        versions[version] = digest
    aliases = {}
    for alias, target in _object(data["aliases"], where, f"{name}.aliases").items():
        aliases[_alias(alias, where, f"{name}.aliases")] = _version(
            target, where, f"{name}.aliases[{alias!r}]"
        )
    moves: dict[str, list[list[str | None]]] = {}
    for alias, trail in _object(data["moves"], where, f"{name}.moves").items():
        _alias(alias, where, f"{name}.moves")
        if not isinstance(trail, list) or len(trail) > MAX_MOVES:
            raise _fail(
                where, f"{name}.moves[{alias!r}]: expected a list of at most {MAX_MOVES} moves"
            )
        checked = []
        for pair in trail:
            if not isinstance(pair, list) or len(pair) != 2:
                raise _fail(where, f"{name}.moves[{alias!r}]: expected [from, to] pairs")
            what = f"{name}.moves[{alias!r}]"
            before = None if pair[0] is None else _version(pair[0], where, what)
            checked.append([before, _version(pair[1], where, what)])
        moves[alias] = checked
    return ModelRecord(versions, aliases, moves)


def parse_record(raw: bytes, key: bytes, where: str) -> StoreRecord:
    """Check the signature of a record file and return its content.

    Raises :class:`SignatureError` when it is not valid JSON, not signed with ``key``, or
    holds any field that is not what the format allows.
    """
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _fail(where, f"invalid JSON ({type(exc).__name__})") from None
    doc = _object(doc, where, "(root)")
    expected = {"algorithm", "key_id", "record", "store_id", "generation", "models", "signature"}
    if set(doc) != expected:
        raise _fail(where, f"expected the keys {', '.join(sorted(expected))}")
    signature = doc.pop("signature")
    if doc["algorithm"] != ALGORITHM or doc["record"] != _FORMAT:
        raise _fail(
            where, f"unsupported algorithm or format {doc['algorithm']!r} {doc['record']!r}"
        )
    if not isinstance(signature, str) or not _HEX64.fullmatch(signature):
        raise _fail(where, "the signature is not 64 hex digits")
    try:
        body = _canonical(doc)
    except (ValueError, RecursionError):
        raise _fail(where, "its content cannot be serialised") from None
    if not hmac.compare_digest(signature, sign_bytes(body, key)):
        hint = " (it was signed with another key)" if doc["key_id"] != key_id(key) else ""
        raise SignatureError(
            f"{where}: the store record signature does not match{hint}; it was changed "
            f"without the key, refusing it (if the store is yours: {_MIGRATE})"
        )
    generation = doc["generation"]
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise _fail(where, "generation: expected an integer >= 0")
    try:
        store_id = check_store_id(doc["store_id"])
    except InvalidNameError as exc:
        raise _fail(where, str(exc)) from None
    models = {}
    for name, data in _object(doc["models"], where, "models").items():
        try:
            V.check_name(name)
        except InvalidNameError as exc:
            raise _fail(where, str(exc)) from None
        models[name] = _model(name, data, where)
    return StoreRecord(store_id, generation, models)


def missing_record(where: str) -> SignatureError:
    """The error for a store that has no signed record while one is required."""
    return SignatureError(
        f"the store has no signed record ({where} is missing), so its versions and aliases "
        f"cannot be checked (require_signature=True); {_MIGRATE}, or save or sign with "
        f"signing_key= (or ${KEY_ENV})"
    )
