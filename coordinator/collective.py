"""The coordinator's side of a collective (n-of-n) job: it relays and aggregates, and holds no
key share.

Each roster party runs its state machine (:mod:`parties.collective`) behind its own task link;
this module sends every party the same step at once, waits for all the answers (n-of-n: one
missing party stops the job at its deadline) and relays what the next step needs:

- :func:`generate_keys`: seed commit and reveal, the public-key and relinearization-key shares,
  the public context built from the aggregates (:func:`hefl.protocols.collective.keygen.
  public_context`), checked public here and by every party against its own aggregate.
- :func:`decrypt_statistics`: every party's signed statistics go to every party; the decryption
  shares come back sealed to the other parties, and are relayed unopened; each party answers the
  row count and the curvature only.
- :func:`train`: the label term to shares (EncToShare), then per iteration the workers' gradient
  and the masked step (:class:`hefl.protocols.collective.step.MaskedStepProtocol`): the
  coordinator sees every column's slot sum plus the parties' masks, applies Nesterov's step to
  its masked state (w + A, v + B) and finalizes fresh encrypted weights k w' for the workers. At
  the end it sends the masked model to the parties, and relays the mask shares they seal to each
  other: every party gets the model, the coordinator never does.

Restarts. :func:`train` writes every step ahead of sending it (:class:`CollectiveCheckpoint`:
each party's task as sent, the masked state it was made from). A coordinator restarted on the
job directory sends the step in flight again, byte for byte, and goes on from there: a party that
answered it already answers the repeat of its latest task from its session's cache
(:class:`parties.session.TaskAnswerer`), one that did not answers it now, and no party is asked
for a second share of a step it took (it would refuse: :mod:`parties.collective`). Training
resumes from the parties' key shares and masks, in their processes, and the coordinator's
public state on disk (:mod:`coordinator.checkpoint`). The setup before training (keys,
statistics, label terms) runs over a :class:`JournaledRelay`, which writes every step ahead and
every step's answers once all are in, and resumes the same way.

No secret key exists in this process; the protocol types' coordinator halves take none.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import tenseal as ts

from coordinator.training import GradientPool, KeyHolderCalls, TrainingReport
from hefl import sealio
from hefl.algorithm import Hyperparameters, l2_vector, nesterov_step
from hefl.codec import Array
from hefl.errors import ProtocolError
from hefl.params import CkksParameters, check_public_context
from hefl.protocols.collective.crs import SeedAgreementProtocol, SeedCommitment, SeedReveal
from hefl.protocols.collective.keygen import (
    PublicKeyGenProtocol,
    PublicKeyShare,
    RelinKeyGenProtocol,
    RelinKeyRound1Share,
    RelinKeyRound2Share,
    public_context,
)
from hefl.protocols.collective.keyswitch import ciphertext_of
from hefl.protocols.collective.seal_layout import polys_of_vector_bytes, vector_bytes_of
from hefl.protocols.collective.shares import CollectiveJob
from hefl.protocols.collective.step import (
    LABEL_TERM_SCALE_BITS,
    EncToShareProtocol,
    EncToShareShare,
    MaskedStepProtocol,
    MaskedStepShare,
    step_crps,
    step_id,
)
from hefl.v1 import hefl_pb2 as pb
from hefl.validate import CiphertextRules, Expected

log = logging.getLogger("hefl.collective")

TASK_TIMEOUT_S = 600.0


@dataclass
class Relay:
    """The roster parties' links, and the traffic over them."""

    links: Mapping[str, KeyHolderCalls]
    timeout_s: float = TASK_TIMEOUT_S
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(16))

    @property
    def parties(self) -> tuple[str, ...]:
        return tuple(sorted(self.links))

    def bytes_total(self) -> int:
        return sum(link.bytes_sent + link.bytes_received for link in self.links.values())

    def ask(
        self, step: str, make: Callable[[str], pb.CollectiveTask] | pb.CollectiveTask
    ) -> dict[str, pb.KeyHolderResult]:
        """Send every party its task of ``step`` at once; every answer.

        Raises:
            KeyHolderTimeout: A party did not answer in time.
            ProtocolError: A party refused the step (the message names it and why).
        """
        return self.send(step, self.tasks(step, make))

    def tasks(
        self, step: str, make: Callable[[str], pb.CollectiveTask] | pb.CollectiveTask
    ) -> dict[str, pb.KeyHolderTask]:
        """Every party's task of ``step``."""
        tasks = {}
        for party in self.parties:
            task = make(party) if callable(make) else make
            if not task.step:
                task.step = step
            tasks[party] = pb.KeyHolderTask(collective=task)
        return tasks

    def send(
        self, step: str, tasks: Mapping[str, pb.KeyHolderTask]
    ) -> dict[str, pb.KeyHolderResult]:
        """Send every party its task at once; every answer (as :meth:`ask`)."""
        futures = {
            party: self.pool.submit(self.links[party].call, tasks[party], timeout_s=self.timeout_s)
            for party in self.parties
        }
        results, errors = {}, []
        for party, future in futures.items():
            try:
                results[party] = future.result()
            except Exception as err:  # one party's refusal fails the step for all
                errors.append(f"{party}: {err}")
        if errors:
            raise ProtocolError(f"collective step {step!r} failed: {'; '.join(errors)}")
        return results

    def outputs(
        self, step: str, make: Callable[[str], pb.CollectiveTask] | pb.CollectiveTask
    ) -> dict[str, dict[str, bytes]]:
        """Every party's named outputs of ``step``."""
        answers = self.ask(step, make)
        out: dict[str, dict[str, bytes]] = {}
        for party, result in answers.items():
            if result.WhichOneof("result") != "collective":
                raise ProtocolError(
                    f"party {party!r} answered step {step!r} with no collective result"
                )
            out[party] = {o.name: o.data for o in result.collective.outputs}
        return out


