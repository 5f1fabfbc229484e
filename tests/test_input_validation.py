"""Hostile ciphertexts over real gRPC (coordinator in this process, its workers too): issue 12's
attacks are refused with INVALID_ARGUMENT naming job, party, block and column, leave nothing on
disk, and what the coordinator stores is its own re-serialization."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
import tenseal as ts

from hefl import sealio
from hefl.protocols.stats import StatsProtocol
from hefl.v1 import hefl_pb2 as pb
from hefl.validate import parse_vector
from parties.client import KeyHolderSession
from parties.identity import SigningKey
from parties.keyholder import KeyHolder
from tests.ciphertexts import uncompressed_vector, vector_proto, zero_vector
from tests.conftest import RunningCoordinator
from tests.helpers import FEATURES, create_job, hello, stats_chunks, stats_request, watch_until


def _code(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def _key_holder(
    coordinator: RunningCoordinator, context: ts.Context, features: list[str]
) -> KeyHolderSession:
    keyholder = KeyHolder(
        context=context,
        job_id="job-1",
        features=features,
        options=pb.TrainingOptions(iterations=2),
        signing_key=SigningKey.generate(),
    )
    session = KeyHolderSession(coordinator.stub, keyholder, job_id="job-1", party="kh")
    session.start()
    return session


@pytest.fixture
def uploading(
    coordinator: RunningCoordinator, private_context: ts.Context, public_context: ts.Context
) -> Iterator[RunningCoordinator]:
    """job-1 (kh and h2, 5 and 7 rows, 3 features) open for uploads."""
    create_job(coordinator.stub, private_context.serialize(save_secret_key=False))
    session = _key_holder(coordinator, private_context, FEATURES)
    coordinator.stub.JoinJob(pb.JoinJobRequest(job_id="job-1", party=hello("h2")))
    for party, rows in (("kh", 5), ("h2", 7)):
        coordinator.stub.SubmitStats(stats_request(public_context, "job-1", party, rows=rows))
    watch_until(coordinator.stub, pb.UPLOADING)
    yield coordinator
    session.stop()


def test_the_issues_chunk_of_40_ciphertexts_of_16_polynomials_is_refused(
    uploading: RunningCoordinator, public_context: ts.Context
) -> None:
    bomb = zero_vector(public_context, polynomials=16)
    chunk = pb.UploadChunk(
        job_id="job-1",
        party="h2",
        seq=0,
        columns=[pb.EncryptedColumn(block=0, feature=j % 4, ciphertext=bomb) for j in range(40)],
    )

    assert chunk.ByteSize() < 16_000
    code, details = _code(lambda: uploading.stub.Upload(iter([chunk])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("job job-1 party 'h2' block 0 column 0 inflates to 5242977 bytes")
    assert not (uploading.workdir / "jobs" / "job-1" / "columns").exists()


def test_a_label_term_claiming_more_values_than_slots_is_refused(
    uploading: RunningCoordinator, public_context: ts.Context
) -> None:
    honest = sealio.serialize(ts.ckks_vector(public_context, np.zeros(4)))
    (ciphertext,) = parse_vector(honest, what="label term").ciphertexts
    wide = vector_proto(sizes=[5000], ciphertexts=[ciphertext], scale=public_context.global_scale)
    chunk = pb.UploadChunk(job_id="job-1", party="h2", seq=0, label_term=wide)

    code, details = _code(lambda: uploading.stub.Upload(iter([chunk])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "job job-1 label term of party 'h2' holds 5000 values, expected 4"


def test_the_coordinator_stores_its_own_serialization_not_the_received_bytes(
    uploading: RunningCoordinator, public_context: ts.Context
) -> None:
    """The same ciphertext sent in SEAL's uncompressed form is stored as TenSEAL writes it."""
    honest = sealio.serialize(ts.ckks_vector(public_context, np.linspace(0, 1, 4096)))
    received = uncompressed_vector(public_context, honest)
    chunk = pb.UploadChunk(
        job_id="job-1",
        party="h2",
        seq=0,
        columns=[pb.EncryptedColumn(block=0, feature=1, ciphertext=received)],
    )

    summary = uploading.stub.Upload(iter([chunk]))
    stored = uploading.registry.get("job-1").store.column_path("h2", 0, 1).read_bytes()
    assert stored == honest != received
    assert summary.bytes_accepted == len(honest)


# ----- statistics --------------------------------------------------------------------------------


@pytest.fixture
def collecting(coordinator: RunningCoordinator, public_context_bytes: bytes) -> RunningCoordinator:
    create_job(coordinator.stub, public_context_bytes)
    coordinator.stub.JoinJob(pb.JoinJobRequest(job_id="job-1", party=hello("h2")))
    return coordinator


