"""How a party rides out a lost coordinator, without a network: which failures it retries, when
it gives up, and a watch that carries on across broken streams. The stub here stands for the
network (the real one is exercised in tests/test_faults.py); the logic under test is hefl's."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import grpc
import pytest

from hefl.v1 import hefl_pb2 as pb
from parties.client import Party
from parties.reconnect import CoordinatorLost, Outage, Reconnect, is_transient, watch

NO_PAUSE = Reconnect(give_up_s=60.0, first_s=0.0, max_s=0.0)


class Status(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


class Coordinator:
    """A WatchJob that breaks (or refuses) as scripted: each entry is one call's statuses and
    how that call ends (None: the stream closes normally)."""

    def __init__(self, script: list[tuple[list[pb.Phase], grpc.StatusCode | None]]) -> None:
        self._script = list(script)
        self.calls = 0
        self.streams: list[Stream] = []

    def WatchJob(self, request: pb.WatchJobRequest) -> Stream:
        self.calls += 1
        phases, end = self._script.pop(0)
        self.streams.append(Stream(request.job_id, phases, end))
        return self.streams[-1]


class Stream:
    """One WatchJob call: its statuses, then its end; the watcher cancels it when done."""

    def __init__(self, job_id: str, phases: list[pb.Phase], end: grpc.StatusCode | None) -> None:
        self._statuses = iter([pb.JobStatus(job_id=job_id, phase=p) for p in phases])
        self._end = end
        self.cancelled = False

    def __iter__(self) -> Iterator[pb.JobStatus]:
        return self

    def __next__(self) -> pb.JobStatus:
        status = next(self._statuses, None)
        if status is not None:
            return status
        if self._end is not None:
            raise Status(self._end)
        raise StopIteration

    def cancel(self) -> None:
        self.cancelled = True


def _phases(stub: Coordinator, policy: Reconnect = NO_PAUSE) -> list[pb.Phase]:
    request = pb.WatchJobRequest(job_id="job-1", party="h2")
    return [s.phase for s in watch(stub, request, policy)]  # type: ignore[arg-type]


def test_the_watch_carries_on_across_broken_streams_and_restarts():
    stub = Coordinator(
        [
            ([pb.UPLOADING, pb.TRAINING], grpc.StatusCode.UNAVAILABLE),  # the coordinator dies
            ([], grpc.StatusCode.UNAVAILABLE),  # not back yet
            ([pb.TRAINING], None),  # back, then it shuts down gracefully
            ([pb.TRAINING, pb.DONE], None),
        ]
    )
    assert _phases(stub) == [pb.UPLOADING, pb.TRAINING, pb.TRAINING, pb.TRAINING, pb.DONE]
    assert stub.calls == 4
    assert all(stream.cancelled for stream in stub.streams)


def test_a_watcher_that_stops_reading_ends_its_stream():
    stub = Coordinator([([pb.UPLOADING, pb.TRAINING], None)])
    statuses = watch(stub, pb.WatchJobRequest(job_id="job-1"), NO_PAUSE)  # type: ignore[arg-type]
    assert next(statuses).phase == pb.UPLOADING
    statuses.close()
    assert stub.streams[0].cancelled


def test_an_answer_of_the_coordinator_is_not_retried():
    stub = Coordinator([([], grpc.StatusCode.PERMISSION_DENIED)])
    with pytest.raises(grpc.RpcError) as info:
        _phases(stub)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert stub.calls == 1


def test_the_party_gives_up_after_its_bound_without_an_answer():
    stub = Coordinator([([], grpc.StatusCode.UNAVAILABLE)] * 3)
    with pytest.raises(CoordinatorLost, match="watching job job-1: no answer .* for 0 s"):
        _phases(stub, Reconnect(give_up_s=0.0, first_s=0.0, max_s=0.0))


def test_an_answer_starts_the_bound_again():
    outage = Outage(Reconnect(give_up_s=0.0, first_s=0.0, max_s=0.0), "test")
    outage.failed("UNAVAILABLE")
    outage.ok()
    outage.failed("UNAVAILABLE")  # a new outage, not the first one's continuation
    assert outage.count == 2
    with pytest.raises(CoordinatorLost):
        outage.failed("UNAVAILABLE")


@pytest.mark.parametrize(
    ("code", "transient"),
    [
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.CANCELLED, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, True),
        (grpc.StatusCode.NOT_FOUND, False),
        (grpc.StatusCode.FAILED_PRECONDITION, False),
        (grpc.StatusCode.ALREADY_EXISTS, False),
    ],
)
def test_only_connection_failures_are_transient(code, transient):
    assert is_transient(Status(code)) is transient


class StatsCoordinator:
    """A SubmitStats that fails as scripted (None: it takes the share)."""

    def __init__(self, script: list[grpc.StatusCode | None]) -> None:
        self._script = list(script)
        self.calls = 0

    def SubmitStats(self, chunks: Iterator[pb.StatsChunk], timeout: float) -> None:
        self.calls += 1
        list(chunks)
        code = self._script.pop(0)
        if code is not None:
            raise Status(code)


def _send_stats(coordinator: StatsCoordinator) -> SimpleNamespace:
    party = SimpleNamespace(
        stub=coordinator, reconnect=NO_PAUSE, result=SimpleNamespace(reconnects=0)
    )
    Party._send_stats(party, "job", lambda: iter([pb.StatsChunk()]))  # type: ignore[arg-type]
    return party


def test_statistics_are_sent_again_across_a_restart():
    coordinator = StatsCoordinator([grpc.StatusCode.UNAVAILABLE, None])

    party = _send_stats(coordinator)

    assert coordinator.calls == 2 and party.result.reconnects == 1


@pytest.mark.parametrize(
    "landed", [grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION]
)
def test_statistics_that_got_in_before_the_connection_broke_count_as_sent(landed):
    """After a broken attempt: ALREADY_EXISTS (the coordinator kept that attempt's share) or
    FAILED_PRECONDITION (the job is past statistics: every party's are in, or it failed)."""
    coordinator = StatsCoordinator([grpc.StatusCode.UNAVAILABLE, landed])

    _send_stats(coordinator)

    assert coordinator.calls == 2


def test_statistics_still_being_read_from_a_broken_attempt_are_sent_again_later():
    """UNAVAILABLE while the coordinator still reads the broken stream (it may not get in)."""
    coordinator = StatsCoordinator(
        [grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE, None]
    )

    _send_stats(coordinator)

    assert coordinator.calls == 3


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
    ],
)
def test_a_refusal_of_the_statistics_is_not_retried(code):
    coordinator = StatsCoordinator([code])

    with pytest.raises(grpc.RpcError) as refused:
        _send_stats(coordinator)

    assert refused.value.code() == code and coordinator.calls == 1


