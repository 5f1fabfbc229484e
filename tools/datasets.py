"""Datasets that ship with scikit-learn, and generated ones, for simulations and benchmarks."""

from __future__ import annotations

import numpy as np

from hefl.errors import DataError
from parties.data import Dataset


def builtin_dataset(name: str) -> Dataset:
    """A binary classification dataset that ships with scikit-learn.

    ``breast-cancer`` (569 x 30), ``wine`` (class 0 vs rest, 178 x 13), ``digits`` (odd vs even
    digit, 1797 x 64), ``iris`` (versicolor vs rest, 150 x 4).

    Raises:
        DataError: Unknown name.
    """
    from sklearn import datasets

    if name == "breast-cancer":
        bunch = datasets.load_breast_cancer()
        y = bunch.target.astype(np.float64)
    elif name == "wine":
        bunch = datasets.load_wine()
        y = (bunch.target == 0).astype(np.float64)
    elif name == "digits":
        bunch = datasets.load_digits()
        y = (bunch.target % 2).astype(np.float64)
    elif name == "iris":
        bunch = datasets.load_iris()
        y = (bunch.target == 1).astype(np.float64)
    else:
        raise DataError(f"unknown dataset {name!r}; choose breast-cancer, wine, digits or iris")
    names = tuple(str(n).replace(" ", "_") for n in bunch.feature_names)
    return Dataset(np.asarray(bunch.data, dtype=np.float64), y, names, "label")


def synthetic_dataset(rows: int, columns: int, *, seed: int = 0) -> Dataset:
    """sklearn ``make_classification`` with a fixed seed: informative half, some redundancy."""
    from sklearn.datasets import make_classification

    informative = max(2, columns // 2)
    features, labels = make_classification(
        n_samples=rows,
        n_features=columns,
        n_informative=informative,
        n_redundant=max(0, min(columns - informative, columns // 4)),
        class_sep=1.0,
        flip_y=0.01,
        random_state=seed,
    )
    names = tuple(f"x{i}" for i in range(columns))
    return Dataset(features.astype(np.float64), labels.astype(np.float64), names, "label")