@dataclass(frozen=True)
class SetupStep:
    """One step of the collective setup: each party's task as sent and, once every party
    answered, the answers. Only what the coordinator sends and receives anyway (commitments,
    public-key shares, signatures, sealed boxes): no party's secret.

    Attributes:
        step: Its name (``seed-commit``, ``keys``, ``stats-open``...).
        tasks: Each roster party's task, a serialized :class:`pb.KeyHolderTask` exactly as sent.
        answers: Each party's serialized :class:`pb.KeyHolderResult`; None while in flight.
    """

    step: str
    tasks: Mapping[str, bytes]
    answers: Mapping[str, bytes] | None = None


class SetupJournal(Protocol):
    """Where a :class:`JournaledRelay` keeps the setup's steps; every save replaces the
    previous record at once (a crash leaves either)."""

    def load(self) -> list[SetupStep]:
        """The steps saved, in order; empty if the setup never sent one.

        Raises:
            HeflError: A journal exists but cannot be read back whole.
        """
        ...

    def save(self, steps: Sequence[SetupStep]) -> None: ...


@dataclass
class JournaledRelay(Relay):
    """A relay for the collective setup (keys, statistics, label terms) that writes every step
    ahead of sending it and every step's answers once all are in.

    A coordinator restarted during the setup runs the same setup functions over the same
    journal: a step whose answers are recorded returns them without being sent again, the step
    in flight is sent again byte for byte (a party that answered it answers the repeat of its
    latest task from its session's cache; one that did not answers it now), and the setup goes
    on from there. The functions are deterministic in the answers: every replayed step's tasks
    are made again and must equal the recorded ones, or the setup fails (another step, another
    roster, or a coordinator that builds its tasks differently).
    """

    journal: SetupJournal | None = None
    _steps: list[SetupStep] = field(default_factory=list, init=False)
    _position: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.journal is not None:
            self._steps = self.journal.load()

    @property
    def resuming(self) -> bool:
        """Whether steps recorded before a restart are still to be replayed."""
        return self._position < len(self._steps)

    def ask(
        self, step: str, make: Callable[[str], pb.CollectiveTask] | pb.CollectiveTask
    ) -> dict[str, pb.KeyHolderResult]:
        position = self._position
        self._position += 1
        tasks = self.tasks(step, make)
        sent = {p: t.SerializeToString() for p, t in tasks.items()}
        if position < len(self._steps):
            recorded = self._steps[position]
            if recorded.step != step or set(recorded.tasks) != set(self.parties):
                raise ProtocolError(
                    f"the setup journal's step {position} is {recorded.step!r} to "
                    f"{sorted(recorded.tasks)}, not {step!r} to {list(self.parties)}"
                )
            differ = sorted(p for p in self.parties if sent[p] != recorded.tasks[p])
            if differ:
                raise ProtocolError(
                    f"the setup's step {step!r} to {differ} differs from the one sent before "
                    "the restart"
                )
            if recorded.answers is not None:
                return {p: pb.KeyHolderResult.FromString(d) for p, d in recorded.answers.items()}
            log.info(
                "sending the collective setup's step %r again (in flight at the restart)", step
            )
        else:
            recorded = SetupStep(step, sent)
            self._steps.append(recorded)
            self._save()
        results = self.send(step, tasks)
        self._steps[position] = replace(
            recorded, answers={p: r.SerializeToString() for p, r in results.items()}
        )
        self._save()
        return results

    def _save(self) -> None:
        if self.journal is not None:
            self.journal.save(self._steps)


