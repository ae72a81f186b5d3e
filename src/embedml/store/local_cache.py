"""A content-addressed cache of immutable files on this machine (not the serving cache).

A remote store names each artifact by its SHA-256; this cache keeps one verified copy per
machine, shared by every process and every store that names the same bytes::

    <root>/blobs/sha256/<hh>/<hex>           the verified bytes, read-only
    <root>/blobs/sha256/<hh>/<hex>.lock      flock: one download per entry per machine
    <root>/blobs/sha256/<hh>/.~<hex>.*.part  a download in progress (or left by a crash)

``<root>`` is ``EMBEDML_CACHE_DIR``, else the user cache folder (``$XDG_CACHE_HOME/embedml``,
``~/.cache/embedml``; ``~/Library/Caches/embedml`` on macOS).

:meth:`LocalCache.fetch` returns an entry's path, downloading it first if needed: the bytes
are streamed into a temporary file beside the entry, hashed on the way, and renamed to the
entry's name only if their SHA-256 (and size) match, so an entry that exists is complete and
verified when it was made. Concurrent fetches of one entry on one machine (threads or
processes) download it once: the first takes the entry's ``flock`` and downloads, the others
wait for the lock and find the entry. An entry damaged later (truncated, overwritten) is
detected by its size and hash when it is fetched with ``verify=True`` and downloaded again.
In offline mode (``offline=True`` or ``EMBEDML_OFFLINE=1``) only what the cache holds is
served: anything else is a :class:`~embedml.errors.CacheMissError`, and the store is never
contacted.

This is not :mod:`embedml.serving.cache` (loaded models in memory).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

from ..errors import CacheMissError, ConfigurationError, StoreError
from .objects import ObjectStore, check_sha256
from .safe_io import flock_held

__all__ = ["ENV_CACHE_DIR", "ENV_OFFLINE", "LocalCache", "default_cache_dir"]

ENV_CACHE_DIR = "EMBEDML_CACHE_DIR"
ENV_OFFLINE = "EMBEDML_OFFLINE"
_HASH_CHUNK = 8 << 20


def default_cache_dir() -> Path:
    """``EMBEDML_CACHE_DIR`` if set, else ``embedml`` in the user's cache folder."""
    explicit = os.environ.get(ENV_CACHE_DIR)
    if explicit:
        return Path(explicit).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "embedml"
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "embedml" / "Cache"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache") / "embedml"


def _env_offline() -> bool:
    value = os.environ.get(ENV_OFFLINE, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ConfigurationError(f"{ENV_OFFLINE}={value!r}: expected 1/true/yes/on or 0/false/no/off")


class LocalCache:
    """Verified copies of immutable objects, by SHA-256, shared by the processes of a machine.

    ``root`` defaults to :func:`default_cache_dir`; ``offline`` to ``EMBEDML_OFFLINE``.
    Raises :class:`ConfigurationError` for a malformed ``EMBEDML_OFFLINE``.
    """

    def __init__(self, root: Path | str | None = None, *, offline: bool | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.offline = _env_offline() if offline is None else offline

    def __repr__(self) -> str:
        return f"LocalCache({str(self.root)!r}, offline={self.offline})"

    def path_for(self, sha256: str) -> Path:
        """Where the entry of ``sha256`` lives (whether or not it is there)."""
        check_sha256(sha256)
        return self.root / "blobs" / "sha256" / sha256[:2] / sha256

    def get(self, sha256: str, *, size: int | None = None, verify: bool = True) -> Path | None:
        """The entry's path if the cache holds it intact, else ``None``; never downloads.

        Intact: a regular file of ``size`` bytes (if given) and, with ``verify``, whose
        SHA-256 is ``sha256`` (the file is read once). A damaged entry is left in place (a
        :meth:`fetch` replaces it under the entry's lock).
        """
        path = self.path_for(sha256)
        try:
            info = os.stat(path, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(info.st_mode) or (size is not None and info.st_size != size):
            return None
        if verify and _sha256_of(path) != sha256:
            return None
        return path

    def fetch(
        self,
        store: ObjectStore,
        key: str,
        sha256: str,
        *,
        size: int | None = None,
        verify: bool = True,
    ) -> Path:
        """The path of the verified entry of ``sha256``, downloaded from ``store``/``key`` if needed.

        ``verify=False`` skips hashing an entry that is already there (its size is still
        checked): for a caller that hashes the bytes anyway when it reads them, and calls
        :meth:`discard` then :meth:`fetch` again on a mismatch.

        Raises :class:`~embedml.errors.IntegrityError` if the downloaded bytes do not match
        (nothing is cached), :class:`~embedml.errors.CacheMissError` in offline mode when the
        entry is missing or damaged, and the store's :class:`~embedml.errors.RemoteStoreError`
        subclasses (the cache then holds nothing of that entry).
        """
        held = self.get(sha256, size=size, verify=verify)
        if held is not None:
            return held
        if self.offline:
            raise CacheMissError(
                f"offline ({ENV_OFFLINE}): the cache at {self.root} does not hold"
                f" sha256:{sha256} intact",
                url=store.url,
                operation="fetch",
                key=key,
            )
        with self._locked(sha256):
            # Another process may have fetched it while we waited for the lock.
            held = self.get(sha256, size=size, verify=True)
            if held is not None:
                return held
            path = self.path_for(sha256)
            self._remove(path)
            store.download(key, path, sha256=sha256, size=size)
            os.chmod(path, 0o444)  # immutable: a stray write fails instead of corrupting it
            return path

    def discard(self, sha256: str) -> None:
        """Removes the entry (for example after its bytes failed a check at load)."""
        with self._locked(sha256):
            self._remove(self.path_for(sha256))

    def _remove(self, path: Path) -> None:
        """Removes ``path`` and partial downloads of it (only the lock holder writes them)."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        for partial in path.parent.glob(f".~{path.name}.*.part"):
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()

    @contextlib.contextmanager
    def _locked(self, sha256: str) -> Iterator[None]:
        path = self.path_for(sha256)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(
                path.with_name(path.name + ".lock"),
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o644,
            )
        except OSError as exc:
            raise StoreError(f"cannot use the cache at {self.root}: {exc}") from exc
        # Blocks while another process downloads this entry (bounded by its timeouts).
        with flock_held(fd):
            yield


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
