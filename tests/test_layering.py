"""The package's import graph: no cycles, imports only down the pipeline, no private names across modules.

Every `import` and `from ... import` in attncc/ counts, at module level or inside a function: a
function-level import is still a dependency, it only hides it from import time.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "attncc"

# The pipeline, bottom first: a module may import from its own layer or any layer before it.
LAYERS = ["version", "lang", "frontend", "ir", "analysis", "passes", "plan", "emit", "lowerings",
          "rt", "oracle", "runtime", "api", "nn", "tools", "cli", "__init__"]
# Layers that must not import each other in either direction: the oracle is an independent
# implementation of the meaning, so a bug in a run-time helper cannot cancel out in a check.
INDEPENDENT = [("rt", "oracle")]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, modules: set[str]):
    """(imported module, names taken from it, line) for every attncc import in the file."""
    module, is_package = module_name(path), path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("attncc"):
                    yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, is_package, node)
            if not target.startswith("attncc"):
                continue
            for alias in node.names:  # `from pkg import module` depends on the module itself
                sub = f"{target}.{alias.name}"
                if sub in modules:
                    yield sub, [], node.lineno
                else:
                    yield target, [alias.name], node.lineno


@pytest.fixture(scope="module")
def graph():
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in files}
    g = nx.DiGraph()
    for path in files:
        src = module_name(path)
        g.add_node(src)
        for target, names, line in imports_of(path, modules):
            g.add_edge(src, target)
            g.edges[src, target].setdefault("where", []).append((f"{path.relative_to(PACKAGE.parent)}:{line}", names))
    return g


def test_layers_cover_every_package(graph):
    unknown = sorted({layer_of(m) for m in graph} - set(LAYERS))
    assert not unknown, f"modules outside the layering: {unknown}; add them to LAYERS where they belong"


def test_no_import_cycles(graph):
    cycles = [c for c in nx.simple_cycles(graph) if len(c) > 1 or graph.has_edge(c[0], c[0])]
    cycles = [c for c in cycles if not all(m == "attncc" for m in c)]
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c + [c[0]]) for c in sorted(cycles)[:20])


def test_imports_point_down_the_pipeline(graph):
    rank = {name: n for n, name in enumerate(LAYERS)}
    bad = []
    for src, dst, data in graph.edges(data=True):
        a, b = layer_of(src), layer_of(dst)
        independent = (a, b) in INDEPENDENT or (b, a) in INDEPENDENT
        if rank[b] > rank[a] or independent:
            bad += [f"{where}: {src} ({a}) imports {dst} ({b})" for where, _ in data["where"]]
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def test_no_private_names_across_modules(graph):
    bad = [f"{where}: {src} imports {name} from {dst}"
           for src, dst, data in graph.edges(data=True) if src != dst
           for where, names in data["where"] for name in names if name.startswith("_") and not name.startswith("__")]
    assert not bad, "private names imported from other modules:\n" + "\n".join(sorted(bad))


def test_generated_code_calls_only_what_rt_exports():
    """Emitters write `rt.NAME` into generated code; every such NAME must be in the rt namespace."""
    import re

    import attncc.rt as rt
    sources = [p.read_text(encoding="utf-8") for folder in ("emit", "lowerings") for p in (PACKAGE / folder).glob("*.py")]
    called = {name for text in sources for name in re.findall(r"\brt\.([A-Za-z_]\w*)\b", text)} - {"approx"}
    assert called and not sorted(called - set(dir(rt))), sorted(called - set(dir(rt)))
