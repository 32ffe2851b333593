"""The layout the design promises, checked on the source: no import cycle among the project's packages, every
module importable, SQL only in the package that owns the data, one atomic-write helper, one extension list.

The import graph (``import_graph``):
- nodes are the modules of ``search``, ``encoders``, ``indexer`` and ``train`` (a package is its ``__init__``)
  and ``app.py``;
- an edge is an import that runs when the module is imported: module-level statements, including those under
  ``try``/``if``/``with`` and in class bodies. Imports inside functions are lazy on purpose (``search query``
  must not pay for torch) and are not edges, nor is anything under ``if TYPE_CHECKING:``;
- ``from pkg import name`` is an edge to ``pkg``, and also to ``pkg.name`` when that is a submodule, or to the
  module a lazy package (PEP 562 ``__getattr__``) loads the name from: its ``_MODULES`` map when it has one,
  otherwise every module its ``__getattr__`` imports;
- importing ``a.b`` runs ``a/__init__`` first, but that is not an edge: a package whose ``__init__`` re-exports
  its own submodules is no cycle by itself. A submodule that imports its package (``from search import X``)
  while that package's ``__init__`` imports it (directly or through others) is one, and fails here.
"""

from __future__ import annotations

import ast
import graphlib
import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PACKAGES = ("search", "encoders", "indexer", "train")
DATA_OWNER = "indexer/store/"
ATOMIC_WRITE_HOME = "encoders/files.py"
EXTENSIONS_HOME = "encoders/images.py"
# Not imported by the importability check, each for its reason (they are still nodes of the graph):
NOT_IMPORTED = {
    "app": "a script: importing it runs the page",
    "train.__main__": "a script: importing it runs the trainer's command line",
    "indexer.store.migrations": "Alembic loads env.py and the versions by path, inside its migration context",
}
SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|PRAGMA)\b|\bCREATE\s+(TABLE|INDEX)\b|(?<![\w.])text\(|"
                 r"\b(sa|sqlalchemy)\.text\(|exec_driver_sql")
RENAME = re.compile(r"\bos\.(replace|rename)\(")
PICTURE_EXTENSION = re.compile(r"\.?(jpe?g|png|webp|gif|bmp|tiff?|heic|heif|avif)")


def source_files() -> dict[str, Path]:
    """Module name → file, for every module of the packages and app.py."""
    files = {"app": ROOT / "app.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The imports that run when the module is imported (see the module's docstring)."""
    found = []

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
            else:
                for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                    for child in getattr(node, field, []):
                        visit(child.body if isinstance(child, (ast.ExceptHandler, ast.match_case)) else [child])

    visit(tree.body)
    return found


def absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def lazy_homes(package: str, files: dict[str, Path]) -> dict[str, list[str]]:
    """For a PEP 562 package: name → the modules its ``__getattr__`` imports to give that name ("*": any name)."""
    path = files[package]
    tree = ast.parse(path.read_text())
    homes: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_MODULES" for t in node.targets):
            for module, names in ast.literal_eval(node.value).items():
                home = package + module if module.startswith(".") else module
                for name in names:
                    homes.setdefault(name, []).append(home)
    if homes:
        return homes
    getattr_ = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "__getattr__"), None)
    if getattr_ is None:
        return {}
    imported = []
    for node in ast.walk(getattr_):
        if isinstance(node, ast.ImportFrom):
            origin = absolute(node, package, is_package=True)
            imported += [f"{origin}.{a.name}" if f"{origin}.{a.name}" in files else origin for a in node.names]
        elif isinstance(node, ast.Import):
            imported += [a.name for a in node.names]
    return {"*": imported}


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the project's modules it imports when it is imported (the rule: the module's docstring)."""
    lazy = {name: lazy_homes(name, files) for name, path in files.items() if path.name == "__init__.py"}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        edges = graph.setdefault(module, set())
        for node in module_level_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in files)
                continue
            origin = absolute(node, module, path.name == "__init__.py")
            if origin not in files:
                continue
            edges.add(origin)
            for alias in node.names:
                if f"{origin}.{alias.name}" in files:
                    edges.add(f"{origin}.{alias.name}")
                else:
                    homes = lazy.get(origin, {})
                    edges.update(h for h in homes.get(alias.name, homes.get("*", [])) if h in files)
        edges.discard(module)
    return graph


def test_no_import_cycle_among_the_packages():
    graph = import_graph(source_files())
    assert graph["search.engine"] >= {"indexer", "indexer.library"}  # a lazy package's names are followed
    assert "search.library" in graph["search"]  # and a package's own re-exports are edges
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        raise AssertionError("import cycle: " + " -> ".join(e.args[1])) from None


def test_every_module_imports_in_one_process():
    modules = [m for m in source_files() if not any(m == s or m.startswith(s + ".") for s in NOT_IMPORTED)]
    script = ("import importlib, json, sys, traceback\nfailed = {}\n"
              f"for name in {modules!r}:\n"
              "    try:\n        importlib.import_module(name)\n"
              "    except BaseException:\n        failed[name] = traceback.format_exc(limit=-3)\n"
              "print(json.dumps(failed))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    failed = json.loads(out.stdout.strip().splitlines()[-1])
    assert not failed, "\n".join(f"{name}:\n{trace}" for name, trace in failed.items())
    assert len(modules) > 60


def lines_of_packages():
    for path in source_files().values():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            yield relative(path), number, line


def test_no_sql_outside_the_package_that_owns_the_data():
    found = [f"{path}:{n}: {line.strip()}" for path, n, line in lines_of_packages()
             if not path.startswith(DATA_OWNER) and SQL.search(line)]
    assert not found, "SQL text outside indexer/store/:\n" + "\n".join(found)
    assert any(SQL.search(line) for path, _, line in lines_of_packages() if path.startswith(DATA_OWNER))


def test_files_are_replaced_only_by_atomic_write_or_with_a_reason():
    """A rename elsewhere needs a comment on its line or in the three lines above saying why it is not
    ``atomic_write`` (a folder swapped, a file moved into atomic_write's own temporary file)."""
    found = []
    for path in source_files().values():
        if relative(path) == ATOMIC_WRITE_HOME:
            continue
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if RENAME.search(line.split("#")[0]) and not any("#" in above for above in lines[max(0, i - 3):i + 1]):
                found.append(f"{relative(path)}:{i + 1}: {line.strip()}")
    assert not found, "os.replace/os.rename without atomic_write or a comment why:\n" + "\n".join(found)


def test_one_list_of_picture_extensions():
    """Tuples, lists and sets of two or more file extensions live only in encoders/images.py."""
    found = []
    for path in source_files().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                extensions = [e for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)
                              and PICTURE_EXTENSION.fullmatch(e.value)]
                if len(extensions) >= 2:
                    found.append(f"{relative(path)}:{node.lineno}")
    assert found and all(f.startswith(EXTENSIONS_HOME + ":") for f in found), found
