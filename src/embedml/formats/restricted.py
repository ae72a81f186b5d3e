"""Restricted unpickling: load pickle and joblib artifacts with an allow-list of types.

A plain unpickler imports and calls whatever the stream names, so a pickle can run any
code. The restricted loaders here resolve a global only when it is

* a **class** defined in ``sklearn``, numpy's core, dtype, random and masked-array modules,
  or ``scipy.sparse`` (functions are refused: several read or write files or evaluate
  strings; so are ``numpy.lib`` and ``scipy.io``, whose classes open files), and the
  ``__pyx_unpickle_*`` state restorers Cython generates for those classes,
* one of a short list of reconstruction helpers pickles of numpy arrays and scikit-learn
  models need (``numpy...._reconstruct``, ``copyreg._reconstructor``, ...),
* a builtin value type (``dict``, ``list``, ``set``, ``slice``, ``complex`` ...), or
* named by the caller in ``trusted_types`` (``"package.module.Name"`` or the object).

Anything else raises :class:`~embedml.UntrustedArtifactError` naming the type, before it
is imported. This narrows what a hostile pickle can do; it is not a sandbox: an allowed
class can still be built with hostile state. See ``docs/security.md``.
"""

from __future__ import annotations

import importlib
import io
import pickle
from collections.abc import Iterable
from typing import Any

from ..errors import UntrustedArtifactError
from .audit import audit_graph

__all__ = [
    "allowed_global",
    "callable_names",
    "callable_trusted",
    "restricted_joblib_loads",
    "restricted_pickle_loads",
    "type_name",
]

# Where allowed classes may come from: the class must be defined in, and be asked for from,
# one of these modules or their submodules. Not all of numpy or scipy: ``numpy.lib`` holds
# DataSource / NpzFile and ``scipy.io`` holds FortranFile / netcdf_file, classes whose
# constructor opens (and can create or truncate) a file.
_TRUSTED_EXACT = frozenset({"numpy"})
_TRUSTED_PREFIXES = (
    "sklearn", "numpy.dtypes", "numpy._core", "numpy.core", "numpy.random", "numpy.ma",
    "scipy.sparse",
)  # fmt: skip

# Functions (not classes) that standard pickles of numpy arrays, numpy random states and
# scikit-learn models call while rebuilding; each only builds a value from its arguments.
_HELPERS = frozenset(
    {
        "copyreg._reconstructor",
        "copyreg.__newobj__",
        "_codecs.encode",
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
        "numpy.core.numeric._frombuffer",
        "numpy._core.numeric._frombuffer",
        "numpy.random._pickle.__randomstate_ctor",
        "numpy.random._pickle.__generator_ctor",
        "numpy.random._pickle.__bit_generator_ctor",
        "joblib.numpy_pickle.NumpyArrayWrapper",
        "numpy.ma.core._mareconstruct",  # masked arrays (e.g. a search's cv_results_)
    }
)

_BUILTINS = frozenset(
    {
        "builtins.dict", "builtins.list", "builtins.tuple", "builtins.set",
        "builtins.frozenset", "builtins.bytearray", "builtins.bytes", "builtins.str",
        "builtins.int", "builtins.float", "builtins.complex", "builtins.bool",
        "builtins.slice", "builtins.range",
        "collections.OrderedDict", "collections.defaultdict",
    }
)  # fmt: skip

# Classes inside the trusted packages whose constructor touches the file system.
_DENIED = frozenset({"numpy.memmap", "numpy.lib.npyio.NpzFile", "numpy.lib._npyio_impl.NpzFile"})


def _trusted_module(module: str) -> bool:
    return module in _TRUSTED_EXACT or any(
        module == p or module.startswith(p + ".") for p in _TRUSTED_PREFIXES
    )


def type_name(obj: Any) -> str:
    """``module.qualname`` of a class or function (how ``trusted_types`` entries are matched)."""
    if isinstance(obj, str):
        return obj
    return f"{obj.__module__}.{obj.__qualname__}"


def callable_names(trusted_callables: Iterable[Any] | None) -> frozenset[str]:
    """The ``trusted_callables`` option as dotted names: ``"pkg.mod:func"`` and
    ``"pkg.mod.func"`` strings are the same entry; a function or class stands for its
    ``module.qualname``."""
    names = set()
    for entry in trusted_callables or ():
        names.add(entry.replace(":", ".") if isinstance(entry, str) else type_name(entry))
    return frozenset(names)


