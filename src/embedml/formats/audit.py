"""What a restricted load checks in the object graph it built, before anything calls it.

An allow-list of *types* is not an allow-list of *behaviour*: a pickle made only of
allowed scikit-learn and numpy classes can still wire them into a program that runs on the
first ``predict``. The chain this module exists for (issue 12): a ``Pipeline`` whose
``StackingRegressor`` step dispatches ``getattr(estimator, stack_method_)(X)`` with a
method name taken from the pickled state (``"tofile"``, on a numpy array), after a
``FunctionTransformer(func=bytes)`` step turned a byte array into a file name. So
:func:`audit_graph` walks everything the load produced and refuses:

* **callables held as values** (functions, builtins, bound methods, ufuncs, and classes
  kept as attributes, like ``func=bytes``) unless they are in ``trusted_callables``; the
  only ones allowed without listing are numeric scalar types (``dtype=np.float64``) and
  numpy array classes (masked arrays keep theirs);
* **attributes that name a method scikit-learn calls by name** (a survey of
  scikit-learn 1.9: ``stack_method(_)``, ``response_method``, a scorer's
  ``_response_method``, ``chain_method(_)``) unless they name one of the prediction
  methods they exist for; ``importance_getter`` must be ``"auto"`` or a plain attribute
  path; a text vectorizer's ``input`` must be ``"content"`` (``"filename"`` and ``"file"``
  read files named by the caller's inputs);
* **instance attributes that replace a method** of their class (``model.predict = ...``
  in the pickled ``__dict__``).

It does not find every gadget: state can still steer allowed code in ways no rule here
names. Signatures are the guarantee; this is defence in depth (``docs/security.md``).
"""

from __future__ import annotations

import functools
import re
import types
from typing import Any

import numpy as np

from ..errors import UntrustedArtifactError

__all__ = ["audit_graph", "callable_name"]

_PREDICT_METHODS = frozenset({"predict", "predict_proba", "predict_log_proba", "decision_function"})

# attribute -> the values it may hold (a string, or a list / tuple of them), for objects of
# scikit-learn classes. None: "not set" or a dropped estimator.
_METHOD_ATTRIBUTES: dict[str, frozenset[str | None]] = {
    "stack_method": _PREDICT_METHODS | {"auto"},
    "stack_method_": _PREDICT_METHODS | {None},
    "response_method": _PREDICT_METHODS | {"auto"},
    "_response_method": _PREDICT_METHODS,
    "chain_method": _PREDICT_METHODS,
    "chain_method_": _PREDICT_METHODS,
}
_ATTRIBUTE_PATH = re.compile(r"(?!__)[A-Za-z_]\w*(\.(?!__)[A-Za-z_]\w*)*")

# Leaves: values that hold no reference to anything else.
_ATOMS = (type(None), bool, int, float, complex, str, bytes, bytearray, range, np.dtype)
# Classes that may be kept as values without being listed: calling one only converts a value.
_VALUE_CLASSES = (float, int, bool, complex, object)
_NUMERIC_SCALARS = (np.number, np.bool_, np.datetime64, np.timedelta64)
_ROUTINES = (types.BuiltinFunctionType, types.FunctionType, types.MethodType, np.ufunc)


def callable_name(fn: Any) -> str:
    """``module.qualname`` of a function, class, method or ufunc, as the error names it and
    ``trusted_callables`` matches it."""
    module = getattr(fn, "__module__", None)
    if module is None:  # methods of builtin types: named after their object's class
        module = type(getattr(fn, "__self__", None)).__module__
    if isinstance(fn, np.ufunc):
        module = "numpy"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", repr(fn))
    return f"{module}.{name}"


@functools.lru_cache(maxsize=1024)
def _routine_type(cls: type) -> bool:
    """Whether objects of ``cls`` are functions, methods or method descriptors (what
    ``inspect.isroutine`` tells, which depends on the type alone), or numpy ufuncs."""
    if issubclass(cls, type):
        return False
    plain_descriptor = hasattr(cls, "__get__") and not hasattr(cls, "__set__")
    return plain_descriptor or issubclass(cls, _ROUTINES)


def _held_callable(value: Any) -> bool:
    return isinstance(value, type) or _routine_type(type(value))


def _callable_allowed(value: Any, trusted: frozenset[str]) -> bool:
    if isinstance(value, type) and (
        value in _VALUE_CLASSES
        or issubclass(value, _NUMERIC_SCALARS)
        or (
            issubclass(value, np.ndarray)
            and value.__module__.startswith("numpy")
            and not issubclass(value, np.memmap)  # opens files
        )
    ):
        return True
    return callable_name(value) in trusted


def _class_member(cls: type, name: str) -> Any:
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name]
    return None


@functools.lru_cache(maxsize=4096)
def _replaces_method(cls: type, name: str) -> bool:
    """Whether an instance attribute ``name`` would hide a method of ``cls`` (a function or
    other non-data descriptor; data descriptors such as properties win over the instance)."""
    member = _class_member(cls, name)
    if member is None:
        return False
    if isinstance(member, type):  # a class kept on the class is data (MaskedArray._baseclass)
        return False
    kind = type(member)
    data_descriptor = hasattr(kind, "__set__") or hasattr(kind, "__delete__")
    return not data_descriptor and (hasattr(kind, "__get__") or callable(member))


