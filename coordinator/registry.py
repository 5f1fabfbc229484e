"""All jobs of one coordinator process, restored from the work directory at start.

The registry admits a job within the coordinator's limits (:class:`coordinator.limits.Limits`:
features, parties, iterations, the context's size, open jobs per site and in total).
"""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path

from coordinator.driver import Deadlines, IterationTimerFactory, JobDriver, PoolFactory
from coordinator.jobs import Job
from coordinator.limits import Limits, context_bytes_cap
from coordinator.persistence import restore_job
from coordinator.store import JobStore, atomic_write, check_name, job_roots
from hefl.charter import context_digest, key_holder_entry, verify_charter
from hefl.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ProtocolError,
    ResourceExhausted,
)
from hefl.identity import Peer, same_bytes
from hefl.params import DEFAULT_PARAMETER_SET, get_parameter_set
from hefl.v1 import hefl_pb2 as pb

log = logging.getLogger("hefl.registry")


class Registry:
    """The jobs, each driven on its own thread.

    Args:
        workdir: Where the job directories are; the jobs found there are restored (a job whose
            directory does not verify is kept FAILED with the reason).
        pool_factory: Makes a job's workers.
        limits: What the coordinator accepts; the defaults when None.
        deadlines: How long a job waits for its key holder and its uploads.
        iteration_timer: Hears of every job's iterations (the metrics' histogram).
    """

    def __init__(
        self,
        workdir: Path,
        pool_factory: PoolFactory,
        *,
        limits: Limits | None = None,
        deadlines: Deadlines | None = None,
        iteration_timer: IterationTimerFactory | None = None,
    ) -> None:
        self._workdir = workdir
        self._iteration_timer = iteration_timer
        self._pool_factory = pool_factory
        self.limits = limits or Limits()
        self._deadlines = deadlines or Deadlines()
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        for root in job_roots(workdir):
            job = restore_job(root, limits=self.limits)
            self._jobs[job.job_id] = job
            log.info("restored job %s in phase %s", job.job_id, pb.Phase.Name(job.phase))
            if not job.is_over:
                self._start(job, restored=True)

    def _start(self, job: Job, *, restored: bool = False) -> None:
        thread = threading.Thread(
            target=JobDriver(
                job,
                self._pool_factory,
                restored=restored,
                deadlines=self._deadlines,
                iteration_timer=self._iteration_timer,
            ).run,
            args=(self._stop,),
            name=f"job-{job.job_id}",
            daemon=True,
        )
        thread.start()
        self._threads.append(thread)

    def create(self, spec: pb.JobSpec, context_bytes: bytes, *, creator: Peer | None) -> Job:
        """Register a new job from the key holder's spec and public context.

        Args:
            spec: The job spec; over TLS it must carry the charter its creator signed.
            context_bytes: The public context.
            creator: The authenticated caller; None on a plaintext (``--insecure``) server.

        Raises:
            InvalidArgument: Bad names, features, party count, parameter set or context.
            PermissionDenied: The context carries a secret key; over TLS, the creator is not the
                charter's key holder (by name and certificate) or did not sign it, or the
                context is not the one the charter names.
            AlreadyExists: The job id is taken.
            ResourceExhausted: Over a limit: features, parties, iterations, the context's size,
                the creator's open jobs or the coordinator's.
        """
        charter: pb.Charter | None = None
        if creator is not None:
            charter = check_charter(spec, context_bytes, creator)
            job_id, expected = charter.job_id, len(charter.roster)
            parameter_set, options = charter.parameter_set, charter.options
        else:
            job_id = spec.job_id or f"job-{uuid.uuid4().hex[:8]}"
            expected, parameter_set, options = (
                spec.expected_parties,
                spec.parameter_set,
                spec.options,
            )
        job_id = check_name("job", job_id)
        key_holder = check_name("party", spec.key_holder.name)
        features = list(spec.key_holder.features)
        if not features:
            raise InvalidArgument("the job needs at least one feature column")
        if len(set(features)) != len(features):
            raise InvalidArgument(f"duplicate feature names in {features}")
        if expected < 1:
            raise InvalidArgument("expected_parties must be at least 1")
        params = get_parameter_set(parameter_set or DEFAULT_PARAMETER_SET)
        if len(features) + 1 > params.slots:
            # The label term and the key holder's refresh hold one value per column in one
            # ciphertext (statistics stream in as many as they need).
            raise InvalidArgument(
                f"{len(features)} features and the bias do not fit the {params.slots} slots "
                f"of {params.name}"
            )
        self._check_size(job_id, features=len(features), parties=expected, options=options)
        cap = context_bytes_cap(params)
        if len(context_bytes) > cap:
            raise ResourceExhausted(context_too_large(len(context_bytes), cap, params.name))
        collective = charter is not None and charter.trust == pb.COLLECTIVE
        if collective and options.reveal_intermediate:
            raise InvalidArgument(
                "a collective job reveals no intermediate models (reveal_intermediate is a "
                "key-holder option)"
            )
        site = creator.name if creator is not None else key_holder
        with self._lock:
            if job_id in self._jobs:
                raise AlreadyExists(f"job {job_id!r} already exists")
            self._check_open_jobs(site)
            store = JobStore(self._workdir / "jobs" / job_id)
            # Checks the context (public, allowed parameters) before anything is written.
            job = Job(
                job_id=job_id,
                store=store,
                params=params,
                context_bytes=None if collective else context_bytes,
                features=features,
                expected_parties=expected,
                options=options,
                key_holder=key_holder,
                charter=charter,
                charter_signature=spec.charter_signature,
                limits=self.limits,
            )
            if not collective:
                atomic_write(store.context_path(), context_bytes)
            if charter is not None:
                atomic_write(
                    store.charter_path(),
                    pb.JobSpec(
                        charter=charter, charter_signature=spec.charter_signature
                    ).SerializeToString(),
                )
            job.join(spec.key_holder)
            self._jobs[job_id] = job
        self._start(job)
        log.info("job %s created by %s for %d parties", job_id, key_holder, expected)
        return job

    def _check_size(
        self, job_id: str, *, features: int, parties: int, options: pb.TrainingOptions
    ) -> None:
        limits = self.limits
        for what, value, limit, name in (
            ("feature columns", features, limits.max_features, "max_features"),
            ("parties", parties, limits.max_parties, "max_parties"),
            ("iterations", options.iterations, limits.max_iterations, "max_iterations"),
        ):
            if value > limit:
                raise ResourceExhausted(
                    f"job {job_id}: {value:,} {what}; this coordinator takes at most "
                    f"{limit:,} ({name})"
                )

    def _check_open_jobs(self, site: str) -> None:
        """Call with ``_lock`` held."""
        limits = self.limits
        open_jobs = [job for job in self._jobs.values() if not job.is_over]
        if len(open_jobs) >= limits.max_open_jobs:
            raise ResourceExhausted(
                f"the coordinator already runs {len(open_jobs)} jobs (max_open_jobs); "
                f"retry when one has finished"
            )
        own = sorted(job.job_id for job in open_jobs if job.key_holder == site)
        if len(own) >= limits.max_open_jobs_per_site:
            raise ResourceExhausted(
                f"{site!r} already has {len(own)} jobs in progress ({', '.join(own)}; "
                f"max_open_jobs_per_site): wait until one is done or has failed"
            )

    def get(self, job_id: str) -> Job:
        with self._lock:
            try:
                return self._jobs[job_id]
            except KeyError:
                raise NotFound(f"no job {job_id!r} on this coordinator") from None

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def jobs_of(self, party: str) -> list[Job]:
        """The jobs ``party`` takes part in or is invited to."""
        return [
            job
            for job in self.jobs()
            if job.is_member(party) or (job.roster is not None and party in job.roster)
        ]

    def shutdown(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)


