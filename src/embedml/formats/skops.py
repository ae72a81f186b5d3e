"""``skops`` format (``.skops``): scikit-learn models saved with ``skops.io``.

skops.io is the scikit-learn ecosystem's safe persistence format: a zip of JSON and arrays
from which only known types are rebuilt; loading never runs a pickle. A file may still name
types skops does not trust by default (``skops.io.get_untrusted_types``): this format lists
them and refuses to load until each one is named in ``trusted_types=`` (the same option as
restricted pickle loading; a function may also be named in ``trusted_callables=``). The
loaded model then gets the object-graph audit of restricted loading
(:func:`~embedml.formats.audit.audit_graph`: method-naming attributes, methods replaced by
instance attributes), because skops, like a type allow-list, does not look at those.

Needs ``pip install 'embedml[skops]'``; skops is imported only when such a model is saved
or loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UnsupportedFormatError, UntrustedArtifactError
from .audit import audit_graph
from .base import FormatOptions, ModelFormat, Runtime, reject_options
from .pickle import ObjectRuntime, _object_frameworks
from .restricted import callable_names, type_name

__all__ = ["SkopsFormat", "untrusted_types"]


def _skops_io() -> Any:
    try:
        import skops.io
    except ImportError as exc:
        raise UnsupportedFormatError(
            "this model is a skops file: pip install 'embedml[skops]'"
        ) from exc
    return skops.io


def untrusted_types(data: bytes) -> list[str]:
    """The types in a skops file's bytes that skops does not trust by default (review
    them before passing them in ``trusted_types=``). Reads the file's schema only."""
    return sorted(_skops_io().get_untrusted_types(data=data))


class SkopsFormat(ModelFormat):
    """scikit-learn objects saved with ``skops.io.dump``; save in-memory models with
    ``store.save(name, model, format="skops")``."""

    name = "skops"
    suffixes = (".skops",)
    takes_method = True

    def dump(self, obj: Any, path: Path) -> None:
        _skops_io().dump(obj, path)

    def load(self, data: bytes, options: FormatOptions) -> Runtime:
        reject_options(self.name, options, "method")
        sio = _skops_io()
        listed = untrusted_types(data)
        accepted = callable_names(options.extra.get("trusted_callables")) | {
            type_name(t) for t in options.extra.get("trusted_types") or ()
        }
        refused = [t for t in listed if t not in accepted]
        if refused:
            raise UntrustedArtifactError(
                f"the skops file holds types skops does not trust by default: "
                f"{', '.join(refused)}. Review them; if you trust them, pass "
                f"trusted_types={refused!r} to load()",
                type_name=refused[0],
            )
        obj = sio.loads(data, trusted=listed)  # exactly the types that were reviewed
        audit_graph(obj, None)  # skops vetted every callable; the rest of the audit applies
        return ObjectRuntime(obj, options.method)

    def inspect(self, obj: Any, path: Path, options: FormatOptions) -> Runtime | None:
        # the caller's own object is in memory; a file given by path may hold types that
        # only the loader's trusted_types= can accept, so its interface is read at load
        return None if obj is None else ObjectRuntime(obj, options.method)

    def frameworks(self, obj: Any | None = None) -> list[str]:
        return sorted({"skops", *_object_frameworks(obj)})
