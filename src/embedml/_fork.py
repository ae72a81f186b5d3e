"""Objects that start again in a forked child.

A child made by ``os.fork()`` (gunicorn-style workers, multiprocessing's ``fork``) has only
the thread that forked: the parent's other threads do not exist there, and a lock one of
them held stays locked for good. Each kind of object that owns threads or locks keeps its
live instances in a :class:`LiveObjects`; in a forked child each instance's
``_after_fork_in_child()`` runs, so that it starts again with fresh locks (and threads,
where it needs them).
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

__all__ = ["LiveObjects", "after_fork_in_child"]

_log = logging.getLogger("embedml")


class ResetsAfterFork(Protocol):
    def _after_fork_in_child(self) -> None: ...


T = TypeVar("T", bound=ResetsAfterFork)


def after_fork_in_child(fn: Callable[[], None]) -> None:
    """Run ``fn`` in every child forked from now on (POSIX; nothing where there is no fork)."""
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=fn)


class LiveObjects(Generic[T]):
    """The live instances of one kind (held weakly), each reset in a forked child.

    ``what`` names the kind in the log line of an instance whose reset fails; the others
    are reset all the same (the child must go on).
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self._objects: weakref.WeakSet[T] = weakref.WeakSet()
        after_fork_in_child(self._reset_all)

    def add(self, obj: T) -> None:
        self._objects.add(obj)

    def discard(self, obj: T) -> None:
        self._objects.discard(obj)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._objects))  # a copy: the set may change while it is walked

    def _reset_all(self) -> None:
        for obj in self:
            try:
                obj._after_fork_in_child()
            except Exception:  # pragma: no cover - the child must go on
                _log.exception("resetting %s %r after fork failed", self._what, obj)
