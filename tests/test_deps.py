"""Each stage's `deps` in dvc.yaml list exactly the project's Python files that its command imports, directly or
not, so that DVC reruns a stage when code it runs changes, and only then."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PIPELINES = [ROOT / "dvc.yaml", ROOT / "studies" / "per_device" / "dvc.yaml"]
PACKAGES = ("src", "tools", "benchmarks")


def module_file(name: str) -> Path | None:
    """The project file of module `name` (`src.config` -> src/config.py), or None for a module of another package."""
    if name.split(".")[0] not in PACKAGES:
        return None
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def imported(path: Path) -> set[str]:
    """The modules `path` imports anywhere in its code (functions included): `from src import cli` names src.cli."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def closure(module: str) -> set[str]:
    """The project files that running `python -m module` imports, as paths relative to the repository root."""
    todo, seen = [module], set()
    while todo:
        path = module_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(imported(path))
    return {p.relative_to(ROOT).as_posix() for p in seen}


def stages() -> list[tuple[str, str, list[str]]]:
    """(name, command, deps) of every stage of both pipelines."""
    found = []
    for pipeline in PIPELINES:
        for name, stage in yaml.safe_load(pipeline.read_text())["stages"].items():
            found.append((f"{pipeline.relative_to(ROOT)}:{name}", stage["cmd"], stage.get("deps", [])))
    return found


@pytest.mark.parametrize("name, cmd, deps", stages(), ids=[s[0] for s in stages()])
def test_a_stage_depends_on_exactly_the_code_it_runs(name, cmd, deps):
    (module,) = re.findall(r"python -m (\S+)", cmd)
    code = {d for d in deps if d.endswith(".py")}
    assert code == closure(module), f"{name}: deps should list {sorted(closure(module))}"


def test_package_markers_hold_no_code():
    """`src/__init__.py` runs with every stage but is left out of the deps: it must stay a docstring."""
    for package in PACKAGES:
        marker = ROOT / package / "__init__.py"
        if marker.is_file():
            body = ast.parse(marker.read_text()).body
            assert all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body), marker


def test_the_closure_follows_imports_inside_functions():
    """A known case: `tools.seed_table` imports src.config at the top and nothing of the training code."""
    assert "src/config.py" in closure("tools.seed_table")
    assert "src/engine.py" in closure("src.train") and "src/model.py" in closure("src.train")
    assert closure("src.errors") == {"src/errors.py"}
