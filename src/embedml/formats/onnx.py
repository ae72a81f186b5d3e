"""``onnx`` format: ONNX models run by one shared ONNX Runtime ``InferenceSession`` on the CPU.

``InferenceSession.run`` is thread-safe, so one session serves every thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UnsupportedFormatError
from ..schema.tensor import TensorSpec, not_row_wise
from .base import FormatOptions, ModelFormat, Runtime, reject_options

__all__ = ["OnnxFormat", "OnnxRuntime", "declared_shapes"]

_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16", "tensor(int8)": "int8",
    "tensor(uint8)": "uint8", "tensor(uint16)": "uint16", "tensor(uint32)": "uint32", "tensor(uint64)": "uint64",
    "tensor(bool)": "bool", "tensor(string)": "str",
    "tensor(complex64)": "complex64", "tensor(complex128)": "complex128",
}  # fmt: skip


def _spec(arg: Any, shaped: dict[str, bool]) -> TensorSpec | None:
    """The spec of an ONNX Runtime ``NodeArg``; ``None`` for sequences, maps and element
    types numpy cannot hold (bfloat16, float8...). ``shaped``: whether the graph declares
    the value's shape (ONNX Runtime shows a scalar and an undeclared shape both as ``[]``)."""
    dtype = _ORT_TYPES.get(arg.type)
    if dtype is None:
        return None
    shape = arg.shape
    if not shape and not shaped.get(arg.name, False):
        return TensorSpec(arg.name, dtype, None)
    # ONNX Runtime shows a dynamic dimension as None or its name, a fixed one as an int
    return TensorSpec(arg.name, dtype, tuple(shape))


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes, start: int, end: int) -> Any:
    """(field number, (start, end)) of the length-delimited fields of one protobuf message."""
    i = start
    while i < end:
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n, i = _varint(buf, i)
            yield key >> 3, (i, i + n)
            i += n
        else:
            raise ValueError(f"protobuf wire type {wire}")


def declared_shapes(data: bytes) -> dict[str, bool]:
    """Graph input and output names -> whether the graph declares the tensor's shape.

    Reads only ``ModelProto.graph.{input,output}`` from the serialized bytes (the weights
    are skipped), so it costs microseconds and needs neither the ``onnx`` package nor a
    session. Bytes it cannot read give ``{}`` (every ``[]`` shape is then undeclared)."""
    found: dict[str, bool] = {}
    try:
        for field, (gs, ge) in _fields(data, 0, len(data)):
            if field != 7:  # ModelProto.graph
                continue
            for gfield, (vs, ve) in _fields(data, gs, ge):
                if gfield not in (11, 12):  # GraphProto.input, GraphProto.output
                    continue
                name, shaped = "", False
                for vfield, (s, e) in _fields(data, vs, ve):
                    if vfield == 1:  # ValueInfoProto.name
                        name = bytes(data[s:e]).decode()
                    elif vfield == 2:  # ValueInfoProto.type
                        for tfield, (ts, te) in _fields(data, s, e):
                            if tfield == 1:  # TypeProto.tensor_type: is its shape (2) set?
                                shaped = any(f == 2 for f, _ in _fields(data, ts, te))
                found[name] = shaped
    except (ValueError, IndexError, UnicodeDecodeError):
        return {}
    return found


