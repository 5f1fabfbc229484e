"""The coordinator's limits: the config and where it comes from, every limit refused over real
gRPC with its status code and a message naming it, deadlines that fail a job and release its
workers, and streams that cannot starve the server."""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import click
import grpc
import pytest
import tenseal as ts
from click.testing import CliRunner

from coordinator.cli import limit_options, load_limits
from coordinator.inprocess_pool import in_process_pool_factory
from coordinator.limits import (
    GiB,
    Limits,
    MiB,
    StreamGate,
    context_bytes_cap,
    parse_quantity,
)
from coordinator.registry import Registry
from coordinator.server import create_server, server_options
from coordinator.training import GradientPool
from hefl import chunks, sealio
from hefl.codec import PackingLayout, stats_vector
from hefl.errors import InvalidArgument, ResourceExhausted
from hefl.identity import TlsFiles, channel_credentials
from hefl.params import PARAMETER_SETS
from hefl.v1 import hefl_pb2 as pb
from hefl.v1 import hefl_pb2_grpc as pb_grpc
from tests.conftest import RunningCoordinator
from tests.helpers import (
    column,
    create_job,
    hello,
    key_holder,
    party_features,
    start_key_holder,
    stats_chunks,
    stats_request,
    to_uploading,
    watch_until,
    whole_upload,
)
from tools.provision import provision

ROOT = Path(__file__).resolve().parent.parent


def _code(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def _serving(tmp_path: Path, **limits: Any) -> RunningCoordinator:
    return RunningCoordinator(
        tmp_path / "work", in_process_pool_factory(workers=1), limits=Limits(**limits)
    )


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., RunningCoordinator]]:
    """Start a coordinator with the given limits (the defaults otherwise); stopped at the end."""
    started: list[RunningCoordinator] = []

    def start(**limits: Any) -> RunningCoordinator:
        started.append(_serving(tmp_path / str(len(started)), **limits))
        return started[-1]

    yield start
    for running in started:
        running.stop()


# ----- the config ---------------------------------------------------------------------------


def test_the_defaults_hold_together_and_every_limit_is_documented() -> None:
    limits = Limits()

    assert limits.max_streams < limits.server_threads
    assert limits.max_streams_per_job >= 2 * limits.max_parties
    assert limits.max_features >= 300  # a 300-feature job is one the project must train
    assert all(doc for _, _, doc in limits.describe())


def test_the_readme_lists_every_limit_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", readme, flags=re.MULTILINE))

    assert {name: value for name, value, _ in Limits().describe()} == rows


def test_a_toml_file_and_overrides_with_units(tmp_path: Path) -> None:
    file = tmp_path / "limits.toml"
    file.write_text('max_features = 300\nmax_job_bytes = "8GiB"\njoin_timeout_s = "30min"\n')

    limits = Limits.load(file=file, overrides={"max_features": "40", "upload_timeout_s": None})

    assert limits.max_features == 40  # the override wins over the file
    assert limits.max_job_bytes == 8 * GiB
    assert limits.join_timeout_s == 1800.0
    assert limits.upload_timeout_s == Limits().upload_timeout_s


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"max_featurez": 3}, "unknown limits ['max_featurez']"),
        ({"max_features": "lots"}, "max_features: 'lots' is not a number"),
        ({"max_job_bytes": "3h"}, "max_job_bytes: '3h' is not a number (units: b, kib"),
        ({"max_parties": 0}, "max_parties must be positive"),
        ({"max_streams": 200}, "max_streams (200) must stay below server_threads (128)"),
        ({"max_rows_per_party": 10**9}, "max_rows_per_party exceeds max_rows_per_job"),
    ],
)
def test_unusable_limits_are_refused_by_name(given: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(named)):
        Limits.load(overrides=given)


