"""The model contract: what a member of hefl's family of generalized linear models provides.

Every model hefl trains has the gradient

    grad_j = 1/n * sum_i (mu(z_i) - y_i) x_ij + l2_j * w_j,        z_i = w . x_i,

for a mean function mu (identity for linear regression, the sigmoid for logistic regression,
exp for Poisson regression), which the encrypted kernel can only evaluate as a polynomial. A
model enters training in exactly five places, and the protocols (refresh, masking,
aggregation) and the optimizer step (:func:`hefl.algorithm.nesterov_step`) never see which
model it is:

1. the kernel's polynomial, as a :class:`KernelForm` (:mod:`coordinator.gradient` evaluates it);
2. the weight pre-scale k (:attr:`KernelForm.weight_scale`), which the key holder folds into
   the fresh weights it returns;
3. the label term, each party's ``sum_i (c0 - y_i) x_i`` with the polynomial's constant c0
   (:meth:`Model.label_term`): labels are never encrypted row by row;
4. the number of refreshed columns, ``outputs x (features + 1)``;
5. what a party does on its own rows: label parsing, evaluation, the plaintext replica.

With mu(z) ~ c0 + p(z) and p(0) = 0, the gradient's data part is ``S_j = sum_i p(z_i) x_ij``,
computed encrypted, and the rest is the label term. A model with several outputs (multiclass
one-vs-rest) has one margin per output, all from the same encrypted shards; its weights,
gradient and label term are laid out output-major (index ``o * columns + j``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from hefl.errors import DataError

Array = NDArray[np.float64]

#: The kernel's polynomial shapes (:mod:`coordinator.gradient` evaluates each on ciphertexts,
#: landing on the last level of the depth-4 chain):
#: ``linear``   p(s) = s                                       depth 1, then switched down;
#: ``odd5``     p(s) = s ((s^2 + a)^2 + b)                     depth 4 (the logistic sigmoid);
#: ``quartic``  p(s) = s (s + c) ((s + a)^2 + b)              depth 4 (any degree-4 p, p(0)=0).
SHAPES = ("linear", "odd5", "quartic")


@dataclass(frozen=True)
class KernelScales:
    """The scales of what the kernel sends (:meth:`KernelForm.scales`).

    Attributes:
        margin: A margin s, one rescale below the top (column sharding sends partial ones).
        gradient: A gradient sum at the last level.
    """

    margin: float
    gradient: float


@dataclass(frozen=True)
class KernelForm:
    """The polynomial the encrypted kernel evaluates, in the form it evaluates it.

    The weights are encrypted pre-scaled by ``weight_scale`` (k), so the kernel's margin is
    s = k z, and it computes G_j = p(s) x_j with no multiplication by a constant (each would
    cost a level): the constants are only ever added.

    Attributes:
        shape: One of :data:`SHAPES`.
        constants: (a, b) for ``odd5``, (a, b, c) for ``quartic``, () for ``linear``.
        weight_scale: k.
        outputs: Margins per row (1, or k classes for one-vs-rest).
    """

    shape: str
    constants: tuple[float, ...]
    weight_scale: float
    outputs: int = 1

    def __post_init__(self) -> None:
        arity = {"linear": 0, "odd5": 2, "quartic": 3}
        if self.shape not in arity:
            raise ValueError(f"kernel shape {self.shape!r}; hefl's kernel evaluates {SHAPES}")
        if len(self.constants) != arity[self.shape]:
            raise ValueError(f"kernel shape {self.shape!r} takes {arity[self.shape]} constants")
        if not (self.weight_scale > 0 and self.outputs >= 1):
            raise ValueError("kernel weight scale must be positive and outputs at least 1")

    def scales(self, scale: float, primes: Sequence[int]) -> KernelScales:
        """The exact CKKS scales of the kernel's margins and gradients.

        The kernel keeps SEAL's true scales: a product's scale is the product of its factors',
        a rescale divides it by the prime it drops, and constants are encoded at the scale of
        what they are added to. (TenSEAL instead labels every rescaled ciphertext with the
        global scale; on the default chain, whose 30-bit primes sit up to 3e-4 below 2^30,
        that put every gradient sum 3e-4 (linear) to 7e-4 off, relatively, and shifted the polynomial's
        constants.) These are the same double operations in the same order, so the result is
        bit-identical to what SEAL computes, and every process that checks a margin or a
        gradient expects exactly this scale.

        Args:
            scale: The fresh weights' and columns' scale (the context's global scale).
            primes: The data primes of the chain, q0 first; a rescale from the top level drops
                the last one.
        """
        if len(primes) != 5:
            raise ValueError(f"the kernel needs a chain of depth 4, not {len(primes) - 1}")
        # Rescaling from level l (l primes dropped) divides by primes[4 - l].
        margin = scale * scale / primes[4]  # level 1
        if self.shape == "linear":
            product = margin * scale  # s times X_j, both switched down to level 3
        elif self.shape == "odd5":
            square = margin * margin / primes[3]  # s^2 (+ a), level 2
            inner = square * square / primes[2]  # (s^2 + a)^2 (+ b), level 3
            product = (margin * scale / primes[2]) * inner  # (s X_j) from level 2, times inner
        else:
            pair = margin * margin / primes[3]  # s (s + c) and (s + a)^2 (+ b), level 2
            product = (pair * pair / primes[2]) * scale  # their product times X_j, level 3
        return KernelScales(margin=margin, gradient=product / primes[1])  # finish: level 4

    def evaluate(self, s: Array) -> Array:
        """p(s) in float64, in the kernel's own form (what every slot holds, up to CKKS noise)."""
        if self.shape == "linear":
            return s
        if self.shape == "odd5":
            a, b = self.constants
            return s * ((s * s + a) ** 2 + b)
        a, b, c = self.constants
        return s * (s + c) * ((s + a) ** 2 + b)


def odd5_form(c1: float, c3: float, c5: float, *, outputs: int = 1) -> KernelForm:
    """p(z) = c1 z + c3 z^3 + c5 z^5 (c5 > 0) as s ((s^2 + a)^2 + b), s = k z."""
    k = c5 ** (1.0 / 5.0)
    big_a = c3 / (2.0 * c5)
    big_b = c1 / c5 - big_a * big_a
    return KernelForm("odd5", (big_a * k**2, big_b * k**4), k, outputs)


def quartic_form(c1: float, c2: float, c3: float, c4: float) -> KernelForm:
    """p(z) = c1 z + c2 z^2 + c3 z^3 + c4 z^4 (c4 > 0) as s (s + c) ((s + a)^2 + b), s = k z.

    The cubic p(z) / (c4 z) has a real root r; the quadratic left after dividing it out is
    written as a square plus a constant.
    """
    if not c4 > 0:
        raise ValueError(f"quartic kernel needs a positive leading coefficient, got {c4}")
    cubic = np.array([1.0, c3 / c4, c2 / c4, c1 / c4])
    roots = np.roots(cubic)
    r = float(min(roots, key=lambda root: abs(root.imag)).real)
    # z^3 + ... = (z - r)(z^2 + p z + q)
    p, q = cubic[1] + r, cubic[2] + r * (cubic[1] + r)
    u, v = p / 2.0, q - p * p / 4.0
    k = c4 ** (1.0 / 4.0)
    return KernelForm("quartic", (float(k * u), float(k * k * v), float(-k * r)), float(k))


@dataclass(frozen=True)
class Defaults:
    """What a model chooses from the job's public summary when the user leaves it unset."""

    iterations: int
    learning_rate: float
    interval: float


class Model(ABC):
    """A member of the family. Subclass it in one module, decorate the class with
    :func:`hefl.models.register`, and every role (the CLI, the parties, the coordinator's
    kernel, the replica) can train it by name.

    A model is a small immutable value: its name, its number of outputs and the interval its
    polynomial is fitted on (``interval``; 0 means "choose it", see :meth:`defaults`).
    """

    #: The name users pass as ``--model``.
    name: ClassVar[str]
    #: What the label column holds, for messages ("a numeric target", "a count", ...).
    label_kind: ClassVar[str]
    #: The interval used when the user sets none (0: the model has none).
    default_interval: ClassVar[float] = 0.0

    def __init__(self, *, interval: float = 0.0, classes: int = 0) -> None:
        self.interval = float(interval or self.default_interval)
        self.classes = classes

    @property
    def outputs(self) -> int:
        """Margins per row (1 except for multiclass models)."""
        return 1

    # ----- the encrypted part -------------------------------------------------------------

    @abstractmethod
    def constant(self) -> float:
        """c0, the mean function's approximation at z = 0 (it enters through the label term)."""

    @abstractmethod
    def kernel(self) -> KernelForm:
        """The polynomial p = approximation - c0, in the kernel's form."""

    def approximate_mean(self, z: Array) -> Array:
        """What training uses in place of the mean: c0 + p(z), exactly as the kernel has it."""
        form = self.kernel()
        return self.constant() + form.evaluate(form.weight_scale * z)

    def targets(self, labels: Array) -> Array:
        """The labels as a (rows, outputs) matrix of y (a one-hot matrix for classes)."""
        return labels.reshape(-1, 1)

    def label_term(self, features_with_bias: Array, labels: Array) -> Array:
        """sum_i (c0 - y_i) x_i per output, output-major: a party's whole label contribution."""
        residual = self.constant() - self.targets(labels)
        return np.asarray((residual.T @ features_with_bias).ravel(), dtype=np.float64)

    def gradient_sums(self, weights: Array, features_with_bias: Array) -> Array:
        """S = sum_i p(z_i) x_i per output, output-major: what the encrypted kernel computes."""
        margins = self.margins(weights, features_with_bias)
        form = self.kernel()
        return np.asarray(
            (form.evaluate(form.weight_scale * margins).T @ features_with_bias).ravel(),
            dtype=np.float64,
        )

    # ----- the plaintext part -------------------------------------------------------------

    def margins(self, weights: Array, features_with_bias: Array) -> Array:
        """z = X W^T, shape (rows, outputs); ``weights`` output-major."""
        columns = features_with_bias.shape[1]
        return features_with_bias @ np.asarray(weights).reshape(self.outputs, columns).T

    @abstractmethod
    def mean(self, z: Array) -> Array:
        """The exact mean function (for the loss and predictions)."""

    @abstractmethod
    def loss(self, weights: Array, features_with_bias: Array, labels: Array) -> float:
        """The exact training loss of ``weights`` (mean over rows, no L2 term)."""

    @abstractmethod
    def metrics(self, weights: Array, features_with_bias: Array, labels: Array) -> dict[str, float]:
        """How a model is judged on held-out rows; the first entry is the headline number."""

    @abstractmethod
    def parse_labels(self, raw: list[str], *, where: str, column: str) -> Array:
        """Turn a CSV's label cells into numbers, or raise :class:`hefl.errors.DataError`
        naming ``where`` (the file), the row (1-based, header is row 1) and ``column``."""

    def numeric_labels(
        self,
        raw: list[str],
        *,
        where: str,
        column: str,
        noun: str,
        problem: Callable[[float], str | None],
    ) -> Array:
        """The cells as numbers, for :meth:`parse_labels`: a cell that is not a number is "not a
        ``noun``", and one that ``problem`` finds fault with gets its reason.

        Raises:
            DataError: Naming ``where``, the row (1-based, header is row 1), ``column`` and why.
        """
        values = []
        for row, cell in enumerate(raw, start=2):
            try:
                value = float(cell)
                reason = problem(value)
            except ValueError:
                reason = f"is not a {noun} (--model {self.name} needs {self.label_kind})"
            if reason is not None:
                raise DataError(f"{where}: row {row}, column {column!r}: {cell!r} {reason}")
            values.append(value)
        return np.asarray(values, dtype=np.float64)

    def check_labels(self, labels: Array, *, where: str, column: str) -> None:  # noqa: B027
        """Refuse labels this model cannot train on (the whole training set, all parties' rows
        when they are in one place); nothing by default."""

    def defaults(self, *, curvature: float, rows: int) -> Defaults:
        """Iterations, step and interval from the job's public summary."""
        step = 1.0 / max(curvature, 1.0)
        return Defaults(
            iterations=iterations_for(curvature), learning_rate=step, interval=self.interval
        )

    def margin_warning(self, margins: Array) -> str | None:
        """A warning when the model's margins on a party's rows leave the safe interval."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(interval={self.interval}, classes={self.classes})"


def iterations_for(curvature: float) -> int:
    """Iterations for a loss with no early-stopping optimum (linear, Poisson):
    ``ceil(4 sqrt(curvature))``, at least 8.

    Nesterov's method needs a number of steps proportional to the square root of the loss's
    condition number; the correlation matrix's largest eigenvalue (the only spectral figure the
    job's summary publishes) stands in for it. See README "Accuracy" for the evidence.
    """
    return max(8, math.ceil(4.0 * math.sqrt(max(curvature, 1.0))))
