"""A party's own data: CSV loading and validation, standardization, built-in datasets.

Every problem is reported as a :class:`~hefl.errors.DataError` naming the file, the row (1-based,
header is row 1) and the column, before anything is encrypted or sent.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from hefl.errors import DataError

Array = NDArray[np.float64]


@dataclass(frozen=True)
class Dataset:
    """Numeric features and 0/1 labels with their column names."""

    features: Array
    labels: Array
    feature_names: tuple[str, ...]
    label_name: str
    # The two original label values, negative class first.
    classes: tuple[str, str] = ("0", "1")

    @property
    def rows(self) -> int:
        return int(self.features.shape[0])


def load_csv(path: str | Path, *, label: str) -> Dataset:
    """Load and validate a party's CSV: a header row, numeric features, a binary label column.

    The label may use any two distinct values; the one that sorts first (numerically when both
    are numbers) is the negative class.

    Raises:
        DataError: Missing file or header, missing label column, duplicate columns, an empty or
            non-numeric cell, a non-finite value, or a label column without exactly two values.
    """
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as err:
        raise DataError(f"{path}: cannot open ({err.strerror})") from err
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}: empty file, expected a header row")
        header = [name.strip() for name in header]
        duplicates = sorted({n for n in header if header.count(n) > 1})
        if duplicates:
            raise DataError(f"{path}: duplicate column names {duplicates}")
        if label not in header:
            raise DataError(f"{path}: label column {label!r} not found; columns are {header}")
        label_index = header.index(label)
        feature_names = tuple(n for i, n in enumerate(header) if i != label_index)
        if not feature_names:
            raise DataError(f"{path}: no feature columns besides the label {label!r}")
        rows: list[list[float]] = []
        raw_labels: list[str] = []
        for line_no, record in enumerate(reader, start=2):
            if not record or all(not cell.strip() for cell in record):
                continue
            if len(record) != len(header):
                raise DataError(
                    f"{path}: row {line_no} has {len(record)} cells, the header has {len(header)}"
                )
            values = []
            for index, cell in enumerate(record):
                cell = cell.strip()
                if index == label_index:
                    if not cell:
                        raise DataError(f"{path}: row {line_no}, column {label!r}: missing label")
                    raw_labels.append(cell)
                    continue
                values.append(_parse_cell(cell, path=path, row=line_no, column=header[index]))
            rows.append(values)
    if not rows:
        raise DataError(f"{path}: no data rows after the header")
    labels, classes = _binary_labels(raw_labels, path=path, label=label)
    return Dataset(
        features=np.asarray(rows, dtype=np.float64),
        labels=labels,
        feature_names=feature_names,
        label_name=label,
        classes=classes,
    )


def _parse_cell(cell: str, *, path: Path, row: int, column: str) -> float:
    if not cell:
        raise DataError(f"{path}: row {row}, column {column!r}: missing value")
    try:
        value = float(cell)
    except ValueError:
        raise DataError(f"{path}: row {row}, column {column!r}: {cell!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{path}: row {row}, column {column!r}: {cell!r} is not finite")
    return value


def _sort_key(value: str) -> tuple[int, float | str]:
    try:
        return (0, float(value))
    except ValueError:
        return (1, value)


def _binary_labels(raw: list[str], *, path: Path, label: str) -> tuple[Array, tuple[str, str]]:
    distinct = sorted(set(raw), key=_sort_key)
    if len(distinct) > 2:
        shown = distinct[:5] + (["..."] if len(distinct) > 5 else [])
        raise DataError(
            f"{path}: label column {label!r} is not binary: {len(distinct)} distinct values {shown}"
        )
    if len(distinct) == 2:
        negative, positive = distinct
    elif distinct[0] in ("0", "0.0", "1", "1.0"):
        # One class present in this party's rows: a label-skewed partition; keep 0/1 meaning.
        negative, positive = "0", "1"
    else:
        raise DataError(
            f"{path}: label column {label!r} has the single value {distinct[0]!r}; "
            "with only one class present, labels must be 0/1"
        )
    labels = np.array([1.0 if _sort_key(v) == _sort_key(positive) else 0.0 for v in raw])
    return labels, (negative, positive)


def write_csv(path: str | Path, dataset: Dataset) -> None:
    """Write ``dataset`` as a CSV with a header, label column last."""
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*dataset.feature_names, dataset.label_name])
        for features, label in zip(dataset.features, dataset.labels, strict=True):
            writer.writerow([*(repr(float(v)) for v in features), int(label)])
