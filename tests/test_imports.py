"""The architecture as a test: which part of hdp may import which, no import circles, small rooms.

Walks every ``import`` in ``hdp/`` with ``ast`` (function-local ones too: a lazy import is still a
dependency), so it needs no torch and runs in a fraction of a second.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "hdp"

# Runtime layers, lowest first: a module may import its own layer or a lower one (hdp/runtime/__init__.py).
RUNTIME_LAYERS = ("config", "parallel", "attention", "model", "offload", "pipeline", "optim", "checkpoint", "train",
                  "observe", "launch", "dryrun")
# hdp's top-level parts that must never reach into the runtime, and those that must never touch torch.
NO_RUNTIME = ("hdp.plan", "hdp.sim", "hdp.data")
NO_TORCH = ("hdp.plan", "hdp.sim")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module ``name`` imports (hdp modules resolved to the file imported, others by top name)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return found


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: {m for m in imports_of(name, path, modules) if m.startswith("hdp")} for name, path in modules.items()}


def test_no_import_circles() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt in edges and nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_plan_sim_data_never_import_the_runtime_and_plan_sim_never_torch() -> None:
    modules = all_modules()
    bad = []
    for name, path in modules.items():
        imported = imports_of(name, path, modules)
        if name.startswith(NO_RUNTIME):
            bad += [f"{name} imports {m}" for m in imported if m.startswith("hdp.runtime") or m.startswith("hdp.commands")]
        if name.startswith(NO_TORCH):
            bad += [f"{name} imports {m}" for m in imported if m.split(".")[0] == "torch"]
    assert not bad, bad


def runtime_layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[:2] != ["hdp", "runtime"] or len(parts) < 3:
        return None
    return RUNTIME_LAYERS.index(parts[2])


def test_runtime_layers_import_only_downwards() -> None:
    bad = []
    for name, deps in graph().items():
        layer = runtime_layer(name)
        if layer is None:
            continue
        for dep in deps:
            if dep.startswith(("hdp.sim", "hdp.commands", "hdp.cli")):
                bad.append(f"{name} imports {dep}")
            dep_layer = runtime_layer(dep)
            if dep_layer is not None and dep_layer > layer:
                bad.append(f"{name} ({RUNTIME_LAYERS[layer]}) imports {dep} ({RUNTIME_LAYERS[dep_layer]})")
    assert not bad, bad


def test_runtime_sub_packages_are_the_documented_layers() -> None:
    runtime = ROOT / "runtime"
    found = {p.name for p in runtime.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    found |= {p.stem for p in runtime.glob("*.py") if p.stem != "__init__"}
    assert found == set(RUNTIME_LAYERS)
    assert len([p for p in runtime.iterdir() if p.is_dir() and (p / "__init__.py").exists()]) >= 5


def test_every_folder_is_a_small_room_and_every_module_a_small_file() -> None:
    for folder in [ROOT, *[p for p in ROOT.rglob("*") if p.is_dir() and (p / "__init__.py").exists()]]:
        modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= 12, f"{folder.relative_to(ROOT.parent)} holds {len(modules)} modules (at most 12)"
    long = {str(p.relative_to(ROOT.parent)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 300}
    assert not long, f"modules over 300 lines: {long}"


def test_every_package_says_what_it_holds() -> None:
    for init in ROOT.rglob("__init__.py"):
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init.relative_to(ROOT.parent)} has no docstring"
