"""The training maths: logistic regression by Nesterov's accelerated gradient with a
polynomial sigmoid, written once in plaintext and shared by every role.

Nothing here touches Ray, gRPC or TenSEAL. The encrypted kernel in
:mod:`coordinator.gradient` evaluates :meth:`SigmoidPolynomial.encrypted_form` on ciphertexts;
the key holder and the coordinator both apply :func:`nesterov_step` (the key holder to masked
values, the coordinator to the masks; the step is linear, so the two stay in lock-step);
:func:`train_replica` replays the whole algorithm in float64 as the accuracy ceiling.

Notation: ``n`` rows, ``d`` features plus a bias column (always the last), features
standardized with the job's aggregate mean and std. The logistic loss gradient is

    grad_j = 1/n * sum_i (sigma(z_i) - y_i) x_ij + l2_j * w_j,       z_i = w . x_i.

With sigma(z) ~ 1/2 + p(z), p odd of degree 5, the label enters only through the constant
``C_j = sum_i (1/2 - y_i) x_ij`` which each party computes on its own rows, so labels are never
encrypted row by row:

    grad_j = 1/n * (S_j + C_j) + l2_j * w_j,                          S_j = sum_i p(z_i) x_ij.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from hefl.models.base import KernelForm, Model

Array = NDArray[np.float64]


@dataclass(frozen=True)
class SigmoidPolynomial:
    """Odd least-squares fit p(z) of sigmoid(z) - 1/2 on [-interval, interval].

    The fit has a positive leading coefficient, so outside the interval p keeps growing in the
    right direction: a sample with |w.x| beyond the interval still pulls the weights the right
    way (a degree-3 fit turns over there and diverges).

    Attributes:
        interval: Half-width R of the fitting range.
        coefficients: (c1, c3, c5) of p(z) = c1 z + c3 z^3 + c5 z^5.
    """

    interval: float
    coefficients: tuple[float, float, float]

    @classmethod
    def fit(cls, interval: float) -> SigmoidPolynomial:
        z = np.linspace(-interval, interval, 4001)
        target = 1.0 / (1.0 + np.exp(-z)) - 0.5
        basis = np.stack([z, z**3, z**5], axis=1)
        c1, c3, c5 = np.linalg.lstsq(basis, target, rcond=None)[0]
        return cls(interval=float(interval), coefficients=(float(c1), float(c3), float(c5)))

    def __call__(self, z: Array) -> Array:
        """sigmoid(z) ~ 1/2 + p(z)."""
        c1, c3, c5 = self.coefficients
        return 0.5 + z * (c1 + z * z * (c3 + c5 * z * z))

    def encrypted_form(self) -> tuple[float, float, float]:
        """(k, a, b) such that p(z) = s ((s^2 + a)^2 + b) with s = k z.

        This is the form the encrypted kernel evaluates in depth 3 from s, with no multiplication
        by a constant (each would cost a level): the weights are encrypted pre-scaled by k, so
        the kernel computes s = k z directly and p(z) x = s x ((s^2 + a)^2 + b).
        """
        c1, c3, c5 = self.coefficients
        k = c5 ** (1.0 / 5.0)
        # p(z) = c5 z (z^4 + (c3/c5) z^2 + c1/c5) = c5 z ((z^2 + A)^2 + B)
        big_a = c3 / (2.0 * c5)
        big_b = c1 / c5 - big_a * big_a
        return k, big_a * k**2, big_b * k**4


@dataclass(frozen=True)
class Hyperparameters:
    """Everything the optimizer needs; public to every role of a job.

    ``sigmoid_interval`` is the interval the model's mean function is fitted on (the sigmoid's
    for logistic models, the exponential's for Poisson; unused by linear regression), ``model``
    a name of :mod:`hefl.models` and ``classes`` the number of classes of a multiclass model.
    """

    iterations: int
    learning_rate: float
    l2: float
    sigmoid_interval: float
    model: str = "logistic"
    classes: int = 0

    @property
    def sigmoid(self) -> SigmoidPolynomial:
        return SigmoidPolynomial.fit(self.sigmoid_interval)

    @property
    def family(self) -> Model:
        """The model these hyperparameters train (:func:`hefl.models.get_model`)."""
        from hefl.models import get_model

        return get_model(self.model, interval=self.sigmoid_interval, classes=self.classes)

    @property
    def kernel(self) -> KernelForm:
        """The polynomial the encrypted kernel evaluates."""
        return self.family.kernel()

    @property
    def weight_scale(self) -> float:
        """k, the pre-scale of the encrypted weights."""
        return self.family.kernel().weight_scale

    @property
    def outputs(self) -> int:
        return self.family.outputs


#: Step size times the loss's curvature bound (sigmoid slope at 0 x ``curvature``). Classic
#: theory asks for at most 1; the bound is loose (most rows sit where the sigmoid is flatter),
#: and the plaintext sweep diverges from about 2 on breast cancer and synthetic data.
STEP_TIMES_CURVATURE = 1.5


def choose_hyperparameters(
    *,
    curvature: float,
    iterations: int = 0,
    learning_rate: float = 0.0,
    l2: float = 0.0,
    sigmoid_interval: float = 0.0,
    model: str = "",
    classes: int = 0,
    rows: int = 0,
) -> Hyperparameters:
    """Fill unset (zero) hyperparameters from the data.

    ``curvature`` is :attr:`hefl.codec.AggregateStats.curvature`, the largest eigenvalue of the
    standardized features' correlation matrix (at least 1), decrypted from the parties'
    aggregate statistics. The defaults come from a plaintext sweep of this exact algorithm
    (``bench/sweep.py``) over breast cancer, wine, digits, iris and synthetic data, 5 stratified
    splits each: 15 Nesterov iterations with the degree-5 fit on [-16, 16] and no L2 term match
    sklearn's ``LogisticRegression()`` best over all of them, at step 1.0. Early stopping is the
    regularizer; margins beyond 16 stay safe because the fit keeps rising there. Strongly
    correlated features raise the curvature (breast cancer 13, the same data with every feature
    twice 26, where step 1.0 diverges), so the step is capped at :func:`stable_step`.

    Other models choose theirs (:meth:`hefl.models.Model.defaults`): linear and Poisson
    regression, which have no early-stopping optimum, take iterations growing with the square
    root of the curvature (:func:`hefl.models.base.iterations_for`).
    """
    from hefl.models import get_model

    family = get_model(model, interval=sigmoid_interval, classes=classes)
    defaults = family.defaults(curvature=curvature, rows=rows)
    return Hyperparameters(
        iterations=iterations or defaults.iterations,
        learning_rate=float(learning_rate or defaults.learning_rate),
        l2=max(l2, 0.0),
        sigmoid_interval=defaults.interval,
        model=family.name,
        classes=classes if family.outputs > 1 else 0,
    )


def stable_step(curvature: float, sigmoid: SigmoidPolynomial) -> float:
    """The largest step hefl trusts on data of this curvature with this sigmoid fit."""
    return STEP_TIMES_CURVATURE / (sigmoid.coefficients[0] * max(curvature, 1.0))


def step_warning(learning_rate: float, curvature: float, sigmoid_interval: float) -> str | None:
    """What to tell a user whose chosen step exceeds :func:`stable_step`, if anything."""
    bound = stable_step(curvature, SigmoidPolynomial.fit(sigmoid_interval))
    if learning_rate <= bound:
        return None
    return (
        f"learning rate {learning_rate:.3g} is above {bound:.3g}, the stable step for these "
        f"features (largest correlation eigenvalue {curvature:.1f}): training may diverge; "
        "leave --learning-rate unset to have it chosen from the data"
    )


def nesterov_momentum(iteration: int) -> float:
    """gamma_t of Nesterov's accelerated gradient (lambda_0 = 1, so gamma_0 = 0)."""
    lam = 1.0
    for _ in range(iteration):
        lam = (1.0 + math.sqrt(1.0 + 4.0 * lam * lam)) / 2.0
    lam_next = (1.0 + math.sqrt(1.0 + 4.0 * lam * lam)) / 2.0
    return (lam - 1.0) / lam_next