def check_charter(spec: pb.JobSpec, context_bytes: bytes, creator: Peer) -> pb.Charter:
    """The charter of a job created over TLS, checked against its authenticated creator.

    Raises:
        PermissionDenied: No charter; the creator is not its key holder (name and certificate
            fingerprint) or did not sign it; the context is not the one it names.
    """
    if not spec.HasField("charter"):
        raise PermissionDenied("a job created over TLS needs the key holder's signed charter")
    charter = spec.charter
    if creator.name != charter.key_holder or creator.name != spec.key_holder.name:
        raise PermissionDenied(
            f"{creator.name!r} cannot create a job whose key holder is {charter.key_holder!r}"
        )
    try:
        entry = key_holder_entry(charter)
        verify_charter(charter, spec.charter_signature)
    except ProtocolError as err:
        raise PermissionDenied(str(err)) from err
    if entry.fingerprint != creator.fingerprint:
        raise PermissionDenied(
            f"{creator.name!r} presents a certificate other than its roster entry's"
        )
    if charter.trust == pb.COLLECTIVE:
        # The parties make the keys once they have all joined: no context comes with the job.
        if context_bytes or charter.context_sha256:
            raise PermissionDenied("a collective job is created without a context")
    elif not same_bytes(context_digest(context_bytes), charter.context_sha256):
        raise PermissionDenied("the context is not the one the charter names")
    return charter


def context_too_large(size: int, cap: int, parameter_set: str) -> str:
    return (
        f"a public context of {parameter_set} takes at most {cap:,} bytes (public and "
        f"relinearization keys); this one has {size:,}: send it without Galois keys "
        f"(serialize(save_secret_key=False, save_galois_keys=False))"
    )
