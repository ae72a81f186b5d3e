"""Streaming prediction: micro-batch an endless iterator of records, results in input order.

The engine lives in :mod:`embedml.serving.stream` (below the handle, whose
``predict_stream`` / ``apredict_stream`` call it); this module keeps its documented names.
"""

from ..serving.stream import *  # noqa: F403
from ..serving.stream import __all__  # noqa: F401
