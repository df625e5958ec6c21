"""The floor plan as a checked contract: the layers and the absence of import circles (import-linter, configured
in pyproject.toml), no private name taken from another module, and a README Layout that names every module."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("orchestrator", "workloads")


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_the_import_contracts_hold():
    """Layers from the CLI down to workloads, workloads free of Ray and the orchestrator, no circle in any
    package (lint-imports prints the broken contract and the import that breaks it)."""
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def _private_imports(path: Path) -> list[str]:
    """``from project.module import _name`` where _name is not a module: a private name crossing modules."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
            source = ROOT.joinpath(*node.module.split("."))
            for alias in node.names:
                is_module = (source / f"{alias.name}.py").exists() or (source / alias.name).is_dir()
                if alias.name.startswith("_") and not alias.name.startswith("__") and not is_module:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} takes {node.module}.{alias.name}")
    return found


def test_no_module_takes_another_modules_private_names():
    """A name with a leading underscore is its module's own: one that others need has a public home."""
    found = [line for p in _modules() for line in _private_imports(p)]
    assert not found, "\n".join(found)


def _layout() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Layout", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    return block.split("\nexperiments/")[0]   # the packages' part: specs, benchmarks and tests follow it


def test_the_readme_layout_names_every_module_and_no_other():
    """The README's Layout is the floor plan a new engineer reads first: every module of the tree is named in
    it (by file name), and every file it names exists, so it cannot drift from the tree silently."""
    layout = _layout()
    named = set(re.findall(r"([a-z_]+\.py)\b", layout))
    modules = {p.name for p in _modules() if p.name != "__init__.py"}
    assert not modules - named, f"modules the Layout does not name: {sorted(modules - named)}"
    assert not named - modules, f"the Layout names files the tree does not hold: {sorted(named - modules)}"
    folders = {p.parent.relative_to(ROOT).as_posix() for p in _modules()} - set(PACKAGES)
    missing = sorted(f for f in folders if f"{f.split('/')[-1]}/" not in layout)
    assert not missing, f"folders the Layout does not name: {missing}"
