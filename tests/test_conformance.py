"""The model-coverage matrix (see ``tests/conformance.py`` and ``docs/coverage.md``): each
cell converts, loads in ``edgekit.runtime`` and agrees with the source model, or is a typed
one-line refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
from conformance import PRECISIONS, ROWS, run_cell

CELLS = [(row, fmt, precision) for row in ROWS for fmt in row.formats for precision in PRECISIONS]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("row", "fmt", "precision"), CELLS, ids=[f"{r.name[:24]}-{f}-{p}" for r, f, p in CELLS]
)
def test_cell_agrees_with_the_source_or_refuses_in_one_line(
    row, fmt: str, precision: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    cell = run_cell(row, fmt, precision, tmp_path)
    assert cell.passed, cell.detail
