"""Several hosts on one machine: the Ray head on a private bridge, three Ray worker nodes each in
its own network namespace (reaching the head only over that bridge) and its own mount namespace
(where the coordinator's directories are covered by an empty tmpfs), token authentication on.
`hefl coordinator --ray-address` joins that cluster, three `hefl party` processes train breast
cancer over mutual TLS, and the workers, which cannot read the job directory, get their shards
through Ray. One worker node is killed mid-training; its worker is restarted on the spare node,
gets its shards again, and the job ends with the float64 replica's model.

Placement is read from Ray's actor table (the GCS) by a separate Ray driver, and the workers'
own processes are inspected for what they can see (``nsenter`` into their namespaces).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hefl.v1 import hefl_pb2 as pb
from tests.deployment import JOB, ROSTER, Deployment, free_port, prepare, replica_weights
from tests.namespaces import PrivateNetwork, RayHead, RayNode, namespaces_refused

pytestmark = pytest.mark.slow
ITERATIONS = 15
BOUND = 2e-3  # the encrypted model against its float64 replica (README, "Accuracy")

_ACTORS = """
import json, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
print(json.dumps([
    {"ip": a["Address"]["IPAddress"], "pid": a["Pid"], "state": a["State"],
     "restarts": a.get("NumRestarts", 0)}
    for a in ray._private.state.actors().values()
    if a["ActorClassName"].endswith("ShardWorker") and a["State"] in sys.argv[2].split(",")
]))
"""


class Cluster:
    """The private network, the head and the worker nodes, and the environment that joins them."""

    def __init__(self, root: Path, hidden: Path) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="hefl-mh-", dir="/tmp"))
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("RAY_AUTH") and k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
        }
        self.env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        # The head declares a node dead after ~10 s without health checks (Ray's default: ~30 s).
        head_env = self.env | {
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "10",
        }
        self.network = PrivateNetwork(3)
        self.nodes: list[RayNode] = []
        try:
            self.head = RayHead(
                address=self.network.head_ip, port=free_port(), temp=self.temp, env=head_env
            )
            self.head.wait_until_up()
            for k, (namespace, address) in enumerate(
                zip(self.network.namespaces, self.network.node_ips, strict=True)
            ):
                self.nodes.append(
                    RayNode(
                        namespace=namespace,
                        address=address,
                        head=self.head.address,
                        hidden=[hidden],
                        temp=self.temp / f"node-{k}",
                        log=root / f"ray-node-{k}.log",
                        env=self.env,
                    )
                )
            for node in self.nodes:
                node.wait_until_up()
        except BaseException:
            self.close()
            raise

    def workers(self, *, states: str = "ALIVE") -> list[dict[str, Any]]:
        """The shard workers in these states (``ALIVE,DEAD``), from Ray's actor table: where
        each runs or last ran, its process and how often Ray restarted it."""
        out = subprocess.run(
            [sys.executable, "-c", _ACTORS, self.head.address, states],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return list(json.loads(out.stdout.strip().splitlines()[-1]))

    def node_at(self, address: str) -> RayNode:
        (node,) = [n for n in self.nodes if n.address == address]
        return node

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
        if hasattr(self, "head"):
            self.head.stop()
        self.network.close()
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    refused = namespaces_refused()
    if refused:
        pytest.skip(f"this machine refuses namespaces: {refused}")
    made = Cluster(tmp_path, hidden=tmp_path)
    yield made
    made.close()


def _sees(pid: int, *command: str) -> subprocess.CompletedProcess[str]:
    """``command`` run in the network and mount namespaces of process ``pid``."""
    return subprocess.run(
        ["nsenter", "--target", str(pid), "--mount", "--net", *command],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_workers_on_other_hosts_train_without_the_job_directory_and_survive_a_lost_node(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project, label = prepare(tmp_path)
    for name, value in cluster.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    deployment = Deployment(
        tmp_path,
        project,
        label,
        coordinator_flags=("--ray-address", cluster.head.address, "--workers", "2"),
    )
    try:
        deployment.start_parties(iterations=ITERATIONS)
        deployment.wait_until(lambda s: s.phase == pb.TRAINING and s.iteration >= 2)
        workers = cluster.workers()

        # Placed on two of the three worker nodes (the head has no CPU for them).
        assert len(workers) == 2, workers
        placed = sorted(w["ip"] for w in workers)
        assert len(set(placed)) == 2 and set(placed) <= set(cluster.network.node_ips), placed
        job_directory = deployment.workdir / "jobs" / JOB
        assert (job_directory / "context.bin").is_file()
        for worker in workers:
            # A worker's own process sees none of the job directory, and no network but the
            # private one.
            seen = _sees(worker["pid"], "ls", "-A", str(tmp_path))
            assert seen.returncode == 0 and seen.stdout.strip() == "", seen
            addresses = _sees(worker["pid"], "ip", "-4", "-o", "addr").stdout
            assert f"inet {worker['ip']}/24" in addresses, addresses
            assert sorted(line.split()[1] for line in addresses.splitlines()) == ["eth0", "lo"]
        assert "nodes: " + ", ".join(f"{ip} (1)" for ip in placed) in deployment.log_tail(200)

        victim = workers[0]
        cluster.node_at(victim["ip"]).kill()
        final = deployment.wait_until(lambda s: s.phase in (pb.DONE, pb.FAILED))
        after = cluster.workers(states="ALIVE,DEAD")  # the job's end released them
    finally:
        deployment.stop()

    assert final.phase == pb.DONE, f"{final.message}\n{deployment.log_tail()}"
    assert final.iteration == ITERATIONS
    assert deployment.wait_for_parties() == dict.fromkeys(ROSTER, 0)
    spare = set(cluster.network.node_ips) - set(placed)
    assert sorted(w["ip"] for w in after) == sorted(spare | (set(placed) - {victim["ip"]}))
    assert max(w["restarts"] for w in after) == 1
    assert "restarted by Ray hold no shards" in deployment.log_tail(400)
    replica = replica_weights(ITERATIONS)
    for name in ROSTER:
        np.testing.assert_allclose(deployment.weights(name), replica, atol=BOUND, err_msg=name)