def _attribute_problem(owner: Any, name: str, value: Any) -> str | None:
    """Why attribute ``name`` = ``value`` of a scikit-learn object is refused, or ``None``."""
    allowed = _METHOD_ATTRIBUTES.get(name)
    if allowed is not None:
        names = value if isinstance(value, list | tuple) else [value]
        if any(not (v is None or isinstance(v, str)) or v not in allowed for v in names):
            choices = ", ".join(sorted(a for a in allowed if a is not None))
            return f"it names a method to call; it may only name {choices}"
    elif name == "importance_getter" and isinstance(value, str):
        if not _ATTRIBUTE_PATH.fullmatch(value):
            return "it is neither 'auto' nor a plain attribute path"
    elif (
        name == "input"
        and type(owner).__module__.startswith("sklearn.feature_extraction")
        and value != "content"
    ):
        return "a vectorizer with this input reads files named by the data it is given"
    return None


def _custom_reduce(cls: type) -> bool:
    return not issubclass(cls, np.ndarray) and (
        cls.__reduce_ex__ is not object.__reduce_ex__ or cls.__reduce__ is not object.__reduce__
    )


def _children(obj: Any) -> list[tuple[str, Any]]:
    """``(label, value)`` of what ``obj`` holds: its attributes, and the state its pickle
    carries (``__reduce_ex__``) when its class keeps state outside ``__dict__`` (Cython
    classes, numpy random states, ``defaultdict``'s factory)."""
    cls = type(obj)
    items: list[tuple[str, Any]] = []
    state = getattr(obj, "__dict__", None)
    if isinstance(state, dict):
        items += [(f".{k}", v) for k, v in state.items()]
    for slot in getattr(cls, "__slots__", ()):
        if isinstance(slot, str) and hasattr(obj, slot):
            items.append((f".{slot}", getattr(obj, slot)))
    if items and not _custom_reduce(cls):
        return items
    try:  # the class's own method: an instance attribute must not be what runs here
        reduced = cls.__reduce_ex__(obj, 4)
    except Exception:  # noqa: BLE001 - then what __dict__ holds is all there is to see
        return items
    if isinstance(reduced, tuple):  # (rebuild, args, state, list items, dict items)
        for i, part in enumerate(reduced[1:5], 1):
            if i == 1 and isinstance(part, tuple):  # the object's own class is not held
                part = tuple(a for a in part if not (isinstance(a, type) and a in cls.__mro__))
            items.append((f"<pickled state {i}>", list(part) if i >= 3 and part else part))
    return items


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def audit_graph(root: Any, trusted_callables: frozenset[str] | None) -> None:
    """Walk everything reachable from ``root`` (a freshly loaded model) and raise
    :class:`UntrustedArtifactError` for the first held callable that is not in
    ``trusted_callables`` (dotted names, see ``callable_names``; ``None``: the loader
    already vetted every callable, as skops does), method-naming attribute outside its
    allowed values, or instance attribute replacing a method. The error says where in the
    model it was found."""
    seen: dict[int, Any] = {}  # id -> object: keeps temporaries alive so no id is reused
    stack: list[tuple[Any, str]] = [(root, type(root).__name__)]
    while stack:
        obj, where = stack.pop()
        if isinstance(obj, _ATOMS) or id(obj) in seen:
            continue
        seen[id(obj)] = obj
        if _held_callable(obj):
            if trusted_callables is not None and not _callable_allowed(obj, trusted_callables):
                name = callable_name(obj)
                raise UntrustedArtifactError(
                    f"restricted loading refused the callable {name!r} held at {where}: "
                    "code the model would call later. If you trust it, pass "
                    f"trusted_callables=[{name!r}] to load()",
                    type_name=name,
                )
            continue
        cls = type(obj)
        if isinstance(obj, dict):
            for k, v in obj.items():
                stack.append((k, f"{where} (a key)"))
                stack.append((v, f"{where}[{_short(k)}]"))
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(obj))
        elif isinstance(obj, slice):
            stack.extend((v, where) for v in (obj.start, obj.stop, obj.step))
        elif isinstance(obj, np.generic):
            if isinstance(obj, np.void) and obj.dtype.hasobject:
                stack.append((obj.item(), where))
            continue
        elif isinstance(obj, np.ndarray) and obj.dtype.hasobject:
            stack.extend((v, f"{where}[...]") for v in obj.flat)
        if cls in (dict, list, tuple, set, frozenset, slice, np.ndarray):
            continue
        # before _children: pickling machinery it calls looks some methods up on the
        # instance (object.__reduce_ex__ calls obj.__getstate__)
        for name in getattr(obj, "__dict__", None) or ():
            if isinstance(name, str) and _replaces_method(cls, name):
                raise UntrustedArtifactError(
                    f"restricted loading refused {where}.{name}: an instance attribute "
                    f"that replaces the method {cls.__qualname__}.{name}",
                    type_name=f"{cls.__module__}.{cls.__qualname__}",
                )
        sklearn_object = cls.__module__.startswith("sklearn")
        for label, value in _children(obj):
            name = label[1:]
            if sklearn_object and label.startswith("."):
                problem = _attribute_problem(obj, name, value)
                if problem:
                    raise UntrustedArtifactError(
                        f"restricted loading refused {where}{label} = {_short(value)}: {problem}",
                        type_name=f"{cls.__module__}.{cls.__qualname__}",
                    )
            stack.append((value, f"{where}{label}"))
