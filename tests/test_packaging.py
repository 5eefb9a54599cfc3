"""A wheel holds every package: each folder with an __init__.py is listed in pyproject.toml
(editable installs find unlisted ones, so only a real install would show the gap)."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for package, folder in setuptools["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *parts)))
    data_only = set(setuptools["package-data"]) - found  # folders of files only, such as the dashboard's
    assert found | data_only == set(setuptools["packages"])
    for name in data_only:
        folder = _folder(name, setuptools["package-dir"])
        assert folder.is_dir() and not any(folder.glob("*.py")), name


def _folder(package: str, dirs: dict[str, str]) -> Path:
    """Where ``package`` lives, by the longest package-dir entry it starts with."""
    prefix = max((p for p in dirs if package == p or package.startswith(p + ".")), key=len)
    return ROOT / dirs[prefix] / Path(*package[len(prefix) :].strip(".").split("."))
