"""Plaintext sweep of hefl's hyperparameters: where the defaults come from.

``python -m bench.sweep`` replays hefl's algorithm (:func:`hefl.algorithm.train_replica`, the
same polynomial, optimizer and iterations the encrypted run computes) on several datasets, 5
stratified 80/20 splits each, and prints for every setting the mean and worst accuracy gap to
sklearn's ``LogisticRegression()`` and the mean AUC gap per dataset. Cheap: no encryption.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from hefl.algorithm import (
    Hyperparameters,
    accuracy,
    add_bias,
    decision_function,
    standardize,
    train_replica,
)
from hefl.codec import AggregateStats
from parties.data import Dataset
from tools.datasets import builtin_dataset, synthetic_dataset


def datasets() -> dict[str, Dataset]:
    found = {name: builtin_dataset(name) for name in ("breast-cancer", "wine", "digits", "iris")}
    found["synthetic-5000x32"] = synthetic_dataset(5000, 32, seed=0)
    return found


def gaps(dataset: Dataset, hyper: Hyperparameters, seeds: Sequence[int]) -> np.ndarray:
    """Per seed: (accuracy gap, AUC gap, largest |w.x| seen) against sklearn."""
    out = []
    for seed in seeds:
        train, test = train_test_split(
            np.arange(dataset.rows), test_size=0.2, stratify=dataset.labels, random_state=seed
        )
        x, y = dataset.features, dataset.labels
        stats = AggregateStats.of_rows(x[train])
        x_train = standardize(x[train], stats.mean, stats.std)
        x_test = standardize(x[test], stats.mean, stats.std)
        baseline = LogisticRegression().fit(x_train, y[train])
        result = train_replica(add_bias(x_train), y[train], hyper)
        scores = np.nan_to_num(decision_function(result.weights, x_test))
        out.append(
            (
                accuracy(scores, y[test]) - baseline.score(x_test, y[test]),
                roc_auc_score(y[test], scores)
                - roc_auc_score(y[test], baseline.decision_function(x_test)),
                result.max_margin,
            )
        )
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, nargs="+", default=[10, 12, 15, 20])
    parser.add_argument("--learning-rate", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--interval", type=float, nargs="+", default=[16.0, 24.0])
    parser.add_argument("--l2", type=float, nargs="+", default=[0.0, 1e-3])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    data = datasets()
    print("iterations lr interval l2 | per dataset: mean accuracy gap (pt) / worst / AUC gap")
    for iterations, lr, interval, l2 in itertools.product(
        args.iterations, args.learning_rate, args.interval, args.l2
    ):
        hyper = Hyperparameters(iterations, lr, l2, interval)
        cells = []
        for name, dataset in data.items():
            result = gaps(dataset, hyper, range(args.seeds))
            cells.append(
                f"{name} {100 * result[:, 0].mean():+.2f}/{100 * result[:, 0].min():+.1f}"
                f"/{result[:, 1].mean():+.4f}"
            )
        print(f"{iterations:>3} {lr:>4} {interval:>5} {l2:>6} | " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
