"""The demo (``make demo``) runs end to end and shows what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import embedml

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs_and_leaves_a_usable_store(tmp_path: Path, subprocess_env) -> None:
    root = tmp_path / "models"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), str(root)],
        env=subprocess_env, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "iris@2 (onnx) predicts" in out and "iris@1 (joblib) predicts" in out
    assert "SchemaError" in out and "field='petal_width' index=1 version=2" in out
    assert "served by versions ['2', '3'], 0 wrong" in out
    assert "19 rows scored, 1 rejected" in out
    # part three: a real redis-server; every good event has an output, two dead letters
    assert "150 outputs by versions ['2'], 0 wrong, 2 dead letters, pending 0, lag 0" in out
    assert "is not JSON" in out and "field 'petal_width'" in out
    rejects = (tmp_path / "scored.csv.rejects.jsonl").read_text().splitlines()
    assert len(rejects) == 1 and '"row": 8' in rejects[0] and "sepal_width" in rejects[0]
    log_records = list(embedml.read_jsonl(tmp_path / "predictions.jsonl"))
    assert f"prediction log: {len(log_records)} records" in out and len(log_records) >= 150
    store = embedml.ModelStore(root)
    assert store.versions("iris") == ["1", "2", "3"]
    assert store.aliases("iris") == {"production": "2"}
    assert [store.manifest("iris", v).format for v in ("1", "2", "3")] == ["joblib", "onnx", "onnx"]
