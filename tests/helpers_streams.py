"""Models for the broker-stream fault tests (importable by child processes, like helpers_models).

Each is ``helpers_rollout.Affine`` (``k * row sum``, so an output tells which version made
it) with one trap, set off by a row whose first value is ``at``:

* ``Holding``: while the file ``flag`` exists, the call touches ``flag + ".held"`` and waits
  until ``flag`` is removed: the test knows the process is inside that batch, then kills it
  (SIGKILL), kills the broker, or swaps the model.
* ``Poisoned``: the process dies at once (``os._exit(POISON_EXIT)``), like a record that
  crashes a native library.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from helpers_rollout import Affine

POISON_EXIT = 23


def _hit(X: Any, at: float) -> bool:
    return bool((np.asarray(X, dtype=np.float64)[:, 0] == at).any())


class Holding(Affine):
    """``Affine`` that waits inside the call holding ``at`` while the file ``flag`` exists."""

    def __init__(self, k: float, at: float, flag: str) -> None:
        super().__init__(k)
        self.at, self.flag = at, flag

    def predict(self, X: Any) -> Any:
        flag = Path(self.flag)
        if _hit(X, self.at) and flag.exists():
            Path(self.flag + ".held").touch()
            while flag.exists():  # polls a file another process removes
                time.sleep(0.005)
        return super().predict(X)


class Poisoned(Affine):
    """``Affine`` whose process exits (``POISON_EXIT``) in the call holding ``at``."""

    def __init__(self, k: float, at: float) -> None:
        super().__init__(k)
        self.at = at

    def predict(self, X: Any) -> Any:
        if _hit(X, self.at):
            os._exit(POISON_EXIT)
        return super().predict(X)
