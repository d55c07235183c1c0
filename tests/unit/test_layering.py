"""Which package may import which: the folder layout (pyproject package-dir) is the architecture.

core (popscore/) imports only itself, so a worker, the trainer and the tools share it without pulling each
other in; serving builds on core; stream on core and serving; the trainer on core; tools (the CLI, the
embedded stack, bench, demo, simulator, replay) may import anything and nothing imports them. Every import
counts, including those inside functions (the CLI's lazy imports are imports all the same).
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

MAY_IMPORT: dict[str, set[str] | None] = {
    "popscore": {"popscore"},
    "popscore.serving": {"popscore", "popscore.serving"},
    "popscore.stream": {"popscore", "popscore.serving", "popscore.stream"},
    "popscore.trainer": {"popscore", "popscore.trainer"},
    "popscore.tools": None,  # anything
}
"""Layer -> the layers its modules may import (None: any). A layer is a package of pyproject's package-dir."""


def package_dirs() -> dict[str, Path]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    return {package: REPO / folder for package, folder in config["tool"]["setuptools"]["package-dir"].items()}


def layer_of(module: str, layers: list[str]) -> str | None:
    """The longest layer name that is ``module`` or a dotted prefix of it; None outside the project."""
    matches = [name for name in layers if module == name or module.startswith(name + ".")]
    return max(matches, key=len) if matches else None


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, dotted name) of every import anywhere in ``source``; ``from a import b`` counts as ``a.b`` so
    ``from popscore import stream`` is seen as the subpackage it is."""
    found = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{parent}.{base}" if base else parent
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def project_modules() -> list[tuple[str, Path]]:
    """(dotted name, file) of every module of the packages in package-dir, each counted once under the most
    specific package whose folder holds it."""
    dirs = package_dirs()
    modules = []
    for package, folder in dirs.items():
        nested = [other for other in dirs.values() if other != folder and folder in other.parents]
        for path in sorted(folder.rglob("*.py")):
            if any(other in path.parents for other in nested):
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules.append((".".join([package, *parts]), path))
    return modules


def violations(module: str, path: Path, source: str) -> list[str]:
    layers = list(MAY_IMPORT)
    own = layer_of(module, layers)
    allowed = MAY_IMPORT[own]
    if allowed is None:
        return []
    out = []
    for line, name in imported_modules(source, module, path.name == "__init__.py"):
        target = layer_of(name, layers)
        if target is not None and target not in allowed:
            out.append(f"{path.relative_to(REPO)}:{line}: {own} imports {name} ({target}); "
                       f"{own} may import only {', '.join(sorted(allowed))}")
    return out


def test_every_package_has_a_rule():
    assert set(package_dirs()) == set(MAY_IMPORT), "a new package in pyproject package-dir needs its layer here"


def test_imports_follow_the_layers():
    modules = project_modules()
    layers_seen = {layer_of(module, list(MAY_IMPORT)) for module, _ in modules}
    assert layers_seen == set(MAY_IMPORT), f"no modules found for {set(MAY_IMPORT) - layers_seen}"
    found = [v for module, path in modules for v in violations(module, path, path.read_text())]
    assert not found, "imports against the layering:\n" + "\n".join(found)


def test_a_forbidden_import_inside_a_function_is_caught():
    source = "def run():\n    from popscore.tools.replay import replay_file\n"
    path = REPO / "trainer" / "example.py"
    assert violations("popscore.trainer.example", path, source) == [
        "trainer/example.py:2: popscore.trainer imports popscore.tools.replay.replay_file (popscore.tools); "
        "popscore.trainer may import only popscore, popscore.trainer"]


def test_relative_and_from_package_imports_are_resolved():
    assert imported_modules("from . import worker\n", "popscore.stream.app", False) == [
        (1, "popscore.stream.worker")]
    assert imported_modules("from .. import stream\n", "popscore.serving", True) == [(1, "popscore.stream")]
    assert imported_modules("from popscore import stream\n", "popscore.contract", False) == [
        (1, "popscore.stream")]
