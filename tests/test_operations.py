"""What an operator watches, over the real things: the gRPC health service on the API's mutual-TLS
port and on the plaintext probe port, NOT_SERVING while the coordinator drains (in process, and
on SIGTERM to `hefl coordinator`) and once it has lost its Ray cluster (a real local Ray whose
control store is killed), and the Prometheus endpoint scraped over HTTP while two parties with
their startup kits train a real job."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from coordinator.inprocess_pool import in_process_pool_factory
from coordinator.metrics import IterationTimer, RayCollector
from coordinator.ray_pool import ClusterProbe
from coordinator.server import SERVICE_NAME, Coordinator, CoordinatorConfig
from hefl import chunks
from hefl.identity import TlsFiles, channel_credentials
from hefl.v1 import hefl_pb2 as pb
from hefl.v1 import hefl_pb2_grpc as pb_grpc
from parties.client import PartyConfig, run_party
from parties.data import Dataset, write_csv
from tools.provision import provision

ROSTER = ("st-mary", "st-john")
JOB = "ops-trial-7"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    provision(root, parties=list(ROSTER), coordinator_hosts=("127.0.0.1",))
    rng = np.random.default_rng(11)
    for i, name in enumerate(ROSTER):
        features = rng.normal(size=(60 + 20 * i, 3))
        labels = (features @ [1.0, -1.0, 0.5] > 0).astype(float)
        write_csv(root / f"{name}.csv", Dataset(features, labels, ("a", "b", "c"), "label"))
    return root


@pytest.fixture
def running(project: Path, tmp_path: Path) -> Iterator[Coordinator]:
    config = CoordinatorConfig(
        listen="127.0.0.1:0",
        workdir=tmp_path / "work",
        kit=project / "coordinator",
        health_listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
    )
    coordinator = Coordinator(
        config, in_process_pool_factory(workers=2), tls=TlsFiles.load(project / "coordinator")
    )
    yield coordinator
    coordinator.stop(grace_s=1)


def _tls_channel(project: Path, site: str, port: int) -> grpc.Channel:
    credentials = channel_credentials(TlsFiles.load(project / site))
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=chunks.CHANNEL_OPTIONS)


def _check(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def test_health_answers_on_the_api_port_to_project_certificates_only(project, running):
    with _tls_channel(project, ROSTER[0], running.port) as channel:
        assert _check(channel) == SERVING
        assert _check(channel, SERVICE_NAME) == SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            _check(channel, "no.such.Service")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as plaintext:
        with pytest.raises(grpc.RpcError) as refused:
            _check(plaintext)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_plaintext_probe_port_serves_health_and_nothing_else(running):
    assert running.health_port is not None
    with grpc.insecure_channel(f"127.0.0.1:{running.health_port}") as channel:
        assert _check(channel) == SERVING
        assert _check(channel, SERVICE_NAME) == SERVING
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.CoordinatorStub(channel).ListJobs(pb.ListJobsRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_draining_turns_health_not_serving_before_the_ports_close(project, tmp_path):
    coordinator = Coordinator(
        CoordinatorConfig(
            listen="127.0.0.1:0", workdir=tmp_path / "work", health_listen="127.0.0.1:0"
        ),
        in_process_pool_factory(workers=1),
        tls=TlsFiles.load(project / "coordinator"),
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{coordinator.health_port}")
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=60
    )
    try:
        assert next(watch).status == SERVING
        stopping = threading.Thread(target=coordinator.stop, kwargs={"grace_s": 1})
        stopping.start()
        assert next(watch).status == NOT_SERVING
        stopping.join(timeout=30)
        assert not stopping.is_alive()
    finally:
        watch.cancel()
        channel.close()


Sample = tuple[str, tuple[tuple[str, str], ...]]


def _exposition(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def _scrape(port: int) -> dict[Sample, float]:
    """Every sample of the endpoint, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(_exposition(port))
        for sample in family.samples
    }


def _rpc(name: str, method: str, **labels: str) -> Sample:
    kinds = {
        "CreateJob": "client_stream",
        "Upload": "client_stream",
        "WatchJob": "server_stream",
        "JoinJob": "unary",
    }
    every = {
        "grpc_type": kinds[method],
        "grpc_service": SERVICE_NAME,
        "grpc_method": method,
        **labels,
    }
    return name, tuple(sorted(every.items()))


