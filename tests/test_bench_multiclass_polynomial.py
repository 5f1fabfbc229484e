"""The multiclass polynomial bench's fit: equivariant in the classes and softmax's 1/k at v = 0."""

from __future__ import annotations

import numpy as np
import pytest

from bench.multiclass_polynomial import CHOICE, fit


@pytest.mark.parametrize("classes", sorted(CHOICE))
def test_fit_is_permutation_equivariant(classes: int) -> None:
    interval, e = CHOICE[classes]
    polynomial = fit(classes, interval=interval, e=e)
    rng = np.random.default_rng(1)
    u = rng.uniform(-interval, interval, (50, classes))
    v = u - u.mean(axis=1, keepdims=True)
    order = rng.permutation(classes)

    permuted = polynomial(v[:, order])

    np.testing.assert_allclose(permuted, polynomial(v)[:, order], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("classes", sorted(CHOICE))
def test_fit_is_softmax_at_equal_margins(classes: int) -> None:
    interval, e = CHOICE[classes]

    at_zero = fit(classes, interval=interval, e=e)(np.zeros((1, classes)))

    # The least-squares fit is loosest at the box's edges; at its centre it is within 1e-3.
    np.testing.assert_allclose(at_zero, np.full((1, classes), 1 / classes), atol=1e-3)
