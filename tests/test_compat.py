"""Old module paths (before the layer folders) keep working, as the very same modules."""

from __future__ import annotations

import json
import subprocess
import sys

from embedml._compat import MOVED

_CHILD = """
import importlib, json, sys, warnings
import embedml
from embedml._compat import MOVED
out = {}
for old, (new, deprecated) in sorted(MOVED.items()):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mod = importlib.import_module(old)
    out[old] = {
        "same": mod is importlib.import_module(new) and sys.modules[old] is mod,
        "warned": any(issubclass(w.category, DeprecationWarning) and new in str(w.message)
                      for w in caught),
    }
print(json.dumps(out))
"""


def test_every_old_path_is_the_moved_module_itself(subprocess_env):
    # a fresh process: nothing imported yet, so submodules of moved packages
    # (embedml.metrics.otel) are found through the old parent first
    out = subprocess.run(
        [sys.executable, "-c", _CHILD],
        env=subprocess_env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    seen = json.loads(out)
    assert set(seen) == set(MOVED)
    for old, (new, deprecated) in MOVED.items():
        assert seen[old]["same"], f"import {old} gave another module than {new}"
        assert seen[old]["warned"] == deprecated, old
