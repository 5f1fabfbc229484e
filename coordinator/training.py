"""The encrypted training loop, as the coordinator drives it: messages between the workers and
the key holder, and nothing else.

Per iteration: the workers compute the gradient sums of their blocks in parallel
(:mod:`coordinator.gradient`), the coordinator adds them up, and the masked refresh
(:mod:`hefl.protocols.refresh`) turns them into the next weights through the key holder. The
protocol's messages cross the key-holder link here; the maths and the masks live in the
protocol's types. The loop ends with the finalization: the key holder seals the model for
every recipient.

Resuming after a coordinator restart. Before the loop sends a key-holder task (the setup,
each refresh and reveal, the finalization), it writes the task to a journal
(:class:`TrainingJournal`, on disk :class:`coordinator.checkpoint.FileJournal`), exactly as it
goes on the wire, together with everything else it needs to carry on once the task is answered:
the refresh's masks as they stand once the task is made (a request re-randomises them), the
iterations refreshed and revealed, and, ahead of a reveal (whose answer carries no weights), the
fresh weights of the last refresh.

Started on a journal, the loop sends that task again, byte for byte: either the key holder
never processed it and takes it as its next step, or it did and answers it again from the cache
of its latest answer (:mod:`parties.session`); it cannot have gone further, since the loop
writes a task only once the previous one is answered. The answer to a refresh is the next fresh
weights, so a journal ahead of a refresh needs none. Nothing is ever applied twice by the key
holder, and a coordinator that lost its journal cannot start over: the key holder refuses a
second setup and any refresh other than the next one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import tenseal as ts

from hefl import sealio
from hefl.algorithm import Hyperparameters
from hefl.errors import FailedPrecondition, HeflError, ProtocolError
from hefl.models.base import KernelForm
from hefl.params import CkksParameters
from hefl.protocols.refresh import (
    MaskedWeights,
    Recipient,
    RefreshCoordinator,
    RefreshMasks,
    RefreshResponse,
)
from hefl.v1 import hefl_pb2 as pb
from hefl.validate import CiphertextRules

log = logging.getLogger("hefl.training")

KEY_HOLDER_TIMEOUT_S = 600.0
TASK_KINDS = ("setup", "refresh", "reveal", "finalize")


class WorkerFailure(HeflError):
    """The workers could not compute an iteration (a worker died beyond its restarts, or the
    cluster is gone); the message says which call and why."""


class WorkerTimeout(WorkerFailure):
    """The workers did not answer within their deadline."""


class GradientPool(Protocol):
    """What training needs from the workers (a :class:`coordinator.ray_pool.WorkerPool`)."""

    @property
    def size(self) -> int: ...

    def load(self) -> None: ...

    def peak_rss_mb(self) -> list[float]: ...

    def shutdown(self) -> None: ...

    def gradient(
        self, masked_weights: Sequence[bytes], unmask: Sequence[float], *, form: KernelForm
    ) -> list[list[bytes]]:
        """Raises: WorkerFailure: the workers cannot answer."""
        ...


class KeyHolderCalls(Protocol):
    """What training needs from the key holder: a
    :class:`coordinator.keyholder_link.KeyHolderLink`."""

    bytes_sent: int
    bytes_received: int

    def call(self, task: pb.KeyHolderTask, *, timeout_s: float) -> pb.KeyHolderResult: ...


@dataclass(frozen=True)
class PendingTask:
    """A key-holder task written ahead of sending it.

    Attributes:
        kind: ``setup``, ``refresh``, ``reveal`` or ``finalize``.
        iteration: The iteration it refreshes or reveals (0 for the others).
        payload: The serialized :class:`pb.KeyHolderTask`, exactly as sent.
    """

    kind: str
    iteration: int
    payload: bytes

    @classmethod
    def of(cls, task: pb.KeyHolderTask, *, iteration: int = 0) -> PendingTask:
        kind = task.WhichOneof("task")
        assert kind in TASK_KINDS
        return cls(kind=kind, iteration=iteration, payload=task.SerializeToString())

    def task(self) -> pb.KeyHolderTask:
        return pb.KeyHolderTask.FromString(self.payload)


@dataclass(frozen=True)
class Checkpoint:
    """The training's state when a key-holder task is sent (see the module docstring).

    Attributes:
        masks: The coordinator's refresh masks once ``pending`` was made.
        done: Iterations refreshed before ``pending``.
        revealed: Iterations revealed before ``pending`` (jobs that opted in).
        weights: The key holder's fresh weights after ``done`` iterations; journaled only ahead
            of a reveal (the answer to a refresh brings the next ones) and empty before the
            first refresh (the coordinator encrypts the initial zeros itself).
        pending: The task in flight; None only between an answer and the next task.
    """

    masks: RefreshMasks
    done: int = 0
    revealed: int = 0
    weights: tuple[bytes, ...] = ()
    pending: PendingTask | None = None


class TrainingJournal(Protocol):
    """Where the loop keeps its :class:`Checkpoint`; every save replaces the previous one at
    once (a crash leaves either)."""

    def load(self) -> Checkpoint | None:
        """The last saved checkpoint; None if training never started.

        Raises:
            HeflError: A journal exists but cannot be read back whole.
        """
        ...

    def save(self, checkpoint: Checkpoint) -> None: ...


class MemoryJournal:
    """A journal that lives as long as the process (tests; nothing to resume from)."""

    def __init__(self) -> None:
        self.checkpoint: Checkpoint | None = None
        self.saves = 0

    def load(self) -> Checkpoint | None:
        return self.checkpoint

    def save(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.saves += 1


@dataclass
class TrainingReport:
    """Timings of this process's part of the training (a resumed training reports the
    iterations since it resumed in ``iteration_s``)."""

    iterations: int = 0
    resumed_at: int | None = None
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
    recipients: tuple[Recipient, ...] = ()
    reveal_intermediate: bool = False


def train(
    inputs: TrainingInputs,
    *,
    pool: GradientPool,
    link: KeyHolderCalls,
    journal: TrainingJournal,
    on_iteration: Callable[[int], None] = lambda _: None,
    key_holder_timeout_s: float = KEY_HOLDER_TIMEOUT_S,
) -> tuple[list[pb.SealedModel], TrainingReport]:
    """Run (or resume, from ``journal``) every iteration and the finalization; returns the
    models the key holder sealed and timings.

    Raises:
        WorkerFailure: The workers failed an iteration.
        KeyHolderTimeout: The key holder did not answer a task in time.
        ProtocolError: The key holder refused a task, or answered one with the wrong shape.
        FailedPrecondition: The journal has no task in flight to resume with.
    """
    hyper = inputs.hyper
    form = hyper.kernel
    checkpoint = journal.load()
    refresh = RefreshCoordinator(
        context=inputs.context,
        params=inputs.params,
        hyper=hyper,
        rows=inputs.rows,
        columns=inputs.columns,
        masks=None if checkpoint is None else checkpoint.masks,
    )
    report = TrainingReport()
    if checkpoint is None:
        setup = refresh.setup(inputs.label_term)
        checkpoint = Checkpoint(
            masks=refresh.masks, pending=PendingTask.of(pb.KeyHolderTask(setup=setup.to_proto()))
        )
        journal.save(checkpoint)
    else:
        if checkpoint.pending is None:
            raise FailedPrecondition("the training journal names no task in flight")
        report.resumed_at = checkpoint.done
        log.info(
            "resuming training after %d of %d iterations (%s %d in flight)",
            checkpoint.done,
            hyper.iterations,
            checkpoint.pending.kind,
            checkpoint.pending.iteration,
        )
        on_iteration(checkpoint.done)

    started = tick = time.perf_counter()
    while True:
        pending = checkpoint.pending
        assert pending is not None
        sent, received = link.bytes_sent, link.bytes_received
        asked = time.perf_counter()
        result = link.call(pending.task(), timeout_s=key_holder_timeout_s)
        if pending.kind == "finalize":
            report.train_s = time.perf_counter() - started
            report.iterations = checkpoint.done
            return list(result.sealed.models), report
        checkpoint = _answered(checkpoint, pending, result, refresh)
        if pending.kind == "refresh":
            report.refresh_s += time.perf_counter() - asked
            report.refresh_bytes_per_iteration = (link.bytes_sent - sent) + (
                link.bytes_received - received
            )
        if pending.kind == "reveal" or (
            pending.kind == "refresh" and not inputs.reveal_intermediate
        ):
            report.iteration_s.append(time.perf_counter() - tick)
            tick = time.perf_counter()
            log.info(
                "iteration %d/%d took %.2f s",
                checkpoint.done,
                hyper.iterations,
                report.iteration_s[-1],
            )
            on_iteration(checkpoint.done)
        pending = _next_task(checkpoint, inputs, refresh, pool, report, form=form)
        checkpoint = replace(checkpoint, masks=refresh.masks, pending=pending)
        # Ahead of sending, so that a repeat is byte-identical.
        journal.save(checkpoint if pending.kind == "reveal" else replace(checkpoint, weights=()))


def _next_task(
    checkpoint: Checkpoint,
    inputs: TrainingInputs,
    refresh: RefreshCoordinator,
    pool: GradientPool,
    report: TrainingReport,
    *,
    form: KernelForm,
) -> PendingTask:
    """The task that follows an answered one: the next refresh (after the workers' gradient),
    the reveal of the last one, or the finalization."""
    done = checkpoint.done
    if inputs.reveal_intermediate and checkpoint.revealed < done:
        # The key holder keeps the iterate and seals it with the model: nothing comes back.
        reveal = refresh.reveal(iteration=done - 1)
        return PendingTask.of(pb.KeyHolderTask(reveal=reveal.to_proto()), iteration=done - 1)
    if done < inputs.hyper.iterations:
        weights = (
            refresh.weights(RefreshResponse(fresh_weights=checkpoint.weights))
            if done
            else refresh.initial_weights()
        )
        tick = time.perf_counter()
        gradients = _gradients(inputs.context, pool, weights, report, form=form)
        report.gradient_s += time.perf_counter() - tick
        request = refresh.request(gradients, iteration=done)
        return PendingTask.of(pb.KeyHolderTask(refresh=request.to_proto()), iteration=done)
    finalize = refresh.finalize(recipients=inputs.recipients)
    return PendingTask.of(pb.KeyHolderTask(finalize=finalize.to_proto()))


def _gradients(
    context: ts.Context,
    pool: GradientPool,
    weights: MaskedWeights,
    report: TrainingReport,
    *,
    form: KernelForm,
) -> list[ts.CKKSVector]:
    partials = pool.gradient(weights.ciphertexts, weights.unmask, form=form)
    report.worker_bytes_per_iteration = sum(map(len, weights.ciphertexts)) * pool.size + sum(
        len(g) for worker in partials for g in worker
    )
    return sealio.add_up(
        context, partials, what="worker gradient", expected=CiphertextRules(context).gradient(form)
    )


def _answered(
    checkpoint: Checkpoint,
    pending: PendingTask,
    result: pb.KeyHolderResult,
    refresh: RefreshCoordinator,
) -> Checkpoint:
    """The state once the key holder answered ``pending`` (other than the finalization).

    Raises:
        ProtocolError: A refresh answered with anything but one fresh ciphertext per column.
    """
    if pending.kind == "refresh":
        if result.WhichOneof("result") != "ciphertexts":
            raise ProtocolError(
                f"the key holder answered refresh {pending.iteration} without weights"
            )
        response = RefreshResponse.from_proto(result.ciphertexts)
        refresh.weights(response)  # checks one ciphertext per column
        return replace(
            checkpoint, done=pending.iteration + 1, weights=response.fresh_weights, pending=None
        )
    if pending.kind == "reveal":
        return replace(checkpoint, revealed=pending.iteration + 1, pending=None)
    return replace(checkpoint, pending=None)  # the setup
