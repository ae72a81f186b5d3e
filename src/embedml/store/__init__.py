"""The store layer: versions, manifests, signing, the signed store record, and the
:class:`ModelStore` that keeps them on disk. It never loads or runs a model: handles are
made in :mod:`embedml.serving`."""

from .model_store import ModelStore, ModelVersion

__all__ = ["ModelStore", "ModelVersion"]
