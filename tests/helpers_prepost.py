"""Pre/post-processing steps referenced by import path (``"helpers_prepost:double"``)
in manifests; importable by child processes when ``tests/`` is on ``PYTHONPATH``."""

from __future__ import annotations

from typing import Any

import numpy as np


def double(batch: Any) -> Any:
    """Preprocess: multiply every feature by 2."""
    return np.asarray(batch) * 2


def negate(out: Any) -> Any:
    """Postprocess: flip the sign of the model's outputs."""
    return -np.asarray(out)


def explode(batch: Any) -> Any:
    """A processing step that fails."""
    raise ArithmeticError("step exploded")


NOT_CALLABLE = 42
