"""The import contract, read from the source: the kernel (``edgekit.core``) imports nothing
of edgekit outside itself, and the device side (``edgekit.runtime``) and the converters
reach the build side only through the kernel. The runtime never imports a converter. The
package root itself (``import edgekit``, for ``__version__``) holds nothing else."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"edgekit.core": ROOT / "sdk" / "core", "edgekit.runtime": ROOT / "runtime", "edgekit.converters": ROOT / "converters"}
ALLOWED = {
    "edgekit.core": ("edgekit.core",),
    "edgekit.runtime": ("edgekit.core", "edgekit.runtime"),
    "edgekit.converters": ("edgekit.core", "edgekit.runtime", "edgekit.converters"),
}


def edgekit_imports(path: Path) -> list[tuple[int, str]]:
    """Every edgekit module ``path`` imports, at any depth (lazy imports inside functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] if node.module == "edgekit" else [node.module]
            found += [(node.lineno, name) for name in names]
    return [(line, name) for line, name in found if name == "edgekit" or name.startswith("edgekit.")]


def breaches(package: str) -> list[str]:
    allowed = ALLOWED[package]
    return [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted(PACKAGES[package].rglob("*.py"))
        for line, name in edgekit_imports(path)
        if name != "edgekit" and not any(name == a or name.startswith(a + ".") for a in allowed)
    ]


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_package_imports_only_what_its_contract_allows(package: str) -> None:
    assert breaches(package) == []


def test_the_check_sees_lazy_and_from_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from edgekit import views\ndef f():\n    import edgekit.fit.search\n    from edgekit.core.errors import X\n")
    assert edgekit_imports(module) == [(1, "edgekit.views"), (3, "edgekit.fit.search"), (4, "edgekit.core.errors")]
