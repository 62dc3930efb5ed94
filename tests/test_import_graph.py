"""The import graph of each package, read from its source: no cycles, no long
modules, no imports across a boundary the layering forbids.

Every import statement counts, wherever it stands: at module level, inside a
function, or under ``if TYPE_CHECKING:`` (a circle that only type checkers see
still shows a seam in the wrong place).
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterable
from pathlib import Path

import pytest

#: Longest a module may be, in lines.
MAX_LINES = 650

#: package -> top-level packages it must not import.
PACKAGES: dict[str, frozenset[str]] = {
    "nexus_protocol": frozenset({"trio", "trio_websocket", "nexusd", "nexus_client"}),
    "nexus_client": frozenset({"nexusd"}),
    "nexus_mcp": frozenset({"nexusd", "nexus_client"}),
    "nexusd": frozenset({"nexus_client"}),
}

#: Modules allowed past MAX_LINES: declarative catalogues, not logic.
LONG_EXEMPT = frozenset({"nexus_protocol._messages"})


def package_dir(package: str) -> Path:
    """The directory of the installed top-level `package`."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} is not a package"
    return Path(next(iter(spec.submodule_search_locations)))


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package at `root`, by dotted name."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports(module: str, path: Path) -> list[tuple[str, str | None]]:
    """What `module` (the file at `path`) imports, relative imports resolved:
    ``(module, None)`` for ``import module``, ``(module, name)`` for
    ``from module import name`` (the name may be a submodule).

    Raises:
        ValueError: a relative import climbs above the top-level package.
    """
    here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level > len(here):
                raise ValueError(f"{path}:{node.lineno}: relative import beyond {here[0]}")
            base = here[: len(here) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            found += [(target, alias.name) for alias in node.names]
    return found


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules it imports. Within the package an import is a
    dependency on the module it names (``from . import _x``: on ``_x``;
    ``from . import NAME``: on the package's ``__init__``); outside it, on the
    module as written."""
    modules = module_files(root, package)

    def resolve(target: str, name: str | None) -> str:
        if target != package and not target.startswith(package + "."):
            return target
        if name is not None and f"{target}.{name}" in modules:
            return f"{target}.{name}"
        while target not in modules:  # `import pkg.mod.attr` names no module
            target = target.rpartition(".")[0]
        return target

    return {module: {resolve(t, n) for t, n in imports(module, path)} - {module}
            for module, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a list of modules, the first repeated at the end) for each
    strongly connected group of modules in `graph`; edges to modules outside
    the graph are ignored."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm; the graphs are small
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v] & graph.keys()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_path_within(graph, group) for group in groups]


def _path_within(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest cycle through the first module of `group`, for the message."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{sorted(group)} is not strongly connected")


def long_modules(root: Path, package: str, limit: int,
                 exempt: Iterable[str] = ()) -> dict[str, int]:
    """Module -> line count, for the modules of the package over `limit` lines."""
    counts = {m: len(p.read_text(encoding="utf-8").splitlines())
              for m, p in module_files(root, package).items() if m not in set(exempt)}
    return {m: n for m, n in counts.items() if n > limit}


def forbidden_imports(graph: dict[str, set[str]], forbidden: Iterable[str]
                      ) -> dict[str, set[str]]:
    """Module -> what it imports from the `forbidden` top-level packages."""
    bad = set(forbidden)
    found = {m: {n for n in names if n.split(".")[0] in bad} for m, names in graph.items()}
    return {m: names for m, names in found.items() if names}


# ------------------------------------------------------------------ the packages


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_cycles(package: str) -> None:
    graph = import_graph(package_dir(package), package)
    assert len(graph) > 1
    assert cycles(graph) == []


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_module_is_too_long(package: str) -> None:
    assert long_modules(package_dir(package), package, MAX_LINES, LONG_EXEMPT) == {}


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_forbidden_imports(package: str) -> None:
    graph = import_graph(package_dir(package), package)
    assert forbidden_imports(graph, PACKAGES[package]) == {}


def test_the_walker_finds_the_daemons_own_imports() -> None:
    # The walker sees the daemon's relative and package-level imports.
    graph = import_graph(package_dir("nexusd"), "nexusd")
    assert "nexusd._registry" in graph["nexusd._daemon"]
    assert "nexusd.session._actor" in graph["nexusd._registry"]
    assert "nexusd.session._state" in graph["nexusd.session._commands"]
    assert "nexusd._daemon" in graph["nexusd"]


def test_the_client_builds_on_the_protocol() -> None:
    # The walker sees the layering it is meant to police.
    graph = import_graph(package_dir("nexus_client"), "nexus_client")
    assert "nexus_protocol" in graph["nexus_client._core"]
    assert "trio" in graph["nexus_client._core"]


# ------------------------------------------------------------------ the walker


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_walker_sees_a_cycle_under_type_checking(tmp_path: Path) -> None:
    root = _write(tmp_path / "pkg", {
        "__init__.py": "from ._a import A as A\n",
        "_a.py": "from ._b import B\nclass A: ...\n",
        "_b.py": ("from typing import TYPE_CHECKING\n"
                  "if TYPE_CHECKING:\n    from ._a import A\nclass B: ...\n"),
    })
    assert cycles(import_graph(root, "pkg")) == [["pkg._a", "pkg._b", "pkg._a"]]


def test_walker_resolves_relative_imports(tmp_path: Path) -> None:
    root = _write(tmp_path / "pkg", {
        "__init__.py": "",
        "_top.py": "from .sub import _leaf\nimport pkg.sub._other\n",
        "sub/__init__.py": "from .. import _top\n",
        "sub/_leaf.py": "def f():\n    from ..sub._other import X\n",
        "sub/_other.py": "import trio\nfrom nexusd._x import y\nX = 1\n",
    })
    graph = import_graph(root, "pkg")
    assert graph["pkg._top"] == {"pkg.sub._leaf", "pkg.sub._other"}
    assert graph["pkg.sub"] == {"pkg._top"}
    assert graph["pkg.sub._leaf"] == {"pkg.sub._other"}
    assert graph["pkg.sub._other"] == {"trio", "nexusd._x"}
    assert cycles(graph) == []
    assert forbidden_imports(graph, {"nexusd"}) == {"pkg.sub._other": {"nexusd._x"}}


def test_walker_sees_a_cycle_through_a_name_the_package_defines(tmp_path: Path) -> None:
    root = _write(tmp_path / "pkg", {
        "__init__.py": "from ._a import f as f\nVERSION = 1\n",
        "_a.py": "def f():\n    from . import VERSION\n",
    })
    assert cycles(import_graph(root, "pkg")) == [["pkg", "pkg._a", "pkg"]]


def test_walker_counts_lines(tmp_path: Path) -> None:
    root = _write(tmp_path / "pkg", {"__init__.py": "", "_long.py": "x = 1\n" * 11,
                                     "_short.py": "x = 1\n" * 10, "_cat.py": "x = 1\n" * 20})
    assert long_modules(root, "pkg", 10, exempt={"pkg._cat"}) == {"pkg._long": 11}
