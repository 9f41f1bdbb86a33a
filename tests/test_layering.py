"""The layering: no import cycles among app/ and training/ modules, routes never import routes,
app/search, app/inference, app/services and app/core never import the web framework or app/api.

Every import statement counts, also those inside functions: a lazy import is still a dependency."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "training")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules `name` imports (a `from pkg import mod` counts as importing pkg.mod)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" for a in node.names] + [module]
        for target in targets:
            # the longest known module that the import names (pkg.mod.attr -> pkg.mod)
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), ignoring package __init__
    re-exports of their own children (a package importing its submodule is not a cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def edges(node: str) -> set[str]:
        return {t for t in graph.get(node, set()) if not t.startswith(node + ".")}

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in edges(node):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in graph:
        if node not in index:
            visit(node)
    return components


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_routes_never_import_routes() -> None:
    graph = _graph()
    offenders = [
        f"{name} -> {target}"
        for name, targets in graph.items()
        if name.startswith("app.api.routes.")
        for target in targets
        if target.startswith("app.api.routes.")
    ]
    assert offenders == []


INNER_LAYERS = ("app.search", "app.inference", "app.services", "app.core", "app.backends")


def test_inner_layers_never_import_the_api_statically() -> None:
    graph = _graph()
    offenders = [
        f"{name} -> {target}"
        for name, targets in graph.items()
        if name.startswith(INNER_LAYERS)
        for target in targets
        if target.startswith("app.api") or target == "app.main"
    ]
    assert offenders == []


def test_inner_layers_load_without_the_web_framework() -> None:
    """Importing every inner module (and what it pulls in) loads neither fastapi nor starlette."""
    modules = sorted(
        name
        for name in _modules()
        if name.startswith(INNER_LAYERS) and name not in {"app.inference.blockrank", "app.inference.in_context"}
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "web = {'fastapi', 'starlette'}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in web or m.startswith('app.api'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