def _inputs(kind: str, by_party: Mapping[str, bytes]) -> list[pb.NamedBytes]:
    return [pb.NamedBytes(name=f"{kind}/{p}", data=d) for p, d in sorted(by_party.items())]


def _signed_inputs(outputs: Mapping[str, Mapping[str, bytes]], kind: str) -> list[pb.NamedBytes]:
    """Every party's ``kind`` and its signature, relayed as the parties check them."""
    return _inputs(kind, _output(outputs, kind)) + _inputs(
        f"{kind}-signature", _output(outputs, f"{kind}-signature")
    )


def _output(outputs: Mapping[str, Mapping[str, bytes]], name: str) -> dict[str, bytes]:
    try:
        return {party: o[name] for party, o in outputs.items()}
    except KeyError as err:
        raise ProtocolError(f"a party's answer lacks its {name}") from err


@dataclass
class KeyGeneration:
    """The result of the collective setup and what it cost."""

    job: CollectiveJob
    context_bytes: bytes
    seconds: float
    bytes_per_party: dict[str, int]
    context_signatures: dict[str, bytes]  # every party's signature over the context it built


def generate_keys(
    relay: Relay,
    *,
    job_id: str,
    params: CkksParameters,
    on_context: Callable[[bytes], None] = lambda _: None,
) -> KeyGeneration:
    """Seed agreement, CKG, RKG and the public context, among the relay's parties.

    ``on_context`` takes the context before the parties check it (the job serves it from then).

    Raises:
        ProtocolError: A party refused a step, or shares are missing or malformed.
        KeyHolderTimeout: A party did not answer in time.
    """
    started = time.perf_counter()
    before = {p: link.bytes_sent + link.bytes_received for p, link in relay.links.items()}
    parties = relay.parties
    seed = relay.outputs("seed-commit", pb.CollectiveTask())
    commitments = _output(seed, "commitment")
    revealed = relay.outputs(
        "seed-reveal", pb.CollectiveTask(inputs=_signed_inputs(seed, "commitment"))
    )
    reveals = _output(revealed, "reveal")
    crs = SeedAgreementProtocol(job_id, parties).agree(
        [SeedCommitment.from_bytes(commitments[p]) for p in parties],
        [SeedReveal.from_bytes(reveals[p]) for p in parties],
    )
    job = CollectiveJob(params, job_id, parties, crs)
    committed = relay.outputs("keys", pb.CollectiveTask(inputs=_signed_inputs(revealed, "reveal")))
    keys = relay.outputs(
        "keys-reveal", pb.CollectiveTask(inputs=_signed_inputs(committed, "commitment"))
    )
    public, round1 = _output(keys, "public-key"), _output(keys, "relin-key-1")
    second = relay.outputs(
        "relin-key-2",
        pb.CollectiveTask(inputs=_inputs("public-key", public) + _inputs("relin-key-1", round1)),
    )
    round2 = _output(second, "relin-key-2")
    ckg, rkg = PublicKeyGenProtocol(job), RelinKeyGenProtocol(job)
    public_key = ckg.public_key(
        ckg.aggregate_shares({p: PublicKeyShare.from_bytes(public[p], job) for p in parties})
    )
    aggregate1 = rkg.aggregate_round1(
        {p: RelinKeyRound1Share.from_bytes(round1[p], job) for p in parties}
    )
    aggregate2 = rkg.aggregate_round2(
        aggregate1, {p: RelinKeyRound2Share.from_bytes(round2[p], job) for p in parties}
    )
    context = public_context(job, public_key, rkg.relin_key(aggregate1, aggregate2))
    check_public_context(context, params.name)
    context_bytes = context.serialize(save_secret_key=False, save_galois_keys=False)
    on_context(context_bytes)
    digest = hashlib.sha256(context_bytes).digest()
    checked = relay.outputs(
        "context",
        pb.CollectiveTask(
            inputs=[
                *_signed_inputs(second, "relin-key-2"),
                pb.NamedBytes(name="context/", data=context_bytes),
            ]
        ),
    )
    if any(d != digest for d in _output(checked, "context-sha256").values()):
        raise ProtocolError("a party built another context from the shares")
    seconds = time.perf_counter() - started
    traffic = {
        p: link.bytes_sent + link.bytes_received - before[p] for p, link in relay.links.items()
    }
    log.info("job %s: collective keys of %d parties in %.2f s", job_id, len(parties), seconds)
    return KeyGeneration(
        job, context_bytes, seconds, traffic, _output(checked, "context-signature")
    )


