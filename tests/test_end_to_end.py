"""`hefl simulate` as a user runs it: separate processes, real gRPC, real Ray, real TenSEAL."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import grpc
import numpy as np
import pytest
import tenseal as ts

from coordinator.registry import Registry
from coordinator.server import CoordinatorConfig, create_server, ray_pool_factory
from hefl import chunks, sealio
from hefl.algorithm import add_bias, choose_hyperparameters, standardize, train_replica
from hefl.codec import AggregateStats
from hefl.protocols.collective.keyswitch import REVEAL_SCALE_BITS
from hefl.v1 import hefl_pb2 as pb
from hefl.v1 import hefl_pb2_grpc as pb_grpc
from hefl.validate import ANY
from tests.helpers import COLLECTIVE_BOUND, KEY_HOLDER_BOUND
from tools.simulate import SimulationConfig, load_dataset, partition

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def _simulate(workdir: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    report = workdir / "report.json"
    command = [
        sys.executable,
        "-m",
        "tools.cli",
        "simulate",
        "--workdir",
        str(workdir),
        "--report",
        str(report),
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "accuracy  encrypted | plaintext" in result.stdout
    return json.loads(report.read_text())


@pytest.fixture(scope="module")
def collective_run(tmp_path_factory) -> tuple[Path, dict]:
    """The README's quick start: collective mode is the default."""
    workdir = tmp_path_factory.mktemp("simulate-collective")
    return workdir, _simulate(
        workdir, "--parties", "3", "--dataset", "breast-cancer", "--seed", "0"
    )


@pytest.fixture(scope="module")
def key_holder_run(tmp_path_factory) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("simulate-key-holder")
    return workdir, _simulate(
        workdir, "--parties", "3", "--dataset", "breast-cancer", "--seed", "0",
        "--trust", "key-holder",
    )  # fmt: skip


@pytest.fixture(scope="module", params=["collective", "key-holder"])
def three_hospitals(request) -> tuple[Path, dict]:
    return request.getfixturevalue(request.param.replace("-", "_") + "_run")


def test_collective_mode_learns_what_key_holder_mode_learns(collective_run, key_holder_run):
    """Same data, split and algorithm; only who can decrypt differs."""
    (_, collective), (_, key_holder) = collective_run, key_holder_run
    assert collective["config"]["trust"] == "collective"
    assert key_holder["config"]["trust"] == "key-holder"
    assert abs(collective["encrypted"]["accuracy"] - key_holder["encrypted"]["accuracy"]) <= 0.01
    assert abs(collective["encrypted"]["auc"] - key_holder["encrypted"]["auc"]) <= 0.005
    np.testing.assert_allclose(
        collective["encrypted"]["weights"], key_holder["encrypted"]["weights"], atol=1e-2
    )


def test_three_hospitals_match_plaintext_on_breast_cancer(three_hospitals):
    _, report = three_hospitals
    assert report["parties"] == 3
    assert report["n_train"] == 455 and report["n_test"] == 114 and report["n_features"] == 30
    assert report["encrypted"]["accuracy"] >= 0.93
    assert report["encrypted"]["accuracy"] >= report["plaintext"]["accuracy"] - 0.03
    assert report["encrypted"]["auc"] >= report["plaintext"]["auc"] - 0.01
    assert report["encrypted"]["iterations"] >= 1
    for key in ("total", "keygen", "encrypt", "upload", "train", "refresh"):
        assert report["timings_s"][key] >= 0.0
    # The job proper fits in the whole run and contains the training.
    assert report["timings_s"]["train"] < report["timings_s"]["job"] < report["timings_s"]["total"]
    assert report["bytes"]["upload"] > 0 and report["bytes"]["per_iteration"] > 0
    # Every party evaluated the same delivered model on its own held-out rows.
    assert all(a is not None and a > 0.8 for a in report["encrypted"]["party_accuracy"])


def test_encrypted_model_is_the_plaintext_replica(three_hospitals):
    """Same statistics, step size and weights as hefl's algorithm replayed in float64."""
    _, report = three_hospitals
    config = SimulationConfig(parties=3, seed=0)
    train = partition(load_dataset(config), config).train_union
    stats = AggregateStats.of_rows(train.features)
    encrypted = report["encrypted"]
    assert encrypted["curvature"] == pytest.approx(stats.curvature, rel=1e-4)
    hyper = choose_hyperparameters(curvature=stats.curvature)
    got, want = dict(encrypted["hyperparameters"]), asdict(hyper)
    assert (got.pop("model"), got.pop("classes")) == (want.pop("model"), want.pop("classes"))
    assert want == pytest.approx(got, rel=1e-4)
    features = add_bias(standardize(train.features, stats.mean, stats.std))
    replica = train_replica(features, train.labels, hyper)
    collective = report["config"]["trust"] == "collective"
    bound = COLLECTIVE_BOUND if collective else KEY_HOLDER_BOUND
    np.testing.assert_allclose(encrypted["weights"], replica.weights, atol=bound)


