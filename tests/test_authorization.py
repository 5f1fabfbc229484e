"""Who may call what, over real mutual TLS: the authorization table row by row, and the
attacks an outsider, a provisioned site off the roster and a roster party can try."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from coordinator.registry import Registry
from coordinator.server import create_server
from coordinator.servicer import AUTHORIZATION
from hefl import chunks
from hefl.identity import TlsFiles, channel_credentials
from hefl.v1 import hefl_pb2 as pb
from hefl.v1 import hefl_pb2_grpc as pb_grpc
from parties.identity import PartyIdentity
from parties.trust import Provisioned
from tests.helpers import FEATURES, stats_request
from tools.provision import provision

JOB = "trial-1"
ROSTER = ["kh", "h2"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    provision(root, parties=[*ROSTER, "outsider"], coordinator_hosts=("127.0.0.1",))
    return root


def _no_pool(*_: object) -> Any:
    raise AssertionError("these tests never get as far as training")


class TlsCoordinator:
    """A real coordinator on loopback port 0, serving mutual TLS with the project's kit."""

    def __init__(self, project: Path, workdir: Path) -> None:
        self.project = project
        self.registry = Registry(workdir, _no_pool)
        self.server, port = create_server(
            "127.0.0.1:0", self.registry, tls=TlsFiles.load(project / "coordinator")
        )
        self.server.start()
        self.address = f"127.0.0.1:{port}"
        self._channels: list[grpc.Channel] = []

    def stub(self, credentials: Any) -> pb_grpc.CoordinatorStub:
        channel = grpc.secure_channel(self.address, credentials, options=chunks.CHANNEL_OPTIONS)
        self._channels.append(channel)
        return pb_grpc.CoordinatorStub(channel)

    def stub_as(self, site: str) -> pb_grpc.CoordinatorStub:
        return self.stub(channel_credentials(TlsFiles.load(self.project / site)))

    def stop(self) -> None:
        for channel in self._channels:
            channel.close()
        self.registry.shutdown()
        self.server.stop(0).wait()


@pytest.fixture
def server(project: Path, tmp_path: Path) -> Iterator[TlsCoordinator]:
    running = TlsCoordinator(project, tmp_path / "work")
    yield running
    running.stop()


def _trust(project: Path, site: str) -> Provisioned:
    kit = project / site
    return Provisioned(PartyIdentity.load(kit), roster=ROSTER, sites=None, kit=kit)


def _hello(trust: Provisioned, job_id: str = JOB) -> pb.PartyHello:
    from hefl import signed
    from parties.sealing import SealingKey

    name, seal_key = trust.identity.name, SealingKey().public_bytes
    return pb.PartyHello(
        name=name,
        features=FEATURES,
        seal_public_key=seal_key,
        signing_public_key=trust.signing_key.public_bytes,
        seal_key_signature=trust.signing_key.sign(
            signed.SEAL_KEY, signed.seal_key_parts(job_id, name, seal_key)
        ),
    )


def _spec_requests(spec: pb.JobSpec, context_bytes: bytes) -> Iterator[pb.CreateJobRequest]:
    yield pb.CreateJobRequest(spec=spec)
    for piece in chunks.split_bytes(context_bytes):
        yield pb.CreateJobRequest(context_chunk=piece)


def _chartered_spec(project: Path, context_bytes: bytes, *, creator: str = "kh") -> pb.JobSpec:
    trust = _trust(project, creator)
    charter, signature = trust.charter(
        job_id=JOB,
        parameter_set="n8192-depth4",
        options=pb.TrainingOptions(),
        context_bytes=context_bytes,
    )
    return pb.JobSpec(
        job_id=JOB, key_holder=_hello(trust), charter=charter, charter_signature=signature
    )


@pytest.fixture
def job(server: TlsCoordinator, public_context_bytes: bytes) -> TlsCoordinator:
    """Job ``trial-1`` created by ``kh`` for the roster (kh, h2); h2 has joined."""
    spec = _chartered_spec(server.project, public_context_bytes)
    server.stub_as("kh").CreateJob(_spec_requests(spec, public_context_bytes), timeout=30)
    h2 = _trust(server.project, "h2")
    server.stub_as("h2").JoinJob(pb.JoinJobRequest(job_id=JOB, party=_hello(h2)), timeout=30)
    return server


