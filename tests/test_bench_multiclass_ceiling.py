"""The multiclass ceiling bench's bound: a convex upper bound of the multinomial loss whose
gradient is what :func:`bench.multiclass_ceiling.bound` returns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.multiclass_ceiling import BOUND_SHIFT, bound


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
