"""Poisson regression for counts: log link, mean exp(z). The kernel evaluates a degree-4
least-squares fit of exp on [-R, R] in the form s (s + c) ((s + a)^2 + b); its constant c0
enters through the label term.

The fit keeps the interval safe the way the sigmoid's does: outside [-R, R] it departs from
exp (for z far below -R it rises again, pulling the weights back towards the interval), so the
step is chosen from the data to keep margins inside, each party checks the delivered model's
margins on its rows and warns when they leave the interval.
"""

from __future__ import annotations

import math

import numpy as np

from hefl.models import register
from hefl.models.base import Array, Defaults, KernelForm, Model, iterations_for, quartic_form


def exp_fit(interval: float) -> tuple[float, float, float, float, float]:
    """(c0, c1, c2, c3, c4): least-squares degree-4 fit of exp on [-interval, interval],
    relative error weighted (counts near 0 matter as much as large ones)."""
    z = np.linspace(-interval, interval, 4001)
    target = np.exp(z)
    basis = np.stack([z**p for p in range(5)], axis=1) / target[:, None]
    coefficients = np.linalg.lstsq(basis, np.ones_like(z), rcond=None)[0]
    return tuple(float(c) for c in coefficients)  # type: ignore[return-value]


@register
class Poisson(Model):
    name = "poisson"
    label_kind = "non-negative integer counts"
    default_interval = 3.0

    def constant(self) -> float:
        return exp_fit(self.interval)[0]

    def kernel(self) -> KernelForm:
        _, c1, c2, c3, c4 = exp_fit(self.interval)
        return quartic_form(c1, c2, c3, c4)

    def mean(self, z: Array) -> Array:
        return np.asarray(np.exp(z))

    def loss(self, weights: Array, features_with_bias: Array, labels: Array) -> float:
        """Mean Poisson deviance / 2 differs only by a constant; this is the negative
        log-likelihood without log(y!)."""
        z = self.margins(weights, features_with_bias)[:, 0]
        return float(np.mean(np.exp(z) - labels * z))

    def metrics(self, weights: Array, features_with_bias: Array, labels: Array) -> dict[str, float]:
        mu = np.exp(self.margins(weights, features_with_bias)[:, 0])
        return {"deviance": mean_poisson_deviance(labels, mu)}

    def parse_labels(self, raw: list[str], *, where: str, column: str) -> Array:
        not_a_count = f"is not a count (--model {self.name} needs {self.label_kind})"
        return self.numeric_labels(
            raw,
            where=where,
            column=column,
            noun="count",
            problem=lambda value: (
                None if math.isfinite(value) and value >= 0 and value == int(value) else not_a_count
            ),
        )

    def defaults(self, *, curvature: float, rows: int) -> Defaults:
        """Step 1/(e^(R/2) curvature): the Poisson loss's Hessian is sum mu_i x_i x_i^T / n,
        and with margins kept in [-R, R] the typical mean is below e^(R/2)."""
        step = 1.0 / (math.exp(self.interval / 2.0) * max(curvature, 1.0))
        return Defaults(2 * iterations_for(curvature), step, self.interval)

    def margin_warning(self, margins: Array) -> str | None:
        outside = float(np.mean(np.abs(margins) > self.interval)) if len(margins) else 0.0
        if outside == 0.0:
            return None
        return (
            f"{100 * outside:.1f}% of rows have log-rates beyond the exponential's interval "
            f"[-{self.interval:g}, {self.interval:g}] (max {np.max(np.abs(margins)):.1f}): "
            "their counts are poorly fitted; retrain with a wider --sigmoid-interval"
        )


def mean_poisson_deviance(y: Array, mu: Array) -> float:
    """2/n sum (y log(y/mu) - y + mu), as scikit-learn's ``mean_poisson_deviance``."""
    y, mu = np.asarray(y, dtype=np.float64), np.asarray(mu, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(y > 0, y * np.log(y / mu), 0.0)
    return float(2.0 * np.mean(term - y + mu))