def commit_statistics(relay: Relay, keys: KeyGeneration) -> None:
    """Every party's signature over the context to every party (each checks they all signed
    the one it built), then every party's signed commitment to its statistics to every party:
    only then does a party submit its statistics (no party's can depend on another's).

    Raises:
        ProtocolError: A party refused.
        KeyHolderTimeout: A party did not answer in time.
    """
    committed = relay.outputs(
        "stats-commit",
        pb.CollectiveTask(inputs=_inputs("context-signature", keys.context_signatures)),
    )
    relay.outputs(
        "stats-release", pb.CollectiveTask(inputs=_signed_inputs(committed, "stats-commitment"))
    )


def commit_label_terms(relay: Relay) -> None:
    """Every party's signed label-term digest to every party; only then do they upload.

    Raises:
        ProtocolError: A party refused.
        KeyHolderTimeout: A party did not answer in time.
    """
    committed = relay.outputs("label-commit", pb.CollectiveTask())
    relay.outputs(
        "label-release",
        pb.CollectiveTask(
            inputs=_inputs("label-term-sha256", _output(committed, "label-term-sha256"))
            + _inputs("label-term-signature", _output(committed, "label-term-signature"))
        ),
    )


def decrypt_statistics(
    relay: Relay, *, stats: Sequence[pb.SubmitStatsRequest], hellos: Sequence[pb.PartyHello]
) -> tuple[int, float]:
    """(rows, curvature), as every party decrypted them from the roster's signed statistics.

    Raises:
        ProtocolError: A party refused, or the parties disagree.
    """
    boxes = relay.outputs("stats", pb.CollectiveTask(stats=list(stats), parties=list(hellos)))
    answers = relay.ask("stats-open", lambda party: _boxes_for(party, boxes, "stats-open"))
    values = {tuple(a.collective.values) for a in answers.values()}
    if len(values) != 1:
        raise ProtocolError(f"the parties decrypted different summaries: {sorted(values)}")
    ((count, curvature),) = values
    return int(count), float(curvature)


def _boxes_for(
    party: str, outputs: Mapping[str, Mapping[str, bytes]], step: str
) -> pb.CollectiveTask:
    """The boxes every other party sealed to ``party``, relayed unopened."""
    return pb.CollectiveTask(
        step=step,
        inputs=[
            pb.NamedBytes(name=f"box/{sender}", data=o[f"box/{party}"])
            for sender, o in sorted(outputs.items())
            if sender != party and f"box/{party}" in o
        ],
    )


