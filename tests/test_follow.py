"""Following an alias: the follower polls every ``poll_s`` seconds on its clock (a FakeClock
here, so the interval logic is tested without sleeping), swaps when the alias moves (in this
process or another), counts a version that cannot load without retrying it, follows
``latest``, and stops at once when its handle closes."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

import pytest

import embedml
from embedml.serving.follow import Follower
from embedml.testing import FakeClock
from helpers_models import child_env
from helpers_rollout import Affine


@pytest.fixture
def affine(store):
    """Versions 1, 2 and 3 of ``m``: ``k * row sum`` with k = 1, -2 and 3."""
    for k, version in ((1.0, "1"), (-2.0, "2"), (3.0, "3")):
        store.save("m", Affine(k), version=version, format="tracked")
    return store


@pytest.fixture
def following(affine, threads_checked):
    """A handle on ``m@production`` (at version 1) and a follower on a FakeClock, polling
    every 30 fake seconds; the follower is waiting for its first interval."""
    affine.set_alias("m", "production", "1")
    clock = FakeClock()
    handle = affine.load("m", "@production")
    follower = Follower(handle, affine, "@production", 30.0, clock=clock)
    clock.wait_for_sleepers(1)
    yield handle, follower, clock
    assert follower.stop(60)
    handle.close()


def poll(clock: FakeClock, seconds: float = 30.0) -> None:
    """Move the clock and wait until the follower did what that allowed (it is waiting
    for its next interval again)."""
    clock.advance(seconds)
    clock.wait_for_sleepers(1)


def test_the_follower_polls_once_every_poll_s_on_its_clock(affine, following):
    handle, follower, clock = following
    affine.set_alias("m", "production", "2")
    poll(clock, 29.9)  # woke, found 29.9 s < 30 s: no poll
    assert handle.version == "1" and follower.swaps == 0
    poll(clock, 0.1)  # 30 s: polled and swapped
    assert handle.version == "2" and follower.swaps == 1
    assert handle.predict([1.0, 1.0]) == -4.0
    affine.set_alias("m", "production", "3")
    poll(clock, 29.9)  # the interval counts from the last poll
    assert handle.version == "2"
    poll(clock, 0.1)
    assert handle.version == "3" and follower.swaps == 2 and follower.errors == 0


def test_a_rollback_made_by_another_process_is_picked_up(affine, following, subprocess_env):
    handle, follower, clock = following
    affine.set_alias("m", "production", "3")
    poll(clock)
    assert handle.version == "3"
    code = (
        "import sys, embedml\n"
        "embedml.ModelStore(sys.argv[1]).set_alias('m', 'production', '1', who='oncall')\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(affine.root)],
        check=True, env=child_env(subprocess_env), timeout=120,
    )  # fmt: skip
    poll(clock)
    assert handle.version == "1" and handle.predict([1.0, 1.0]) == 2.0
    assert follower.swaps == 2 and follower.errors == 0
    last = affine.history("m")[-1]
    assert (last["from"], last["to"], last["who"], last["rollback"]) == ("3", "1", "oncall", True)


def test_a_version_that_cannot_load_is_counted_not_retried_and_serving_goes_on(affine, following):
    handle, follower, clock = following
    handle.predict([1.0, 1.0])
    bad = affine.save("m", Affine(7.0), version="4")
    (bad.path / bad.manifest.artifact).write_bytes(b"tampered")
    affine.set_alias("m", "production", "4")
    poll(clock)
    assert follower.errors == 1 and "IntegrityError" in follower.last_error
    assert handle.version == "1" and handle.predict([1.0, 1.0]) == 2.0
    poll(clock)  # the alias still names the version that failed: not loaded again
    assert follower.errors == 1
    affine.set_alias("m", "production", "2")  # a good version is picked up again
    poll(clock)
    assert handle.version == "2" and follower.swaps == 1


def test_following_latest_picks_up_new_saves(affine, threads_checked):
    clock = FakeClock()
    with affine.load("m") as handle:
        follower = Follower(handle, affine, "latest", 1.0, clock=clock)
        clock.wait_for_sleepers(1)
        affine.save("m", Affine(4.0), version="4", format="tracked")
        poll(clock, 1.0)
        assert handle.version == "4" and handle.predict([1.0, 1.0]) == 8.0
        assert follower.stop(60)


def test_stop_ends_a_follower_waiting_for_its_interval_at_once(following):
    handle, follower, clock = following
    assert follower.stop(60)  # the fake clock never moves: only stop() can end the wait
    assert not follower.alive and clock.sleepers == 0
    assert handle.version == "1"


class _Swaps(logging.Handler):
    """Sets an event for each version a follower logs that it now serves."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.served: dict[str, threading.Event] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if "now serves" in record.getMessage():
            version = record.args[1]  # "%s now serves %s (%s moved)"
            self.served.setdefault(version, threading.Event()).set()

    def wait(self, version: str) -> bool:
        return self.served.setdefault(version, threading.Event()).wait(60)


def test_load_with_follow_true_follows_on_the_real_clock(affine, threads_checked):
    logger = logging.getLogger("embedml.serving.follow")
    swaps, level = _Swaps(), logger.level
    logger.addHandler(swaps)
    logger.setLevel(logging.INFO)
    try:
        affine.set_alias("m", "production", "2")
        h = affine.load("m", "@production", follow=True, poll_s=0.02)
        assert h.follower.spec == "@production" and h.follower.poll_s == 0.02
        assert h.predict([1.0, 1.0], details=True).version == "2"
        affine.set_alias("m", "production", "3")
        assert swaps.wait("3")  # logged after the swap
        assert h.version == "3" and h.predict([1.0, 1.0]) == 6.0
        h.close()
        assert not h.follower.alive and h.follower.swaps == 1
    finally:
        logger.removeHandler(swaps)
        logger.setLevel(level)


def test_close_stops_a_follower_waiting_for_a_long_interval(affine, threads_checked):
    h = affine.load("m", follow=True, poll_s=3600)
    assert h.follower.alive
    h.close()  # does not wait for the hour to pass
    assert not h.follower.alive


def test_follow_options_are_checked(affine, threads_checked):
    with pytest.raises(embedml.ConfigurationError, match="poll_s"):
        affine.load("m", "latest", follow=True, poll_s=0)
    with pytest.raises(TypeError):
        affine.load("m", "latest", follow_alias=True)
    with affine.load("m") as h, pytest.raises(embedml.ConfigurationError, match="clock"):
        Follower(h, affine, "latest", 1.0, clock=object())