def l2_vector(n_columns: int, l2: float, *, outputs: int = 1) -> Array:
    """Per-column L2 strength, ``n_columns`` over all outputs (output-major); no output's bias
    (its last column) is regularized."""
    vec = np.full((outputs, n_columns // outputs), l2, dtype=np.float64)
    vec[:, -1] = 0.0
    return vec.ravel()


def nesterov_step(
    *,
    weights: Array,
    velocity: Array,
    gradient_sums: Array,
    label_term: Array,
    rows: int,
    learning_rate: float,
    l2: Array,
    iteration: int,
) -> tuple[Array, Array]:
    """One accelerated step; returns (new weights, new velocity).

    Linear in (weights, velocity, gradient_sums, label_term) with public coefficients, so
    applying it to masked values gives the step of the true values plus the step of the masks.
    """
    gradient = (gradient_sums + label_term) / rows + l2 * weights
    new_velocity = weights - learning_rate * gradient
    gamma = nesterov_momentum(iteration)
    new_weights = new_velocity + gamma * (new_velocity - velocity)
    return new_weights, new_velocity


def add_bias(features: Array) -> Array:
    """Append the all-ones bias column."""
    return np.hstack([features, np.ones((features.shape[0], 1))])


def label_term(features_with_bias: Array, labels: Array) -> Array:
    """C = sum_i (1/2 - y_i) x_i: a party's whole label contribution to every gradient."""
    return (0.5 - labels) @ features_with_bias


@dataclass(frozen=True)
class ReplicaResult:
    weights: Array
    losses: tuple[float, ...]
    max_margin: float


def logistic_loss(weights: Array, features_with_bias: Array, labels: Array) -> float:
    z = features_with_bias @ weights
    return float(np.mean(np.logaddexp(0.0, z) - labels * z))


def train_replica(
    features_with_bias: Array, labels: Array, hyper: Hyperparameters
) -> ReplicaResult:
    """hefl's algorithm in float64: the same polynomial, optimizer and iterations.

    Returns the final velocity (Nesterov's non-extrapolated iterate, which is the model hefl
    delivers), the exact logistic loss after every iteration and the largest |w.x| reached.
    """
    rows, columns = features_with_bias.shape
    sigmoid = hyper.sigmoid
    l2 = l2_vector(columns, hyper.l2)
    constant = label_term(features_with_bias, labels)
    weights = np.zeros(columns)
    velocity = np.zeros(columns)
    losses = []
    max_margin = 0.0
    for t in range(hyper.iterations):
        z = features_with_bias @ weights
        max_margin = max(max_margin, float(np.max(np.abs(z))))
        sums = (sigmoid(z) - 0.5) @ features_with_bias
        weights, velocity = nesterov_step(
            weights=weights,
            velocity=velocity,
            gradient_sums=sums,
            label_term=constant,
            rows=rows,
            learning_rate=hyper.learning_rate,
            l2=l2,
            iteration=t,
        )
        losses.append(logistic_loss(velocity, features_with_bias, labels))
    return ReplicaResult(weights=velocity, losses=tuple(losses), max_margin=max_margin)


@dataclass(frozen=True)
class MarginCheck:
    """How a model's margins w.x on some rows sit against the sigmoid's fitting interval.

    Margins beyond the interval are expected and safe up to a point: the degree-5 fit keeps
    rising there, so such rows still pull the right way, only harder. Far beyond it (more than
    twice the interval) the z^5 term dominates and steps can overshoot: then train with a wider
    ``sigmoid_interval`` or a smaller ``learning_rate``.
    """

    interval: float
    max_margin: float
    outside_fraction: float

    @property
    def risky(self) -> bool:
        return self.max_margin > 2.0 * self.interval


def check_margins(weights: Array, features: Array, interval: float) -> MarginCheck:
    """Margins of ``weights`` on standardized ``features`` (no bias column) against ``interval``."""
    margins = np.abs(decision_function(weights, features))
    return MarginCheck(
        interval=interval,
        max_margin=float(margins.max(initial=0.0)),
        outside_fraction=float(np.mean(margins > interval)) if len(margins) else 0.0,
    )


def decision_function(weights: Array, features: Array) -> Array:
    """w.x for standardized features without the bias column."""
    return features @ weights[:-1] + weights[-1]


def standardize(features: Array, mean: Array, std: Array) -> Array:
    """Features centred and scaled by the job's aggregate mean and std."""
    return (features - mean) / std


def accuracy(scores: Array, labels: Array) -> float:
    """Share of rows whose predicted class (score > 0) is their label (0 or 1)."""
    return float(np.mean((scores > 0) == (labels > 0.5)))


def roc_auc(scores: Array, labels: Array) -> float | None:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half), or None when
    the labels hold one class only."""
    positives = labels > 0.5
    n_pos = int(positives.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average rank within each run of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
