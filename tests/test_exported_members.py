"""The public API is declared once, in embedml.__all__ (as httpx does)."""

import subprocess
import sys

import embedml


def test_all_matches_public_names():
    assert sorted(dir(embedml)) == sorted(embedml.__all__)
    for name in embedml.__all__:
        assert getattr(embedml, name) is not None
    # every embedml-defined object bound at package level is declared in __all__
    for name, value in vars(embedml).items():
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("embedml"):
            assert name in embedml.__all__, name


def test_import_is_light():
    code = "import sys, embedml; print(sorted(m for m in ('onnxruntime', 'torch', 'numpy', 'pydantic') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
