"""The version of embedml (one place)."""

__version__ = "0.1.0"
