"""The loader protocol every model format implements.

A format is one class: it writes an in-memory model to an artifact file (``dump``), and
turns the verified bytes of an artifact back into a :class:`Runtime` (``load``). A format
knows nothing about the store, schemas or handles; it only reads what it is given.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import UnsupportedFormatError
from ..schema.tensor import TensorSpec

__all__ = ["FormatOptions", "ModelFormat", "Runtime"]


@dataclass(frozen=True)
class FormatOptions:
    """Load-time options a format may use; a format rejects options that do not apply to it.

    * ``method``: the method called on sklearn-style objects (``"predict"``, ``"predict_proba"``).
    * ``session_options``: ONNX Runtime session settings, a dict of ``SessionOptions``
      attributes (``{"intra_op_num_threads": 1}``) or a ``SessionOptions`` object.
    * ``outputs``: ONNX output name(s) to return; one name returns that array, a list a dict.
    """

    method: str | None = None
    session_options: Any = None
    outputs: str | tuple[str, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


class Runtime(ABC):
    """A loaded model: turns a batch of inputs into a batch of outputs.

    ``inputs`` is one array (single-input models) or a dict name -> array, each with the
    batch on axis 0. The result is an array, a dict of arrays or a tuple of arrays, each
    with one entry per input row. ``predict`` must be safe to call from several threads.
    """

    #: Input tensor specs the model itself declares (ONNX, torch.export), else ``None``.
    input_specs: list[TensorSpec] | None = None
    #: Output tensor specs the model itself declares, else ``None``.
    output_specs: list[TensorSpec] | None = None
    #: Whether the outputs are one per input row along the first axis, so that rows can be
    #: validated one by one and calls joined into batches (see ``docs/concepts.md``).
    #: Formats whose files declare no shapes leave it ``True``.
    row_wise: bool = True
    #: Why ``row_wise`` is ``False``, for error messages ("output 'y' is a scalar").
    row_wise_reason: str = ""
    #: Names the model's inputs are matched by, in the model's order (ONNX graph inputs,
    #: ``torch.export`` user inputs, TorchScript ``forward`` arguments), else ``None``.
    input_names: tuple[str, ...] | None = None
    #: Columns of the single 2-D input (scikit-learn ``feature_names_in_``), else ``None``.
    feature_names: tuple[str, ...] | None = None
    #: Number of columns of the single 2-D input (scikit-learn ``n_features_in_``).
    n_features: int | None = None
    #: Class labels of a classifier (scikit-learn ``classes_``), in output column order.
    classes: tuple[Any, ...] | None = None
    #: The method called on a Python object (``"predict"``, ``"predict_proba"``...).
    method: str | None = None

    @abstractmethod
    def predict(self, inputs: Any) -> Any:
        """Run the model on a batch."""

    def signature(self) -> dict[str, Any]:
        """The interface the model declares, as plain JSON (recorded in the manifest at save):
        ``inputs`` / ``outputs`` (tensor specs as dicts, or ``None``), ``input_names``,
        ``feature_names``, ``n_features`` and ``classes``. Formats whose files say more
        (ONNX: symbolic dimensions, non-tensor outputs) add it."""
        return {
            "inputs": [s.to_dict() for s in self.input_specs] if self.input_specs else None,
            "outputs": [s.to_dict() for s in self.output_specs] if self.output_specs else None,
            "input_names": list(self.input_names) if self.input_names is not None else None,
            "feature_names": list(self.feature_names) if self.feature_names is not None else None,
            "n_features": self.n_features,
            "classes": _plain_list(self.classes),
        }

    def close(self) -> None:  # noqa: B027 - optional hook, most runtimes hold nothing
        """Release what the runtime holds (sessions, threads). Idempotent."""


def _plain_list(values: Any) -> list[Any] | None:
    """Class labels as JSON values (numpy scalars become Python ones)."""
    if values is None:
        return None
    return [v.item() if hasattr(v, "item") else v for v in values]


class ModelFormat(ABC):
    """One model format. Subclass, set ``name`` and ``suffixes``, and register it.

    ``suffixes[0]`` names new artifacts; every suffix is recognised when a file path is saved.
    ``unsafe_to_load`` marks formats whose loading or calling can run code the file
    carries (pickle, TorchScript, ``torch.export``): saving such a *file* needs a voucher.
    ``takes_method`` marks formats whose models are objects with several methods (the
    ``method`` option: ``store.save(..., method="predict_proba")``).
    ``declares_shapes`` marks formats whose runtimes decide ``row_wise`` from the artifact
    (ONNX).
    """

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]
    unsafe_to_load: ClassVar[bool] = False
    takes_method: ClassVar[bool] = False
    #: The artifact declares its tensors' shapes, which decide whether it is row-wise
    #: (``store.save(..., row_wise=True)`` cannot override them; ``False`` still can).
    declares_shapes: ClassVar[bool] = False

    def claims(self, obj: Any) -> bool:
        """Whether this format recognises an in-memory object as its own (for ``save``)."""
        return False

    @abstractmethod
    def dump(self, obj: Any, path: Path) -> None:
        """Write ``obj`` to ``path``. Raise :class:`~embedml.UnsupportedFormatError` if it can't."""

    @abstractmethod
    def load(self, data: bytes, options: FormatOptions) -> Runtime:
        """Build a runtime from the artifact's verified bytes."""

    def frameworks(self, obj: Any | None = None) -> list[str]:
        """Distribution names whose versions are stamped into the manifest at save time."""
        return []

    def inspect(self, obj: Any, path: Path, options: FormatOptions) -> Runtime | None:
        """A runtime for reading the interface of a model being saved (``obj``, or ``None``
        when a file was given) whose artifact was just written to ``path``; ``None`` when
        the format cannot tell without running untrusted code. The default loads the
        artifact like ``load`` would; for formats that are unsafe to load, only when it was
        written from the caller's own in-memory object (a file given by path is not run)."""
        if self.unsafe_to_load and obj is None:
            return None
        return self.load(path.read_bytes(), options)

    def tensor_specs(self, obj: Any) -> tuple[list[TensorSpec] | None, list[TensorSpec] | None]:
        """Input and output specs read from an in-memory model at save time, if it has them."""
        return None, None

    def __repr__(self) -> str:
        return f"<format {self.name!r}>"


def reject_options(fmt: str, options: FormatOptions, *allowed: str) -> None:
    """Raise if an option was set that the format ``fmt`` does not use."""
    for opt in ("method", "session_options", "outputs"):
        if opt not in allowed and getattr(options, opt) is not None:
            raise UnsupportedFormatError(f"load option {opt}= does not apply to {fmt} models")
