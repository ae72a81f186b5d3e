"""The package's import graph: no cycles, and few imports inside functions
(docs/architecture.md). `lint-imports` (run by `make test`) checks the layers; this checks
what it does not: cycles inside a layer, and imports hidden in functions.

Every import counts: at module level, inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "embedml"

#: Imports of embedml's own modules inside functions allowed outside the lazy top-level
#: API (embedml/__init__.py) and the optional-extra integrations (integrations/).
MAX_FUNCTION_IMPORTS = 10

#: Import edges of a cycle that another change removes, each with its owner: the test
#: fails once an edge is gone, so that it is taken off this list.
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()  # the batcher runs a callable: none left


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _targets(
    module: str, is_package: bool, node: ast.Import | ast.ImportFrom, modules: set[str]
) -> list[str]:
    """The embedml modules an import statement imports."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = module.split(".") if is_package else module.split(".")[:-1]
        if node.level:
            base = base[: len(base) - node.level + 1]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        # `from package import submodule` imports the submodule
        names = [
            f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names
        ]
    return sorted({n for n in names if n.split(".")[0] == "embedml"})


def _imports() -> list[tuple[str, str, str, int]]:
    """``(module, imported module, where, line)``; where is "module", "function" or
    "type_checking"."""
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(f) for f in files}
    found = []
    for path in files:
        module = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))

        def visit(node: ast.AST, where: str, module: str = module, path: Path = path) -> None:
            for child in ast.iter_child_nodes(node):
                inner = where
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                    inner = "function"
                elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    inner = "type_checking"
                if isinstance(child, ast.Import | ast.ImportFrom):
                    for target in _targets(module, path.name == "__init__.py", child, modules):
                        if target != module:
                            found.append((module, target, where, child.lineno))
                visit(child, inner, module, path)

        visit(tree, "module")
    return found


def _cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def _lazy_face(module: str) -> bool:
    return module == "embedml" or module.startswith("embedml.integrations")


def test_the_graph_is_read():
    # the checks below would pass on an empty graph: make sure it is the real one
    edges = {(a, b) for a, b, _, _ in _imports()}
    assert ("embedml.serving.load", "embedml.serving.handle") in edges
    assert ("embedml.serving.handle", "embedml.serving.stream") in edges


def test_no_import_cycles():
    edges = {(a, b) for a, b, _, _ in _imports()}
    for edge in KNOWN_CYCLE_EDGES:
        assert edge in edges, f"{edge} is gone: take it off KNOWN_CYCLE_EDGES"
    assert _cycles(edges - KNOWN_CYCLE_EDGES) == []


def test_few_imports_inside_functions():
    hidden = [
        f"{a}:{line} imports {b}"
        for a, b, where, line in _imports()
        if where == "function" and not _lazy_face(a)
    ]
    assert len(hidden) <= MAX_FUNCTION_IMPORTS, "\n".join(hidden)


@pytest.mark.parametrize("layer", ["store", "observe"])
def test_lower_layers_never_import_serving(layer):
    # the two edges that made the big cycle (lint-imports checks all layers in make test)
    bad = [
        f"{a}:{line} imports {b}"
        for a, b, _, line in _imports()
        if a.startswith(f"embedml.{layer}") and b.startswith("embedml.serving")
    ]
    assert bad == []


SCHEMA_NAMES = [
    "ColumnInputs", "FieldSpec", "NamedRecords", "NamedTensors", "NoSchema", "RecordSchema",
    "SchemaOptions", "Schema", "TensorSchema", "TensorSpec", "cast_array", "check_array",
    "dynamic", "not_row_wise", "check_rows", "is_column_input", "name_difference",
    "record_schema_for", "schema_from_dict", "schema_to_dict",
]  # fmt: skip


def test_schema_names_survive_the_split():
    import embedml.schema
    import embedml.schema.core
    from embedml.schema import limits, record, tensor

    assert sorted(embedml.schema.__all__) == sorted(SCHEMA_NAMES)
    for name in SCHEMA_NAMES:
        value = getattr(embedml.schema, name)
        homes = [m for m in (limits, record, tensor) if getattr(m, name, None) is value]
        assert homes and getattr(embedml.schema.core, name) is value, name
    assert limits.SchemaOptions is embedml.schema.SchemaOptions
    assert tensor.TensorSpec is embedml.schema.TensorSpec
    assert record.RecordSchema is embedml.schema.RecordSchema


def test_old_module_paths_are_the_new_modules():
    import importlib
    import warnings

    from embedml._compat import MOVED

    for old, (new, deprecated) in MOVED.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        assert module is importlib.import_module(new), old
        assert any(w.category is DeprecationWarning for w in caught) == deprecated, old
    from embedml.offline import streaming
    from embedml.serving import stream

    assert streaming.predict_stream is stream.predict_stream


def test_model_store_is_the_store_plus_load(tmp_path):
    import embedml
    import embedml.store

    store = embedml.ModelStore(tmp_path / "s")
    assert isinstance(store, embedml.store.Store) and isinstance(store, embedml.store.ModelStore)
    assert embedml.store.ModelStore is embedml.store.Store and not hasattr(
        embedml.store.Store, "load"
    )
    plain = embedml.store.Store(tmp_path / "s")
    again = embedml.default_store(plain)  # a store layer object gets load
    assert isinstance(again, embedml.ModelStore) and again.root == plain.root
    assert embedml.default_store(store) is store
    assert repr(store) == f"ModelStore({str(store.root)!r})"
