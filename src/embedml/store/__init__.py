"""The store layer: versions, manifests, signing, the signed store record, and the
:class:`Store` that keeps them on disk. It never loads or runs a model: handles are made in
:mod:`embedml.serving`, whose :class:`embedml.ModelStore` is this store plus ``load``.

``embedml.store.ModelStore`` is another name of :class:`Store` (the store layer's class,
without ``load``); use :class:`embedml.ModelStore`.
"""

from .model_store import ModelStore, ModelVersion, PromotionGate, Store

__all__ = ["ModelStore", "ModelVersion", "PromotionGate", "Store"]
