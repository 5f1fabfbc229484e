"""The multiclass ceiling bench's bound: a convex upper bound of the multinomial loss whose
gradient is what :func:`bench.multiclass_ceiling.bound` returns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.multiclass_ceiling import BOUND_SHIFT, bound, polynomial_bound


def bouchard(z: np.ndarray, beta: float) -> np.ndarray:
    """a + sum_k log(1 + e^(z_k - a)), a = mean_k z_k + beta, per row."""
    a = z.mean(axis=1, keepdims=True) + beta
    return np.asarray(a[:, 0] + np.logaddexp(0.0, z - a).sum(axis=1))


@pytest.mark.parametrize("classes", [3, 10])
def test_bound_means_are_the_gradient_of_an_upper_bound_of_log_sum_exp(classes: int) -> None:
    rng = np.random.default_rng(classes)
    z = rng.normal(scale=6.0, size=(40, classes))
    beta = BOUND_SHIFT * math.log(classes)
    h = 1e-6

    numeric = np.stack(
        [
            (bouchard(z + h * e, beta) - bouchard(z - h * e, beta)) / (2 * h)
            for e in np.eye(classes)
        ],
        axis=1,
    )

    np.testing.assert_allclose(bound(classes)(z), numeric, atol=1e-6)
    assert np.all(bouchard(z, beta) >= np.logaddexp.reduce(z, axis=1))
    np.testing.assert_allclose(bound(classes)(z).sum(axis=1), 1.0, atol=1e-12)


def test_a_polynomial_bound_is_the_bound_up_to_its_fit() -> None:
    """On a narrow interval a degree-13 fit gives the exact bound's means to 2e-3, and degree 5
    to 5e-2; on [-30, 30], the width training needs, even degree 13 is 0.12 off at |z| < 5:
    the depth wall (README "Accuracy")."""
    rng = np.random.default_rng(0)
    z = rng.uniform(-5.0, 5.0, size=(200, 3))
    z -= z.mean(axis=1, keepdims=True)
    exact = bound(3)(z)

    def error(degree: int, interval: float) -> float:
        return float(np.max(np.abs(polynomial_bound(3, degree, interval)(z) - exact)))

    assert error(13, 8.0) < 5e-3 < 2e-2 < error(5, 8.0) < 0.1 < error(13, 30.0)
    np.testing.assert_allclose(polynomial_bound(3, 13, 30.0)(z).sum(axis=1), 1.0, atol=1e-12)