def _refused(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    error: Any = info.value
    return error.code(), error.details()


# ----- the table -------------------------------------------------------------------------


def test_every_rpc_has_a_row_in_the_authorization_table():
    methods = pb.DESCRIPTOR.services_by_name["Coordinator"].methods_by_name
    assert set(AUTHORIZATION) == set(methods)


# ----- outsiders ---------------------------------------------------------------------------


def test_a_client_without_a_certificate_is_refused(server, project):
    anonymous = server.stub(
        grpc.ssl_channel_credentials(root_certificates=(project / "ca/ca.pem").read_bytes())
    )
    code, _ = _refused(lambda: anonymous.ListJobs(pb.ListJobsRequest(), timeout=10))
    assert code == grpc.StatusCode.UNAVAILABLE


def test_a_plaintext_client_is_refused(server):
    channel = grpc.insecure_channel(server.address)
    try:
        code, _ = _refused(
            lambda: pb_grpc.CoordinatorStub(channel).ListJobs(pb.ListJobsRequest(), timeout=10)
        )
    finally:
        channel.close()
    assert code == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_of_another_project_is_refused(server, tmp_path):
    provision(tmp_path / "other", parties=["kh"])
    foreign = server.stub(channel_credentials(TlsFiles.load(tmp_path / "other" / "kh")))
    code, _ = _refused(lambda: foreign.ListJobs(pb.ListJobsRequest(), timeout=10))
    assert code == grpc.StatusCode.UNAVAILABLE


def test_the_coordinators_own_certificate_cannot_act_as_a_party(server):
    # It is issued for serving only (extended key usage): the handshake already refuses it.
    code, _ = _refused(
        lambda: server.stub_as("coordinator").ListJobs(pb.ListJobsRequest(), timeout=10)
    )
    assert code == grpc.StatusCode.UNAVAILABLE


# ----- a provisioned site that is not on the roster ----------------------------------------


def test_a_site_off_the_roster_is_refused_every_rpc_of_the_job(job, public_context):
    outsider = job.stub_as("outsider")
    trust = _trust(job.project, "outsider")
    calls: dict[str, Callable[[], object]] = {
        "JoinJob": lambda: outsider.JoinJob(
            pb.JoinJobRequest(job_id=JOB, party=_hello(trust)), timeout=10
        ),
        "GetContext": lambda: list(
            outsider.GetContext(pb.GetContextRequest(job_id=JOB), timeout=10)
        ),
        "WatchJob": lambda: next(
            iter(outsider.WatchJob(pb.WatchJobRequest(job_id=JOB), timeout=10))
        ),
        "SubmitStats": lambda: outsider.SubmitStats(
            stats_request(public_context, JOB, "outsider"), timeout=10
        ),
        "Upload": lambda: outsider.Upload(iter([pb.UploadChunk(job_id=JOB, seq=0)]), timeout=10),
        "GetModel": lambda: outsider.GetModel(pb.GetModelRequest(job_id=JOB), timeout=10),
        "GetReport": lambda: outsider.GetReport(pb.GetReportRequest(job_id=JOB), timeout=10),
        "KeyHolderTasks": lambda: next(
            iter(outsider.KeyHolderTasks(pb.KeyHolderTasksRequest(job_id=JOB), timeout=10))
        ),
        "CompleteTask": lambda: outsider.CompleteTask(
            iter([pb.TaskChunk(job_id=JOB, task_id=1, count=1)]), timeout=10
        ),
    }
    for rpc, call in calls.items():
        code, details = _refused(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED, rpc
        assert f"'outsider' may not call {rpc} on job {JOB}" in details, rpc
    assert list(outsider.ListJobs(pb.ListJobsRequest(), timeout=10).jobs) == []
    # The job itself is untouched: still waiting for its stats, with its two parties only.
    status = job.stub_as("kh").ListJobs(pb.ListJobsRequest(), timeout=10).jobs
    assert [s.job_id for s in status] == [JOB]
    assert sorted(status[0].parties) == sorted(ROSTER)


# ----- roster parties acting beyond their role --------------------------------------------


def test_a_party_cannot_act_in_another_partys_name(job, public_context):
    h2 = job.stub_as("h2")
    code, details = _refused(
        lambda: h2.SubmitStats(stats_request(public_context, JOB, "kh"), timeout=10)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "'h2' is authenticated and cannot act as 'kh'" in details
    code, details = _refused(
        lambda: h2.Upload(iter([pb.UploadChunk(job_id=JOB, party="kh", seq=0)]), timeout=10)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "cannot act as 'kh'" in details


def test_statistics_need_the_partys_own_signature(job, public_context):
    unsigned = stats_request(public_context, JOB, "h2")
    code, details = _refused(lambda: job.stub_as("h2").SubmitStats(unsigned, timeout=10))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "stats signature does not verify" in details
    assert not job.registry.get(JOB).store.stats_path("h2", 0).exists()


def test_only_the_key_holder_opens_the_task_stream_and_only_once(job):
    code, details = _refused(
        lambda: next(
            iter(job.stub_as("h2").KeyHolderTasks(pb.KeyHolderTasksRequest(job_id=JOB), timeout=10))
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "only the job's key holder may" in details

    kh = job.stub_as("kh")
    first = kh.KeyHolderTasks(pb.KeyHolderTasksRequest(job_id=JOB))
    try:
        assert job.registry.get(JOB).link.wait_until_connected(timeout_s=30)
        second = kh.KeyHolderTasks(pb.KeyHolderTasksRequest(job_id=JOB), timeout=10)
        code, details = _refused(lambda: next(iter(second)))
        assert code == grpc.StatusCode.ALREADY_EXISTS
        assert "already open" in details
    finally:
        first.cancel()


def test_a_party_cannot_create_a_job_in_the_key_holders_name(server, public_context_bytes):
    spec = _chartered_spec(server.project, public_context_bytes)  # kh's charter and hello
    code, details = _refused(
        lambda: server.stub_as("h2").CreateJob(
            _spec_requests(spec, public_context_bytes), timeout=10
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "'h2' is authenticated and cannot act as 'kh'" in details


@pytest.mark.parametrize("tamper", ["no charter", "bad signature", "other context", "extra party"])
def test_the_coordinator_refuses_a_charter_its_creator_did_not_sign(
    server, public_context_bytes, tamper
):
    spec = _chartered_spec(server.project, public_context_bytes)
    context = public_context_bytes
    if tamper == "no charter":
        spec.ClearField("charter")
    elif tamper == "bad signature":
        spec.charter_signature = bytes(64)
    elif tamper == "other context":
        context = public_context_bytes + b"\x00"
    else:
        spec.charter.roster.add(
            name="outsider", fingerprint="00" * 32, signing_public_key=bytes(32)
        )
    code, details = _refused(
        lambda: server.stub_as("kh").CreateJob(_spec_requests(spec, context), timeout=10)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert server.registry.jobs() == []


def test_a_job_lists_only_for_its_own_parties(job):
    assert [j.job_id for j in job.stub_as("h2").ListJobs(pb.ListJobsRequest()).jobs] == [JOB]
    assert list(job.stub_as("outsider").ListJobs(pb.ListJobsRequest()).jobs) == []
