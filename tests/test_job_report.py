"""GetReport over real gRPC: a finished job's measurements, and only those."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from coordinator.registry import Registry
from coordinator.report import JobReport
from coordinator.server import create_server
from coordinator.training import GradientPool
from hefl import chunks, messages
from hefl.algorithm import Hyperparameters
from hefl.v1 import hefl_pb2 as pb
from hefl.v1 import hefl_pb2_grpc as pb_grpc
from tests.helpers import create_job

REPORT = JobReport(
    job_id="job-1",
    workers=2,
    blocks=1,
    iterations=2,
    load_s=0.3,
    train_s=1.5,
    gradient_s=0.8,
    refresh_s=0.6,
    iteration_s=(0.7, 0.8),
    upload_bytes=40_000_000,
    key_holder_bytes_per_iteration=10_000_000,
    worker_bytes_per_iteration=17_000_000,
    worker_peak_rss_mb=(210.5, 199.0),
    hyperparameters=Hyperparameters(
        iterations=2, learning_rate=0.96, l2=0.0, sigmoid_interval=16.0
    ),
    reveal_intermediate=True,
    curvature=13.3,
)


class Served:
    """A coordinator on loopback port 0 whose jobs never get as far as needing Ray."""

    def __init__(self, workdir: Path) -> None:
        self.registry = Registry(workdir, _no_workers)
        self.server, port = create_server("127.0.0.1:0", self.registry, tls=None)
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=chunks.CHANNEL_OPTIONS)
        self.stub = pb_grpc.CoordinatorStub(self.channel)

    def stop(self) -> None:
        self.channel.close()
        self.registry.shutdown()
        self.server.stop(1).wait()


def _no_workers(*_: object) -> GradientPool:
    raise AssertionError("these jobs never train")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    running = Served(tmp_path)
    yield running
    running.stop()


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_report_file_round_trips():
    assert JobReport.from_json(REPORT.to_json()) == REPORT


def test_the_message_carries_no_model_and_no_iterate():
    message = REPORT.to_message()

    assert not {"intermediate_models", "weights", "model"} & set(message.DESCRIPTOR.fields_by_name)
    assert messages.hyperparameters_of(message.options) == REPORT.hyperparameters
    assert list(message.iteration_s) == pytest.approx(REPORT.iteration_s)
    assert message.key_holder_bytes_per_iteration == REPORT.key_holder_bytes_per_iteration


def test_unknown_job_is_not_found(served):
    code, details = _code(lambda: served.stub.GetReport(pb.GetReportRequest(job_id="nope")))

    assert code == grpc.StatusCode.NOT_FOUND
    assert "'nope'" in details


def test_no_report_before_the_job_is_done(served, public_context_bytes):
    create_job(served.stub, public_context_bytes, job_id="job-1", parties=2)

    code, details = _code(lambda: served.stub.GetReport(pb.GetReportRequest(job_id="job-1")))

    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "job-1" in details and "WAITING_FOR_PARTIES" in details


def test_a_done_job_reports_also_after_a_restart(tmp_path, public_context_bytes):
    first = Served(tmp_path)
    try:
        create_job(first.stub, public_context_bytes, job_id="job-1", parties=2)
        # Training itself is the end-to-end tests' business: finish the job as the driver does.
        first.registry.get("job-1").finish([], REPORT)
        served_first = first.stub.GetReport(pb.GetReportRequest(job_id="job-1"))
    finally:
        first.stop()
    again = Served(tmp_path)
    try:
        served_again = again.stub.GetReport(pb.GetReportRequest(job_id="job-1"))
    finally:
        again.stop()

    assert served_first == REPORT.to_message()
    assert served_again == served_first
