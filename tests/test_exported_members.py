"""The public API is declared once, in ``embedml.__all__`` (as httpx does), and the public
submodules declare theirs in their own ``__all__``: every declared name resolves (in a fresh
process, where nothing was imported yet), nothing public is left out of a declaration, and
every declared name is documented in docs/api.md."""

from __future__ import annotations

import importlib
import re
import types
from pathlib import Path

import pytest

import embedml
from embedml._compat import MOVED
from helpers_models import run_python_json

API_PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"

#: Public modules besides the package itself, by the path users import them from.
PUBLIC_MODULES = [
    "embedml.clock",
    "embedml.errors",
    "embedml.export",
    "embedml.formats",
    "embedml.integrations.mlflow",
    "embedml.metrics.otel",
    "embedml.metrics.prometheus",
    "embedml.testing",
]


def _defined_here(module: types.ModuleType) -> set[str]:
    """Public names bound in a module to classes and functions defined in that module (a
    module may also import names; those are another module's to declare)."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and isinstance(value, type | types.FunctionType)
        and getattr(value, "__module__", None) == module.__name__
    }


_FRESH = """
import json, sys, types
import embedml
declared = list(embedml.__all__)
missing = []
for name in declared:
    try:
        getattr(embedml, name)
    except Exception as exc:
        missing.append(f"{name}: {type(exc).__name__}: {exc}")
undeclared = sorted(
    name for name, value in vars(embedml).items()
    if not name.startswith("_") and name not in declared
    and not isinstance(value, types.ModuleType)
    and getattr(value, "__module__", "").startswith("embedml")
)
print(json.dumps({"missing": missing, "undeclared": undeclared}))
"""


def test_every_declared_name_resolves_and_nothing_public_is_undeclared(subprocess_env):
    # A fresh process: the lazy names are resolved here for the first time, as in an
    # application (in this one, other tests have imported most modules already).
    found = run_python_json(_FRESH, env=subprocess_env)
    assert found["missing"] == [], "names in embedml.__all__ that do not resolve"
    assert found["undeclared"] == [], "embedml objects bound in the package but not in __all__"
    assert embedml.__all__ == sorted(set(embedml.__all__)), "__all__ is sorted, without repeats"


@pytest.mark.parametrize("path", PUBLIC_MODULES)
def test_public_modules_declare_what_they_define(path):
    module = importlib.import_module(path)
    declared = module.__all__
    assert not [n for n in declared if not hasattr(module, n)], (
        f"{path}.__all__ names what it lacks"
    )
    assert not sorted(_defined_here(module) - set(declared)), (
        f"{path} defines public names not in __all__"
    )


def _resolve(target: str) -> object:
    """The object a ``::: a.b.C`` line renders (the longest importable module, then
    attributes)."""
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise AssertionError(f"docs/api.md renders {target!r}, which does not resolve")


def _rendered() -> list[object]:
    """What docs/api.md renders: each ``::: target``, or only the members listed under it
    (``options: members: [...]``); for a module rendered whole, each name in its
    ``__all__`` (mkdocstrings renders those)."""
    directives: dict[str, list[str]] = {}
    current = ""
    for line in API_PAGE.read_text().splitlines():
        directive = re.match(r"::: (\S+)", line)
        if directive:
            current = directive.group(1)
            directives[current] = []
        elif current and re.match(r"\s+- \w+$", line):  # a member listed under `current`
            directives[current].append(line.split("-", 1)[1].strip())
    objects: list[object] = []
    for target, members in directives.items():
        obj = _resolve(target)
        if members:
            objects += [getattr(obj, m) for m in members]
        else:
            objects.append(obj)
            if isinstance(obj, types.ModuleType):
                objects += [getattr(obj, n) for n in getattr(obj, "__all__", ())]
    return objects


def _is_rendered(value: object, rendered: list[object]) -> bool:
    if any(value is obj for obj in rendered):
        return True
    # a submodule (embedml.export) is documented when each name it declares is
    names = getattr(value, "__all__", None) if isinstance(value, types.ModuleType) else None
    return bool(names) and all(_is_rendered(getattr(value, n), rendered) for n in names)


@pytest.mark.parametrize("path", ["embedml", *PUBLIC_MODULES])
def test_every_declared_name_is_documented(path):
    # an old module path is served by the module at its new one (embedml._compat)
    module = importlib.import_module(MOVED.get(path, (path,))[0])
    rendered = _rendered()
    names = [n for n in module.__all__ if n != "__version__"]
    undocumented = [n for n in names if not _is_rendered(getattr(module, n), rendered)]
    assert undocumented == [], f"in {path}.__all__ but not rendered by docs/api.md"


def test_import_is_light(subprocess_env):
    code = (
        "import json, sys, embedml; print(json.dumps(sorted(m for m in ('onnxruntime', 'torch', "
        "'numpy', 'pydantic', 'embedml.testing', 'pytest') if m in sys.modules)))"
    )
    assert run_python_json(code, env=subprocess_env) == []


def test_the_testing_module_does_not_need_pytest(subprocess_env):
    code = "import json, sys, embedml; embedml.testing.FakeClock(); print(json.dumps('pytest' in sys.modules))"
    assert run_python_json(code, env=subprocess_env) is False
