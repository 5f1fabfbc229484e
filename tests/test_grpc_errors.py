"""Bad input over real gRPC: precise status codes, named culprits, nothing accepted lost.

The coordinator's workers run in its own process (no Ray): none of these tests trains on Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tenseal as ts

from coordinator.inprocess_pool import in_process_pool_factory
from coordinator.keyholder_link import KeyHolderLink
from coordinator.server import CoordinatorConfig, ray_pool_factory
from coordinator.training import GradientPool
from hefl import sealio
from hefl.codec import PackingLayout
from hefl.params import PARAMETER_SETS
from hefl.v1 import hefl_pb2 as pb
from hefl.v1 import hefl_pb2_grpc as pb_grpc
from parties.identity import SigningKey
from parties.keyholder import KeyHolder
from parties.session import KeyHolderSession
from tests.conftest import RunningCoordinator
from tests.helpers import (
    FEATURES,
    create_job,
    hello,
    party_features,
    stats_chunks,
    stats_request,
    watch_until,
)


def _code(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


@pytest.fixture
def job(coordinator: RunningCoordinator, public_context_bytes: bytes) -> RunningCoordinator:
    create_job(coordinator.stub, public_context_bytes, job_id="job-1", parties=2)
    return coordinator


@pytest.fixture
def keyholder(private_context: ts.Context) -> KeyHolder:
    """The key holder's state for job-1: it outlives its streams to the coordinator. It asks
    for 2 iterations, as the jobs these tests train are created with."""
    return KeyHolder(
        context=private_context,
        job_id="job-1",
        features=FEATURES,
        options=pb.TrainingOptions(iterations=2),
        signing_key=SigningKey.generate(),
    )


def _key_holder(coordinator: RunningCoordinator, keyholder: KeyHolder) -> KeyHolderSession:
    """The key holder's task loop, connected to ``coordinator``."""
    session = KeyHolderSession(coordinator.stub, keyholder, job_id="job-1", party="kh")
    session.start()
    return session


def _submit_statistics(coordinator: RunningCoordinator, public_context: ts.Context) -> None:
    """The second party joins; both send statistics of 5 and 7 rows."""
    coordinator.stub.JoinJob(pb.JoinJobRequest(job_id="job-1", party=hello("h2")))
    for party, rows in (("kh", 5), ("h2", 7)):
        coordinator.stub.SubmitStats(stats_request(public_context, "job-1", party, rows=rows))


def _to_uploading(
    coordinator: RunningCoordinator, keyholder: KeyHolder, public_context: ts.Context
) -> tuple[KeyHolderSession, pb.JobStatus]:
    """Both parties joined and sent statistics; the real key holder publishes them."""
    session = _key_holder(coordinator, keyholder)
    _submit_statistics(coordinator, public_context)
    return session, watch_until(coordinator.stub, pb.UPLOADING)


def _column(
    context: ts.Context, block: int = 0, feature: int = 0, slots: int = 4096
) -> pb.EncryptedColumn:
    return pb.EncryptedColumn(
        block=block,
        feature=feature,
        ciphertext=sealio.serialize(ts.ckks_vector(context, np.zeros(slots))),
    )


def _whole_upload(context: ts.Context, party: str) -> Iterator[pb.UploadChunk]:
    """Every ciphertext a party of the 12-row job uploads (block 0, 3 features and the bias),
    one column per chunk, then its label term."""
    columns = len(FEATURES) + 1
    for feature in range(columns):
        yield pb.UploadChunk(
            job_id="job-1", party=party, seq=feature, columns=[_column(context, feature=feature)]
        )
    label_term = sealio.serialize(ts.ckks_vector(context, np.zeros(columns)))
    yield pb.UploadChunk(job_id="job-1", party=party, seq=columns, label_term=label_term, last=True)