@dataclass(frozen=True)
class CollectiveInputs:
    job: CollectiveJob
    context: ts.Context
    params: CkksParameters
    hyper: Hyperparameters
    rows: int
    columns: int
    label_terms: Mapping[str, bytes]  # each party's label-term ciphertext, as stored
    label_term_signatures: Mapping[str, bytes]  # each party's signature over it
    hellos: tuple[pb.PartyHello, ...]


def training_setup(hyper: Hyperparameters, *, rows: int, columns: int) -> pb.TrainingSetup:
    return pb.TrainingSetup(
        rows=rows,
        columns=columns,
        iterations=hyper.iterations,
        learning_rate=hyper.learning_rate,
        l2=l2_vector(columns, hyper.l2, outputs=hyper.outputs).tolist(),
        weight_scale=hyper.weight_scale,
    )


def train(
    inputs: CollectiveInputs,
    *,
    pool: GradientPool,
    relay: Relay,
    journal: CollectiveJournal | None = None,
    on_iteration: Callable[[int], None] = lambda _: None,
) -> TrainingReport:
    """Every iteration, then the model delivered to the parties (never to this process); with a
    ``journal``, every step written ahead, and resumed from the step in flight if the journal
    holds one (module docstring).

    Raises:
        WorkerFailure: The workers failed an iteration.
        ProtocolError: A party refused a step.
        KeyHolderTimeout: A party did not answer in time.
    """
    hyper, job, context = inputs.hyper, inputs.job, inputs.context
    k, form = hyper.weight_scale, hyper.kernel
    kernel_output = CiphertextRules(context).gradient(form)  # what the workers' sums must be
    setup = training_setup(hyper, rows=inputs.rows, columns=inputs.columns)
    columns, slots = inputs.columns, inputs.params.slots
    report = TrainingReport()
    started = time.perf_counter()
    resumed = journal.load() if journal is not None else None
    steps = _Steps(relay, journal, resumed)
    l2 = np.asarray(setup.l2)
    identity = step_id(setup)

    if resumed is not None and steps.passed("setup"):
        masked_label = np.asarray(resumed.label)
        weights, velocity = np.asarray(resumed.weights), np.asarray(resumed.velocity)
        first = resumed.done
        report.resumed_at = first
    else:
        # The label term C, summed here as every party sums it, to shares: C + sum c_i.
        label_total = sealio.add_vectors(
            context,
            (inputs.label_terms[p] for p in relay.parties),
            what="label term",
            expected=Expected(values=None, scale=2.0**LABEL_TERM_SCALE_BITS),
        )
        enc_to_share = EncToShareProtocol(job, ciphertext_of(label_total), purpose="label-term")
        setup_task = pb.CollectiveTask(
            setup=setup,
            inputs=_inputs("label-term", inputs.label_terms)
            + _inputs("label-term-signature", inputs.label_term_signatures),
        )
        shares = _output(steps.outputs("setup", setup_task), "label-term")
        masked_label = enc_to_share.finalize(
            enc_to_share.aggregate_shares(
                {
                    p: EncToShareShare.from_bytes(d, job, rows=enc_to_share.ciphertext.rows)
                    for p, d in shares.items()
                }
            )
        )[:columns]
        weights, velocity = np.zeros(columns), np.zeros(columns)  # the masked state, w + A, v + B
        first = 0
    if resumed is not None:
        log.info(
            "job %s: resuming collective training after %d of %d iterations (%s in flight)",
            job.job_id,
            first,
            hyper.iterations,
            resumed.step if resumed.step != "refresh" else f"refresh {resumed.done}",
        )

    fresh: list[bytes] | None = None  # the workers' weights, k w, after the last iteration
    unmask = [0.0] * columns
    # Each iteration's CRPs (the fresh weights' c1) are expanded while this process waits for
    # the workers and the parties, one iteration ahead.
    crps = relay.pool.submit(step_crps, job, iteration=first, columns=columns)
    tick = time.perf_counter()
    for iteration in range(first, hyper.iterations):
        gradient_started = time.perf_counter()
        in_flight = steps.in_flight("refresh", iteration)
        if in_flight is not None:  # sent before the restart: the same gradients again
            serialized = [item.data for item in in_flight.inputs]
        elif iteration == 0:
            # From zero weights every model's data gradient is exactly zero (each kernel form
            # has a factor of the margin): the first step computes and decrypts nothing.
            serialized = []
        else:
            assert fresh is not None  # the previous iteration's answer
            partials = pool.gradient(fresh, unmask, form=form)
            report.worker_bytes_per_iteration = sum(map(len, fresh)) * pool.size + sum(
                len(g) for worker in partials for g in worker
            )
            gradients = sealio.add_up(
                context, partials, what="worker gradient", expected=kernel_output
            )
            serialized = [sealio.serialize(g) for g in gradients]
        report.gradient_s += time.perf_counter() - gradient_started
        refresh_started = time.perf_counter()
        traffic = relay.bytes_total()
        protocol = MaskedStepProtocol(
            job,
            [polys_of_vector_bytes(g) for g in serialized],
            iteration=iteration,
            step_id=identity,
            output_scale_bits=inputs.params.scale_bits,
            crps=crps.result(timeout=relay.timeout_s),
            zero_columns=0 if serialized else columns,
        )
        if iteration + 1 < hyper.iterations:
            crps = relay.pool.submit(step_crps, job, iteration=iteration + 1, columns=columns)
        refresh_task = pb.CollectiveTask(
            iteration=iteration,
            inputs=[pb.NamedBytes(name="gradient", data=g) for g in serialized],
        )
        answers = _output(
            steps.outputs(
                "refresh",
                refresh_task,
                done=iteration,
                label=masked_label,
                weights=weights,
                velocity=velocity,
            ),
            "masked-step",
        )
        aggregate = protocol.aggregate_shares(
            {
                p: MaskedStepShare.from_bytes(d, job, rows=protocol.rows, columns=columns)
                for p, d in answers.items()
            }
        )
        masked_sums = protocol.masked_slot_sums(aggregate)
        weights, velocity = nesterov_step(
            weights=weights,
            velocity=velocity,
            gradient_sums=masked_sums,
            label_term=masked_label,
            rows=inputs.rows,
            learning_rate=hyper.learning_rate,
            l2=l2,
            iteration=iteration,
        )
        fresh = [vector_bytes_of(c, size=slots) for c in protocol.finalize(aggregate, k * weights)]
        report.refresh_s += time.perf_counter() - refresh_started
        report.refresh_bytes_per_iteration = relay.bytes_total() - traffic
        report.iteration_s.append(time.perf_counter() - tick)
        tick = time.perf_counter()
        log.info(
            "iteration %d/%d took %.2f s", iteration + 1, hyper.iterations, report.iteration_s[-1]
        )
        on_iteration(iteration + 1)

    # The masked model to every party; their mask shares, sealed to each other, relayed.
    state = {"label": masked_label, "weights": weights, "velocity": velocity}
    done = hyper.iterations
    boxes: dict[str, dict[str, bytes]] = {}
    opened: dict[str, dict[str, bytes]] = {}
    if not steps.passed("model", done):
        model_task = pb.CollectiveTask(values=velocity.tolist(), parties=list(inputs.hellos))
        boxes = steps.outputs("model", model_task, done=done, **state)
    if not steps.passed("model-open", done):
        opened = steps.outputs(
            "model-open", lambda party: _boxes_for(party, boxes, "model-open"), done=done, **state
        )
    steps.outputs(
        "model-confirm",
        pb.CollectiveTask(inputs=_signed_inputs(opened, "model-sha256")),
        done=done,
        **state,
    )
    report.iterations = hyper.iterations
    report.train_s = time.perf_counter() - started
    return report


