"""What every case script of ``bench_compare.py`` shares: import the embedml under test, borrow
helpers from the benchmark scripts without letting them change which embedml that is, and
hand one JSON result back to the parent.

A case script runs in a child process whose ``PYTHONPATH`` is one tree's ``src`` and whose
``BENCH_COMPARE_SRC`` names that same directory; the parent starts one such child per side
and round, so the two embedml versions never share a process.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1]


def import_embedml() -> ModuleType:
    """``import embedml`` and check that it came from the tree under test.

    Raises:
        RuntimeError: embedml was imported from somewhere else (an installed copy, or the
            checkout that holds the benchmark scripts).
    """
    import embedml

    expected = Path(os.environ["BENCH_COMPARE_SRC"]).resolve()
    got = Path(embedml.__file__).resolve()
    if expected not in got.parents:
        raise RuntimeError(f"embedml was imported from {got}, not from {expected}")
    return embedml


def import_bench(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` for its helpers, after :func:`import_embedml`.

    The benchmark scripts put their own checkout's ``src`` first on ``sys.path`` and import
    embedml; with embedml already imported from the tree under test that import is a no-op,
    and ``sys.path`` is restored so that nothing else is found in the wrong tree.
    """
    if "embedml" not in sys.modules:
        raise RuntimeError("call import_embedml() before import_bench()")
    saved = list(sys.path)
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path[:] = saved


def emit(result: dict) -> None:
    """Print the result as the last line of stdout, where the parent reads it."""
    print(json.dumps(result), flush=True)
