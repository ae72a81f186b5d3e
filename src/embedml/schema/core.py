"""Schemas before their split into :mod:`~embedml.schema.limits`,
:mod:`~embedml.schema.tensor` and :mod:`~embedml.schema.record`: import them from
:mod:`embedml.schema`. Kept so that ``embedml.schema.core`` still imports."""

from . import *  # noqa: F403  (every name of embedml.schema)
from . import __all__  # noqa: F401
