"""Prints the model-coverage table in ``docs/coverage.md``: every cell of ``tests/conformance.py``,
each in a process of its own so that its peak memory is its own (the peak resident set of the
process that makes the source model and converts it, as ``edgekit convert`` would hold it),
with the conversion's time.

    python tests/conformance_table.py                  # every row (about 20 minutes on 2 cores)
    python tests/conformance_table.py --only ConvNeXt  # rows whose name contains ConvNeXt
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conformance import PRECISIONS, ROWS, Cell, run_cell  # noqa: E402

from edgekit.core.memory import peak_bytes  # noqa: E402


def _short(detail: str) -> str:
    """A table cell: the cosine, or the refusal's gist."""
    if "loses too much accuracy" in detail:
        verdict = detail.split(": ", 3)[-1].split(";")[0]
        return "gate: " + verdict.replace("top-1 agreement with float", "agreement").split(": drop")[0]
    if "changes nothing in this model" in detail:
        return "refused: changes nothing (no kernel)"
    return detail if len(detail) < 90 else detail[:87] + "…"


def measured(row: int, fmt: str, precision: str) -> tuple[Cell, int]:
    """The cell, run in a child process, and that process's peak resident set in bytes."""
    child = subprocess.run(
        [sys.executable, __file__, "--cell", str(row), fmt, precision], stdout=subprocess.PIPE, text=True
    )
    if child.returncode != 0:
        return Cell(False, f"crashed with exit code {child.returncode}"), 0
    result = json.loads(child.stdout.strip().splitlines()[-1])
    return Cell(**result["cell"]), result["peak"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="rows whose name contains this text")
    parser.add_argument("--cell", nargs=3, metavar=("ROW", "FORMAT", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        with tempfile.TemporaryDirectory() as tmp:
            cell = run_cell(ROWS[int(args.cell[0])], args.cell[1], args.cell[2], Path(tmp))
        print(json.dumps({"cell": asdict(cell), "peak": peak_bytes()}))
        return
    print("| model | format | " + " | ".join(PRECISIONS) + " |")
    print("|---|---|" + "---|" * len(PRECISIONS))
    for index, row in enumerate(ROWS):
        if args.only not in row.name:
            continue
        for fmt in row.formats:
            cells = []
            for precision in PRECISIONS:
                cell, peak = measured(index, fmt, precision)
                mark = "✓ " if cell.passed else "✗ "
                cells.append(f"{mark}{_short(cell.detail)} · {cell.seconds:.0f} s · {peak / 2**30:.1f} GB")
            print(f"| {row.name} | {fmt} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