def test_metrics_follow_a_real_job(project, running):
    assert running.metrics_port is not None
    before = _scrape(running.metrics_port)
    assert before[("hefl_jobs", (("phase", "DONE"),))] == 0
    assert before[("hefl_workers", ())] == 0

    outcome: dict[str, BaseException | None] = {}

    def party(name: str) -> None:
        config = PartyConfig(
            coordinator=f"127.0.0.1:{running.port}",
            data=project / f"{name}.csv",
            label="label",
            kit=project / name,
            roster=ROSTER,
            job=JOB,
            key_holder=name == ROSTER[0],
            iterations=3,
            join_timeout_s=60,
            reconnect_s=5,
        )
        try:
            run_party(config)
            outcome[name] = None
        except BaseException as err:
            outcome[name] = err

    threads = [threading.Thread(target=party, args=(n,), daemon=True) for n in ROSTER]
    for thread in threads:
        thread.start()
    # Scraped while the job runs: the workers exist from the uploads to the model.
    workers_seen = 0.0
    while any(thread.is_alive() for thread in threads):
        workers_seen = max(workers_seen, _scrape(running.metrics_port)[("hefl_workers", ())])
        time.sleep(0.02)
    assert outcome == dict.fromkeys(ROSTER)

    after = _scrape(running.metrics_port)
    # One block of rows: the in-process pool makes one worker of the two it may.
    assert workers_seen == 1
    assert after[("hefl_workers", ())] == 0
    assert after[("hefl_jobs", (("phase", "DONE"),))] == 1
    assert after[("hefl_jobs", (("phase", "TRAINING"),))] == 0
    assert after[("hefl_iteration_seconds_count", ())] == 3
    assert after[("hefl_iteration_seconds_sum", ())] > 0
    ok = {"grpc_code": "OK"}
    assert after[_rpc("grpc_server_handled_total", "CreateJob", **ok)] == 1
    assert after[_rpc("grpc_server_handled_total", "JoinJob", **ok)] == 1
    assert after[_rpc("grpc_server_handled_total", "Upload", **ok)] == 2
    # Every upload is a stream of chunks of ciphertexts: megabytes in, a summary out.
    assert after[_rpc("grpc_server_received_bytes_total", "Upload")] > 1_000_000
    assert 0 < after[_rpc("grpc_server_sent_bytes_total", "Upload")] < 1_000
    assert after[_rpc("grpc_server_msg_received_total", "Upload")] >= 2
    assert after[_rpc("grpc_server_msg_sent_total", "WatchJob")] >= 2
    text = _exposition(running.metrics_port)
    for name in (*ROSTER, JOB):
        assert name not in text


def test_an_rpc_refused_is_counted_with_its_status_code(project, running):
    with _tls_channel(project, ROSTER[1], running.port) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.CoordinatorStub(channel).JoinJob(
                pb.JoinJobRequest(job_id="no-such-job"), timeout=10
            )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert running.metrics_port is not None
    after = _scrape(running.metrics_port)
    assert after[_rpc("grpc_server_handled_total", "JoinJob", grpc_code="NOT_FOUND")] == 1


def test_a_resumed_job_only_restarts_the_iteration_clock():
    seen: list[float] = []
    timer = IterationTimer(seen.append)
    timer(5)  # resumed after 5 iterations: not an iteration of its own
    timer(6)
    timer(7)
    assert len(seen) == 2 and all(s >= 0 for s in seen)


@pytest.mark.slow
def test_sigterm_drains_hefl_coordinator_that_joined_ray(tmp_path):
    """Once joined, Ray's driver takes SIGTERM over unless told not to (it aborted the
    coordinator, exit status 134, instead of draining it)."""
    process, health_port, log = _joined_coordinator(tmp_path)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=120
            )
            assert next(watch).status == SERVING
            process.terminate()
            assert next(watch).status == NOT_SERVING
        assert process.wait(timeout=120) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_ray_nodes_are_counted_once_this_process_joined_ray(ray_session):
    samples = {
        (sample.name, tuple(sample.labels.items())): sample.value
        for family in RayCollector().collect()
        for sample in family.samples
    }
    assert samples[("hefl_ray_nodes", (("state", "alive"),))] == 1
    assert samples[("hefl_ray_nodes", (("state", "dead"),))] == 0
    assert samples[("hefl_workers", ())] == 0


def test_health_is_serving_while_the_coordinator_has_its_ray_cluster(ray_session, tmp_path):
    coordinator = Coordinator(
        CoordinatorConfig(
            listen="127.0.0.1:0",
            workdir=tmp_path / "work",
            insecure=True,
            health_listen="127.0.0.1:0",
        ),
        in_process_pool_factory(workers=1),
        tls=None,
        ray_alive=ClusterProbe(),
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{coordinator.health_port}") as channel:
            assert _check(channel) == SERVING
            assert _check(channel, SERVICE_NAME) == SERVING
    finally:
        coordinator.stop(grace_s=0)


@pytest.mark.slow
def test_health_turns_not_serving_when_the_coordinator_loses_its_ray_cluster(tmp_path):
    """`hefl coordinator` with its own local Ray: SERVING once joined; the cluster's control
    store (GCS) killed, the Coordinator service NOT_SERVING (not ready) before Ray's driver
    gives up, while the server as a whole ("", liveness) stays SERVING."""
    process, health_port, log = _joined_coordinator(tmp_path)
    ray_processes: list[psutil.Process] = []
    try:
        # Its local Ray is in a process group of its own: these are what stopping leaves.
        ray_processes = psutil.Process(process.pid).children(recursive=True)
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=120
            )
            assert next(watch).status == SERVING
            (gcs,) = [p for p in ray_processes if p.name() == "gcs_server"]
            gcs.kill()
            assert next(watch).status == NOT_SERVING
            assert _check(channel, SERVICE_NAME) == NOT_SERVING
            assert _check(channel) == SERVING
        assert "NOT_SERVING, the Ray cluster is lost" in log.read_text()
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for leftover in ray_processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()


def _joined_coordinator(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    """`hefl coordinator --insecure` with its own local Ray and a plaintext health port, once
    it has joined Ray: (its process, the health port, its log)."""
    from tests.deployment import free_port

    health_port = free_port()
    log = tmp_path / "coordinator.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tools.cli",
            "coordinator",
            "--insecure",
            "--listen",
            "127.0.0.1:0",
            "--workdir",
            str(tmp_path / "work"),
            "--ray-num-cpus",
            "1",
            "--health-listen",
            f"127.0.0.1:{health_port}",
        ],  # fmt: skip
        cwd=ROOT,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 300
    while "joined Ray" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise AssertionError(f"the coordinator never joined Ray:\n{log.read_text()}")
        time.sleep(0.2)
    return process, health_port, log
