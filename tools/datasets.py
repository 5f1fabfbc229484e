"""Datasets that ship with scikit-learn, and generated ones, for simulations and benchmarks."""

from __future__ import annotations

import numpy as np

from hefl.errors import DataError
from parties.data import Dataset


def builtin_dataset(name: str, *, model: str = "") -> Dataset:
    """A dataset that ships with scikit-learn.

    Binary by default: ``breast-cancer`` (569 x 30), ``wine`` (class 0 vs rest, 178 x 13),
    ``digits`` (odd vs even digit, 1797 x 64), ``iris`` (versicolor vs rest, 150 x 4). With
    ``model="multiclass"``: wine (3 classes), digits (10) and iris (3) with their own classes.
    ``diabetes`` (442 x 10) has a numeric target (disease progression), for ``linear``.

    Raises:
        DataError: Unknown name.
    """
    from sklearn import datasets

    if name == "diabetes":
        bunch = datasets.load_diabetes()
        y = bunch.target.astype(np.float64)
    elif model == "multiclass" and name in ("wine", "digits", "iris"):
        bunch = getattr(datasets, f"load_{name}")()
        y = bunch.target.astype(np.float64)
    elif name == "breast-cancer":
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
        raise DataError(
            f"unknown dataset {name!r}; choose breast-cancer, wine, digits, iris or diabetes"
        )
    names = tuple(str(n).replace(" ", "_") for n in bunch.feature_names)
    return Dataset(np.asarray(bunch.data, dtype=np.float64), y, names, "label")


def synthetic_dataset(rows: int, columns: int, *, seed: int = 0, model: str = "") -> Dataset:
    """Generated data with a fixed seed, for ``model``.

    Classification (default, ``logistic``; ``multiclass``: 3 classes): sklearn
    ``make_classification``, informative half, some redundancy. ``linear``: standard normal
    features (neighbours correlated 0.5), target 3 + x.beta + N(0, 2^2), beta ~ N(0, 1).
    ``poisson``: the same features, counts ~ Poisson(exp(0.3 + x.beta)), beta ~ N(0, 0.2^2): a
    known log-linear rate.
    """
    if model in ("linear", "poisson"):
        return _regression(rows, columns, seed=seed, counts=model == "poisson")
    from sklearn.datasets import make_classification

    informative = max(2, columns // 2)
    features, labels = make_classification(
        n_samples=rows,
        n_features=columns,
        n_informative=informative,
        n_redundant=max(0, min(columns - informative, columns // 4)),
        class_sep=1.0,
        flip_y=0.01,
        n_classes=3 if model == "multiclass" else 2,
        random_state=seed,
    )
    names = tuple(f"x{i}" for i in range(columns))
    return Dataset(features.astype(np.float64), labels.astype(np.float64), names, "label")


def _regression(rows: int, columns: int, *, seed: int, counts: bool) -> Dataset:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, columns))
    features[:, 1:] += 0.5 * features[:, :-1]  # neighbouring features correlated
    if counts:
        beta = rng.normal(scale=0.2, size=columns)
        labels = rng.poisson(np.exp(0.3 + features @ beta)).astype(np.float64)
    else:
        beta = rng.normal(size=columns)
        labels = 3.0 + features @ beta + rng.normal(scale=2.0, size=rows)
    names = tuple(f"x{i}" for i in range(columns))
    return Dataset(features, labels, names, "label")
