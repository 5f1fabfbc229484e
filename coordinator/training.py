"""The encrypted training loop, as the coordinator drives it.

Per iteration: the workers compute the gradient sums of their blocks in parallel
(:mod:`coordinator.gradient`), the coordinator adds them up, masks them and has the key holder
refresh them into the next weights (:mod:`coordinator.refresh`). Everything the coordinator
handles is a ciphertext or a mask it drew itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import tenseal as ts

from coordinator.keyholder_link import KeyHolderLink
from coordinator.refresh import RefreshMasker
from hefl import sealio
from hefl.algorithm import Hyperparameters, l2_vector
from hefl.errors import ProtocolError
from hefl.params import CkksParameters
from hefl.v1 import hefl_pb2 as pb

log = logging.getLogger("hefl.training")

KEY_HOLDER_TIMEOUT_S = 600.0


class GradientPool(Protocol):
    """What training needs from the workers (a :class:`coordinator.ray_pool.WorkerPool`)."""

    @property
    def size(self) -> int: ...

    def load(self) -> None: ...

    def peak_rss_mb(self) -> list[float]: ...

    def shutdown(self) -> None: ...

    def gradient(
        self, masked_weights: Sequence[bytes], unmask: Sequence[float], *, a: float, b: float
    ) -> list[list[bytes]]: ...


@dataclass
class TrainingReport:
    iterations: int = 0
    train_s: float = 0.0
    gradient_s: float = 0.0
    refresh_s: float = 0.0
    iteration_s: list[float] = field(default_factory=list)
    refresh_bytes_per_iteration: int = 0
    worker_bytes_per_iteration: int = 0
    intermediate_models: list[list[float]] = field(default_factory=list)


@dataclass(frozen=True)
class TrainingInputs:
    context: ts.Context
    params: CkksParameters
    hyper: Hyperparameters
    rows: int
    columns: int
    label_term: ts.CKKSVector
    reveal_intermediate: bool = False


def train(
    inputs: TrainingInputs,
    *,
    pool: GradientPool,
    link: KeyHolderLink,
    on_iteration: Callable[[int], None] = lambda _: None,
    rng: np.random.Generator | None = None,
) -> tuple[RefreshMasker, TrainingReport]:
    """Run every iteration; returns the masker (it holds the final model's mask) and timings."""
    hyper = inputs.hyper
    sigmoid = hyper.sigmoid
    weight_scale, a, b = sigmoid.encrypted_form()
    l2 = l2_vector(inputs.columns, hyper.l2)
    masker = RefreshMasker(
        context=inputs.context,
        columns=inputs.columns,
        slots=inputs.params.slots,
        mask_bits=inputs.params.mask_bits,
        rows=inputs.rows,
        learning_rate=hyper.learning_rate,
        l2=l2,
        weight_scale=weight_scale,
        rng=rng,
    )
    weights0, velocity0 = masker.initial_state()
    setup = pb.TrainingSetup(
        rows=inputs.rows,
        columns=inputs.columns,
        iterations=hyper.iterations,
        learning_rate=hyper.learning_rate,
        l2=l2.tolist(),
        sigmoid_coefficients=list(sigmoid.coefficients),
        masked_label_term=sealio.serialize(masker.mask_label_term(inputs.label_term)),
        weights=weights0.tolist(),
        velocity=velocity0.tolist(),
        slots=inputs.params.slots,
    )
    link.call(pb.KeyHolderTask(setup=setup), timeout_s=KEY_HOLDER_TIMEOUT_S)

    report = TrainingReport()
    started = time.perf_counter()
    # w_0 = 0: the coordinator can encrypt zeros with the public key itself.
    weights = sealio.encrypt_replicated(inputs.context, [0.0] * inputs.columns, inputs.params.slots)
    unmask = [0.0] * inputs.columns
    for iteration in range(hyper.iterations):
        tick = time.perf_counter()
        partials = pool.gradient(weights, unmask, a=a, b=b)
        report.worker_bytes_per_iteration = sum(map(len, weights)) * pool.size + sum(
            len(g) for worker in partials for g in worker
        )
        gradients = sealio.add_up(inputs.context, partials, what="worker gradient")
        tock = time.perf_counter()
        report.gradient_s += tock - tick

        masked = masker.mask_round(gradients, iteration)
        task = pb.KeyHolderTask(
            refresh=pb.RefreshTask(
                iteration=iteration,
                masked_gradients=masked.masked_gradients,
                weights_offset=masked.weights_offset.tolist(),
                velocity_offset=masked.velocity_offset.tolist(),
            )
        )
        sent, received = link.bytes_sent, link.bytes_received
        result = link.call(task, timeout_s=KEY_HOLDER_TIMEOUT_S)
        report.refresh_bytes_per_iteration = (link.bytes_sent - sent) + (
            link.bytes_received - received
        )
        # The workers subtract the masks themselves: no need to load and re-serialize here.
        weights = list(result.ciphertexts.ciphertexts)
        if len(weights) != inputs.columns:
            raise ProtocolError(
                f"key holder returned {len(weights)} weights, expected {inputs.columns}"
            )
        unmask = masker.weights_unmask().tolist()
        report.refresh_s += time.perf_counter() - tock

        if inputs.reveal_intermediate:
            revealed = link.call(
                pb.KeyHolderTask(
                    reveal=pb.RevealTask(
                        weights_mask=masker.model_mask.tolist(), iteration=iteration
                    )
                ),
                timeout_s=KEY_HOLDER_TIMEOUT_S,
            )
            report.intermediate_models.append(list(revealed.values.values))
        report.iteration_s.append(time.perf_counter() - tick)
        report.iterations = iteration + 1
        log.info(
            "iteration %d/%d took %.2f s", iteration + 1, hyper.iterations, report.iteration_s[-1]
        )
        on_iteration(iteration + 1)
    report.train_s = time.perf_counter() - started
    return masker, report
