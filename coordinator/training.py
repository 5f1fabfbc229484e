"""The encrypted training loop, as the coordinator drives it: messages between the workers and
the key holder, and nothing else.

Per iteration: the workers compute the gradient sums of their blocks in parallel
(:mod:`coordinator.gradient`), the coordinator adds them up, and the masked refresh
(:mod:`hefl.protocols.refresh`) turns them into the next weights through the key holder. The
protocol's messages cross the key-holder link here; the maths and the masks live in the
protocol's types.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import tenseal as ts

from hefl import sealio
from hefl.algorithm import Hyperparameters
from hefl.params import CkksParameters
from hefl.protocols.refresh import RefreshCoordinator, RefreshResponse
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


class KeyHolderCalls(Protocol):
    """What training needs from the key holder: a
    :class:`coordinator.keyholder_link.KeyHolderLink`."""

    bytes_sent: int
    bytes_received: int

    def call(self, task: pb.KeyHolderTask, *, timeout_s: float) -> pb.KeyHolderResult: ...


@dataclass
class TrainingReport:
    iterations: int = 0
    train_s: float = 0.0
    gradient_s: float = 0.0
    refresh_s: float = 0.0
    iteration_s: list[float] = field(default_factory=list)
    refresh_bytes_per_iteration: int = 0
    worker_bytes_per_iteration: int = 0


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
    link: KeyHolderCalls,
    on_iteration: Callable[[int], None] = lambda _: None,
) -> tuple[RefreshCoordinator, TrainingReport]:
    """Run every iteration; returns the refresh's coordinator half (it finalizes the model) and
    timings."""
    hyper = inputs.hyper
    _, a, b = hyper.sigmoid.encrypted_form()
    refresh = RefreshCoordinator(
        context=inputs.context,
        params=inputs.params,
        hyper=hyper,
        rows=inputs.rows,
        columns=inputs.columns,
    )
    setup = refresh.setup(inputs.label_term)
    link.call(pb.KeyHolderTask(setup=setup.to_proto()), timeout_s=KEY_HOLDER_TIMEOUT_S)

    report = TrainingReport()
    started = time.perf_counter()
    weights = refresh.initial_weights()
    for iteration in range(hyper.iterations):
        tick = time.perf_counter()
        partials = pool.gradient(weights.ciphertexts, weights.unmask, a=a, b=b)
        report.worker_bytes_per_iteration = sum(map(len, weights.ciphertexts)) * pool.size + sum(
            len(g) for worker in partials for g in worker
        )
        gradients = sealio.add_up(inputs.context, partials, what="worker gradient")
        tock = time.perf_counter()
        report.gradient_s += tock - tick

        request = refresh.request(gradients, iteration=iteration)
        sent, received = link.bytes_sent, link.bytes_received
        result = link.call(
            pb.KeyHolderTask(refresh=request.to_proto()), timeout_s=KEY_HOLDER_TIMEOUT_S
        )
        report.refresh_bytes_per_iteration = (link.bytes_sent - sent) + (
            link.bytes_received - received
        )
        # The workers subtract the masks themselves: no need to load and re-serialize here.
        weights = refresh.weights(RefreshResponse.from_proto(result.ciphertexts))
        report.refresh_s += time.perf_counter() - tock

        if inputs.reveal_intermediate:
            # The key holder keeps the iterate and seals it with the model: nothing comes back.
            reveal = refresh.reveal(iteration=iteration)
            link.call(pb.KeyHolderTask(reveal=reveal.to_proto()), timeout_s=KEY_HOLDER_TIMEOUT_S)
        report.iteration_s.append(time.perf_counter() - tick)
        report.iterations = iteration + 1
        log.info(
            "iteration %d/%d took %.2f s", iteration + 1, hyper.iterations, report.iteration_s[-1]
        )
        on_iteration(iteration + 1)
    report.train_s = time.perf_counter() - started
    return refresh, report
