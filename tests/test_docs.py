"""The python examples in README.md and docs/*.md run as written.

The blocks of one page run in order in one namespace, in a fresh temporary directory (they
may create ``models/``), in a subprocess so that nothing they import or leave behind leaks
into the rest of the suite.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks(page: Path) -> list[str]:
    return _BLOCK.findall(page.read_text())


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p)], ids=lambda p: p.name)
def test_python_blocks_run(page: Path, tmp_path: Path, subprocess_env) -> None:
    code = "\n\n".join(_blocks(page))
    script = tmp_path / f"{page.stem}_blocks.py"
    script.write_text(code)
    env = {**subprocess_env, "EMBEDML_STORE": str(tmp_path / "models")}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=110,
    )  # fmt: skip
    assert done.returncode == 0, f"{page.name} examples failed:\n{done.stdout}\n{done.stderr}"


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [p.name for p in (ROOT / "docs").glob("*.md") if p.name not in nav]
    assert not missing, f"docs pages missing from mkdocs.yml nav: {missing}"
