"""CSV files as calibration and evaluation data: a tabular model's rows as factories and Edge
Impulse export them. A header row names the columns; every column is a feature, in order,
except the label column (``--label-column``, else one named ``y``), whose values are class
indices. The rows then go through the same checks as an .npz file's."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from edgekit.core.errors import DataError
from edgekit.core.validation import ascii_int


def read_csv(path: Path, role: str, label_column: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Features (rows, columns) as float32, and the label column's class indices or None."""
    where = f"{role} data {path}"
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{where}: not a readable CSV file ({exc})") from exc
    if len(rows) < 2:
        raise DataError(f"{where}: a header row and at least one row of values are needed")
    header = [name.strip() for name in rows[0]]
    if label_column is not None and label_column not in header:
        raise DataError(f"{where}: no column '{label_column}'; its columns are {', '.join(header[:12])}")
    wanted = label_column or ("y" if "y" in header else None)
    label = header.index(wanted) if wanted else None
    features = [i for i in range(len(header)) if i != label]
    x = np.empty((len(rows) - 1, len(features)), np.float32)
    y = np.empty(len(rows) - 1, np.int64)
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{where}, line {line}: {len(row)} values; the header names {len(header)}")
        x[line - 2] = [_number(row[i], where, line, header[i]) for i in features]
        if label is not None:
            y[line - 2] = _class_index(row[label], where, line, header[label])
    return x, (y if label is not None else None)


def _number(cell: str, where: str, line: int, column: str) -> float:
    try:
        return float(cell)
    except ValueError:
        what = "is empty" if not cell.strip() else f"holds '{cell[:40]}', not a number"
        raise DataError(
            f"{where}, line {line}, column '{column}' {what}; fill in or drop such rows before converting"
        ) from None


def _class_index(cell: str, where: str, line: int, column: str) -> int:
    index = ascii_int(cell.strip())
    if index is None:
        raise DataError(
            f"{where}, line {line}: the label column '{column}' holds '{cell[:40]}'; labels are class "
            "indices 0, 1, 2... in the model's output order"
        )
    return index
