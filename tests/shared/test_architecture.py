"""The package's layout is its architecture: sub-packages depend one way, modules form no
import cycles, and no module imports another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import xray_seg

PACKAGE = Path(xray_seg.__file__).parent
# Which sub-packages each may import (besides itself). cli is the top; shared the bottom.
ALLOWED = {
    "shared": set(),
    "chest": {"shared"},
    "tomography": {"shared"},
    "synthetic": {"shared", "tomography"},  # simulated volumes are written with tomography.volume_io
    "label": {"shared", "chest", "tomography"},  # the MONAI Label app serves the bundles
    "studies": {"shared", "chest", "tomography", "synthetic", "label"},  # benchmarks and experiments
    "cli": {"shared", "chest", "tomography", "synthetic", "studies", "label"},
}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every xray_seg import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("xray_seg"):
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("xray_seg")]
    return found


def sub_package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_sub_packages_depend_one_way() -> None:
    wrong = []
    for name, path in modules().items():
        own = sub_package(name)
        for target, _ in imports(path):
            other = sub_package(target)
            if own and other and other != own and other not in ALLOWED[own]:
                wrong.append(f"{name} imports {target}")
    assert not wrong, wrong
    assert set(ALLOWED) == {sub_package(n) for n in modules() if sub_package(n)}


def test_no_import_cycles() -> None:
    known = modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for target, names in imports(path):
            # "from xray_seg.shared import runs" imports the module xray_seg.shared.runs
            targets = [f"{target}.{n}" for n in names if f"{target}.{n}" in known] or [target]
            graph[name] |= {t for t in targets if t in known and t != name and not name.startswith(t + ".")}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_no_private_names_imported_across_modules() -> None:
    private = [f"{name}: {target}.{n}" for name, path in modules().items() for target, names in imports(path)
               for n in names if n.startswith("_") and n != "__version__"]
    assert not private, private