def _describe(arg: Any, spec: TensorSpec | None) -> dict[str, Any]:
    """One graph input or output as the manifest records it: ``name``, ``type`` (ONNX
    Runtime's, e.g. ``tensor(float)`` or ``seq(map(int64,tensor(float)))``), ``dtype`` and
    ``shape`` as in :class:`TensorSpec` (``None`` for non-tensors), and ``dims``: the
    dimensions as ONNX Runtime shows them (an int, a symbol such as ``"batch"``, or
    ``None`` for an unnamed dynamic dimension)."""
    dims = (
        None if arg.shape is None else [d if isinstance(d, int | str) else None for d in arg.shape]
    )
    return {
        "name": arg.name,
        "type": arg.type,
        "dtype": spec.dtype if spec is not None else _ORT_TYPES.get(arg.type),
        "shape": None if spec is None or spec.shape is None else list(spec.shape),
        "dims": dims,
    }


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
        # ``InferenceSession.run`` is a Python wrapper that, on every call, checks that no
        # required input is missing, that OrtValue feeds belong to this session and that
        # WebGPU graph capture is off, then calls the bound C++ ``run``. Here the pipeline
        # has matched the inputs by name, feeds are numpy arrays and the provider is the
        # CPU's, so the C++ ``run`` is called directly (a missing input still fails there,
        # as a PredictionError): 2.5 us CPU less per call on a loaded machine, a 1-row
        # predict 19.8 -> 17.3 us and 1,024 rows 48.3 -> 45.4 us (medians of 15 interleaved
        # rounds in one process; docs/benchmarks.md "Issue 13, the last guard rails"). The
        # wrapper serves if a release of onnxruntime renames the attribute.
        bound = getattr(self.session, "_sess", None)
        self._run = bound.run if hasattr(bound, "run") else self._wrapped_run
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        self._input_names = [i.name for i in inputs]
        self.input_names = tuple(self._input_names)
        self._single_input = self._input_names[0] if len(inputs) == 1 else None
        shaped = declared_shapes(data)
        specs = [_spec(i, shaped) for i in inputs]
        self.input_specs = specs if all(s is not None for s in specs) else None  # type: ignore[assignment]
        out_specs = [_spec(o, shaped) for o in outputs]
        self._graph = (
            [_describe(a, s) for a, s in zip(inputs, specs)],
            [_describe(a, s) for a, s in zip(outputs, out_specs)],
        )
        self.output_specs = [s for s in out_specs if s is not None] or None
        # Row-wise only when the graph says so (see not_row_wise); sequence outputs such as
        # ZipMap's have no shape and count one element per row.
        tensor_outputs = [s for s, o in zip(out_specs, outputs) if o.type.startswith("tensor(")]
        if self.input_specs is None or None in tensor_outputs:
            self.row_wise_reason = "it has inputs or outputs of element types numpy cannot hold"
        else:
            self.row_wise_reason = not_row_wise(self.input_specs, tensor_outputs) or ""  # type: ignore[arg-type]
        self.row_wise = not self.row_wise_reason
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

    def signature(self) -> dict[str, Any]:
        """Every graph input and output (see :func:`_describe`), tensors or not."""
        sig = super().signature()
        sig["inputs"], sig["outputs"] = self._graph
        return sig

    def _wrapped_run(self, names: list[str], feed: dict[str, Any], run_options: Any) -> Any:
        return self.session.run(names, feed, run_options)

    def predict(self, inputs: Any) -> Any:
        if self._single_input is not None and isinstance(inputs, np.ndarray):
            feed = {self._single_input: inputs}
        elif isinstance(inputs, dict):
            feed = inputs
        elif self._single_input is not None:
            feed = {self._single_input: np.asarray(inputs)}
        else:  # the pipeline matches several inputs by name before this
            raise TypeError(
                f"the model takes several inputs {self._input_names}: pass a dict by name"
            )
        out = self._run(self._names, feed, None)
        if self._one:
            return out[0]
        return dict(zip(self._names, out))


class OnnxFormat(ModelFormat):
    """ONNX graphs: ``onnx.ModelProto``, serialized bytes, or ``.onnx`` files."""

    name = "onnx"
    suffixes = (".onnx",)
    declares_shapes = True

    def claims(self, obj: Any) -> bool:
        return isinstance(obj, bytes | bytearray) or (
            type(obj).__name__ == "ModelProto" and hasattr(obj, "SerializeToString")
        )

    def dump(self, obj: Any, path: Path) -> None:
        if not self.claims(obj):
            raise UnsupportedFormatError(
                f"the onnx format writes an onnx.ModelProto or ONNX bytes, not a {type(obj).__name__}"
            )
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
