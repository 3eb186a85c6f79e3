"""The layering rules hold: the pure core does no I/O, and common never imports the services."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept() -> None:
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint_imports is None:
        pytest.fail("lint-imports missing: pip install -e '.[test,dev]'")
    result = subprocess.run(
        [lint_imports], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_no_import_cycles_in_the_services() -> None:
    """Dependencies point one way: no module of scheduler/ or hostagent/ imports itself back,
    directly or through others (imports inside functions and under TYPE_CHECKING count)."""
    import grimp

    for package in ("scheduler", "hostagent"):
        graph = grimp.build_graph(package, cache_dir=None)
        cycles = set()
        for importer in graph.modules:
            for imported in graph.find_modules_directly_imported_by(importer):
                if graph.find_shortest_chain(importer=imported, imported=importer) is not None:
                    cycles.add(tuple(sorted((importer, imported))))
        assert not cycles, f"import cycles in {package}: {sorted(cycles)}"


def test_product_modules_stay_under_500_lines() -> None:
    """A module that grows past 500 lines is split where a concept ends (STYLE.md)."""
    long = {
        str(path.relative_to(ROOT)): lines
        for package in ("scheduler", "hostagent", "common", "cli")
        for path in _modules(package)
        if (lines := len(path.read_text().splitlines())) > 500
    }
    assert not long, long


def test_no_module_reaches_another_modules_private_names() -> None:
    """``other._name`` of a module or object of ours, outside ``self``/``cls``: a seam missing."""
    import ast

    reached: list[str] = []
    for path in [*_modules("scheduler"), *_modules("hostagent")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith(("scheduler", "hostagent", "common"))
            ):
                reached += [
                    f"{path.name}: from {node.module} import {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_")
                ]
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id
                in {"core", "state", "ctx", "kit", "app", "agent", "driver", "host"}
            ):
                reached.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not reached, reached
