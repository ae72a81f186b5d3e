"""Find the items that make a batch fail by running halves of it again.

Shared by the batcher's batch function (:meth:`embedml.serving.pipeline.Pipeline.run_items`)
and by streaming and file scoring (:func:`embedml.offline.streaming.predict_rows`): a batch
whose call fails is split in two, each half runs on its own, and so on down to single
items, so ``k`` bad items among ``n`` cost about ``2k log2(n)`` extra calls and every good
item still gets its result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["bisect_failures"]

T = TypeVar("T")


def bisect_failures(
    items: Sequence[T],
    run: Callable[[Sequence[T]], Sequence[Any]],
    item_error: Callable[[Exception], Exception | None],
) -> list[Any]:
    """``run(items)``, one result per item; if it raises, the items that fail alone.

    ``run`` takes a slice of ``items`` and returns one result per item of it, or raises.
    ``item_error`` maps what it raised to the error a failing item gets, or to ``None``
    when the exception is not about the items (then it propagates). On such an error the
    slice is halved and each half run again; a single item that still fails gets the
    error. Returns one entry per item: its result, or its error.
    """
    results: list[Any] = [None] * len(items)
    # Slices to run, as a stack, the lower half first: not a recursive closure, which is a
    # reference cycle (the function, its cell) holding ``items`` and ``results`` until the
    # garbage collector runs: with a batcher's items and their futures, 39 collections per
    # 12,288 rows (64 asyncio tasks, bench_compare's batching case), none without.
    todo = [(0, len(items))] if items else []
    while todo:
        lo, hi = todo.pop()
        try:
            part = run(items[lo:hi])
        except Exception as exc:
            error = item_error(exc)
            if error is None:
                raise
            if hi - lo == 1:
                results[lo] = error
            else:
                mid = (lo + hi) // 2
                todo += ((mid, hi), (lo, mid))
            continue
        results[lo:hi] = part
    return results