def test_a_vector_of_sizes_without_ciphertext_is_refused_and_survives_a_restart(
    collecting: RunningCoordinator, public_context: ts.Context
) -> None:
    """``sizes=[496]`` with no ciphertext used to be stored, then crash the coordinator at
    every start."""
    empty = vector_proto(sizes=[10], ciphertexts=[], scale=public_context.global_scale)
    share = pb.SubmitStatsRequest(job_id="job-1", party="h2", ciphertexts=[empty], rows=5)

    code, details = _code(lambda: collecting.stub.SubmitStats(stats_chunks(share)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == (
        "job job-1: statistics of party 'h2' (piece 0) holds 0 ciphertexts of 1 sizes; "
        "expected exactly one ciphertext"
    )
    assert not (collecting.workdir / "jobs" / "job-1" / "stats").exists() or not any(
        (collecting.workdir / "jobs" / "job-1" / "stats").rglob("*.bin")
    )
    collecting.stop()
    restarted = RunningCoordinator(collecting.workdir, lambda *_: pytest.fail("no pool"))
    try:
        restarted.stub.SubmitStats(stats_request(public_context, "job-1", "h2"))
        (status,) = restarted.stub.ListJobs(pb.ListJobsRequest()).jobs
        assert status.phase == pb.COLLECTING_STATS
    finally:
        restarted.stop()


def test_a_refused_share_leaves_no_piece_behind(
    collecting: RunningCoordinator, public_context: ts.Context
) -> None:
    protocol = StatsProtocol(features=3, slots=4096)
    (piece,) = protocol.gen_share(public_context, np.ones((5, 3))).pieces

    def chunks(pieces: list[bytes]) -> Iterator[pb.StatsChunk]:
        yield pb.StatsChunk(header=pb.StatsHeader(job_id="job-1", party="h2", rows=5))
        for data in pieces:
            yield pb.StatsChunk(piece=data)

    code, details = _code(lambda: collecting.stub.SubmitStats(chunks([piece, piece, piece])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "(piece 1): a share of 3 features has 1 pieces" in details
    store = collecting.registry.get("job-1").store
    assert not store.stats_path("h2", 0).exists()

    code, details = _code(lambda: collecting.stub.SubmitStats(chunks([])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "come in 0 pieces, expected 1" in details
    collecting.stub.SubmitStats(chunks([piece]))
    assert store.stats_path("h2", 0).read_bytes() == piece


def test_a_second_stream_of_the_same_share_is_told_to_retry_while_the_first_arrives(
    collecting: RunningCoordinator, public_context: ts.Context
) -> None:
    """UNAVAILABLE, which a party retries: the first stream may still fail (a retry after a
    broken connection), and then the retry must get in; once it is in, ALREADY_EXISTS."""
    (piece,) = (
        StatsProtocol(features=3, slots=4096).gen_share(public_context, np.ones((5, 3))).pieces
    )
    store = collecting.registry.get("job-1").store
    release = threading.Event()

    def slow() -> Iterator[pb.StatsChunk]:
        yield pb.StatsChunk(header=pb.StatsHeader(job_id="job-1", party="h2", rows=5))
        yield pb.StatsChunk(piece=piece)
        release.wait(timeout=60)

    first = collecting.stub.SubmitStats.future(slow())
    try:
        assert _wait_for(store.stats_path("h2", 0).exists)
        code, details = _code(
            lambda: collecting.stub.SubmitStats(stats_request(public_context, "job-1", "h2"))
        )
        assert code == grpc.StatusCode.UNAVAILABLE
        assert details == (
            "party 'h2' is still sending statistics to job-1 on another stream; retry once it ends"
        )
    finally:
        release.set()
    assert first.result(timeout=60).message == "statistics of h2 accepted"
    code, details = _code(
        lambda: collecting.stub.SubmitStats(stats_request(public_context, "job-1", "h2"))
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert "party 'h2' already submitted statistics to job-1" in details


def _wait_for(predicate: Callable[[], bool]) -> bool:
    done = threading.Event()
    for _ in range(600):
        if predicate():
            return True
        done.wait(0.05)
    return False


def test_statistics_of_300_features_stream_in_12_pieces_and_the_key_holder_sums_them(
    coordinator: RunningCoordinator, private_context: ts.Context, public_context: ts.Context
) -> None:
    """Over 4 MiB per share, which one SubmitStats message could not carry."""
    features = [f"f{i}" for i in range(300)]
    spec = pb.JobSpec(job_id="job-1", key_holder=hello("kh", features), expected_parties=2)
    create = iter(
        [
            pb.CreateJobRequest(spec=spec),
            *(
                pb.CreateJobRequest(context_chunk=piece)
                for piece in _split(private_context.serialize(save_secret_key=False))
            ),
        ]
    )
    coordinator.stub.CreateJob(create)
    coordinator.stub.JoinJob(pb.JoinJobRequest(job_id="job-1", party=hello("h2", features)))
    session = _key_holder(coordinator, private_context, features)
    rng = np.random.default_rng(5)
    rows = {"kh": rng.normal(size=(20, 300)), "h2": rng.normal(size=(30, 300))}
    protocol = StatsProtocol(features=300, slots=4096)
    try:
        for party, data in rows.items():
            share = protocol.gen_share(public_context, data)
            assert len(share.pieces) == 12 and sum(map(len, share.pieces)) > 4 * 1024 * 1024
            coordinator.stub.SubmitStats(share.to_chunks(job_id="job-1", party=party))
        status = watch_until(coordinator.stub, pb.UPLOADING)
    finally:
        session.stop()
    union = np.vstack(list(rows.values()))
    assert status.standardization.count == 50
    np.testing.assert_allclose(status.standardization.mean, union.mean(axis=0), atol=1e-4)


def _split(data: bytes) -> list[bytes]:
    return [data[i : i + 1024 * 1024] for i in range(0, len(data), 1024 * 1024)]


def test_a_job_whose_columns_do_not_fit_one_ciphertext_is_refused(
    coordinator: RunningCoordinator, public_context_bytes: bytes
) -> None:
    features = [f"f{i}" for i in range(4096)]
    spec = pb.JobSpec(job_id="wide", key_holder=hello("kh", features), expected_parties=1)
    create = iter(
        [
            pb.CreateJobRequest(spec=spec),
            *(pb.CreateJobRequest(context_chunk=piece) for piece in _split(public_context_bytes)),
        ]
    )
    code, details = _code(lambda: coordinator.stub.CreateJob(create))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "4096 features and the bias do not fit the 4096 slots of n8192-depth4"
