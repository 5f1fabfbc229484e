"""``python -m bench.multiclass_ceiling``: how far one-vs-rest is from what a multinomial
member of the family would reach, in float64, on the multiclass table's splits.

Per dataset (iris, wine, digits; stratified 80/20 splits, seeds 0-4, features standardized on
the training rows) it prints the mean test accuracy of

- scikit-learn's ``LogisticRegression()`` (multinomial, the table's reference);
- hefl's one-vs-rest replica (:func:`hefl.models.replica.train_model_replica`: the degree-5
  sigmoid on [-8, 8], 25 Nesterov steps), which the encrypted runs equal;
- the same replica with its gradient sums centred across classes before each step: a public
  linear map of the refreshed columns, so the kernel and the protocols could run it unchanged;
- hefl's optimizer (same steps, step size, no penalty) on the exact multinomial gradient
  ``sum_i (softmax(z_i) - y_i) x_i``: the ceiling of a multinomial member, which the kernel's
  one-margin polynomials cannot compute (softmax couples the classes' margins).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_digits, load_iris, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from hefl.algorithm import add_bias, nesterov_step
from hefl.models import get_model
from hefl.models.base import Array, Model
from hefl.models.replica import train_model_replica

DATASETS = {"iris": load_iris, "wine": load_wine, "digits": load_digits}
SEEDS = range(5)


def one_vs_rest(model: Model, x: Array, y: Array, *, iterations: int, step: float) -> Array:
    return train_model_replica(
        model, add_bias(x), y, iterations=iterations, learning_rate=step
    ).weights


@dataclass(frozen=True)
class Split:
    """One stratified 80/20 split, features standardized on its training rows."""

    model: Model
    x: Array
    x_test: Array
    y: Array
    y_test: Array
    iterations: int
    step: float

    def accuracy(self, weights: Array) -> float:
        return float(self.model.metrics(weights, add_bias(self.x_test), self.y_test)["accuracy"])

    def sklearn_accuracy(self) -> float:
        fitted = LogisticRegression(max_iter=5000).fit(self.x, self.y)
        return float(fitted.score(self.x_test, self.y_test))


def splits(load: Callable[..., tuple[Array, Array]]) -> Iterator[Split]:
    """The table's splits of one dataset (seeds 0-4), with hefl's default iterations and step."""
    x_all, y_all = load(return_X_y=True)
    model = get_model("multiclass", classes=len(np.unique(y_all)))
    for seed in SEEDS:
        x, x_test, y, y_test = train_test_split(
            x_all, y_all, test_size=0.2, stratify=y_all, random_state=seed
        )
        mean, std = x.mean(axis=0), x.std(axis=0)
        std[std == 0] = 1.0
        x, x_test = (x - mean) / std, (x_test - mean) / std
        with np.errstate(invalid="ignore"):  # constant columns (digits' corner pixels)
            correlation = np.nan_to_num(np.corrcoef(x.T))
        curvature = float(np.max(np.linalg.eigvalsh(correlation)))
        defaults = model.defaults(curvature=curvature, rows=len(x))
        yield Split(
            model=model,
            x=x,
            x_test=x_test,
            y=y.astype(np.float64),
            y_test=y_test.astype(np.float64),
            iterations=defaults.iterations,
            step=defaults.learning_rate,
        )


def softmax(z: Array) -> Array:
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def train(
    model: Model,
    x: Array,
    y: Array,
    *,
    iterations: int,
    step: float,
    mean: Callable[[Array], Array] | None,
) -> Array:
    """hefl's Nesterov steps on ``sum_i (mean(z_i) - y_i) x_i`` (``mean`` maps a (rows, k)
    array of margins to class means: softmax or a polynomial), or, with ``mean=None``, on the
    one-vs-rest gradient sums centred across classes."""
    xb = add_bias(x)
    k, columns = model.outputs, xb.shape[1]
    targets = model.targets(y)
    centre = np.eye(k) - np.full((k, k), 1.0 / k)
    weights, velocity = np.zeros(k * columns), np.zeros(k * columns)
    for t in range(iterations):
        if mean is not None:
            sums = ((mean(model.margins(weights, xb)) - targets).T @ xb).ravel()
        else:
            sums = model.gradient_sums(weights, xb) + model.label_term(xb, y)
            sums = (centre @ sums.reshape(k, columns)).ravel()
        weights, velocity = nesterov_step(
            weights=weights,
            velocity=velocity,
            gradient_sums=sums,
            label_term=np.zeros_like(sums),
            rows=len(xb),
            learning_rate=step,
            l2=np.zeros_like(sums),
            iteration=t,
        )
    return velocity


def main() -> None:
    print(f"{'dataset':8} {'sklearn':>8} {'one-vs-rest':>12} {'centred':>8} {'softmax':>8}")
    for name, load in DATASETS.items():
        scores: dict[str, list[float]] = {}
        for s in splits(load):
            n, step = s.iterations, s.step
            weights = {
                "one-vs-rest": one_vs_rest(s.model, s.x, s.y, iterations=n, step=step),
                "centred": train(s.model, s.x, s.y, iterations=n, step=step, mean=None),
                "softmax": train(s.model, s.x, s.y, iterations=n, step=step, mean=softmax),
            }
            scores.setdefault("sklearn", []).append(s.sklearn_accuracy())
            for label, w in weights.items():
                scores.setdefault(label, []).append(s.accuracy(w))
        means = {label: float(np.mean(v)) for label, v in scores.items()}
        print(
            f"{name:8} {means['sklearn']:8.4f} {means['one-vs-rest']:12.4f} "
            f"{means['centred']:8.4f} {means['softmax']:8.4f}"
        )


if __name__ == "__main__":
    main()
