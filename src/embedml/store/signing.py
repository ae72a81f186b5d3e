"""Signed manifests: HMAC-SHA256 over a version's ``manifest.json`` bytes.

The manifest holds the artifact's SHA-256 and size, so one signature covers both: a
changed artifact no longer matches the signed hash, and a changed manifest (even with a
matching new hash) no longer matches the signature. The signature lives beside the
manifest in ``manifest.sig``::

    {"algorithm": "hmac-sha256", "key_id": "3f2a9c1e", "signature": "<hex>"}

``key_id`` (the first 8 hex digits of SHA-256 of the key) only helps tell keys apart; it
reveals nothing usable about the key. The key comes from the ``key`` argument, else from
the ``EMBEDML_SIGNING_KEY`` environment variable.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from pathlib import Path

from ..errors import ConfigurationError, IntegrityError, SignatureError
from .safe_io import read_metadata

__all__ = [
    "ALGORITHM",
    "KEY_ENV",
    "SIGNATURE_FILE",
    "key_id",
    "resolve_key",
    "sign_bytes",
    "signature_document",
    "verify_signature",
]

SIGNATURE_FILE = "manifest.sig"
KEY_ENV = "EMBEDML_SIGNING_KEY"
ALGORITHM = "hmac-sha256"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def resolve_key(key: str | bytes | None = None) -> bytes | None:
    """The signing key: ``key`` if given, else ``$EMBEDML_SIGNING_KEY``, else ``None``.

    Raises :class:`ConfigurationError` for an empty key.
    """
    if key is None:
        key = os.environ.get(KEY_ENV) or None
        if key is None:
            return None
    raw = key.encode() if isinstance(key, str) else bytes(key)
    if not raw:
        raise ConfigurationError("the signing key is empty")
    return raw


def key_id(key: bytes) -> str:
    """A short public fingerprint of a key."""
    return hashlib.sha256(key).hexdigest()[:8]


def sign_bytes(data: bytes, key: bytes) -> str:
    """Hex HMAC-SHA256 of ``data``."""
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def signature_document(manifest_bytes: bytes, key: bytes) -> bytes:
    """The content of ``manifest.sig`` for these manifest bytes."""
    doc = {"algorithm": ALGORITHM, "key_id": key_id(key), "signature": sign_bytes(manifest_bytes, key)}
    return json.dumps(doc, sort_keys=True).encode()


def verify_signature(
    version_dir: Path, manifest_bytes: bytes, key: bytes | None, *, required: bool, label: str
) -> bool:
    """Check ``manifest.sig`` in ``version_dir`` against ``manifest_bytes``.

    Returns ``True`` when a signature was verified, ``False`` when there is none (or no
    key) and none is required. A signature that is present but wrong is always refused when
    a key is available. Raises :class:`SignatureError`; :class:`ConfigurationError` when a
    signature is required but no key is given.
    """
    if key is None:
        if required:
            raise ConfigurationError(
                f"require_signature=True needs a key: pass signing_key= or set ${KEY_ENV}"
            )
        return False
    try:
        raw = read_metadata(version_dir / SIGNATURE_FILE, 1 << 16)
    except IntegrityError as exc:  # a symlink, not a regular file, or huge
        raise SignatureError(f"{label}: {exc}") from None
    except FileNotFoundError:
        if required:
            raise SignatureError(
                f"{label} is not signed ({SIGNATURE_FILE} is missing); refusing it "
                "(require_signature=True)"
            ) from None
        return False
    try:
        doc = json.loads(raw)
        algorithm, signature = doc["algorithm"], doc["signature"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise SignatureError(f"{label}: {SIGNATURE_FILE} is not a valid signature file") from None
    if algorithm != ALGORITHM:
        raise SignatureError(f"{label}: unsupported signature algorithm {algorithm!r:.40}")
    # validated before use: compare_digest raises TypeError on non-ASCII text
    if not isinstance(signature, str) or not _HEX64.fullmatch(signature):
        raise SignatureError(
            f"{label}: {SIGNATURE_FILE} is not a valid signature file (the signature is not 64 hex digits)"
        )
    if not hmac.compare_digest(signature, sign_bytes(manifest_bytes, key)):
        hint = "" if doc.get("key_id") == key_id(key) else " (it was signed with another key)"
        raise SignatureError(
            f"{label}: the manifest signature does not match{hint}; the manifest or "
            "artifact was changed after signing, refusing it"
        )
    return True