def test_nothing_the_coordinator_stored_can_decrypt(three_hospitals):
    workdir, report = three_hospitals
    (job_root,) = (workdir / "jobs").iterdir()
    context = ts.context_from((job_root / "context.bin").read_bytes())
    assert not context.has_secret_key() and not context.is_private()
    ciphertexts = [p for p in job_root.rglob("*.bin") if p.parent.name not in ("models",)]
    ciphertexts.remove(job_root / "context.bin")
    assert len(ciphertexts) > 90
    for path in ciphertexts[:20]:
        # Collective jobs' statistics are encrypted at the reveal scale (a smudged decryption).
        revealed = "stats" in path.parts and report["config"]["trust"] == "collective"
        expected = replace(ANY, scale=2.0**REVEAL_SCALE_BITS) if revealed else ANY
        vector = sealio.deserialize(context, path.read_bytes(), what=str(path), expected=expected)
        with pytest.raises(ValueError, match="secret_key"):
            vector.decrypt()
    state = (job_root / "job.json").read_text()
    assert "secret" not in state.lower()


def test_restarted_coordinator_still_serves_the_job(three_hospitals):
    workdir, report = three_hospitals
    collective = report["config"]["trust"] == "collective"
    registry = Registry(workdir, ray_pool_factory(CoordinatorConfig(workdir=workdir)))
    server, port = create_server("127.0.0.1:0", registry, tls=None)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=chunks.CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.CoordinatorStub(channel)
            (status,) = stub.ListJobs(pb.ListJobsRequest()).jobs
            assert status.phase == pb.DONE
            assert sorted(status.parties) == ["hospital-0", "hospital-1", "hospital-2"]
            request = pb.GetModelRequest(job_id=status.job_id, party="hospital-1")
            if collective:
                # The parties got the model from each other's mask shares: none is here.
                with pytest.raises(grpc.RpcError) as refused:
                    stub.GetModel(request)
                assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert not (next(iter((workdir / "jobs").iterdir())) / "models").exists()
                return
            sealed = stub.GetModel(request)
            assert sealed.party == "hospital-1" and len(sealed.ciphertext) > 100
    finally:
        registry.shutdown()
        server.stop(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_coordinator_joins_a_multi_node_ray_cluster_on_loopback(tmp_path):
    """`ray start --head`, then a second `ray start --address` with its own temp dir, both on
    127.0.0.1 with one CPU each; the coordinator joins with --ray-address and its two workers
    can only fit one per node."""
    port = _free_port()
    # Ray's unix sockets live under the temp dir: keep it short (108-byte socket path limit).
    short = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    env = dict(
        os.environ,
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
    )

    def start_node(*args: str) -> subprocess.Popen[bytes]:
        command = [sys.executable, str(ROOT / "tests" / "ray_loopback.py"), "start", *args,
                   "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                   "--disable-usage-stats", "--block"]  # fmt: skip
        return subprocess.Popen(
            command, env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    nodes = [
        start_node(
            "--head",
            "--port",
            str(port),
            "--include-dashboard",
            "false",
            "--temp-dir",
            str(short / "h"),
        )  # fmt: skip
    ]
    try:
        time.sleep(6)
        nodes.append(start_node("--address", f"127.0.0.1:{port}", "--temp-dir", str(short / "n")))
        time.sleep(6)
        report = _simulate(
            tmp_path / "work",
            "--parties",
            "2",
            "--synthetic",
            "12000x8",
            "--ray-address",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--iterations",
            "6",
            env=env,
        )
        assert report["workers"] == 2 and report["blocks"] == 3
        assert report["encrypted"]["accuracy"] >= report["plaintext"]["accuracy"] - 0.03
    finally:
        for node in reversed(nodes):
            os.killpg(node.pid, signal.SIGKILL)
            node.wait(timeout=30)
        shutil.rmtree(short, ignore_errors=True)
