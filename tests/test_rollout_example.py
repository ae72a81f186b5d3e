"""examples/rollout.py runs end to end (save, gate, canary, shadow, promote, rollback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "rollout.py"


def test_rollout_example_runs(subprocess_env):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, env=subprocess_env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "staging -> 2" in out
    assert "production -> 2" in out and "serving 2" in out
    assert "rolled back, serving 1" in out
    assert "rollback  2 -> 1 by oncall (rollback)" in out
    on_v2 = int(out.split("canary: ")[1].split(" of")[0])
    assert 20 <= on_v2 <= 90  # 10% of 500 users, within 5 standard deviations
