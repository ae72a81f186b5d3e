"""The serving layer: a loaded version behind a pipeline (validate -> preprocess -> model ->
postprocess -> validate), the handle that callers use, dynamic batching, the process-wide
model cache, alias following, and :mod:`~embedml.serving.load`, the one module where the
store and handles meet."""