def test_private_context_is_refused(
    coordinator: RunningCoordinator, private_context: ts.Context
) -> None:
    code, details = _code(
        lambda: create_job(coordinator.stub, private_context.serialize(save_secret_key=True))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "secret key" in details


def test_garbage_context_is_refused(coordinator: RunningCoordinator) -> None:
    code, details = _code(lambda: create_job(coordinator.stub, b"not a context"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not deserialize" in details


def test_duplicate_party_name(job: RunningCoordinator) -> None:
    code, details = _code(
        lambda: job.stub.JoinJob(pb.JoinJobRequest(job_id="job-1", party=hello("kh")))
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert "'kh'" in details and "job-1" in details


def test_the_same_join_again_is_taken_as_it_was(job: RunningCoordinator) -> None:
    """A party whose join got in but whose answer was lost (a broken connection, a coordinator
    restart) joins again with the same hello: the coordinator answers as the first time."""
    request = pb.JoinJobRequest(job_id="job-1", party=hello("h2"))
    first = job.stub.JoinJob(request)

    again = job.stub.JoinJob(request)

    assert again == first
    assert list(job.registry.get("job-1").parties) == ["kh", "h2"]


def test_party_with_other_columns(job: RunningCoordinator) -> None:
    request = pb.JoinJobRequest(job_id="job-1", party=hello("h2", ["a", "b", "zz"]))
    code, details = _code(lambda: job.stub.JoinJob(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "missing ['c']" in details and "unexpected ['zz']" in details and "'h2'" in details


def test_unknown_job(job: RunningCoordinator) -> None:
    code, details = _code(
        lambda: job.stub.JoinJob(pb.JoinJobRequest(job_id="nope", party=hello("x")))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert "'nope'" in details


def test_undeserializable_and_foreign_ciphertexts(job: RunningCoordinator) -> None:
    bad = pb.SubmitStatsRequest(job_id="job-1", party="kh", ciphertexts=[b"\x00garbage"], rows=3)
    code, details = _code(lambda: job.stub.SubmitStats(stats_chunks(bad)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "job job-1: statistics of party 'kh' (piece 0)" in details

    foreign = PARAMETER_SETS["n16384-depth4"].make_context()
    other = stats_request(foreign, "job-1", "kh")
    code, details = _code(lambda: job.stub.SubmitStats(other))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "a ciphertext of the job's parameters at this level has at most" in details


def test_statistics_of_wrong_length(job: RunningCoordinator, public_context: ts.Context) -> None:
    code, details = _code(
        lambda: job.stub.SubmitStats(stats_request(public_context, "job-1", "kh", columns=2))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "statistics of party 'kh' (piece 0) holds 6 values, expected 10" in details


def test_message_over_the_size_limit(job: RunningCoordinator) -> None:
    huge = pb.StatsHeader(job_id="job-1", party="kh", signature=b"x" * (5 * 1024 * 1024))
    channel = grpc.insecure_channel(job.address)  # client side without our send limit
    stub = pb_grpc.CoordinatorStub(channel)
    code, details = _code(lambda: stub.SubmitStats(iter([pb.StatsChunk(header=huge)])))
    channel.close()
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The coordinator keeps serving.
    assert job.stub.ListJobs(pb.ListJobsRequest()).jobs[0].job_id == "job-1"


def test_uploads_out_of_order_and_bad_blocks_keep_what_was_accepted(
    job: RunningCoordinator, keyholder: KeyHolder, public_context: ts.Context
) -> None:
    session, status = _to_uploading(job, keyholder, public_context)
    try:
        good = pb.UploadChunk(job_id="job-1", party="h2", seq=0, columns=[_column(public_context)])
        skipped = pb.UploadChunk(
            job_id="job-1", party="h2", seq=2, columns=[_column(public_context, feature=1)]
        )
        code, details = _code(lambda: job.stub.Upload(iter([good, skipped])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "chunk 2 from party 'h2' is out of order; expected chunk 1" in details
        store = job.registry.get("job-1").store
        assert store.column_path("h2", 0, 0).is_file()  # the first chunk was kept

        outside = pb.UploadChunk(
            job_id="job-1", party="h2", seq=0, columns=[_column(public_context, block=3)]
        )
        code, details = _code(lambda: job.stub.Upload(iter([outside])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "block 3" in details

        early_end = pb.UploadChunk(job_id="job-1", party="h2", seq=0, last=True)
        code, details = _code(lambda: job.stub.Upload(iter([early_end])))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "3 of 4 column ciphertexts and the label term" in details

        unknown = pb.UploadChunk(job_id="job-404", party="h2", seq=0)
        code, _ = _code(lambda: job.stub.Upload(iter([unknown])))
        assert code == grpc.StatusCode.NOT_FOUND
        assert store.column_path("h2", 0, 0).is_file()
    finally:
        session.stop()


def test_a_job_whose_workers_cannot_start_fails_with_the_reason_and_refuses_uploads(
    tmp_path: Path,
    keyholder: KeyHolder,
    public_context: ts.Context,
    public_context_bytes: bytes,
) -> None:
    def ray_down() -> None:
        raise RuntimeError("local Ray exited with code 1")

    factory = ray_pool_factory(CoordinatorConfig(workdir=tmp_path, workers=2), ray_down)
    running = RunningCoordinator(tmp_path, factory)
    create_job(running.stub, public_context_bytes)
    session = _key_holder(running, keyholder)
    try:
        _submit_statistics(running, public_context)
        failed = watch_until(running.stub, pb.FAILED)
        assert failed.message == "RuntimeError: local Ray exited with code 1"

        chunk = pb.UploadChunk(job_id="job-1", party="h2", seq=0, columns=[_column(public_context)])
        code, details = _code(lambda: running.stub.Upload(iter([chunk])))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "job-1 does not accept uploads now (FAILED)" in details
    finally:
        session.stop()
        running.stop()


def test_model_before_training_and_foreign_key_holder(job: RunningCoordinator) -> None:
    code, _ = _code(lambda: job.stub.GetModel(pb.GetModelRequest(job_id="job-1", party="kh")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    stream = job.stub.KeyHolderTasks(pb.KeyHolderTasksRequest(job_id="job-1", party="mallory"))
    code, details = _code(lambda: next(iter(stream)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "'mallory' may not call KeyHolderTasks on job job-1" in details


def test_feature_names_are_checked_at_creation(
    coordinator: RunningCoordinator, public_context_bytes: bytes
) -> None:
    spec_features = FEATURES + ["a"]
    spec = pb.JobSpec(job_id="dup", key_holder=hello("kh", spec_features), expected_parties=1)
    request = iter(
        [pb.CreateJobRequest(spec=spec), pb.CreateJobRequest(context_chunk=public_context_bytes)]
    )
    code, details = _code(lambda: coordinator.stub.CreateJob(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "duplicate feature names" in details


def test_published_standardization_is_the_aggregate_of_every_party(
    job: RunningCoordinator, keyholder: KeyHolder, public_context: ts.Context
) -> None:
    session, status = _to_uploading(job, keyholder, public_context)
    session.stop()
    union = np.vstack([party_features(5, 3), party_features(7, 3)])
    published = status.standardization

    assert published.count == 12
    np.testing.assert_allclose(published.mean, union.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(published.std, union.std(axis=0), atol=1e-4)
    # Three perfectly correlated columns: the correlation matrix is all ones.
    assert published.curvature == pytest.approx(3.0, abs=1e-3)


def test_restored_job_keeps_its_uploads_and_takes_no_workers_until_the_key_holder_returns(
    coordinator: RunningCoordinator,
    keyholder: KeyHolder,
    public_context: ts.Context,
    public_context_bytes: bytes,
) -> None:
    job = coordinator
    create_job(job.stub, public_context_bytes, options=pb.TrainingOptions(iterations=2))
    session, _ = _to_uploading(job, keyholder, public_context)
    chunk = pb.UploadChunk(job_id="job-1", party="h2", seq=0, columns=[_column(public_context)])
    job.stub.Upload(iter([chunk]))
    session.stop()
    job.stop()
    # Whether the key holder was connected each time the restored job asked for workers.
    key_holder_connected: list[bool] = []
    links: dict[str, KeyHolderLink] = {}

    def recording_factory(
        context_bytes: bytes, parameter_set: str, job_root: str, layout: PackingLayout, columns: int
    ) -> GradientPool:
        link = links.get("job-1")  # absent while the registry is still restoring the job
        key_holder_connected.append(link is not None and link.connected)
        make = in_process_pool_factory(workers=2)
        return make(context_bytes, parameter_set, job_root, layout, columns)

    restored = RunningCoordinator(job.workdir, recording_factory)
    try:
        state = restored.registry.get("job-1")
        links["job-1"] = state.link
        assert state.phase == pb.UPLOADING
        assert (0, 0) in state.parties["h2"].received
        assert state.standardization is not None and state.standardization.count == 12

        for party in ("kh", "h2"):
            restored.stub.Upload(_whole_upload(public_context, party))
        # Past the uploads, the key holder still away: the job waits without workers.
        watch_until(restored.stub, pb.TRAINING)
        assert key_holder_connected == []

        returned = _key_holder(restored, keyholder)  # the same key holder, reconnecting
        try:
            done = watch_until(restored.stub, pb.DONE)
        finally:
            returned.stop()
        assert key_holder_connected == [True]
        assert done.iteration == 2
    finally:
        restored.stop()
