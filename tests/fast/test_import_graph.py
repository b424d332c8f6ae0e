"""The import graph of pyrflow_fast has no cycles; the Wan model does not import its checkpoint I/O."""

import ast
import subprocess
import sys
from pathlib import Path

import pyrflow_fast

ROOT = Path(pyrflow_fast.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ("pyrflow_fast", *path.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of pyrflow_fast it imports}``, function-level imports included."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
                prefix = ".".join(p for p in (base, node.module or "") if p)
                targets = [prefix, *(f"{prefix}.{alias.name}" for alias in node.names)]
            else:
                continue
            deps.update(t for t in targets if t in modules and t != name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_resolves_relative_and_lazy_imports():
    graph = import_graph()
    assert "pyrflow_fast.wan.model" in graph["pyrflow_fast.wan.checkpoint"]  # from .model import WanDiT
    assert "pyrflow_fast.ppf" in graph["pyrflow_fast.card"]  # inside load_ppf
    assert "pyrflow_fast.kernels" in graph["pyrflow_fast.samplers"]  # from . import kernels


def test_pyrflow_fast_has_no_import_cycle():
    assert cycles(import_graph()) == []


def test_wan_model_does_not_load_the_checkpoint_module():
    code = (
        "import sys, pyrflow_fast.wan.model, pyrflow_fast.contract;"
        "print(sorted(m for m in sys.modules if m.startswith('pyrflow_fast.wan.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pyrflow_fast.wan.model" in out and "pyrflow_fast.wan.checkpoint" not in out
