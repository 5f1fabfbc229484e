"""A party's own data: CSV loading and validation, standardization, built-in datasets.

Every problem is reported as a :class:`~hefl.errors.DataError` naming the file, the row (1-based,
header is row 1) and the column, before anything is encrypted or sent.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from hefl.errors import DataError
from hefl.models import KernelForm, Model, get_model

Array = NDArray[np.float64]

log = logging.getLogger("hefl.party")

#: At most this many classes are inferred from integer labels 0 .. k-1 (more: counts).
MAX_INFERRED_CLASSES = 20


@dataclass(frozen=True)
class Dataset:
    """Numeric features and labels (as the model reads them) with their column names."""

    features: Array
    labels: Array
    feature_names: tuple[str, ...]
    label_name: str
    # The two original label values, negative class first (binary labels).
    classes: tuple[str, str] = ("0", "1")
    # The label cells as read, to parse again for another model; the file they came from.
    raw_labels: tuple[str, ...] = ()
    source: str = ""

    @property
    def rows(self) -> int:
        return int(self.features.shape[0])

    def for_model(self, model: Model) -> Dataset:
        """These rows with the labels parsed for ``model``.

        Raises:
            DataError: A label ``model`` cannot read, naming the file, row and column.
        """
        where = self.source or "data"
        labels = model.parse_labels(list(self.raw_labels), where=where, column=self.label_name)
        return replace(self, labels=labels, classes=_classes_of(model, self.raw_labels))


def _classes_of(model: Model, raw: tuple[str, ...]) -> tuple[str, str]:
    if model.name != "logistic":
        return ("0", "1")
    distinct = sorted(set(raw), key=_sort_key)
    return (distinct[0], distinct[1]) if len(distinct) == 2 else ("0", "1")


def infer_model(raw: list[str] | tuple[str, ...], *, column: str) -> Model:
    """The model a label column calls for, logged: two values -> logistic; integers 0 .. k-1
    with 2 < k <= 20 -> multiclass with k classes; other non-negative integers -> poisson;
    other numbers -> linear."""
    distinct = set(raw)
    numbers: list[float] = []
    try:
        numbers = [float(v) for v in distinct]
    except ValueError:
        numbers = []
    if len(distinct) <= 2 or not numbers:
        model = get_model("logistic")
    elif all(v == int(v) and v >= 0 for v in numbers):
        top = int(max(numbers))
        if len(numbers) == top + 1 and top + 1 <= MAX_INFERRED_CLASSES:
            model = get_model("multiclass", classes=top + 1)
        else:
            model = get_model("poisson")
    else:
        model = get_model("linear")
    log.info(
        "no --model given: label column %r (%d distinct values) says %s%s",
        column,
        len(distinct),
        model.name,
        f" with {model.classes} classes" if model.outputs > 1 else "",
    )
    return model


def load_csv(path: str | Path, *, label: str, model: Model | None = None) -> Dataset:
    """Load and validate a party's CSV: a header row, numeric features, a label column.

    The labels are parsed for ``model`` (:meth:`hefl.models.Model.parse_labels`); without one,
    as binary labels (logistic regression): any two distinct values, the one that sorts first
    (numerically when both are numbers) is the negative class.

    Raises:
        DataError: Missing file or header, missing label column, duplicate columns, an empty or
            non-numeric cell, a non-finite value, or a label the model cannot read.
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
    unparsed = Dataset(
        features=np.asarray(rows, dtype=np.float64),
        labels=np.zeros(len(rows)),
        feature_names=feature_names,
        label_name=label,
        raw_labels=tuple(raw_labels),
        source=str(path),
    )
    return unparsed.for_model(model or get_model("logistic"))


def load_csv_raw(path: str | Path, *, label: str) -> Dataset:
    """The CSV checked as :func:`load_csv` does, with its labels left unparsed (all zero) until
    the model is known (:meth:`Dataset.for_model`)."""
    return load_csv(path, label=label, model=_Unparsed())


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


def write_csv(path: str | Path, dataset: Dataset) -> None:
    """Write ``dataset`` as a CSV with a header, label column last."""
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*dataset.feature_names, dataset.label_name])
        for features, label in zip(dataset.features, dataset.labels, strict=True):
            cell = int(label) if float(label).is_integer() else repr(float(label))
            writer.writerow([*(repr(float(v)) for v in features), cell])


class _Unparsed(Model):
    """Reads any label as 0: for :func:`load_csv_raw` only."""

    name = "unparsed"
    label_kind = "anything"

    def constant(self) -> float:
        raise NotImplementedError

    def kernel(self) -> KernelForm:
        raise NotImplementedError

    def mean(self, z: Array) -> Array:
        raise NotImplementedError

    def loss(self, weights: Array, features_with_bias: Array, labels: Array) -> float:
        raise NotImplementedError

    def metrics(self, weights: Array, features_with_bias: Array, labels: Array) -> dict[str, float]:
        raise NotImplementedError

    def parse_labels(self, raw: list[str], *, where: str, column: str) -> Array:
        return np.zeros(len(raw))
