"""The coordinator killed during a collective (n-of-n) training, on real processes: ``hefl
coordinator`` (its own local Ray, 2 workers) and three ``hefl party`` processes, each holding a
key share, over mutual TLS on loopback, training breast cancer. The coordinator is killed
(SIGKILL) with a refresh in flight and restarted on the same work directory and address; the
parties keep running, reconnect, and every one of them gets the float64 replica's model. The job
directory as the killed coordinator left it does not restore once its context or the roster's
signatures over it are altered."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.limits import Limits
from coordinator.persistence import restore_job
from hefl.params import DEFAULT_PARAMETER_SET, get_parameter_set
from hefl.v1 import hefl_pb2 as pb
from tests.deployment import (
    JOB,
    ROSTER,
    WAIT_S,
    Deployment,
    assert_the_roster_resumed,
    prepare,
)
from tests.helpers import COLLECTIVE_BOUND as BOUND

pytestmark = pytest.mark.slow
ITERATIONS = 8
KILL_AFTER = 3  # iterations done when the coordinator is killed, at least


@dataclass(frozen=True)
class Killed:
    deployment: Deployment
    journal: dict  # the collective journal as the killed coordinator left it
    left: Path  # a copy of the job directory as the killed coordinator left it


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Killed]:
    """The job, its coordinator killed once refresh 3 or a later one is in flight (written
    ahead; some parties may have answered it) and restarted; every party has ended."""
    root = tmp_path_factory.mktemp("collective-faults")
    project, label = prepare(root)
    deployment = Deployment(root, project, label)
    try:
        deployment.start_parties(iterations=ITERATIONS, trust="collective")
        deadline = time.monotonic() + WAIT_S
        while not _refresh_in_flight(deployment.journal(collective=True)):
            assert time.monotonic() < deadline, f"never saw refresh {KILL_AFTER}"
            time.sleep(0.01)
        deployment.kill_coordinator()
        journal = deployment.journal(collective=True)
        assert journal is not None
        left = root / "left" / JOB
        shutil.copytree(deployment.workdir / "jobs" / JOB, left)
        deployment.start_coordinator()
        deployment.wait_for_parties()
        yield Killed(deployment, journal, left)
    finally:
        deployment.stop()


def test_the_coordinator_killed_mid_training_resumes_the_collective_job(killed):
    """The step in flight is sent again byte for byte, a party that had answered it answers
    from its cache, and every party makes one share per iteration."""
    deployment, journal = killed.deployment, killed.journal
    codes = {name: process.returncode for name, process in deployment.parties.items()}

    assert codes == dict.fromkeys(ROSTER, 0), deployment.log_tail()
    assert journal["step"] == "refresh"
    resumed = (
        f"resuming collective training after {journal['done']} of {ITERATIONS} iterations "
        f"(refresh {journal['done']} in flight)"
    )
    assert resumed in deployment.coordinator_log.read_text()
    assert_the_roster_resumed(deployment, ITERATIONS, BOUND)


def _swap_signatures(root: Path) -> None:
    path = root / "collective" / "keys.json"
    keys = json.loads(path.read_text())
    signatures = keys["context_signatures"]
    signatures[ROSTER[0]], signatures[ROSTER[1]] = signatures[ROSTER[1]], signatures[ROSTER[0]]
    path.write_text(json.dumps(keys))


def _other_context(root: Path) -> None:
    """Another public context of the same parameters: it loads and passes as public."""
    context = get_parameter_set(DEFAULT_PARAMETER_SET).make_context()
    data = context.serialize(save_secret_key=False, save_galois_keys=False)
    (root / "context.bin").write_bytes(data)


@pytest.mark.parametrize(
    ("alter", "reason"),
    [
        (lambda root: None, None),
        (_swap_signatures, f"context.bin is not the context {ROSTER[0]!r} signed"),
        (_other_context, f"context.bin is not the context {ROSTER[0]!r} signed"),
        (
            lambda root: (root / "collective" / "keys.json").unlink(),
            "collective/keys.json: ",
        ),
    ],
    ids=["as-left", "signatures-swapped", "another-context", "keys-record-missing"],
)
def test_the_job_directory_restores_only_with_the_context_every_party_signed(
    killed, tmp_path: Path, alter: Callable[[Path], None], reason: str | None
):
    root = tmp_path / JOB
    shutil.copytree(killed.left, root)
    alter(root)

    job = restore_job(root, limits=Limits())

    if reason is None:
        assert job.phase == pb.TRAINING and job.collective_keys is not None
    else:
        assert job.phase == pb.FAILED
        assert reason in job.message, job.message


def _refresh_in_flight(journal: dict | None) -> bool:
    return journal is not None and journal["step"] == "refresh" and journal["done"] >= KILL_AFTER
