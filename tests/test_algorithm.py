from dataclasses import replace

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from hefl.algorithm import (
    SigmoidPolynomial,
    add_bias,
    check_margins,
    choose_hyperparameters,
    decision_function,
    l2_vector,
    nesterov_step,
    roc_auc,
    standardize,
    step_warning,
    train_replica,
)
from hefl.codec import AggregateStats


@pytest.mark.parametrize("interval", [8.0, 16.0, 24.0])
def test_encrypted_form_is_the_same_polynomial(interval):
    sigmoid = SigmoidPolynomial.fit(interval)
    k, a, b = sigmoid.encrypted_form()
    z = np.linspace(-2 * interval, 2 * interval, 101)
    s = k * z

    np.testing.assert_allclose(s * ((s * s + a) ** 2 + b), sigmoid(z) - 0.5, atol=1e-9, rtol=1e-9)


def test_fit_is_close_to_sigmoid_and_keeps_rising_outside_its_interval():
    sigmoid = SigmoidPolynomial.fit(16.0)
    z = np.linspace(-16, 16, 321)
    # A degree-5 least-squares fit over so wide a range is loose (0.15 at worst).
    assert np.max(np.abs(sigmoid(z) - 1 / (1 + np.exp(-z)))) < 0.16
    outside = np.linspace(16, 60, 100)
    assert np.all(np.diff(sigmoid(outside)) > 0)


def test_nesterov_step_is_linear_so_masks_can_be_tracked_separately():
    rng = np.random.default_rng(0)
    values = [rng.normal(size=4) for _ in range(4)]
    masks = [rng.uniform(-1e6, 1e6, size=4) for _ in range(4)]
    kwargs = dict(rows=100, learning_rate=0.7, l2=l2_vector(4, 0.01), iteration=3)

    def step(w, v, g, c):
        return nesterov_step(weights=w, velocity=v, gradient_sums=g, label_term=c, **kwargs)

    masked = step(*(x + m for x, m in zip(values, masks, strict=False)))
    true = step(*values)
    mask_only = step(*masks)
    for got, want, mask in zip(masked, true, mask_only, strict=False):
        np.testing.assert_allclose(got - mask, want, atol=1e-6)


@pytest.mark.parametrize("copies", [1, 2])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the fixed step's overflow
def test_replica_matches_sklearn_on_breast_cancer(copies):
    """Also with every feature twice: the correlation doubles the curvature, where a fixed
    step 1.0 diverges; the step chosen from the curvature does not."""
    data = load_breast_cancer()
    features = np.hstack([data.data] * copies)
    accuracies, baseline = [], []
    for seed in range(3):
        x_train, x_test, y_train, y_test = train_test_split(
            features, data.target, test_size=0.2, stratify=data.target, random_state=seed
        )
        stats = AggregateStats.of_rows(x_train)
        x_train = standardize(x_train, stats.mean, stats.std)
        x_test = standardize(x_test, stats.mean, stats.std)
        hyper = choose_hyperparameters(curvature=stats.curvature)
        result = train_replica(add_bias(x_train), y_train.astype(float), hyper)
        accuracies.append(np.mean((decision_function(result.weights, x_test) > 0) == y_test))
        baseline.append(LogisticRegression().fit(x_train, y_train).score(x_test, y_test))
        assert all(np.isfinite(result.losses))
        assert result.losses[-1] < result.losses[0]
        if copies > 1:
            fixed_step = replace(hyper, learning_rate=1.0)
            assert train_replica(add_bias(x_train), y_train, fixed_step).max_margin > 1e6
    assert np.mean(accuracies) >= np.mean(baseline) - 0.01


def test_margin_check_flags_margins_far_beyond_the_interval():
    features = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 1.0]])
    calm = check_margins(np.array([1.0, 1.0, 0.5]), features, 16.0)
    assert calm.max_margin == pytest.approx(2.5) and calm.outside_fraction == 0 and not calm.risky
    wild = check_margins(np.array([12.0, 0.0, 0.0]), features, 16.0)
    assert wild.max_margin == pytest.approx(36.0) and wild.outside_fraction == pytest.approx(1 / 3)
    assert wild.risky


def test_a_step_above_the_stable_one_is_named():
    hyper = choose_hyperparameters(curvature=13.3)
    assert hyper.learning_rate == pytest.approx(0.96, abs=0.01)
    assert step_warning(hyper.learning_rate, 13.3, hyper.sigmoid_interval) is None
    warning = step_warning(2.0, 13.3, 16.0)
    assert warning is not None and "learning rate 2 is above 0.958" in warning
    assert choose_hyperparameters(curvature=2.0).learning_rate == 1.0


def test_roc_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300).astype(float)
    scores = np.round(rng.normal(size=300) + labels, 1)  # rounding makes ties
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc(scores, np.ones(300)) is None
