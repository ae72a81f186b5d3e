"""``Follower``: keeps a handle on whatever version a spec (usually an alias) resolves to.

``store.load(name, "@production", follow=True, poll_s=1.0)`` starts one daemon thread per
handle that re-resolves the spec every ``poll_s`` seconds and hot-swaps the handle
(:meth:`ModelHandle.swap`) when the result changes, whether this process or another one
moved the alias. Moving the alias back is the rollback. ``handle.close()`` stops the thread.
A forked child starts its own polling thread (the parent's does not exist there).

The thread holds the handle only weakly, so a handle dropped without ``close()`` still lets
its thread end. Errors (an unreadable store, a version that fails to load or warm up) are
counted and logged, never raised into callers; a version that failed is not retried until
the spec resolves to something else.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any, Protocol

from .._fork import LiveObjects
from ..clock import SYSTEM_CLOCK, Clock, check_clock, wait_for
from ..errors import ConfigurationError, HandleClosedError
from ..store import ModelVersion, Store

__all__ = ["Follower"]

log = logging.getLogger("embedml.serving.follow")


class Followed(Protocol):
    """What a follower needs of its handle (:class:`~embedml.ModelHandle` is one; it owns
    its follower, so this module does not import it)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    def _swap_to(self, mv: ModelVersion) -> str: ...


# Live followers: each starts again in a forked child (see Follower._after_fork_in_child).
_LIVE: LiveObjects[Follower] = LiveObjects("follower")


class Follower:
    """The polling thread behind ``follow=True``; see the module docstring.

    ``swaps`` counts the swaps made, ``errors`` the failed polls or swaps, ``last_error``
    holds the latest one (as text). ``clock`` measures the ``poll_s`` seconds between polls
    (an :class:`embedml.clock.Clock`; a :class:`embedml.testing.FakeClock` in tests).
    """

    def __init__(
        self,
        handle: Followed,
        store: Store,
        spec: str,
        poll_s: float,
        *,
        resolve_options: dict[str, Any] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not isinstance(poll_s, int | float) or not poll_s > 0:
            raise ConfigurationError(f"poll_s must be a number of seconds > 0, got {poll_s!r}")
        self._clock = check_clock(clock)
        self.spec = spec
        self.poll_s = float(poll_s)
        self.swaps = 0
        self.errors = 0
        self.last_error: str | None = None
        self._store = store
        self._resolve_options = dict(resolve_options or {})  # e.g. require_signature
        self._name = handle.name
        self._handle = weakref.ref(handle)
        self._stopping = False
        self._wake = threading.Condition()  # notified by stop()
        self._failed: str | None = None
        self._start()
        _LIVE.add(self)

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"embedml-follow-{self._name}{self.spec}", daemon=True
        )
        self._thread.start()

    def _after_fork_in_child(self) -> None:
        """In a forked child the polling thread does not exist: start it again (unless
        stopped), so that a ``follow=True`` handle loaded before the fork keeps following."""
        handle = self._handle()
        self._wake = threading.Condition()  # the parent's stop() may have held it
        if not self._stopping and handle is not None:
            self._start()

    def _stopped_after_interval(self) -> bool:
        """Wait ``poll_s`` seconds on the clock, or until :meth:`stop`; whether stopped."""
        with self._wake:
            return wait_for(self._clock, self._wake, lambda: self._stopping, self.poll_s)

    def _run(self) -> None:
        while not self._stopped_after_interval():
            handle = self._handle()
            if handle is None:
                return
            try:
                self._poll(handle)
            except HandleClosedError:
                return
            finally:
                del handle

    def _poll(self, handle: Followed) -> None:
        try:
            mv = self._store.resolve(self._name, self.spec, **self._resolve_options)
        except Exception as exc:
            self._error(f"cannot resolve {self._name}{self.spec}: {exc}")
            return
        if mv.version == handle.version or mv.version == self._failed:
            return
        try:
            handle._swap_to(mv)
        except HandleClosedError:
            raise
        except Exception as exc:
            self._failed = mv.version
            self._error(f"cannot swap {handle.name} to {mv.version}: {type(exc).__name__}: {exc}")
            return
        self._failed = None
        self.swaps += 1
        log.info("%s now serves %s (%s moved)", handle.name, mv.version, self.spec)

    def _error(self, message: str) -> None:
        self.errors += 1
        self.last_error = message
        log.warning("follower %s%s: %s", self._name, self.spec, message)

    def stop(self, timeout: float | None = None) -> bool:
        """Stop polling and wait for the thread (and a swap it is doing) to end, at most
        ``timeout`` seconds (``None``: as long as it takes). Returns whether it ended; a
        swap stuck in loading or warming up a version is abandoned (logged) on timeout."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is threading.current_thread():
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error(
                "follower %s%s: a swap did not finish within %s s; abandoning its thread",
                self._name, self.spec, timeout,
            )  # fmt: skip
            return False
        return True

    @property
    def alive(self) -> bool:
        """Whether the polling thread is running."""
        return self._thread.is_alive()
