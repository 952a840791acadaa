"""The layout is the architecture: `cluster/` imports flow one way, serve → gateway → shards → faces → index →
storage → api, and no module imports itself back through others. Read from the source (function-level
imports included), so the rule holds for imports that only run on some paths too."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Highest first: a module may import its own stage and the stages below it, never one above.
STAGES = ["serve", "client", "gateway", "shards", "faces", "index", "storage", "api", "errors", "__init__"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The cluster.* modules (or packages) that a file imports."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            modules = [f"{base}.{a.name}" for a in node.names]
            found.update(m if _exists(m) else base for m in modules)
    return {m for m in found if m == "cluster" or m.startswith("cluster.")}


def _exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


MODULES = {_module_name(p): p for p in sorted((ROOT / "cluster").rglob("*.py"))}
GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def test_every_module_belongs_to_a_stage():
    assert sorted({_stage(m) for m in MODULES} - set(STAGES)) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_flow_down_the_pipeline(module):
    rank = STAGES.index(_stage(module))
    upward = sorted(m for m in GRAPH[module] if STAGES.index(_stage(m)) < rank)
    assert upward == [], f"{module} imports from a stage above it: {upward}"


def test_no_import_cycles():
    """A package's __init__ importing its own modules is not a cycle: only module-to-module edges count."""
    edges = {m: {t for t in targets if t in GRAPH and not (MODULES[t].name == "__init__.py" and m.startswith(t + "."))}
             for m, targets in GRAPH.items()}
    visiting, done, cycles = [], set(), []

    def visit(node):
        if node in done:
            return
        if node in visiting:
            cycles.append(visiting[visiting.index(node):] + [node])
            return
        visiting.append(node)
        for target in sorted(edges[node]):
            visit(target)
        visiting.pop()
        done.add(node)

    for module in sorted(edges):
        visit(module)
    assert cycles == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The rule is not vacuous: an index module importing the gateway is caught."""
    probe = ROOT / "cluster" / "index" / "_layout_probe.py"
    probe.write_text("from cluster.gateway.gallery import Gallery\n")
    try:
        assert _imports(probe) == {"cluster.gateway.gallery"}
        assert STAGES.index(_stage("cluster.gateway.gallery")) < STAGES.index(_stage(_module_name(probe)))
    finally:
        probe.unlink()
