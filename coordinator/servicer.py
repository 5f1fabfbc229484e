"""gRPC servicer: proto -> domain call -> proto, domain errors -> status codes.

Every streaming call is counted by a :class:`coordinator.limits.StreamGate` for as long as it
holds its server thread, against the site (the certificate's, or without TLS the name its
request gives) and the job; requests that carry bytes stop being read at their cap
(the context at its parameter set's size, a key-holder answer at what the job's answers take,
uploads at what the job may store).
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from coordinator.jobs import Job
from coordinator.keyholder_link import KeyHolderTimeout
from coordinator.limits import StreamGate, context_bytes_cap, task_answer_bytes_cap
from coordinator.registry import Registry, context_too_large
from hefl import chunks, errors
from hefl.identity import ROLE_PARTY, Peer, peer_of
from hefl.params import DEFAULT_PARAMETER_SET, get_parameter_set
from hefl.protocols.stats import pieces_of
from hefl.v1 import hefl_pb2 as pb
from hefl.v1 import hefl_pb2_grpc as pb_grpc

log = logging.getLogger("hefl.servicer")

STATUS_OF: list[tuple[type[Exception], grpc.StatusCode]] = [
    (KeyHolderTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.Busy, grpc.StatusCode.UNAVAILABLE),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.ProtocolError, grpc.StatusCode.ABORTED),
]

F = TypeVar("F", bound=Callable[..., Any])


def _abort(context: grpc.ServicerContext, err: errors.HeflError) -> None:
    for kind, code in STATUS_OF:
        if isinstance(err, kind):
            log.info("rejected %s: %s", code.name, err)
            context.abort(code, str(err))
    context.abort(grpc.StatusCode.INTERNAL, str(err))


def domain_errors(method: F) -> F:
    """Map :class:`hefl.errors.HeflError` raised by ``method`` to its status code."""

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except errors.HeflError as err:
            _abort(context, err)

    return unary  # type: ignore[return-value]


def streaming_domain_errors(method: F) -> F:
    @functools.wraps(method)
    def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from method(self, request, context)
        except errors.HeflError as err:
            _abort(context, err)

    return stream  # type: ignore[return-value]


# Who may call what; one row per RPC, tested row by row (tests/test_authorization.py).
#   any party:  any site with a party certificate of the project
#   invited:    a site on the job's roster (by name and certificate fingerprint)
#   member:     a party that has joined the job
#   key holder: the party that created the job
# Without TLS (--insecure) nobody is authenticated: each request's names are taken as given.
AUTHORIZATION: dict[str, str] = {
    "CreateJob": "any party",
    "JoinJob": "invited",
    "GetContext": "invited",
    "WatchJob": "member",
    "SubmitStats": "member",
    "Upload": "member",
    # Key-holder mode: the key holder; collective mode: each roster party, for its own tasks.
    "KeyHolderTasks": "task party",
    "CompleteTask": "task party",
    "GetModel": "member",
    "GetReport": "member",
    "ListJobs": "any party",
}


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    """Thin: authenticate and authorize the caller, call the domain, convert the answer.

    Args:
        registry: The jobs.
        authenticated: The server speaks mutual TLS, so every caller has a verified
            certificate; False only for ``--insecure``.
    """

    def __init__(self, registry: Registry, *, authenticated: bool) -> None:
        self._registry = registry
        self._authenticated = authenticated
        self._streams = StreamGate(registry.limits)

    def _site(self, context: Any) -> str | None:
        """Whom a stream counts against before its first request: the certificate's site, or
        nobody yet without TLS (then the name its first request gives)."""
        peer = self._caller(context)
        return None if peer is None else peer.name

    def _caller(self, context: Any) -> Peer | None:
        peer = peer_of(context)
        if self._authenticated:
            if peer is None:
                raise errors.PermissionDenied("no client certificate")
            if peer.role != ROLE_PARTY:
                raise errors.PermissionDenied(f"{peer.name!r} is a {peer.role}, not a party")
        return peer

    def _acting(self, rpc: str, context: Any, job: Job | None, claimed: str) -> str:
        """The party name the caller acts as, once ``rpc`` is allowed for it on ``job``.

        Raises:
            PermissionDenied: The caller claims another party's name, or its role on the job
                does not allow ``rpc`` (see :data:`AUTHORIZATION`).
        """
        peer = self._caller(context)
        if peer is None:
            name = claimed
        elif claimed and claimed != peer.name:
            raise errors.PermissionDenied(
                f"{peer.name!r} is authenticated and cannot act as {claimed!r}"
            )
        else:
            name = peer.name
        rule = AUTHORIZATION[rpc]
        if job is None or rule == "any party" or (peer is None and not name):
            # Without TLS a request that names nobody is anybody's: nothing to check.
            return name
        allowed = {
            "invited": lambda: job.is_invited(name, peer.fingerprint if peer else None),
            "member": lambda: job.is_member(name),
            "task party": lambda: name in job.links if job.collective else name == job.key_holder,
        }[rule]()
        if not allowed:
            who = rule
            if rule == "task party":
                who = "roster parties" if job.collective else "key holder"
            raise errors.PermissionDenied(
                f"{name!r} may not call {rpc} on job {job.job_id}: only the job's {who} may"
            )
        return name

    @domain_errors
    def CreateJob(
        self, request_iterator: Iterator[pb.CreateJobRequest], context: Any
    ) -> pb.JobInfo:
        with self._streams.open("CreateJob", site=self._site(context)) as stream:
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("part") != "spec":
                raise errors.InvalidArgument("CreateJob must start with the job spec")
            # Authorized before a byte of the context is buffered.
            stream.bind(site=self._acting("CreateJob", context, None, first.spec.key_holder.name))
            spec = first.spec
            named = spec.charter.parameter_set if self._authenticated else spec.parameter_set
            params = get_parameter_set(named or DEFAULT_PARAMETER_SET)
            cap = context_bytes_cap(params)
            parts: list[bytes] = []
            size = 0
            for message in request_iterator:
                if message.WhichOneof("part") != "context_chunk":
                    raise errors.InvalidArgument(
                        "CreateJob: only context chunks may follow the spec"
                    )
                size += len(message.context_chunk)
                if size > cap:
                    raise errors.ResourceExhausted(context_too_large(size, cap, params.name))
                parts.append(message.context_chunk)
            job = self._registry.create(spec, b"".join(parts), creator=self._caller(context))
        return _job_info(job)

    @domain_errors
    def JoinJob(self, request: pb.JoinJobRequest, context: Any) -> pb.JobInfo:
        job = self._registry.get(request.job_id)
        self._acting("JoinJob", context, job, request.party.name)
        job.join(request.party)
        return _job_info(job)

    @streaming_domain_errors
    def GetContext(self, request: pb.GetContextRequest, context: Any) -> Iterator[pb.Blob]:
        job = self._registry.get(request.job_id)
        name = self._acting("GetContext", context, job, "")
        with self._streams.open("GetContext", site=name, job=job.job_id):
            data = job.served_context()
            for piece in chunks.split_bytes(data):
                yield pb.Blob(data=piece, total_bytes=len(data))

    @streaming_domain_errors
    def WatchJob(self, request: pb.WatchJobRequest, context: Any) -> Iterator[pb.JobStatus]:
        job = self._registry.get(request.job_id)
        party = self._acting("WatchJob", context, job, request.party)
        with self._streams.open("WatchJob", site=party, job=job.job_id):
            yield from job.watch(context.is_active)

    @domain_errors
    def SubmitStats(self, request_iterator: Iterator[pb.StatsChunk], context: Any) -> pb.Ack:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise errors.InvalidArgument("SubmitStats must start with the header")
        header = first.header
        job = self._registry.get(header.job_id)
        # Authorized before a piece is read.
        party = self._acting("SubmitStats", context, job, header.party)
        job.submit_stats(
            party,
            rows=header.rows,
            signature=header.signature,
            pieces=pieces_of(request_iterator),
        )
        return pb.Ack(message=f"statistics of {party} accepted")

    @domain_errors
    def Upload(self, request_iterator: Iterator[pb.UploadChunk], context: Any) -> pb.UploadSummary:
        summary = pb.UploadSummary()
        with self._streams.open("Upload", site=self._site(context)) as stream:
            first: pb.UploadChunk | None = None
            for seq, chunk in enumerate(request_iterator):
                job = self._registry.get(chunk.job_id)
                party = self._acting("Upload", context, job, chunk.party)
                if first is None:
                    first = chunk
                    stream.bind(site=party, job=job.job_id)
                elif (chunk.job_id, chunk.party) != (first.job_id, first.party):
                    raise errors.InvalidArgument(
                        f"upload chunk {seq} is {chunk.party!r}'s for {chunk.job_id!r}; one "
                        f"upload stream carries {first.party!r}'s chunks for {first.job_id!r}"
                    )
                job.check_upload_room(chunk.party, chunk.ByteSize())
                summary.bytes_accepted += job.accept_upload(chunk, seq)
                summary.columns_accepted += len(chunk.columns)
                summary.complete = chunk.last
        return summary

    @streaming_domain_errors
    def KeyHolderTasks(
        self, request: pb.KeyHolderTasksRequest, context: Any
    ) -> Iterator[pb.TaskChunk]:
        job = self._registry.get(request.job_id)
        party = self._acting("KeyHolderTasks", context, job, request.party)
        with self._streams.open("KeyHolderTasks", site=party, job=job.job_id):
            for task_id, payload in job.link_for(party).stream(context.is_active):
                yield from chunks.task_chunks(
                    job_id=job.job_id, party=party, task_id=task_id, payload=payload
                )

    @domain_errors
    def CompleteTask(self, request_iterator: Iterator[pb.TaskChunk], context: Any) -> pb.Ack:
        with self._streams.open("CompleteTask", site=self._site(context)) as stream:
            first = next(request_iterator, None)
            if first is None:
                raise errors.InvalidArgument("CompleteTask carries no chunk")
            job = self._registry.get(first.job_id)
            # Authorized before the rest of the answer is read.
            acting = self._acting("CompleteTask", context, job, first.party)
            stream.bind(site=acting, job=job.job_id)
            cap = task_answer_bytes_cap(
                job.params,
                columns=job.outputs * job.columns,
                parties=job.expected_parties,
                iterations=job.options.iterations or self._registry.limits.max_iterations,
            )
            header, payload = chunks.join_task_chunks(
                _capped(itertools.chain([first], request_iterator), cap, job.job_id)
            )
        if header.job_id != job.job_id:
            raise errors.InvalidArgument("CompleteTask chunks name different jobs")
        job.link_for(acting).complete(header.task_id, payload)
        return pb.Ack(message=f"task {header.task_id} done")

    @domain_errors
    def GetModel(self, request: pb.GetModelRequest, context: Any) -> pb.SealedModel:
        job = self._registry.get(request.job_id)
        party = self._acting("GetModel", context, job, request.party)
        return job.sealed_model(party)

    @domain_errors
    def ListJobs(self, request: pb.ListJobsRequest, context: Any) -> pb.ListJobsResponse:
        peer = self._caller(context)
        jobs = self._registry.jobs() if peer is None else self._registry.jobs_of(peer.name)
        return pb.ListJobsResponse(jobs=[job.status() for job in jobs])

    @domain_errors
    def GetReport(self, request: pb.GetReportRequest, context: Any) -> pb.JobReport:
        job = self._registry.get(request.job_id)
        self._acting("GetReport", context, job, "")
        return job.finished_report().to_message()


def _capped(task_chunks: Iterator[pb.TaskChunk], cap: int, job_id: str) -> Iterator[pb.TaskChunk]:
    """The chunks of one key-holder answer, refused once they exceed ``cap`` bytes."""
    size = 0
    for chunk in task_chunks:
        size += len(chunk.data)
        if size > cap:
            raise errors.ResourceExhausted(
                f"job {job_id}: a key-holder answer of more than {cap:,} bytes, more than any "
                f"answer of this job takes"
            )
        yield chunk


def _job_info(job: Job) -> pb.JobInfo:
    return pb.JobInfo(
        job_id=job.job_id,
        features=job.features,
        expected_parties=job.expected_parties,
        parameter_set=job.params.name,
        options=job.options,
        context_bytes=len(job.context_bytes),
        charter=job.charter,
        charter_signature=job.charter_signature,
    )
