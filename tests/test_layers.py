"""Imports point one way: core <- data <- models <- training <- workflows <- api / cli, with no cycles and no
lorabench import hidden inside a function unless its line says why (`# deferred: ...`; docs/layout.md) or the module
is the CLI, which imports each command's stack inside the command so that `--help` answers at once. Read from the
source with `ast`, so it costs no import."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"
LAYERS = ("core", "data", "models", "training", "workflows", "entry")
ENTRY_POINTS = ("api", "cli", "__main__")
DEFERS_BY_DESIGN = ("lorabench.cli",)  # the CLI package: every command imports its own stack when it runs


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    return LAYERS.index("entry" if part in ENTRY_POINTS else part)


def lorabench_imports(tree: ast.AST, modules: set[str]) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import of a lorabench module."""
    # an import inside a function whose line explains it ("# deferred: why") counts as a module-level one
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                # `from package import submodule` imports the submodule; `from module import name` the module
                targets = [f"{child.module}.{alias.name}" if f"{child.module}.{alias.name}" in modules
                           else child.module for alias in child.names]  # fmt: skip
            found.extend((target, child.lineno, in_function) for target in targets if target.startswith("lorabench"))
            visit(child, nested)

    visit(tree, False)
    return found


def violations(root: Path) -> list[str]:
    """Every upward import, import inside a function and import cycle in the lorabench package under `root`."""
    files = {module_name(path, root): path for path in (root / "lorabench").rglob("*.py")}
    problems, graph = [], {}
    for module, path in files.items():
        text = path.read_text(encoding="utf-8")
        explained = {number for number, line in enumerate(text.splitlines(), start=1)
                     if "# deferred:" in line or module.startswith(DEFERS_BY_DESIGN)}  # fmt: skip
        imports = [(target, line, in_function and line not in explained)
                   for target, line, in_function in lorabench_imports(ast.parse(text), set(files))]  # fmt: skip
        graph[module] = {target for target, _, in_function in imports if not in_function and target != module}
        for target, line, in_function in imports:
            where = f"{path.relative_to(root)}:{line}"
            if in_function:
                problems.append(f"{where}: imports {target} inside a function")
            if target != "lorabench" and layer(target) > layer(module):
                problems.append(f"{where}: {module} ({LAYERS[layer(module)]}) imports {target} "
                                f"({LAYERS[layer(target)]}), a higher layer")  # fmt: skip
    return problems + [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (depth-first search, colours white/grey/black)."""
    found, state, stack = [], {}, []

    def visit(module: str) -> None:
        state[module] = "grey"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "grey":
                found.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "black"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def test_imports_point_one_way_without_cycles():
    assert violations(SOURCE) == []


def test_a_reverse_import_or_a_cycle_is_caught(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(SOURCE / "lorabench", copy / "lorabench", ignore=shutil.ignore_patterns("__pycache__"))
    errors = copy / "lorabench" / "core" / "errors.py"
    errors.write_text(errors.read_text() + "\nfrom lorabench.workflows.report import render\n")
    storage = copy / "lorabench" / "core" / "storage.py"
    storage.write_text(storage.read_text() + "\n\ndef later():\n    from lorabench.core import config\n")
    found = violations(copy)
    assert any("core.errors (core) imports lorabench.workflows.report (workflows)" in line for line in found)
    assert any(line.startswith("import cycle:") and "lorabench.core.errors" in line for line in found)
    assert any("imports lorabench.core.config inside a function" in line for line in found)


def test_a_deferred_import_must_say_why(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(SOURCE / "lorabench", copy / "lorabench", ignore=shutil.ignore_patterns("__pycache__"))
    storage = copy / "lorabench" / "core" / "storage.py"
    storage.write_text(
        storage.read_text() + "\n\ndef later():\n    from lorabench.core import config  # deferred: test\n"
    )
    assert violations(copy) == []
