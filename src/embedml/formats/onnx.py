"""``onnx`` format: ONNX models run by one shared ONNX Runtime ``InferenceSession`` on the CPU.

``InferenceSession.run`` is thread-safe, so one session serves every thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UnsupportedFormatError
from ..schema import TensorSpec
from .base import FormatOptions, ModelFormat, Runtime, reject_options

__all__ = ["OnnxFormat", "OnnxRuntime"]

_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16", "tensor(int8)": "int8",
    "tensor(uint8)": "uint8", "tensor(uint16)": "uint16", "tensor(uint32)": "uint32", "tensor(uint64)": "uint64",
    "tensor(bool)": "bool", "tensor(string)": "str",
}  # fmt: skip


def _spec(arg: Any) -> TensorSpec | None:
    dtype = _ORT_TYPES.get(arg.type)
    if dtype is None or not arg.shape:
        return None  # sequences/maps (e.g. sklearn ZipMap) have no tensor spec
    shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, dtype, shape)


def session_options(options: Any) -> Any:
    """Build ``onnxruntime.SessionOptions`` from a dict of its attributes (or pass one through)."""
    import onnxruntime as ort

    if options is None or isinstance(options, ort.SessionOptions):
        return options
    so = ort.SessionOptions()
    for key, value in dict(options).items():
        if not hasattr(so, key):
            raise UnsupportedFormatError(f"unknown ONNX Runtime session option {key!r}")
        setattr(so, key, value)
    return so


class OnnxRuntime(Runtime):
    """Runs an ``InferenceSession`` with the CPU provider."""

    def __init__(self, data: bytes, options: FormatOptions) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(
            data,
            sess_options=session_options(options.session_options),
            providers=["CPUExecutionProvider"],
        )
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        self._input_names = [i.name for i in inputs]
        self._single_input = self._input_names[0] if len(inputs) == 1 else None
        specs = [_spec(i) for i in inputs]
        self.input_specs = specs if all(s is not None for s in specs) else None  # type: ignore[assignment]
        self.output_specs = [s for s in (_spec(o) for o in outputs) if s is not None] or None
        all_outputs = [o.name for o in outputs]
        wanted = options.outputs
        if isinstance(wanted, str):
            wanted = (wanted,)
        for name in wanted or ():
            if name not in all_outputs:
                raise UnsupportedFormatError(
                    f"the ONNX model has no output {name!r}; its outputs are {all_outputs}"
                )
        self._names = list(wanted or all_outputs)
        self._one = isinstance(options.outputs, str) or (
            options.outputs is None and len(all_outputs) == 1
        )

    def predict(self, inputs: Any) -> Any:
        if self._single_input is not None and isinstance(inputs, np.ndarray):
            feed = {self._single_input: inputs}
        elif isinstance(inputs, dict):
            feed = inputs
        else:
            feed = {self._input_names[0]: np.asarray(inputs)}
        out = self.session.run(self._names, feed)
        if self._one:
            return out[0]
        return dict(zip(self._names, out))


class OnnxFormat(ModelFormat):
    """ONNX graphs: ``onnx.ModelProto``, serialized bytes, or ``.onnx`` files."""

    name = "onnx"
    suffixes = (".onnx",)

    def claims(self, obj: Any) -> bool:
        return isinstance(obj, bytes | bytearray) or (
            type(obj).__name__ == "ModelProto" and hasattr(obj, "SerializeToString")
        )

    def dump(self, obj: Any, path: Path) -> None:
        data = bytes(obj) if isinstance(obj, bytes | bytearray) else obj.SerializeToString()
        path.write_bytes(data)

    def load(self, data: bytes, options: FormatOptions) -> Runtime:
        reject_options(self.name, options, "session_options", "outputs")
        try:
            return OnnxRuntime(data, options)
        except UnsupportedFormatError:
            raise
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise UnsupportedFormatError(f"ONNX Runtime could not load the model: {exc}") from exc

    def frameworks(self, obj: Any | None = None) -> list[str]:
        return ["onnx", "onnxruntime"]