class UploadCoordinator:
    """An Upload that fails as scripted (None: it takes the upload)."""

    def __init__(self, script: list[grpc.StatusCode | None]) -> None:
        self._script = list(script)
        self.calls = 0

    def Upload(self, chunks: Iterator[pb.UploadChunk]) -> pb.UploadSummary:
        self.calls += 1
        sent = list(chunks)
        code = self._script.pop(0)
        if code is not None:
            raise Status(code)
        return pb.UploadSummary(bytes_accepted=len(sent), complete=True)


def _send_upload(coordinator: UploadCoordinator) -> pb.UploadSummary:
    party = SimpleNamespace(
        stub=coordinator, reconnect=NO_PAUSE, result=SimpleNamespace(reconnects=0)
    )
    upload = SimpleNamespace(chunks=lambda: iter([pb.UploadChunk(), pb.UploadChunk(last=True)]))
    return Party._send_upload(party, "job", upload)  # type: ignore[arg-type]


def test_an_upload_broken_by_a_restart_is_sent_again_whole():
    coordinator = UploadCoordinator([grpc.StatusCode.UNAVAILABLE, None])

    summary = _send_upload(coordinator)

    assert coordinator.calls == 2 and summary.bytes_accepted == 2 and summary.complete


def test_an_upload_that_got_in_before_the_connection_broke_counts_as_sent():
    """FAILED_PRECONDITION after a broken attempt: the job has the upload complete, or is past
    uploads (the watch that follows tells whether it failed)."""
    coordinator = UploadCoordinator(
        [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION]
    )

    assert _send_upload(coordinator).complete and coordinator.calls == 2


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED]
)
def test_a_refusal_of_the_upload_is_not_retried(code):
    coordinator = UploadCoordinator([code])

    with pytest.raises(grpc.RpcError) as refused:
        _send_upload(coordinator)

    assert refused.value.code() == code and coordinator.calls == 1
