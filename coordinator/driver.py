"""The job driver: the phases that need the key holder and the Ray workers, on one thread per job.

1. When every party has joined and sent statistics: run the coordinator's part of
   :mod:`hefl.protocols.stats` (sum the shares, have the key holder summarize the sum), choose
   the hyperparameters, publish (count, mean, std) and the packing layout; start the Ray
   workers while the parties upload.
2. When every upload is complete: load the shards into the workers, train
   (:func:`coordinator.training.train`, which ends with the key holder sealing the model for
   every party).

Every wait has a deadline (:class:`Deadlines`): the parties' uploads, the key holder's answers
and its return after a coordinator restart, the Ray workers' calls (:mod:`coordinator.ray_pool`).
Any failure, a passed deadline included, marks the job FAILED with a message naming what was
missing; every party watching the job receives it, and the coordinator keeps serving other jobs.

After a restart (``restored``), a job picks up where its files say it was: statistics are asked
for again (the same task, built from the same files, so the key holder answers it from its cache
if it already did), uploads continue, and training resumes from its journal
(:mod:`coordinator.checkpoint`) at the last completed iteration once the key holder is back.
A collective job restored in UPLOADING or TRAINING (its setup complete: :mod:`coordinator.
persistence` fails it otherwise) resumes the same way once every roster party's task stream is
back, from the collective journal's step in flight (:func:`coordinator.collective.train`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tenseal as ts

from coordinator.checkpoint import CollectiveFileJournal, FileJournal
from coordinator.collective import (
    CollectiveInputs,
    JournaledRelay,
    KeyGeneration,
    Relay,
    commit_label_terms,
    commit_statistics,
    decrypt_statistics,
    generate_keys,
)
from coordinator.collective import train as train_collective
from coordinator.jobs import Job, ShuttingDown
from coordinator.report import JobReport
from coordinator.training import GradientPool, TrainingInputs, TrainingReport, train
from hefl import messages, sealio
from hefl.algorithm import Hyperparameters
from hefl.codec import PackingLayout
from hefl.errors import FailedPrecondition
from hefl.protocols.collective.step import stats_protocol
from hefl.protocols.refresh import Recipient
from hefl.protocols.stats import StatsProtocol, StatsRequest, StatsShare, summary_from_proto
from hefl.v1 import hefl_pb2 as pb

log = logging.getLogger("hefl.driver")

PoolFactory = Callable[[bytes, str, str, PackingLayout, int], GradientPool]
# Made when a job starts training; hears the number of each iteration completed (metrics).
IterationTimerFactory = Callable[[], Callable[[int], None]]


@dataclass(frozen=True)
class Deadlines:
    """How long a job waits for what the coordinator does not control.

    Attributes:
        key_holder_s: For each answer of the key holder, and for the key holder to come back
            after a coordinator restart. Its secret key exists nowhere else: past this, the
            job cannot go on.

    The parties' uploads have their deadline among the coordinator's limits
    (:attr:`coordinator.limits.Limits.upload_timeout_s`), which the job enforces itself.
    """

    key_holder_s: float = 600.0


class DeadlinePassed(FailedPrecondition):
    """Something the job waits for did not happen in time; the message names it."""


class JobDriver:
    """Drives one job.

    Args:
        job: The job.
        pool_factory: Makes the job's Ray workers.
        restored: The job comes from disk after a restart: its parties may never come back, so
            take Ray resources only once they do (the key holder is connected).
        deadlines: How long to wait for the key holder and the uploads.
        iteration_timer: Makes what hears of each completed iteration, if anything should.
    """

    def __init__(
        self,
        job: Job,
        pool_factory: PoolFactory,
        *,
        restored: bool = False,
        deadlines: Deadlines = Deadlines(),
        iteration_timer: IterationTimerFactory | None = None,
    ) -> None:
        self._job = job
        self._pool_factory = pool_factory
        self._restored = restored
        self._deadlines = deadlines
        self._iteration_timer = iteration_timer
        self._journal = FileJournal(job.store.root / "training")

    def run(self, stop: threading.Event) -> None:
        job = self._job
        pool: GradientPool | None = None
        try:
            if job.collective:
                pools: list[GradientPool] = []
                try:
                    self._run_collective(stop, pools)
                finally:
                    for started in pools:
                        started.shutdown()
                return
            if job.phase in (pb.WAITING_FOR_PARTIES, pb.COLLECTING_STATS):
                job.wait_for(job.all_stats_in, stop)
                self._publish_standardization()
            if job.phase == pb.UPLOADING:
                if not self._restored:
                    # Start the workers while parties encrypt and upload: it takes seconds.
                    pool = self._make_pool()
                # The job itself fails past its upload deadline (Limits.upload_timeout_s).
                job.wait_for(job.all_uploads_in, stop)
                job.set_phase(pb.TRAINING)
            if job.phase == pb.TRAINING:
                if self._restored:
                    self._show_resumed_iteration()
                self._wait(
                    lambda: job.link.connected,
                    stop,
                    timeout_s=self._deadlines.key_holder_s,
                    missing=lambda: f"the key holder {job.key_holder!r} did not connect",
                )
                pool = pool or self._make_pool()
                self._train(pool)
        except ShuttingDown:
            log.info(
                "job %s paused for shutdown; it resumes when the coordinator restarts", job.job_id
            )
        except Exception as err:  # a job's failure must not take the coordinator down
            log.exception("job %s failed", job.job_id)
            job.set_phase(pb.FAILED, f"{type(err).__name__}: {err}")
        finally:
            if pool is not None:
                pool.shutdown()

    # ----- collective (n-of-n) mode: coordinator.collective -----------------------------------

    def _run_collective(self, stop: threading.Event, pools: list[GradientPool]) -> None:
        """Keys among the roster, statistics toward the parties, uploads, training; the pool it
        starts goes to ``pools``, for the caller to release. A job restored during its setup
        resumes the setup from its journal; one restored after it waits for its uploads and
        every roster party's task stream, then trains, resuming from the collective journal."""
        job = self._job
        deadline = self._deadlines.key_holder_s
        relay = Relay(job.links, timeout_s=deadline)
        journal = CollectiveFileJournal(job.store.collective_path())
        if job.phase in (pb.WAITING_FOR_PARTIES, pb.COLLECTING_STATS):
            keys, curvature = self._collective_setup(stop, relay, journal)
        else:  # restored: the setup was done before the restart
            assert job.collective_keys is not None and job.standardization is not None
            keys, curvature = job.collective_keys, job.standardization.curvature
            journal.setup().remove()  # left if the restart came right after the setup
        if self._restored:
            checkpoint = journal.load()
            if checkpoint is not None:
                job.set_iteration(checkpoint.done)
            self._wait_for_task_streams(stop)
        hyper = messages.hyperparameters_of(job.options)  # as published to the parties
        layout = job.layout
        assert layout is not None
        pool = self._make_pool()
        pools.append(pool)
        if job.phase == pb.UPLOADING:
            job.wait_for(job.all_uploads_in, stop)
            job.set_phase(pb.TRAINING)
        started = time.perf_counter()
        pool.load()
        load_s = time.perf_counter() - started
        report = train_collective(
            CollectiveInputs(
                job=keys.job,
                context=job.context,
                params=job.params,
                hyper=hyper,
                rows=layout.total_rows,
                columns=hyper.outputs * job.columns,
                label_terms={
                    name: job.store.label_term_path(name).read_bytes() for name in job.parties
                },
                label_term_signatures={
                    name: job.store.label_term_signature_path(name).read_bytes()
                    for name in job.parties
                },
                hellos=tuple(p.hello for p in job.parties.values()),
            ),
            pool=pool,
            relay=relay,
            journal=journal,
            on_iteration=self._on_iteration(job),
        )
        self._finish(
            [],
            pool,
            report,
            load_s=load_s,
            hyper=hyper,
            reveal_intermediate=False,
            curvature=curvature,
            keys=keys,
        )
        # The parties hold the model: nothing will resume from the journal any more.
        journal.remove()
        resumed = (
            "" if report.resumed_at is None else f" (resumed at iteration {report.resumed_at})"
        )
        log.info(
            "collective job %s done in %.1f s of training%s", job.job_id, report.train_s, resumed
        )

    def _collective_setup(
        self, stop: threading.Event, relay: Relay, journal: CollectiveFileJournal
    ) -> tuple[KeyGeneration, float]:
        """Keys among the roster (kept in ``journal``'s record), statistics decrypted toward the
        parties, label terms committed; the row count and the curvature published and uploads
        opened. Returns the keys and the curvature.

        Raises:
            FailedPrecondition: The statistics count other rows than the parties declare.
        """
        job = self._job
        job.wait_for(lambda: len(job.parties) == job.expected_parties, stop)
        self._wait_for_task_streams(stop)
        # Every step written ahead: a coordinator restarted during the setup replays the
        # steps answered and sends the one in flight again (JournaledRelay).
        setup = journal.setup()
        relay = JournaledRelay(
            relay.links, timeout_s=relay.timeout_s, pool=relay.pool, journal=setup
        )
        if relay.resuming:
            log.info("job %s: resuming the collective setup after a restart", job.job_id)
        keys = generate_keys(
            relay, job_id=job.job_id, params=job.params, on_context=job.set_context
        )
        if job.collective_keys is None:
            journal.save_keys(keys)
            job.collective_keys = keys
        else:  # restored with the keys made: keep their record (cost, signatures)
            keys = job.collective_keys
        commit_statistics(relay, keys)
        job.wait_for(job.all_stats_in, stop)
        protocol = stats_protocol(len(job.features), job.params)
        stats = [
            pb.SubmitStatsRequest(
                job_id=job.job_id,
                party=party.name,
                rows=party.rows,
                signature=job.store.stats_signature_path(party.name).read_bytes(),
                ciphertexts=[
                    job.store.stats_path(party.name, piece).read_bytes()
                    for piece in range(len(protocol.piece_sizes))
                ],
            )
            for party in job.parties.values()
        ]
        hellos = [p.hello for p in job.parties.values()]
        count, curvature = decrypt_statistics(relay, stats=stats, hellos=hellos)
        commit_label_terms(relay)
        declared = sum(party.rows for party in job.parties.values())
        if count != declared:
            raise FailedPrecondition(
                f"the parties declare {declared} rows but their statistics count {count}"
            )
        hyper = messages.resolve_hyperparameters(job.options, curvature=curvature, rows=count)
        layout = PackingLayout.assign(
            slots=job.params.slots, party_rows=[(p.name, p.rows) for p in job.parties.values()]
        )
        # The coordinator learns the row count and the curvature (the step size); the means
        # and deviations stay with the parties.
        job.publish(
            standardization=pb.Standardization(count=count, curvature=curvature),
            options=messages.training_options(hyper, reveal_intermediate=False),
            layout=layout,
        )
        setup.remove()  # uploads are open: a restart from here resumes without the setup
        return keys, curvature

    def _wait_for_task_streams(self, stop: threading.Event) -> None:
        """Every roster party's task stream open (after a restart: every party back).

        Raises:
            DeadlinePassed: Some did not open theirs within the parties' deadline.
            ShuttingDown: The coordinator stops meanwhile.
        """
        job = self._job
        self._wait(
            lambda: all(link.connected for link in job.links.values()),
            stop,
            timeout_s=self._deadlines.key_holder_s,
            missing=lambda: (
                "the roster parties "
                + ", ".join(repr(n) for n, link in job.links.items() if not link.connected)
                + " did not open their task streams"
            ),
        )

    def _show_resumed_iteration(self) -> None:
        """Statuses say where training will resume while the job waits for its key holder.

        Raises:
            JournalDamaged: The journal cannot be read back: the job cannot resume.
        """
        checkpoint = self._journal.load()
        if checkpoint is not None:
            self._job.set_iteration(checkpoint.done)

    def _wait(
        self,
        predicate: Callable[[], bool],
        stop: threading.Event,
        *,
        timeout_s: float,
        missing: Callable[[], str],
    ) -> None:
        """Wait for ``predicate`` at most ``timeout_s``.

        Raises:
            DeadlinePassed: It did not turn true in time; ``missing()`` says what is missing.
            ShuttingDown: The coordinator stops meanwhile.
        """
        deadline = time.monotonic() + timeout_s
        # Job.wait_for re-checks at least every 0.5 s, so the deadline is seen in time.
        self._job.wait_for(lambda: predicate() or time.monotonic() >= deadline, stop)
        if not predicate():
            raise DeadlinePassed(f"{missing()} within {timeout_s:.0f} s")

    def _sum(self, paths: list[Path], what: str) -> ts.CKKSVector:
        return sealio.add_vectors(self._job.context, (p.read_bytes() for p in paths), what=what)

    def _publish_standardization(self) -> None:
        job = self._job
        protocol = StatsProtocol(features=len(job.features), slots=job.params.slots)
        shares = [
            StatsShare(
                pieces=tuple(
                    job.store.stats_path(party.name, piece).read_bytes()
                    for piece in range(len(protocol.piece_sizes))
                ),
                rows=party.rows,
                signature=job.store.stats_signature_path(party.name).read_bytes(),
            )
            for party in job.parties.values()
        ]
        request = StatsRequest(
            job_id=job.job_id,
            features=protocol.features,
            shares=tuple(zip(job.parties, shares, strict=True)),
        )
        result = job.link.call(
            pb.KeyHolderTask(decrypt_stats=request.to_proto()),
            timeout_s=self._deadlines.key_holder_s,
        )
        stats = protocol.accept_summary(
            summary_from_proto(result.values, features=protocol.features), shares
        )
        hyper = messages.resolve_hyperparameters(
            job.options, curvature=stats.curvature, rows=stats.count
        )
        layout = PackingLayout.assign(
            slots=job.params.slots, party_rows=[(p.name, p.rows) for p in job.parties.values()]
        )
        job.publish(
            standardization=pb.Standardization(
                count=stats.count, mean=stats.mean, std=stats.std, curvature=stats.curvature
            ),
            options=messages.training_options(
                hyper, reveal_intermediate=job.options.reveal_intermediate
            ),
            layout=layout,
        )
        log.info(
            "job %s: %s model, %d rows, %d blocks, curvature %.1f, step %.3g, %d iterations",
            job.job_id,
            hyper.model,
            stats.count,
            layout.n_blocks,
            stats.curvature,
            hyper.learning_rate,
            hyper.iterations,
        )

    def _on_iteration(self, job: Job) -> Callable[[int], None]:
        """What hears of each completed iteration, in either trust mode: the job's status, and
        the operator's iteration timer (metrics) if one is set."""
        timer = self._iteration_timer() if self._iteration_timer else None

        def on_iteration(done: int) -> None:
            job.set_iteration(done)
            if timer is not None:
                timer(done)

        return on_iteration

    def _make_pool(self) -> GradientPool:
        job = self._job
        assert job.layout is not None
        return self._pool_factory(
            job.context_bytes, job.params.name, str(job.store.root), job.layout, job.columns
        )

    def _train(self, pool: GradientPool) -> None:
        job = self._job
        assert job.layout is not None and job.standardization is not None
        label_term = self._sum([job.store.label_term_path(n) for n in job.parties], "label term")
        started = time.perf_counter()
        pool.load()
        load_s = time.perf_counter() - started
        options = job.options  # resolved when the standardization was published
        hyper = messages.hyperparameters_of(options)
        sealed, report = train(
            TrainingInputs(
                context=job.context,
                params=job.params,
                hyper=hyper,
                rows=job.layout.total_rows,
                columns=hyper.outputs * job.columns,
                label_term=label_term,
                recipients=tuple(Recipient.from_hello(p.hello) for p in job.parties.values()),
                reveal_intermediate=options.reveal_intermediate,
            ),
            pool=pool,
            link=job.link,
            journal=self._journal,
            on_iteration=self._on_iteration(job),
            key_holder_timeout_s=self._deadlines.key_holder_s,
        )
        self._finish(
            sealed,
            pool,
            report,
            load_s=load_s,
            hyper=hyper,
            reveal_intermediate=options.reveal_intermediate,
            curvature=job.standardization.curvature,
        )
        # The models are stored: nothing will resume from the journal any more.
        self._journal.remove()
        resumed = (
            "" if report.resumed_at is None else f" (resumed at iteration {report.resumed_at})"
        )
        log.info("job %s done in %.1f s of training%s", job.job_id, report.train_s, resumed)

    def _finish(
        self,
        sealed_models: list[pb.SealedModel],
        pool: GradientPool,
        training: TrainingReport,
        *,
        load_s: float,
        hyper: Hyperparameters,
        reveal_intermediate: bool,
        curvature: float,
        keys: KeyGeneration | None = None,
    ) -> None:
        """Store the job's models and its report, in either trust mode (collective: ``keys``,
        whose cost the report adds)."""
        job = self._job
        assert job.layout is not None
        job.finish(
            sealed_models,
            JobReport(
                job_id=job.job_id,
                workers=pool.size,
                blocks=job.layout.n_blocks,
                iterations=training.iterations,
                load_s=load_s,
                train_s=training.train_s,
                gradient_s=training.gradient_s,
                refresh_s=training.refresh_s,
                iteration_s=tuple(training.iteration_s),
                upload_bytes=sum(p.upload_bytes for p in job.parties.values()),
                key_holder_bytes_per_iteration=training.refresh_bytes_per_iteration,
                worker_bytes_per_iteration=training.worker_bytes_per_iteration,
                worker_peak_rss_mb=tuple(pool.peak_rss_mb()),
                hyperparameters=hyper,
                reveal_intermediate=reveal_intermediate,
                curvature=curvature,
                trust="key-holder" if keys is None else "collective",
                keygen_s=0.0 if keys is None else keys.seconds,
                keygen_bytes_per_party=0 if keys is None else max(keys.bytes_per_party.values()),
            ),
        )
