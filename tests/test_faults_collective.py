"""The coordinator killed during a collective (n-of-n) training, on real processes: ``hefl
coordinator`` (its own local Ray, 2 workers) and three ``hefl party`` processes, each holding a
key share, over mutual TLS on loopback, training breast cancer. The coordinator is killed
(SIGKILL) with a refresh in flight and restarted on the same work directory and address; the
parties keep running, reconnect, and every one of them gets the float64 replica's model."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hefl.algorithm import add_bias, choose_hyperparameters, standardize, train_replica
from hefl.codec import AggregateStats
from parties.collective import STEPS
from tests.deployment import ROSTER, WAIT_S, Deployment, prepare
from tools.simulate import SimulationConfig, load_dataset, partition

pytestmark = pytest.mark.slow
ITERATIONS = 8
KILL_AFTER = 3  # iterations done when the coordinator is killed, at least
BOUND = 5e-3  # the collective model against its float64 replica (tests/test_collective_job.py)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    project, label = prepare(tmp_path)
    started = Deployment(tmp_path, project, label)
    yield started
    started.stop()


def test_the_coordinator_killed_mid_training_resumes_the_collective_job(deployment):
    """Killed once refresh 3 or a later one is in flight (written ahead; some parties may have
    answered it), restarted: the step in flight is sent again byte for byte, a party that had
    answered it answers from its cache, and every party makes one share per iteration."""
    deployment.start_parties(iterations=ITERATIONS, trust="collective")
    deadline = time.monotonic() + WAIT_S
    while not _refresh_in_flight(deployment.journal(collective=True)):
        assert time.monotonic() < deadline, f"never saw refresh {KILL_AFTER}"
        time.sleep(0.01)
    deployment.kill_coordinator()
    journal = deployment.journal(collective=True)  # as the killed coordinator left it
    deployment.start_coordinator()
    codes = deployment.wait_for_parties()

    assert codes == dict.fromkeys(ROSTER, 0), deployment.log_tail()
    assert journal is not None and journal["step"] == "refresh"
    resumed = (
        f"resuming collective training after {journal['done']} of {ITERATIONS} iterations "
        f"(refresh {journal['done']} in flight)"
    )
    assert resumed in deployment.coordinator_log.read_text()
    weights = deployment.weights(ROSTER[0])
    np.testing.assert_allclose(weights, _replica(), atol=BOUND)
    for name in ROSTER:
        np.testing.assert_array_equal(deployment.weights(name), weights, err_msg=name)
        result = deployment.result(name)
        assert result["reconnects"] >= 1, name
        # Every step taken once, one share per iteration: the refresh in flight, if this party
        # had answered it, came again from its cache; nothing was refused.
        assert result["key_holder_tasks"] == {**dict.fromkeys(STEPS, 1), "refresh": ITERATIONS}
        assert result["key_holder_repeats"] <= 1, name


def _refresh_in_flight(journal: dict | None) -> bool:
    return journal is not None and journal["step"] == "refresh" and journal["done"] >= KILL_AFTER


def _replica() -> np.ndarray:
    config = SimulationConfig(parties=len(ROSTER), seed=0)
    train = partition(load_dataset(config), config).train_union
    stats = AggregateStats.of_rows(train.features)
    hyper = choose_hyperparameters(curvature=stats.curvature, iterations=ITERATIONS)
    features = add_bias(standardize(train.features, stats.mean, stats.std))
    return train_replica(features, train.labels, hyper).weights