def callable_trusted(module: str, name: str, trusted: frozenset[str]) -> bool:
    """Whether ``module`` / ``name`` (an import path's two halves, or a held callable's
    module and qualname) is on the :func:`callable_names` allow-list ``trusted``."""
    return f"{module}.{name}" in trusted


def _lookup(module: str, name: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def allowed_global(module: str, name: str, trusted: frozenset[str]) -> Any:
    """Resolve ``module.name`` if the allow-list permits it, else raise
    :class:`UntrustedArtifactError` naming it. Modules outside the list are never imported."""
    full = f"{module}.{name}"
    refuse = UntrustedArtifactError(
        f"restricted loading refused type {full!r}: it is not on the allow-list "
        "(classes of scikit-learn, numpy and scipy.sparse). If you trust it, pass "
        f"trusted_types=[{full!r}] to load() (for a function the model keeps and calls: "
        f"trusted_callables=[{full!r}])",
        type_name=full,
    )
    if full in _DENIED:
        raise refuse
    if full in trusted or full in _HELPERS or full in _BUILTINS:
        try:
            return _lookup(module, name)
        except (ImportError, AttributeError) as exc:
            raise UntrustedArtifactError(
                f"cannot resolve {full!r}: {exc}", type_name=full
            ) from None
    if not _trusted_module(module):
        raise refuse
    try:
        obj = _lookup(module, name)
    except (ImportError, AttributeError) as exc:
        raise UntrustedArtifactError(f"cannot resolve {full!r}: {exc}", type_name=full) from None
    # Cython's generated ``__pyx_unpickle_<Class>`` only restores the state of its own class.
    cython_restore = name.startswith("__pyx_unpickle_") and callable(obj)
    if not (isinstance(obj, type) or cython_restore) or type_name(obj) in _DENIED:
        raise refuse
    if not _trusted_module(getattr(obj, "__module__", "") or ""):  # re-exported from elsewhere
        raise refuse
    return obj


def _trusted(
    trusted_types: Iterable[Any] | None, trusted_callables: Iterable[Any] | None
) -> frozenset[str]:
    # a function the user trusts may be resolved; holding it is checked by audit_graph
    return frozenset(type_name(t) for t in trusted_types or ()) | callable_names(trusted_callables)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, trusted: frozenset[str]) -> None:
        super().__init__(file)
        self._trusted = trusted

    def find_class(self, module: str, name: str) -> Any:
        return allowed_global(module, name, self._trusted)


def restricted_pickle_loads(
    data: bytes,
    trusted_types: Iterable[Any] | None = None,
    trusted_callables: Iterable[Any] | None = None,
) -> Any:
    """Unpickle ``data`` allowing only the allow-list plus ``trusted_types``, then check
    the object graph (:func:`~embedml.formats.audit.audit_graph`): callables it holds
    must be in ``trusted_callables``.

    Raises :class:`UntrustedArtifactError` naming the first refused type or callable.
    """
    obj = _RestrictedUnpickler(io.BytesIO(data), _trusted(trusted_types, trusted_callables)).load()
    audit_graph(obj, callable_names(trusted_callables))
    return obj


def restricted_joblib_loads(
    data: bytes,
    trusted_types: Iterable[Any] | None = None,
    trusted_callables: Iterable[Any] | None = None,
) -> Any:
    """Load a ``joblib.dump`` file's bytes (compressed or not) with the same allow-list and
    object-graph check as :func:`restricted_pickle_loads`.

    joblib writes arrays as a ``NumpyArrayWrapper`` followed by raw bytes; the wrapper is
    allowed, and arrays of Python objects inside it go through the same check.
    """
    from joblib.numpy_pickle import NumpyUnpickler
    from joblib.numpy_pickle_utils import _validate_fileobject_and_memmap

    trusted = _trusted(trusted_types, trusted_callables)

    class _Restricted(NumpyUnpickler):
        def find_class(self, module: str, name: str) -> Any:
            return allowed_global(module, name, trusted)

    with _validate_fileobject_and_memmap(io.BytesIO(data), "", None) as (fobj, _):
        if isinstance(fobj, str):  # pre-0.10 joblib layout: companion files on disk
            raise UntrustedArtifactError(
                "restricted loading does not support joblib files older than joblib 0.10"
            )
        obj = _Restricted("", fobj, ensure_native_byte_order=True).load()
    audit_graph(obj, callable_names(trusted_callables))
    return obj