def test_quantities() -> None:
    assert parse_quantity("512MiB", "bytes", name="x") == 512 * MiB
    assert parse_quantity("1_000", "count", name="x") == 1000
    assert parse_quantity("1.5h", "seconds", name="x") == 5400.0
    with pytest.raises(InvalidArgument, match="not a whole number"):
        parse_quantity("1.5", "count", name="x")


def test_flags_environment_and_file_reach_the_config(tmp_path: Path) -> None:
    """Through click as ``hefl coordinator`` reads them: a flag, an environment variable and
    the file, each winning over what comes after it."""
    seen: list[Limits] = []

    @click.command()
    @limit_options
    def command(limits_file: Path | None, **given: str | None) -> None:
        seen.append(load_limits(limits_file, given))

    file = tmp_path / "limits.toml"
    file.write_text("max_parties = 5\nmax_features = 6\nmax_iterations = 7\n")
    result = CliRunner().invoke(
        command,
        ["--limits", str(file), "--max-parties", "50", "--join-timeout-s", "2h"],
        env={"HEFL_COORDINATOR_MAX_FEATURES": "60"},
        auto_envvar_prefix="HEFL_COORDINATOR",
    )

    assert result.exit_code == 0, result.output
    (limits,) = seen
    assert (limits.max_parties, limits.max_features, limits.max_iterations) == (50, 60, 7)
    assert limits.join_timeout_s == 7200.0

    bad = CliRunner().invoke(command, ["--max-streams", "1000"])
    assert bad.exit_code == 2 and "must stay below server_threads" in bad.output


def test_the_coordinator_command_takes_every_limit() -> None:
    from tools.cli import main

    result = CliRunner().invoke(main, ["coordinator", "--help"])

    assert result.exit_code == 0
    for f in fields(Limits):
        assert f"--{f.name.replace('_', '-')}" in result.output


def test_keepalive_reaches_the_server_options() -> None:
    options = dict(server_options(Limits(keepalive_s=30, max_connection_age_s=3600)))

    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.http2.max_pings_without_data"] == 0
    assert options["grpc.max_connection_age_ms"] == 3_600_000
    assert "grpc.max_connection_age_ms" not in dict(server_options(Limits()))


# ----- the stream gate ------------------------------------------------------------------------


def test_the_gate_counts_streams_per_site_per_job_and_in_total() -> None:
    gate = StreamGate(Limits(max_streams=4, max_streams_per_site=2, max_streams_per_job=3))

    a1 = gate.open("WatchJob", site="a", job="j")
    a2 = gate.open("WatchJob", site="a", job="j")
    with pytest.raises(ResourceExhausted, match=r"WatchJob: 'a' already holds 2 open streams"):
        gate.open("WatchJob", site="a", job="k")
    # An upload's site and job are known from its first message.
    b1 = gate.open("Upload")
    b1.bind(site="b", job="j")
    b2 = gate.open("Upload")
    with pytest.raises(ResourceExhausted, match=r"job j already has 3 open streams"):
        b2.bind(site="b", job="j")
    assert gate.counts() == (4, {"a": 2, "b": 2}, {"j": 3})
    with pytest.raises(ResourceExhausted, match=r"already serves 4 streams \(max_streams\)"):
        gate.open("GetContext", site="c")

    for stream in (a1, a2, b1, b2):
        stream.close()
    b2.close()  # closing twice counts once
    assert gate.counts() == (0, {}, {})


# ----- limits over gRPC -----------------------------------------------------------------------


def test_features_parties_and_iterations_are_capped_at_creation(
    serve: Callable[..., RunningCoordinator], public_context_bytes: bytes
) -> None:
    running = serve(max_features=2, max_parties=3, max_iterations=20)

    code, details = _code(lambda: create_job(running.stub, public_context_bytes))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "job-1: 3 feature columns; this coordinator takes at most 2 (max_features)" in details

    running = serve(max_parties=3, max_iterations=20)
    code, details = _code(lambda: create_job(running.stub, public_context_bytes, parties=4))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "4 parties; this coordinator takes at most 3 (max_parties)" in details
    options = pb.TrainingOptions(iterations=21)
    code, details = _code(lambda: create_job(running.stub, public_context_bytes, options=options))
    assert "21 iterations; this coordinator takes at most 20 (max_iterations)" in details


