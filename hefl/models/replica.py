"""Any model's training replayed in float64: the same polynomial in the kernel's form, the same
label term, the same :func:`hefl.algorithm.nesterov_step`. The encrypted run must equal it to
CKKS precision (the replica-equals-encrypted test every model passes)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hefl.algorithm import nesterov_step
from hefl.models.base import Array, Model


def l2_per_column(model: Model, columns: int, l2: float) -> Array:
    """Per weight L2 strength, output-major; no output's bias (its last column) is penalized."""
    vec = np.full((model.outputs, columns), l2, dtype=np.float64)
    vec[:, -1] = 0.0
    return vec.ravel()


@dataclass(frozen=True)
class ModelReplica:
    weights: Array
    losses: tuple[float, ...]
    max_margin: float


def train_model_replica(
    model: Model,
    features_with_bias: Array,
    labels: Array,
    *,
    iterations: int,
    learning_rate: float,
    l2: float = 0.0,
) -> ModelReplica:
    """hefl's algorithm for ``model`` in float64; returns Nesterov's velocity (the delivered
    model), the exact loss after every iteration and the largest |z| reached."""
    rows, columns = features_with_bias.shape
    size = model.outputs * columns
    penalty = l2_per_column(model, columns, l2)
    constant = model.label_term(features_with_bias, labels)
    weights, velocity = np.zeros(size), np.zeros(size)
    losses, max_margin = [], 0.0
    for t in range(iterations):
        max_margin = max(
            max_margin, float(np.max(np.abs(model.margins(weights, features_with_bias))))
        )
        weights, velocity = nesterov_step(
            weights=weights,
            velocity=velocity,
            gradient_sums=model.gradient_sums(weights, features_with_bias),
            label_term=constant,
            rows=rows,
            learning_rate=learning_rate,
            l2=penalty,
            iteration=t,
        )
        losses.append(model.loss(velocity, features_with_bias, labels))
    return ModelReplica(weights=velocity, losses=tuple(losses), max_margin=max_margin)
