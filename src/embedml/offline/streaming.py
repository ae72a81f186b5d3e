"""Streaming prediction: micro-batch an endless iterator of records, results in input order.

The engine lives in :mod:`embedml.serving.stream` (below the handle, whose
``predict_stream`` / ``apredict_stream`` call it); this module keeps its documented names.
"""

from ..serving.stream import (
    apredict_stream,
    predict_batch_or_rows,
    predict_rows,
    predict_stream,
    row_error,
    split_rows,
)

__all__ = [
    "apredict_stream",
    "predict_batch_or_rows",
    "predict_rows",
    "predict_stream",
    "row_error",
    "split_rows",
]
