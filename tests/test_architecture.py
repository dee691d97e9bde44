"""The house's rules, read from the code (imports inside functions counted): no import circle among the
library's modules, the core never imports the serving layer, the library never imports Streamlit, and no
Python file of the library or the app grows past about 400 lines."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "ecaml"
MAX_LINES = 420  # "about 400"
SERVING = ("ecaml.serve",)
CORE = ("ecaml.data", "ecaml.eval", "ecaml.train", "ecaml.store", "ecaml.config", "ecaml.confusion", "ecaml.losses",
        "ecaml.models", "ecaml.registry", "ecaml.runs", "ecaml.flags")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in LIBRARY.rglob("*.py")}


def imported_names(path: Path, root: Path = ROOT) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (relative imports resolved)."""
    names: set[str] = set()
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


def library_edges() -> dict[str, set[str]]:
    return {name: {n for n in imported_names(path) if n in MODULES and n != name} for name, path in MODULES.items()}


def strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's components with more than one module: the import circles."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_the_circle_finder_finds_a_circle_through_a_function_level_and_a_relative_import(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("def f():\n    from pkg.b import x\n")
    (tmp_path / "pkg" / "b.py").write_text("from . import c\n")
    (tmp_path / "pkg" / "c.py").write_text("import os\nfrom pkg.a import f\n")
    (tmp_path / "pkg" / "d.py").write_text("from pkg import a\n")
    modules = {f"pkg.{m}" for m in "abcd"}
    edges = {m: imported_names(tmp_path / "pkg" / f"{m[4:]}.py", tmp_path) & modules - {m} for m in modules}
    assert strongly_connected(edges) == [{"pkg.a", "pkg.b", "pkg.c"}]


def test_no_import_circle_in_the_library():
    assert strongly_connected(library_edges()) == []


def test_the_core_never_imports_the_serving_layer():
    wrong = {name: sorted(n for n in targets if n.startswith(SERVING))
             for name, targets in library_edges().items() if name.startswith(CORE)}
    assert {name: targets for name, targets in wrong.items() if targets} == {}


def test_the_library_never_imports_streamlit():
    users = [name for name, path in MODULES.items() if any(n.split(".")[0] == "streamlit" for n in imported_names(path))]
    assert users == []


def test_no_python_file_of_the_library_or_the_app_is_over_about_400_lines():
    files = [*LIBRARY.rglob("*.py"), *(ROOT / "app").rglob("*.py")]
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
