"""The store layer: versions, manifests, signing, the signed store record, and the
:class:`Store` that keeps them on disk. It never loads or runs a model: handles are made in
:mod:`embedml.serving`, whose :class:`embedml.ModelStore` is this store plus ``load``.

``embedml.store.ModelStore`` is another name of :class:`Store` (the store layer's class,
without ``load``); use :class:`embedml.ModelStore`. ``Store(url)`` with a remote URL
(``s3://bucket/prefix``) makes a :class:`RemoteStore`: the same methods over an object store.
"""

from .model_store import ModelStore, ModelVersion, PromotionGate, Store
from .remote_store import RemoteStore  # registers itself: Store("s3://...") makes one

__all__ = ["ModelStore", "ModelVersion", "PromotionGate", "RemoteStore", "Store"]
