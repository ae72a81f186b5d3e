"""The offline layer: scoring files, micro-batched streams, and export to ONNX."""
