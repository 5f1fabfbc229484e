"""All jobs of one coordinator process, restored from the work directory at start."""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path

from coordinator.driver import JobDriver, PoolFactory
from coordinator.jobs import Job
from coordinator.store import JobStore, atomic_write, check_name, job_roots
from hefl.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from hefl.params import DEFAULT_PARAMETER_SET, get_parameter_set
from hefl.v1 import hefl_pb2 as pb

log = logging.getLogger("hefl.registry")

MAX_CONTEXT_BYTES = 256 * 1024 * 1024


class Registry:
    def __init__(self, workdir: Path, pool_factory: PoolFactory) -> None:
        self._workdir = workdir
        self._pool_factory = pool_factory
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        for root in job_roots(workdir):
            try:
                job = Job.restore(root)
            except Exception:
                log.exception("cannot restore job from %s; leaving it alone", root)
                continue
            self._jobs[job.job_id] = job
            log.info("restored job %s in phase %s", job.job_id, pb.Phase.Name(job.phase))
            if job.phase not in (pb.DONE, pb.FAILED):
                self._start(job, restored=True)

    def _start(self, job: Job, *, restored: bool = False) -> None:
        thread = threading.Thread(
            target=JobDriver(job, self._pool_factory, restored=restored).run,
            args=(self._stop,),
            name=f"job-{job.job_id}",
            daemon=True,
        )
        thread.start()
        self._threads.append(thread)

    def create(self, spec: pb.JobSpec, context_bytes: bytes) -> Job:
        """Register a new job from the key holder's spec and public context.

        Raises:
            InvalidArgument: Bad names, features, party count, parameter set or context.
            PermissionDenied: The context carries a secret key.
            AlreadyExists: The job id is taken.
        """
        job_id = check_name("job", spec.job_id or f"job-{uuid.uuid4().hex[:8]}")
        key_holder = check_name("party", spec.key_holder.name)
        features = list(spec.key_holder.features)
        if not features:
            raise InvalidArgument("the job needs at least one feature column")
        if len(set(features)) != len(features):
            raise InvalidArgument(f"duplicate feature names in {features}")
        if spec.expected_parties < 1:
            raise InvalidArgument("expected_parties must be at least 1")
        params = get_parameter_set(spec.parameter_set or DEFAULT_PARAMETER_SET)
        if 1 + 2 * len(features) > params.slots:
            raise InvalidArgument(
                f"{len(features)} features do not fit the statistics vector of {params.name}"
            )
        if len(context_bytes) > MAX_CONTEXT_BYTES:
            raise InvalidArgument(f"context of {len(context_bytes)} bytes is too large")
        with self._lock:
            if job_id in self._jobs:
                raise AlreadyExists(f"job {job_id!r} already exists")
            store = JobStore(self._workdir / "jobs" / job_id)
            # Checks the context (public, allowed parameters) before anything is written.
            job = Job(
                job_id=job_id,
                store=store,
                params=params,
                context_bytes=context_bytes,
                features=features,
                expected_parties=spec.expected_parties,
                options=spec.options,
                key_holder=key_holder,
            )
            atomic_write(store.context_path(), context_bytes)
            job.join(key_holder, features, spec.key_holder.seal_public_key)
            self._jobs[job_id] = job
        self._start(job)
        log.info("job %s created by %s for %d parties", job_id, key_holder, spec.expected_parties)
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            try:
                return self._jobs[job_id]
            except KeyError:
                raise NotFound(f"no job {job_id!r} on this coordinator") from None

    def resolve(self, job_id: str) -> Job:
        """The named job, or with an empty name the only job still accepting parties."""
        if job_id:
            return self.get(job_id)
        with self._lock:
            open_jobs = [j for j in self._jobs.values() if j.phase == pb.WAITING_FOR_PARTIES]
        if len(open_jobs) != 1:
            raise FailedPrecondition(
                f"{len(open_jobs)} jobs are waiting for parties; name one with --job"
            )
        return open_jobs[0]

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def shutdown(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
