"""gRPC servicer: proto -> domain call -> proto, domain errors -> status codes."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from coordinator.jobs import Job
from coordinator.keyholder_link import KeyHolderTimeout
from coordinator.registry import MAX_CONTEXT_BYTES, Registry
from hefl import chunks, errors
from hefl.protocols.stats import StatsShare
from hefl.v1 import hefl_pb2 as pb
from hefl.v1 import hefl_pb2_grpc as pb_grpc

log = logging.getLogger("hefl.servicer")

STATUS_OF: list[tuple[type[Exception], grpc.StatusCode]] = [
    (KeyHolderTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
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


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    @domain_errors
    def CreateJob(
        self, request_iterator: Iterator[pb.CreateJobRequest], context: Any
    ) -> pb.JobInfo:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "spec":
            raise errors.InvalidArgument("CreateJob must start with the job spec")
        parts: list[bytes] = []
        size = 0
        for message in request_iterator:
            if message.WhichOneof("part") != "context_chunk":
                raise errors.InvalidArgument("CreateJob: only context chunks may follow the spec")
            size += len(message.context_chunk)
            if size > MAX_CONTEXT_BYTES:
                raise errors.InvalidArgument(f"context exceeds {MAX_CONTEXT_BYTES} bytes")
            parts.append(message.context_chunk)
        job = self._registry.create(first.spec, b"".join(parts))
        return _job_info(job)

    @domain_errors
    def JoinJob(self, request: pb.JoinJobRequest, context: Any) -> pb.JobInfo:
        job = self._registry.resolve(request.job_id)
        job.join(request.party.name, list(request.party.features), request.party.seal_public_key)
        return _job_info(job)

    @streaming_domain_errors
    def GetContext(self, request: pb.GetContextRequest, context: Any) -> Iterator[pb.Blob]:
        data = self._registry.get(request.job_id).context_bytes
        for piece in chunks.split_bytes(data):
            yield pb.Blob(data=piece, total_bytes=len(data))

    @streaming_domain_errors
    def WatchJob(self, request: pb.WatchJobRequest, context: Any) -> Iterator[pb.JobStatus]:
        yield from self._registry.get(request.job_id).watch(context.is_active)

    @domain_errors
    def SubmitStats(self, request: pb.SubmitStatsRequest, context: Any) -> pb.Ack:
        job = self._registry.get(request.job_id)
        job.submit_stats(request.party, StatsShare.from_proto(request))
        return pb.Ack(message=f"statistics of {request.party} accepted")

    @domain_errors
    def Upload(self, request_iterator: Iterator[pb.UploadChunk], context: Any) -> pb.UploadSummary:
        summary = pb.UploadSummary()
        for seq, chunk in enumerate(request_iterator):
            job = self._registry.get(chunk.job_id)
            summary.bytes_accepted += job.accept_upload(chunk, seq)
            summary.columns_accepted += len(chunk.columns)
            summary.complete = chunk.last
        return summary

    @streaming_domain_errors
    def KeyHolderTasks(
        self, request: pb.KeyHolderTasksRequest, context: Any
    ) -> Iterator[pb.TaskChunk]:
        job = self._registry.get(request.job_id)
        if request.party != job.key_holder:
            raise errors.PermissionDenied(
                f"party {request.party!r} is not the key holder of job {job.job_id}"
            )
        for task_id, payload in job.link.stream(context.is_active):
            yield from chunks.task_chunks(
                job_id=job.job_id, party=request.party, task_id=task_id, payload=payload
            )

    @domain_errors
    def CompleteTask(self, request_iterator: Iterator[pb.TaskChunk], context: Any) -> pb.Ack:
        header, payload = chunks.join_task_chunks(request_iterator)
        job = self._registry.get(header.job_id)
        if header.party != job.key_holder:
            raise errors.PermissionDenied(
                f"party {header.party!r} is not the key holder of job {job.job_id}"
            )
        job.link.complete(header.task_id, payload)
        return pb.Ack(message=f"task {header.task_id} done")

    @domain_errors
    def GetModel(self, request: pb.GetModelRequest, context: Any) -> pb.SealedModel:
        return self._registry.get(request.job_id).sealed_model(request.party)

    @domain_errors
    def ListJobs(self, request: pb.ListJobsRequest, context: Any) -> pb.ListJobsResponse:
        return pb.ListJobsResponse(jobs=[job.status() for job in self._registry.jobs()])


def _job_info(job: Job) -> pb.JobInfo:
    return pb.JobInfo(
        job_id=job.job_id,
        features=job.features,
        expected_parties=job.expected_parties,
        parameter_set=job.params.name,
        options=job.options,
        context_bytes=len(job.context_bytes),
    )
