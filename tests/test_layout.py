"""The tree keeps its shape: layers that only look down (pyproject's import-linter contract), no import
cycles anywhere, no unused imports or names (ruff), and one module per command in composer.apps."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("composer", "search", "scaling", "launch", "primitives")


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    exe = shutil.which(tool) or str(Path(sys.executable).with_name(tool))
    return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_layers_only_look_down():
    proc = _run("lint-imports", "--no-cache")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout


def test_no_import_cycles():
    """Tarjan's strongly connected components over every import between project modules, lazy
    (function-level) imports included: a cycle is a component of more than one module."""
    import grimp

    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:  # recursive Tarjan; the graph is ~100 modules deep at most
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in edges.get(module, ()):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


def test_no_unused_imports_or_names():
    proc = _run("ruff", "check", "--no-cache", ".")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_every_command_is_one_module_of_composer_apps_with_main():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert len(scripts) == 12
    for command, target in scripts.items():
        module, _, function = target.partition(":")
        assert function == "main" and module == f"composer.apps.{command.removeprefix('composer-')}", (command, target)
        assert callable(importlib.import_module(module).main)


def test_no_benchmark_script_shadows_a_package():
    """`python benchmarks/x.py` puts benchmarks/ first on sys.path: a script named like a package (scaling.py)
    would be imported in its place by every other script there."""
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    assert not scripts & {*PACKAGES, "configs", "tests"}, scripts & {*PACKAGES, "configs", "tests"}