def test_a_context_is_read_only_up_to_what_its_parameter_set_needs(
    coordinator: RunningCoordinator, public_context_bytes: bytes
) -> None:
    cap = context_bytes_cap(PARAMETER_SETS["n8192-depth4"])
    assert len(public_context_bytes) < cap < 5 * MiB  # measured: 3.2 MB for 4.8 MB allowed
    sent = itertools.count()

    def endless() -> Iterator[pb.CreateJobRequest]:
        yield pb.CreateJobRequest(spec=pb.JobSpec(job_id="big", key_holder=hello("kh")))
        while True:  # a client that never stops: the server stops reading at the cap
            next(sent)
            yield pb.CreateJobRequest(context_chunk=b"\0" * chunks.CHUNK_BYTES)

    code, details = _code(lambda: coordinator.stub.CreateJob(endless(), timeout=60))

    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "takes at most 4,784,128 bytes" in details and "without Galois keys" in details
    assert next(sent) < 16


def test_open_jobs_per_site_and_in_total(
    serve: Callable[..., RunningCoordinator], public_context_bytes: bytes
) -> None:
    running = serve(max_open_jobs_per_site=2, max_open_jobs=3)
    for job_id in ("a1", "a2"):
        create_job(running.stub, public_context_bytes, job_id=job_id, key_holder="site-a")

    code, details = _code(
        lambda: create_job(running.stub, public_context_bytes, job_id="a3", key_holder="site-a")
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "'site-a' already has 2 jobs in progress (a1, a2; max_open_jobs_per_site)" in details

    create_job(running.stub, public_context_bytes, job_id="b1", key_holder="site-b")
    code, details = _code(
        lambda: create_job(running.stub, public_context_bytes, job_id="c1", key_holder="site-c")
    )
    assert "already runs 3 jobs (max_open_jobs)" in details

    # A job that is over no longer counts.
    running.registry.get("a1").set_phase(pb.FAILED, "given up")
    create_job(running.stub, public_context_bytes, job_id="a3", key_holder="site-a")


def test_declared_rows_over_the_limits_are_refused_before_anything_is_planned(
    serve: Callable[..., RunningCoordinator],
    public_context: ts.Context,
    public_context_bytes: bytes,
) -> None:
    running = serve(max_rows_per_party=1000, max_rows_per_job=1500)
    # A third party never comes: the job stays collecting statistics.
    create_job(running.stub, public_context_bytes, parties=3)
    running.stub.JoinJob(pb.JoinJobRequest(job_id="job-1", party=hello("h2")))

    # 2^40 rows, as an attacker with a matching encrypted count would declare them.
    vector = ts.ckks_vector(public_context, stats_vector(party_features(5, 3)))
    huge = pb.SubmitStatsRequest(
        job_id="job-1", party="kh", ciphertexts=[sealio.serialize(vector)], rows=2**40
    )
    code, details = _code(lambda: running.stub.SubmitStats(stats_chunks(huge)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "party 'kh' declares 1,099,511,627,776 rows" in details
    assert "at most 1,000 per party (max_rows_per_party)" in details

    running.stub.SubmitStats(stats_request(public_context, "job-1", "kh", rows=900))
    code, details = _code(
        lambda: running.stub.SubmitStats(stats_request(public_context, "job-1", "h2", rows=700))
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "bring job job-1 to 1,600 rows" in details and "(max_rows_per_job)" in details
    # The job goes on: h2 may still send statistics within the limits.
    running.stub.SubmitStats(stats_request(public_context, "job-1", "h2", rows=600))


def test_rows_whose_uploads_would_exceed_the_job_bytes_are_refused_at_statistics(
    serve: Callable[..., RunningCoordinator],
    public_context: ts.Context,
    public_context_bytes: bytes,
) -> None:
    # The context and one block of 4 columns and a label term (~2.1 MB) fit; 3 blocks do not.
    running = serve(max_job_bytes=len(public_context_bytes) + 3 * MiB)
    create_job(running.stub, public_context_bytes, parties=2)

    too_many = stats_request(public_context, "job-1", "kh", rows=3 * 4096)
    code, details = _code(lambda: running.stub.SubmitStats(too_many))

    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The context (3.2 MB, its size varies with its keys) and 13 ciphertexts of ~426 KB.
    assert re.search(r"bring job job-1 to 12,288 rows, about 8\.\d MiB with its context", details)
    assert "this coordinator stores at most" in details and "(max_job_bytes)" in details
    running.stub.SubmitStats(stats_request(public_context, "job-1", "kh", rows=4096))


def test_uploads_beyond_the_job_bytes_are_refused(
    serve: Callable[..., RunningCoordinator],
    private_context: ts.Context,
    public_context: ts.Context,
    public_context_bytes: bytes,
) -> None:
    """Within the estimate a party may still send more than it needs (the same column again
    and again): the job's byte budget stops that."""
    running = serve(max_job_bytes=len(public_context_bytes) + 5 * MiB)
    create_job(running.stub, public_context_bytes, parties=2)
    session = start_key_holder(running.stub, key_holder(private_context))
    try:
        to_uploading(running.stub, public_context)

        def again_and_again() -> Iterator[pb.UploadChunk]:
            for seq in itertools.count():
                yield pb.UploadChunk(
                    job_id="job-1", party="h2", seq=seq, columns=[column(public_context)]
                )

        code, details = _code(lambda: running.stub.Upload(again_and_again(), timeout=60))
    finally:
        session.stop()

    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "more from party 'h2' exceed its" in details and "(max_job_bytes)" in details


def test_one_upload_stream_carries_one_partys_chunks_for_one_job(
    coordinator: RunningCoordinator,
    private_context: ts.Context,
    public_context: ts.Context,
    public_context_bytes: bytes,
) -> None:
    create_job(coordinator.stub, public_context_bytes, parties=2)
    session = start_key_holder(coordinator.stub, key_holder(private_context))
    try:
        to_uploading(coordinator.stub, public_context)
        first = pb.UploadChunk(job_id="job-1", party="h2", seq=0, columns=[column(public_context)])
        other = pb.UploadChunk(job_id="job-1", party="kh", seq=1)

        code, details = _code(lambda: coordinator.stub.Upload(iter([first, other])))
    finally:
        session.stop()

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "upload chunk 1 is 'kh''s for 'job-1'; one upload stream carries 'h2''s" in details


def test_a_key_holder_answer_is_read_only_up_to_what_the_job_needs(
    coordinator: RunningCoordinator, public_context_bytes: bytes
) -> None:
    create_job(coordinator.stub, public_context_bytes, parties=2)
    sent = itertools.count()

    def endless() -> Iterator[pb.TaskChunk]:
        for index in sent:
            yield pb.TaskChunk(
                job_id="job-1", party="kh", task_id=1, index=index, count=2**31, data=b"\0" * MiB
            )

    code, details = _code(lambda: coordinator.stub.CompleteTask(endless(), timeout=60))

    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "job job-1: a key-holder answer of more than" in details
    assert next(sent) < 64


# ----- deadlines ------------------------------------------------------------------------------


def test_a_job_whose_parties_never_come_fails_naming_them(
    serve: Callable[..., RunningCoordinator], public_context_bytes: bytes
) -> None:
    running = serve(join_timeout_s=0.3)
    create_job(running.stub, public_context_bytes, parties=3)

    failed = watch_until(running.stub, pb.FAILED)

    assert failed.message == (
        "DeadlineExceeded: job job-1 expired: the parties did not all join and send statistics "
        "within 0.3 s (join_timeout_s): waiting for kh to send statistics, 2 more parties to join"
    )
    code, _ = _code(
        lambda: running.stub.JoinJob(pb.JoinJobRequest(job_id="job-1", party=hello("h2")))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    # The site's open job is over: it may create another.
    create_job(running.stub, public_context_bytes, job_id="job-2")


def test_a_job_in_which_nothing_happens_fails_when_idle(
    serve: Callable[..., RunningCoordinator], public_context_bytes: bytes
) -> None:
    running = serve(idle_timeout_s=0.3)
    create_job(running.stub, public_context_bytes, parties=2)

    failed = watch_until(running.stub, pb.FAILED)

    assert "nothing happened in it for 0.3 s (idle_timeout_s)" in failed.message


class RecordingPools:
    """In-process workers whose release is seen: an event per pool shut down."""

    def __init__(self) -> None:
        self.made = 0
        self.released = threading.Event()

    def __call__(
        self,
        context_bytes: bytes,
        parameter_set: str,
        job_root: str,
        layout: PackingLayout,
        cols: int,
    ) -> GradientPool:
        self.made += 1
        pool = in_process_pool_factory()(context_bytes, parameter_set, job_root, layout, cols)
        shutdown = pool.shutdown

        def release() -> None:
            shutdown()
            self.released.set()

        pool.shutdown = release  # type: ignore[method-assign]
        return pool


def test_uploads_past_their_deadline_fail_the_job_and_release_its_workers(
    tmp_path: Path,
    private_context: ts.Context,
    public_context: ts.Context,
    public_context_bytes: bytes,
) -> None:
    pools = RecordingPools()
    running = RunningCoordinator(tmp_path, pools, limits=Limits(upload_timeout_s=0.5))
    create_job(running.stub, public_context_bytes, parties=2)
    session = start_key_holder(running.stub, key_holder(private_context))
    try:
        to_uploading(running.stub, public_context)

        failed = watch_until(running.stub, pb.FAILED)
        released = pools.released.wait(timeout=60)
    finally:
        session.stop()
        running.stop()

    assert failed.message == (
        "DeadlineExceeded: job job-1 expired: the uploads did not complete within 0.5 s "
        "(upload_timeout_s): waiting for kh's upload (4 of 4 column ciphertexts and the label "
        "term missing), h2's upload (4 of 4 column ciphertexts and the label term missing); its "
        "workers are released"
    )
    assert pools.made == 1 and released


# ----- streams that cannot starve the server ----------------------------------------------------


def test_idle_watchers_of_one_site_do_not_stop_another_sites_job(
    serve: Callable[..., RunningCoordinator],
    private_context: ts.Context,
    public_context: ts.Context,
    public_context_bytes: bytes,
) -> None:
    """Before the gate, 32 idle WatchJob streams took the server's 32 threads and froze every
    job. Here a site opens 40 on a server of 16 threads: it keeps 5 (its share), the others are
    refused at once, and another site's job trains to the end meanwhile."""
    running = serve(server_threads=16, max_streams=14, max_streams_per_site=5)
    create_job(running.stub, public_context_bytes, job_id="squat", key_holder="squatter")
    request = pb.WatchJobRequest(job_id="squat", party="squatter")
    held, refused = [], []
    for _ in range(40):
        call = running.stub.WatchJob(request, timeout=120)
        try:
            next(call)  # the first status: this stream holds a thread and waits
            held.append(call)
        except grpc.RpcError as err:
            refused.append(err)

    create_job(running.stub, public_context_bytes, options=pb.TrainingOptions(iterations=2))
    session = start_key_holder(running.stub, key_holder(private_context))
    try:
        to_uploading(running.stub, public_context)
        for party in ("kh", "h2"):
            running.stub.Upload(whole_upload(public_context, party), timeout=120)
        done = watch_until(running.stub, pb.DONE)
    finally:
        session.stop()
        for call in held:
            call.cancel()

    assert done.iteration == 2
    assert len(held) == 5 and len(refused) == 35
    assert {err.code() for err in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert all(
        "'squatter' already holds 5 open streams (max_streams_per_site)" in err.details()  # type: ignore[attr-defined]
        for err in refused
    )


def test_streams_never_take_the_threads_unary_calls_need(
    serve: Callable[..., RunningCoordinator], public_context_bytes: bytes
) -> None:
    """Idle uploads that never send a chunk (so without TLS they name nobody) fill the stream
    budget and no more: further streams are refused, unary calls are still answered."""
    running = serve(server_threads=6, max_streams=4, max_streams_per_site=4, max_streams_per_job=4)
    create_job(running.stub, public_context_bytes)
    release = threading.Event()
    refused = threading.Semaphore(0)

    def silent() -> Iterator[pb.UploadChunk]:
        release.wait(timeout=120)
        return
        yield

    uploads = [running.stub.Upload.future(silent(), timeout=120) for _ in range(10)]
    for upload in uploads:
        upload.add_done_callback(lambda _: refused.release())
    try:
        for _ in range(6):
            assert refused.acquire(timeout=60)
        answered = running.stub.ListJobs(pb.ListJobsRequest(), timeout=60)
        code, details = _code(
            lambda: next(
                running.stub.WatchJob(pb.WatchJobRequest(job_id="job-1", party="kh"), timeout=60)
            )
        )
    finally:
        release.set()

    assert [job.job_id for job in answered.jobs] == ["job-1"]
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "already serves 4 streams (max_streams)" in details
    finished = [u for u in uploads if u.done() and u.exception() is not None]
    assert len(finished) >= 6
    assert all(u.exception().code() == grpc.StatusCode.RESOURCE_EXHAUSTED for u in finished)  # type: ignore[union-attr]


def test_over_tls_a_sites_streams_count_against_it_before_it_sends_anything(
    tmp_path: Path,
) -> None:
    """The site of a stream is its certificate's: a site that opens uploads and never sends a
    chunk holds its share of threads and no more; another site's streams are admitted."""
    provision(tmp_path / "project", parties=["kh", "idler"], coordinator_hosts=("127.0.0.1",))
    limits = Limits(server_threads=10, max_streams=8, max_streams_per_site=3)
    registry = Registry(tmp_path / "work", in_process_pool_factory(), limits=limits)
    server, port = create_server(
        "127.0.0.1:0", registry, tls=TlsFiles.load(tmp_path / "project" / "coordinator")
    )
    server.start()
    channels = {
        site: grpc.secure_channel(
            f"127.0.0.1:{port}",
            channel_credentials(TlsFiles.load(tmp_path / "project" / site)),
            options=chunks.CHANNEL_OPTIONS,
        )
        for site in ("kh", "idler")
    }
    idler, kh = (pb_grpc.CoordinatorStub(channels[site]) for site in ("idler", "kh"))
    release = threading.Event()
    done = threading.Semaphore(0)

    def silent() -> Iterator[pb.UploadChunk]:
        release.wait(timeout=120)
        return
        yield

    try:
        uploads = [idler.Upload.future(silent(), timeout=120) for _ in range(10)]
        for upload in uploads:
            upload.add_done_callback(lambda _: done.release())
        for _ in range(7):
            assert done.acquire(timeout=60)
        refused = [u.exception() for u in uploads if u.done()]
        # kh's stream is admitted (and then finds no such job).
        code, details = _code(
            lambda: kh.Upload(iter([pb.UploadChunk(job_id="nope", party="kh")]), timeout=60)
        )
    finally:
        release.set()
        for channel in channels.values():
            channel.close()
        registry.shutdown()
        server.stop(0).wait()

    assert len(refused) == 7
    assert all(err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for err in refused)  # type: ignore[union-attr]
    assert "'idler' already holds 3 open streams (max_streams_per_site)" in refused[0].details()  # type: ignore[union-attr]
    assert code == grpc.StatusCode.NOT_FOUND and "'nope'" in details
