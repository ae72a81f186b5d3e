"""``torchscript`` (``.pt``) and ``torch_export`` (``.pt2``) formats, run on the CPU in eval mode.

PyTorch has deprecated TorchScript; ``torch.export`` programs (``.pt2``) are its successor.
torch is imported only when such a model is saved or loaded.

Both are code, not data: a TorchScript ``forward`` (or an exported program's graph) can
call any operator torch has when it runs, such as ``torch.from_file(path, shared=True)``,
which creates and writes files. So a ``.pt`` / ``.pt2`` *file* needs a voucher to be saved
(``trust=True`` or ``sha256=``), like a pickle (``unsafe_to_load``).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UnsupportedFormatError
from ..schema.tensor import TensorSpec
from .base import FormatOptions, ModelFormat, Runtime, reject_options

__all__ = ["TorchExportFormat", "TorchRuntime", "TorchScriptFormat"]


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise UnsupportedFormatError(
            "this model needs PyTorch: pip install 'embedml[torch]'"
        ) from exc
    return torch


def _to_numpy(out: Any) -> Any:
    if isinstance(out, tuple | list):
        return tuple(_to_numpy(o) for o in out)
    if isinstance(out, dict):
        return {k: _to_numpy(v) for k, v in out.items()}
    return out.detach().cpu().numpy()


class TorchRuntime(Runtime):
    """Calls a module under ``torch.inference_mode()``; float64 inputs become float32
    (torch's default dtype) unless the model declares other input dtypes."""

    def __init__(
        self,
        module: Any,
        input_specs: list[TensorSpec] | None,
        input_names: tuple[str, ...] | None = None,
    ) -> None:
        self._torch = _torch()
        self.module = module
        self.input_specs = input_specs
        if input_names is None and input_specs:
            input_names = tuple(s.name for s in input_specs)
        self.input_names = input_names

    def predict(self, inputs: Any) -> Any:
        torch = self._torch
        if isinstance(inputs, dict):
            if self.input_names is None:  # the pipeline refuses dicts before this
                raise TypeError("the model declares no argument names to match a dict of inputs")
            arrays = [inputs[n] for n in self.input_names]  # by name, never by position
        else:
            arrays = [inputs]
        tensors = []
        for a in arrays:
            a = np.asarray(a)
            if a.dtype == np.float64 and self.input_specs is None:
                a = a.astype(np.float32)
            tensors.append(torch.from_numpy(np.ascontiguousarray(a)))
        with torch.inference_mode():
            out = self.module(*tensors)
        return _to_numpy(out)


class _TorchFormat(ModelFormat):
    """What both torch formats share: objects of one torch class, written by the ``save``
    of one torch namespace (``torch.jit``, ``torch.export``)."""

    unsafe_to_load = True  # the model runs its own code (e.g. torch.from_file writes files)
    namespace: str  # "jit" or "export"
    class_name: str  # its class of model: "ScriptModule", "ExportedProgram"

    def claims(self, obj: Any) -> bool:
        torch = sys.modules.get("torch")  # an object of torch's can only exist once imported
        if torch is None:
            return False
        return isinstance(obj, getattr(getattr(torch, self.namespace), self.class_name))

    def dump(self, obj: Any, path: Path) -> None:
        if not self.claims(obj):
            raise UnsupportedFormatError(
                f"the {self.name} format writes a torch.{self.namespace}.{self.class_name}, "
                f"not a {type(obj).__name__}"
            )
        getattr(_torch(), self.namespace).save(obj, str(path))

    def frameworks(self, obj: Any | None = None) -> list[str]:
        return ["torch"]


class TorchScriptFormat(_TorchFormat):
    """``torch.jit.ScriptModule`` objects and ``.pt`` files, loaded with ``torch.jit.load``."""

    name = "torchscript"
    suffixes = (".pt", ".pth")
    namespace, class_name = "jit", "ScriptModule"

    def load(self, data: bytes, options: FormatOptions) -> Runtime:
        reject_options(self.name, options)
        torch = _torch()
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        module.eval()
        return TorchRuntime(module, None, _script_arguments(module))


def _script_arguments(module: Any) -> tuple[str, ...] | None:
    """The names of the required arguments of a TorchScript module's ``forward`` (after
    ``self``), read from its schema; ``None`` if it has none to read."""
    try:
        args = module.forward.schema.arguments[1:]
    except Exception:  # noqa: BLE001 - a module without a scripted forward
        return None
    names = tuple(a.name for a in args if not a.has_default_value())
    return names or None


def _export_specs(program: Any) -> list[TensorSpec] | None:
    """Input specs of a ``torch.export`` program (symbolic dims become -1)."""
    try:
        user_inputs = set(program.graph_signature.user_inputs)
        specs = []
        for node in program.graph.nodes:
            if node.op == "placeholder" and node.name in user_inputs:
                val = node.meta["val"]
                shape = tuple(d if isinstance(d, int) else -1 for d in val.shape)
                specs.append(TensorSpec(node.name, str(val.dtype).removeprefix("torch."), shape))
        return specs or None
    except Exception:  # noqa: BLE001 - specs are a convenience; absent means unchecked
        return None


def _batch_specs(specs: list[TensorSpec] | None) -> list[TensorSpec] | None:
    """A dynamic batch dimension exported as a fixed 1 would refuse batches; leave it open
    (torch.export programs are taken as row-wise, as TorchScript ones)."""
    if not specs or any(not s.shape for s in specs):
        return specs
    return [TensorSpec(s.name, s.dtype, (-1, *s.shape[1:])) for s in specs]


class TorchExportFormat(_TorchFormat):
    """``torch.export.ExportedProgram`` objects and ``.pt2`` files (``torch.export.save``)."""

    name = "torch_export"
    suffixes = (".pt2",)
    namespace, class_name = "export", "ExportedProgram"  # its graph may call any operator

    def load(self, data: bytes, options: FormatOptions) -> Runtime:
        reject_options(self.name, options)
        torch = _torch()
        program = torch.export.load(io.BytesIO(data))
        return TorchRuntime(program.module(), _batch_specs(_export_specs(program)))

    def tensor_specs(self, obj: Any) -> tuple[list[TensorSpec] | None, list[TensorSpec] | None]:
        return _batch_specs(_export_specs(obj)), None