# ----- the journal: what a restarted coordinator resumes from -------------------------------

STEP_ORDER = ("setup", "refresh", "model", "model-open", "model-confirm")


@dataclass(frozen=True)
class CollectiveCheckpoint:
    """A training step of a collective job, written ahead of sending it.

    Everything here is what the coordinator holds anyway: the tasks it sends (public
    ciphertexts, masked values, sealed boxes, signed digests) and its masked state. No party's
    key share or mask is in it.

    Attributes:
        step: The step in flight, one of :data:`STEP_ORDER`.
        tasks: Each roster party's task of it, a serialized :class:`pb.KeyHolderTask` exactly as
            sent.
        done: Iterations completed before it (the refresh's own iteration; the iteration count
            for the model's steps).
        label: The masked label term C + sum c_i; empty while ``setup`` is in flight.
        weights: The masked weights w + A after ``done`` iterations.
        velocity: The masked velocity v + B after ``done`` iterations.
    """

    step: str
    tasks: Mapping[str, bytes]
    done: int = 0
    label: tuple[float, ...] = ()
    weights: tuple[float, ...] = ()
    velocity: tuple[float, ...] = ()

    @property
    def position(self) -> tuple[int, int]:
        return _position(self.step, self.done)


class CollectiveJournal(Protocol):
    """Where :func:`train` keeps its :class:`CollectiveCheckpoint`; every save replaces the
    previous one at once (a crash leaves either)."""

    def load(self) -> CollectiveCheckpoint | None:
        """The last saved checkpoint; None if training never sent a step.

        Raises:
            HeflError: A journal exists but cannot be read back whole.
        """
        ...

    def save(self, checkpoint: CollectiveCheckpoint) -> None: ...


