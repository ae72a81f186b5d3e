"""Old module paths of embedml, kept working after the move into layer folders.

``import embedml.handle`` and ``from embedml.batching import Batching`` still work: a small
import finder serves each old name as the module that now holds its code (the same module
object, so classes and ``isinstance`` agree). The documented submodules
(``embedml.export``, ``embedml.metrics``, ``embedml.metrics.prometheus``,
``embedml.metrics.otel``) are served silently; every other old path raises a
``DeprecationWarning`` naming the new one. See ``docs/architecture.md``.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import warnings
from types import ModuleType

__all__ = ["MOVED", "install"]

#: Old dotted name -> (new dotted name, deprecated?).
MOVED: dict[str, tuple[str, bool]] = {
    "embedml.export": ("embedml.offline.export", False),
    "embedml.metrics": ("embedml.observe.metrics", False),
    "embedml.metrics.prometheus": ("embedml.observe.metrics.prometheus", False),
    "embedml.metrics.otel": ("embedml.observe.metrics.otel", False),
    "embedml.batching": ("embedml.serving.batching", True),
    "embedml.cache": ("embedml.serving.cache", True),
    "embedml.follow": ("embedml.serving.follow", True),
    "embedml.handle": ("embedml.serving.handle", True),
    "embedml.trust": ("embedml.serving.trust", True),
    "embedml.hooks": ("embedml.observe.hooks", True),
    "embedml.sinks": ("embedml.observe.sinks", True),
    "embedml.drift": ("embedml.observe.drift", True),
    "embedml.quality": ("embedml.observe.quality", True),
    "embedml.routing": ("embedml.rollout.routing", True),
    "embedml.shadow": ("embedml.rollout.shadow", True),
    "embedml.promotion": ("embedml.rollout.promotion", True),
    "embedml.streaming": ("embedml.offline.streaming", True),
    "embedml.scoring": ("embedml.offline.scoring", True),
    "embedml.manifest": ("embedml.store.manifest", True),
    "embedml.versions": ("embedml.store.versions", True),
    "embedml.signing": ("embedml.store.signing", True),
    "embedml.record": ("embedml.store.record", True),
    "embedml.safe_io": ("embedml.store.safe_io", True),
    "embedml.signature": ("embedml.formats.signature", True),
    "embedml.synthetic": ("embedml.schema.synthetic", True),
    "embedml.profile": ("embedml.schema.profile", True),
    "embedml.frames": ("embedml.schema.frames", True),
}


# Plain classes with the loader and finder protocols (importlib.abc would cost every
# `import embedml` a few milliseconds).
class _Alias:
    def __init__(self, old: str, new: str, deprecated: bool) -> None:
        self.old, self.new, self.deprecated = old, new, deprecated

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        if self.deprecated:
            warnings.warn(
                f"{self.old} moved to {self.new}; the old path will be removed in a later release",
                DeprecationWarning,
                stacklevel=6,
            )
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module is the one already imported under its new name."""


class _Finder:
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        moved = MOVED.get(fullname)
        if moved is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(fullname, *moved))  # type: ignore[arg-type]


_FINDER = _Finder()


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once)."""
    if _FINDER not in sys.meta_path:
        # first: the path finder would otherwise load a moved package's submodules (through
        # the aliased parent's __path__) a second time, as new module objects
        sys.meta_path.insert(0, _FINDER)
