"""Copying versions between stores (``embedml copy``), and filling the local cache ahead of
time (``embedml pull``).

A copy keeps each version's ``manifest.json`` and ``manifest.sig`` byte-identical, so a
signature made where the version was published still verifies where it is copied; with a
key, the destination's own signed store record lists the copied versions (the source's
record is not copied: it names the source store). Works between any two stores: folder to
``s3://``, back, or between buckets.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model_store import ModelVersion, Store

__all__ = ["Copied", "copy_versions", "pull"]


@dataclass(frozen=True)
class Copied:
    """One version :func:`copy_versions` handled: ``added`` is ``False`` when the
    destination already held that very manifest."""

    name: str
    version: str
    added: bool


def copy_versions(
    source: Store,
    destination: Store,
    name: str,
    spec: str | None = None,
    *,
    signing_key: str | bytes | None = None,
) -> list[Copied]:
    """Copies the version of ``name`` that ``spec`` picks (every version when ``None``)
    from ``source`` to ``destination``; returns what was done, in version order.

    Each artifact and extra file is checked against its SHA-256 when read and again when
    written. ``signing_key`` (default ``$EMBEDML_SIGNING_KEY``): record the versions in the
    destination's signed store record (each signature must verify with it). Aliases and
    history are not copied (they belong to the store). Raises the errors of
    :meth:`Store.resolve <embedml.store.Store.resolve>`, :class:`VersionExistsError` when
    the destination holds another manifest under a version (earlier versions stay copied),
    :class:`IntegrityError`, :class:`SignatureError`.
    """
    versions = [source.resolve(name, spec).version] if spec is not None else source.versions(name)
    done = []
    for version in versions:
        mv = source.resolve(name, version)
        manifest_bytes, signature = source.version_documents(mv)
        files = {mv.manifest.artifact: source.read_artifact(mv)}
        for extra in sorted(mv.manifest.extra_files):
            files[extra] = source.read_extra_file(mv, extra)
        added = destination.import_version(
            name, manifest_bytes, signature, files, signing_key=signing_key
        )
        done.append(Copied(name, mv.version, added))
    return done


def pull(
    store: Store, name: str, spec: str | None = "latest", **resolve_options: object
) -> ModelVersion:
    """Resolves ``spec`` and reads the version's artifact and extra files once, checking
    their SHA-256: for a remote store this downloads them into the local cache (a later
    load, or an offline one, finds them there). Returns the version."""
    mv = store.resolve(name, spec, **resolve_options)  # type: ignore[arg-type]
    store.read_artifact(mv)
    for extra in mv.manifest.extra_files:
        store.read_extra_file(mv, extra)
    return mv