def _position(step: str, done: int) -> tuple[int, int]:
    return STEP_ORDER.index(step), done


class _Steps:
    """The training's steps through the relay, each written ahead of sending it; after a
    restart, the step in flight is sent again byte for byte and the steps before it are
    skipped (their results are in the checkpoint)."""

    def __init__(
        self,
        relay: Relay,
        journal: CollectiveJournal | None,
        resumed: CollectiveCheckpoint | None,
    ) -> None:
        self._relay = relay
        self._journal = journal
        self._resumed = resumed

    def passed(self, step: str, done: int = 0) -> bool:
        """Whether the step in flight at the restart comes after ``step``."""
        resumed = self._resumed
        return resumed is not None and _position(step, done) < resumed.position

    def in_flight(self, step: str, done: int = 0) -> pb.CollectiveTask | None:
        """The first party's task of ``step`` as sent before the restart, if it was in flight."""
        resumed = self._resumed
        if resumed is None or resumed.position != _position(step, done):
            return None
        return pb.KeyHolderTask.FromString(resumed.tasks[self._relay.parties[0]]).collective

    def outputs(
        self,
        step: str,
        make: Callable[[str], pb.CollectiveTask] | pb.CollectiveTask,
        *,
        done: int = 0,
        label: Array | None = None,
        weights: Array | None = None,
        velocity: Array | None = None,
    ) -> dict[str, dict[str, bytes]]:
        """Every party's outputs of ``step``: its tasks written ahead, then sent; or, if it
        was in flight at the restart, the tasks sent then, again."""
        resumed = self._resumed
        if resumed is not None and resumed.position == _position(step, done):
            tasks = dict(resumed.tasks)
            self._resumed = None
        else:
            tasks = {}
            for party in self._relay.parties:
                task = make(party) if callable(make) else make
                task.step = step
                tasks[party] = pb.KeyHolderTask(collective=task).SerializeToString()
            if self._journal is not None:
                self._journal.save(
                    CollectiveCheckpoint(
                        step=step,
                        tasks=tasks,
                        done=done,
                        label=_floats(label),
                        weights=_floats(weights),
                        velocity=_floats(velocity),
                    )
                )
        return self._relay.outputs(
            step, lambda party: pb.KeyHolderTask.FromString(tasks[party]).collective
        )


def _floats(values: Array | None) -> tuple[float, ...]:
    return () if values is None else tuple(float(v) for v in values)
