"""``pickle`` and ``joblib`` formats: any Python object with ``predict`` (sklearn-style).

Loading a pickle runs code. The store verifies the artifact's SHA-256 before these loaders
ever see the bytes; ``load(..., restricted=True)`` (format option ``extra["restricted"]``)
unpickles with an allow-list of types instead (:mod:`embedml.formats.restricted`); see
``docs/security.md``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import pickle
from abc import abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UnsupportedFormatError
from .base import FormatOptions, ModelFormat, Runtime, reject_options
from .restricted import restricted_joblib_loads, restricted_pickle_loads

__all__ = ["JoblibFormat", "ObjectRuntime", "PickleFormat"]


class ObjectRuntime(Runtime):
    """Calls ``method`` (default ``predict``) of a Python object on each batch.

    A model fitted on a DataFrame (it has ``feature_names_in_``) gets a DataFrame with
    those column names, so sklearn pipelines with column transformers work on records.
    The model's interface is read from scikit-learn's attributes: ``feature_names_in_``,
    ``n_features_in_`` and ``classes_``.
    """

    def __init__(self, model: Any, method: str | None) -> None:
        name = method or "predict"
        fn = getattr(model, name, None)
        if fn is None and method is None and callable(model):
            fn = model
        if not callable(fn):
            raise UnsupportedFormatError(
                f"the model ({type(model).__name__}) has no method {name!r}"
            )
        self.model = model
        self._fn = fn
        self.method = name
        names = _attribute(model, "feature_names_in_")  # a numpy array in sklearn
        self._columns = [str(c) for c in names] if names is not None and len(names) else None
        self.feature_names = tuple(self._columns) if self._columns is not None else None
        n = _attribute(model, "n_features_in_")
        self.n_features = int(n) if isinstance(n, int | np.integer) else None
        classes = _attribute(model, "classes_")
        one_output = isinstance(classes, np.ndarray) and classes.ndim == 1  # not multi-output
        self.classes = tuple(classes.tolist()) if one_output else None

    def predict(self, inputs: Any) -> Any:
        if (
            self._columns is not None
            and isinstance(inputs, np.ndarray)
            and inputs.ndim == 2
            and inputs.shape[1] == len(self._columns)
        ):
            import pandas as pd

            inputs = pd.DataFrame(inputs, columns=self._columns)
        return self._fn(inputs)


def _attribute(model: Any, name: str) -> Any:
    """A fitted attribute, or ``None`` (sklearn properties raise AttributeError when unset)."""
    try:
        return getattr(model, name, None)
    except Exception:  # noqa: BLE001 - a property of a user class may raise anything
        return None


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    # Scanning every installed distribution takes ~0.25 s; once per process is enough.
    from importlib.metadata import packages_distributions

    return dict(packages_distributions())


def _object_frameworks(obj: Any) -> list[str]:
    root = type(obj).__module__.split(".")[0] if obj is not None else ""
    dists = ["numpy"]
    with contextlib.suppress(Exception):  # stamping versions is best effort
        dists += _packages_distributions().get(root, [])
    return sorted(set(dists))


class _ObjectFormat(ModelFormat):
    """A Python object serialized whole, called through ``method``: what the joblib and
    pickle formats share. A subclass says how it unpickles (``_loads``) and how it does
    so under an allow-list of types (``_restricted_loads``)."""

    unsafe_to_load = True
    takes_method = True

    @abstractmethod
    def _loads(self, data: bytes) -> Any:
        """The object in ``data``."""

    @abstractmethod
    def _restricted_loads(self, data: bytes, trusted_types: Any, trusted_callables: Any) -> Any:
        """The object in ``data``, refusing types and callables outside the allow-list."""

    def load(self, data: bytes, options: FormatOptions) -> Runtime:
        reject_options(self.name, options, "method")
        extra = options.extra
        if extra.get("restricted"):
            obj = self._restricted_loads(
                data, extra.get("trusted_types"), extra.get("trusted_callables")
            )
        else:
            obj = self._loads(data)  # the store verified the hash first
        return ObjectRuntime(obj, options.method)

    def inspect(self, obj: Any, path: Path, options: FormatOptions) -> Runtime | None:
        # the object is already in memory; a file given by path is not unpickled at save
        return None if obj is None else ObjectRuntime(obj, options.method)


class JoblibFormat(_ObjectFormat):
    """Python objects saved with ``joblib.dump`` (the default for in-memory objects)."""

    name = "joblib"
    suffixes = (".joblib",)

    def claims(self, obj: Any) -> bool:
        return True  # the fallback for any Python object; checked last

    def dump(self, obj: Any, path: Path) -> None:
        import joblib

        joblib.dump(obj, path)

    def _loads(self, data: bytes) -> Any:
        import joblib

        return joblib.load(io.BytesIO(data))

    def _restricted_loads(self, data: bytes, trusted_types: Any, trusted_callables: Any) -> Any:
        return restricted_joblib_loads(data, trusted_types, trusted_callables)

    def frameworks(self, obj: Any | None = None) -> list[str]:
        return sorted({"joblib", *_object_frameworks(obj)})


class PickleFormat(_ObjectFormat):
    """Python objects saved with plain :mod:`pickle` (protocol 5)."""

    name = "pickle"
    suffixes = (".pkl", ".pickle")

    def dump(self, obj: Any, path: Path) -> None:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=5)

    def _loads(self, data: bytes) -> Any:
        return pickle.loads(data)  # noqa: S301 - hash verified first

    def _restricted_loads(self, data: bytes, trusted_types: Any, trusted_callables: Any) -> Any:
        return restricted_pickle_loads(data, trusted_types, trusted_callables)

    def frameworks(self, obj: Any | None = None) -> list[str]:
        return _object_frameworks(obj)
