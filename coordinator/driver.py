"""The job driver: the phases that need the key holder and the Ray workers, on one thread per job.

1. When every party has joined and sent statistics: run the coordinator's part of
   :mod:`hefl.protocols.stats` (sum the shares, have the key holder summarize the sum), choose
   the hyperparameters, publish (count, mean, std) and the packing layout; start the Ray
   workers while the parties upload.
2. When every upload is complete: load the shards into the workers, train
   (:func:`coordinator.training.train`), have the key holder seal the model for every party.

Any failure marks the job FAILED with the reason; the coordinator keeps serving other jobs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import tenseal as ts

from coordinator.jobs import Job, ShuttingDown
from coordinator.report import JobReport
from coordinator.training import GradientPool, TrainingInputs, train
from hefl import messages, sealio
from hefl.algorithm import choose_hyperparameters
from hefl.codec import PackingLayout
from hefl.protocols.refresh import Recipient
from hefl.protocols.stats import StatsProtocol, StatsRequest, StatsShare, summary_from_proto
from hefl.v1 import hefl_pb2 as pb

log = logging.getLogger("hefl.driver")

PoolFactory = Callable[[bytes, str, str, PackingLayout, int], GradientPool]
KEY_HOLDER_TIMEOUT_S = 600.0


class JobDriver:
    """Drives one job.

    Args:
        job: The job.
        pool_factory: Makes the job's Ray workers.
        restored: The job comes from disk after a restart: its parties may never come back, so
            take Ray resources only once they do (the key holder is connected).
    """

    def __init__(self, job: Job, pool_factory: PoolFactory, *, restored: bool = False) -> None:
        self._job = job
        self._pool_factory = pool_factory
        self._restored = restored

    def run(self, stop: threading.Event) -> None:
        job = self._job
        pool: GradientPool | None = None
        try:
            if job.phase in (pb.WAITING_FOR_PARTIES, pb.COLLECTING_STATS):
                job.wait_for(job.all_stats_in, stop)
                self._publish_standardization()
            if job.phase == pb.UPLOADING:
                if not self._restored:
                    # Start the workers while parties encrypt and upload: it takes seconds.
                    pool = self._make_pool()
                job.wait_for(job.all_uploads_in, stop)
                job.set_phase(pb.TRAINING)
            if job.phase == pb.TRAINING:
                job.wait_for(lambda: job.link.connected, stop)
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
            timeout_s=KEY_HOLDER_TIMEOUT_S,
        )
        stats = protocol.accept_summary(
            summary_from_proto(result.values, features=protocol.features), shares
        )
        hyper = choose_hyperparameters(
            curvature=stats.curvature,
            iterations=job.options.iterations,
            learning_rate=job.options.learning_rate,
            l2=job.options.l2,
            sigmoid_interval=job.options.sigmoid_interval,
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
            "job %s: %d rows, %d blocks, curvature %.1f, step %.3g",
            job.job_id,
            stats.count,
            layout.n_blocks,
            stats.curvature,
            hyper.learning_rate,
        )

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
        refresh, report = train(
            TrainingInputs(
                context=job.context,
                params=job.params,
                hyper=hyper,
                rows=job.layout.total_rows,
                columns=job.columns,
                label_term=label_term,
                reveal_intermediate=options.reveal_intermediate,
            ),
            pool=pool,
            link=job.link,
            on_iteration=job.set_iteration,
        )
        finalize = refresh.finalize(
            recipients=[Recipient.from_hello(p.hello) for p in job.parties.values()]
        )
        result = job.link.call(
            pb.KeyHolderTask(finalize=finalize.to_proto()), timeout_s=KEY_HOLDER_TIMEOUT_S
        )
        job.finish(
            list(result.sealed.models),
            JobReport(
                job_id=job.job_id,
                workers=pool.size,
                blocks=job.layout.n_blocks,
                iterations=report.iterations,
                load_s=load_s,
                train_s=report.train_s,
                gradient_s=report.gradient_s,
                refresh_s=report.refresh_s,
                iteration_s=tuple(report.iteration_s),
                upload_bytes=sum(p.upload_bytes for p in job.parties.values()),
                key_holder_bytes_per_iteration=report.refresh_bytes_per_iteration,
                worker_bytes_per_iteration=report.worker_bytes_per_iteration,
                worker_peak_rss_mb=tuple(pool.peak_rss_mb()),
                hyperparameters=hyper,
                reveal_intermediate=options.reveal_intermediate,
                curvature=job.standardization.curvature,
            ),
        )
        log.info("job %s done in %.1f s of training", job.job_id, report.train_s)
