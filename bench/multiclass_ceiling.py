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
  one-margin polynomials cannot compute (softmax couples the classes' margins);
- the same optimizer on the gradient of an upper bound of the multinomial loss that needs only
  one margin per class, at 25 and at 40 steps (see :func:`bound`);
- the bound with its sigmoid replaced by least-squares polynomials (:func:`polynomial_bound`):
  degree 5, which hefl's depth-4 chain evaluates, and degree 13, which it cannot (NaN where
  training diverges).
"""

from __future__ import annotations

import math
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
        """Test accuracy; NaN for a run that diverged."""
        if not np.all(np.isfinite(weights)):
            return float("nan")
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


#: The bound's shift in units of log k (the best of 1.5, 2, 2.5, 3 and 4 at 40 and 50 steps).
BOUND_SHIFT = 3.0


def bound(classes: int, shift: float = BOUND_SHIFT) -> Callable[[Array], Array]:
    """The class means of Bouchard's bound ``LSE(z) <= a + sum_k log(1 + e^(z_k - a))`` with
    ``a = mean_k z_k + beta``, ``beta = shift * log k``: its gradient is

        sigmoid(z_c - a) - mean_k sigmoid(z_k - a) + 1/k,

    k sigmoids of one margin each (the kernel's shape, a margin offset) followed by centring
    across classes (a public linear map on the sums, which keeps the weights centred, so a
    is just beta). A convex surrogate of the multinomial loss, not one-vs-rest (whose bound
    leaves a free)."""
    beta = shift * math.log(classes)

    def mean(z: Array) -> Array:
        s = 1.0 / (1.0 + np.exp(-(z - z.mean(axis=1, keepdims=True) - beta)))
        return np.asarray(s - s.mean(axis=1, keepdims=True) + 1.0 / classes)

    return mean


#: Least-squares polynomial fits of the bound's shifted sigmoid, (degree, interval of the
#: centred margin): hefl's depth-4 chain evaluates degree 5; degree 13 would need 4 more levels
#: (or a refresh of the margins mid-iteration), over the margins these runs reach (|z| < 30).
POLYNOMIAL_BOUNDS = ((5, 16.0), (13, 30.0))


def polynomial_bound(
    classes: int, degree: int, interval: float, shift: float = BOUND_SHIFT
) -> Callable[[Array], Array]:
    """:func:`bound` with its sigmoid replaced by the least-squares polynomial of ``degree`` that
    follows ``sigmoid(z - beta)`` on ``[-interval, interval]`` of the centred margin z: what an
    encrypted kernel of that degree would compute. Margins beyond the interval leave the fit."""
    beta = shift * math.log(classes)
    grid = np.linspace(-interval, interval, 4001)
    fit = np.polynomial.Polynomial.fit(grid, 1.0 / (1.0 + np.exp(-(grid - beta))), degree)

    def mean(z: Array) -> Array:
        s = fit(z - z.mean(axis=1, keepdims=True))
        return np.asarray(s - s.mean(axis=1, keepdims=True) + 1.0 / classes)

    return mean


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
    polynomial = [f"deg {d} [-{r:g}, {r:g}], 40" for d, r in POLYNOMIAL_BOUNDS]
    labels = ("one-vs-rest", "centred", "softmax", "bound", "bound, 40", *polynomial)
    width = {label: max(11, len(label)) for label in labels}
    print(f"{'dataset':8} {'sklearn':>8}" + "".join(f" {x:>{width[x]}}" for x in labels))
    for name, load in DATASETS.items():
        scores: dict[str, list[float]] = {}
        for s in splits(load):
            n, step, k = s.iterations, s.step, s.model.outputs
            weights = {
                "one-vs-rest": one_vs_rest(s.model, s.x, s.y, iterations=n, step=step),
                "centred": train(s.model, s.x, s.y, iterations=n, step=step, mean=None),
                "softmax": train(s.model, s.x, s.y, iterations=n, step=step, mean=softmax),
                "bound": train(s.model, s.x, s.y, iterations=n, step=step, mean=bound(k)),
                "bound, 40": train(s.model, s.x, s.y, iterations=40, step=step, mean=bound(k)),
            }
            for label, (degree, interval) in zip(polynomial, POLYNOMIAL_BOUNDS, strict=True):
                mean = polynomial_bound(k, degree, interval)
                with np.errstate(over="ignore", invalid="ignore"):  # a diverging fit: NaN
                    weights[label] = train(s.model, s.x, s.y, iterations=40, step=step, mean=mean)
            scores.setdefault("sklearn", []).append(s.sklearn_accuracy())
            for label, w in weights.items():
                scores.setdefault(label, []).append(s.accuracy(w))
        means = {label: float(np.mean(v)) for label, v in scores.items()}
        print(
            f"{name:8} {means['sklearn']:8.4f}"
            + "".join(f" {means[x]:{width[x]}.4f}" for x in labels)
        )


if __name__ == "__main__":
    main()
