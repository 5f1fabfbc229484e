"""Faults injected during training, on real processes: the coordinator (``hefl coordinator``,
with its own local Ray, 2 workers) and three parties (``hefl party``) over mutual TLS on
loopback, training breast cancer for 15 iterations. A run that survives its fault must give
every remaining party the fault-free run's model, within the float64 replica's bound (2e-3); a
fault that cannot be survived must fail the job with a clear message to every party."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest

from hefl.v1 import hefl_pb2 as pb
from tests.deployment import KEY_HOLDER, ROSTER, WAIT_S, Deployment, prepare, replica_weights

pytestmark = pytest.mark.slow
ITERATIONS = 15
BOUND = 2e-3  # the encrypted model against its float64 replica (README, "Accuracy")
OTHERS = tuple(name for name in ROSTER if name != KEY_HOLDER)


@dataclass(frozen=True)
class Prepared:
    project: Path
    label: str
    data: Path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    root = tmp_path_factory.mktemp("faults-data")
    project, label = prepare(root)
    return Prepared(project, label, root / "data")


@pytest.fixture
def deploy(prepared: Prepared, tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    """Starts a deployment (coordinator first) in this test's directory; stops what is left."""
    started: list[Deployment] = []

    def make(**kwargs: object) -> Deployment:
        (tmp_path / "data").symlink_to(prepared.data)
        deployment = Deployment(tmp_path, prepared.project, prepared.label, **kwargs)  # type: ignore[arg-type]
        started.append(deployment)
        return deployment

    yield make
    for deployment in started:
        deployment.stop()


@pytest.fixture(scope="module")
def fault_free(prepared: Prepared, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The model of the same job without faults, which is itself the float64 replica's."""
    root = tmp_path_factory.mktemp("fault-free")
    (root / "data").symlink_to(prepared.data)
    deployment = Deployment(root, prepared.project, prepared.label)
    try:
        deployment.start_parties(iterations=ITERATIONS)
        assert deployment.wait_for_parties() == dict.fromkeys(ROSTER, 0)
    finally:
        deployment.stop()
    weights = deployment.weights(KEY_HOLDER)
    for name in OTHERS:
        np.testing.assert_array_equal(deployment.weights(name), weights)
    np.testing.assert_allclose(weights, replica_weights(ITERATIONS), atol=BOUND)
    return weights


def _until(found: Callable[[], object], what: str) -> object:
    """Poll ``found()`` until it returns something (a hang guard, not a timing)."""
    deadline = time.monotonic() + WAIT_S
    while (value := found()) is None:
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.01)
    return value


def _training(at_least: int) -> Callable[[pb.JobStatus], bool]:
    return lambda s: s.phase == pb.TRAINING and s.iteration >= at_least


def _assert_same_model(deployment: Deployment, fault_free: np.ndarray, parties=ROSTER) -> None:
    for name in parties:
        np.testing.assert_allclose(deployment.weights(name), fault_free, atol=BOUND, err_msg=name)


def test_a_ray_worker_killed_mid_iteration_is_restarted_and_the_iteration_retried(
    deploy, fault_free
):
    deployment = deploy()
    deployment.start_parties(iterations=ITERATIONS)
    deployment.wait_until(_training(2))
    before = {p.pid for p in deployment.workers()}

    def busy() -> psutil.Process | None:  # a worker inside a call (Ray names it after the call)
        running = [p for p in deployment.workers() if _title(p).startswith("ray::ShardWorker.")]
        return running[0] if running else None

    victim = _until(busy, "a worker computing")
    assert isinstance(victim, psutil.Process)
    victim.kill()
    _until(lambda: {p.pid for p in deployment.workers()} - before or None, "the restarted worker")
    final = deployment.wait_until(lambda s: s.phase in (pb.DONE, pb.FAILED))

    assert final.phase == pb.DONE, final.message
    assert final.iteration == ITERATIONS
    assert deployment.wait_for_parties() == dict.fromkeys(ROSTER, 0)
    _assert_same_model(deployment, fault_free)


def test_the_coordinator_killed_with_a_refresh_in_flight_resumes_where_it_stopped(
    deploy, fault_free
):
    """The coordinator is killed once refresh 3 or a later one is in flight (written ahead;
    the key holder may or may not have answered it), and restarted on the same work directory
    and address. The parties and the key holder reconnect by themselves; training resumes with
    that refresh, sent again byte for byte, and the key holder refreshes every iteration
    exactly once."""
    deployment = deploy()
    deployment.start_parties(iterations=ITERATIONS)

    def refresh_in_flight() -> dict | None:
        journal = deployment.journal()
        pending = journal and journal["pending"]
        return journal if pending and pending["iteration"] >= 3 else None

    _until(refresh_in_flight, "refresh 3 or a later one in flight")
    deployment.kill_coordinator()
    journal = deployment.journal()  # as the killed coordinator left it
    deployment.start_coordinator()
    codes = deployment.wait_for_parties()

    assert codes == dict.fromkeys(ROSTER, 0), deployment.log_tail()
    _assert_same_model(deployment, fault_free)
    key_holder = deployment.result(KEY_HOLDER)
    assert key_holder["key_holder_tasks"] == {
        "decrypt_stats": 1,
        "setup": 1,
        "refresh": ITERATIONS,
        "finalize": 1,
    }
    assert key_holder["key_holder_repeats"] <= 1  # the refresh in flight, if it was answered
    for name in ROSTER:
        assert deployment.result(name)["reconnects"] >= 1, name
    assert journal is not None and journal["pending"]["kind"] == "refresh"
    resumed = (
        f"resuming training after {journal['done']} of {ITERATIONS} iterations "
        f"(refresh {journal['pending']['iteration']} in flight)"
    )
    assert resumed in deployment.coordinator_log.read_text()


def test_the_key_holders_connection_cut_and_restored(deploy, fault_free):
    deployment = deploy(proxied=KEY_HOLDER)
    deployment.start_parties(iterations=ITERATIONS)
    deployment.wait_until(_training(3))
    assert deployment.proxy is not None
    deployment.proxy.cut()
    _until(
        lambda: (
            "key holder of job faults-1: lost the coordinator" in deployment.party_log(KEY_HOLDER)
            or None
        ),
        "the key holder noticing",
    )
    deployment.proxy.restore()
    codes = deployment.wait_for_parties()

    assert codes == dict.fromkeys(ROSTER, 0), deployment.log_tail()
    _assert_same_model(deployment, fault_free)
    key_holder = deployment.result(KEY_HOLDER)
    assert key_holder["reconnects"] >= 1
    assert key_holder["key_holder_tasks"]["refresh"] == ITERATIONS


def test_a_party_gone_after_its_upload_misses_only_its_own_model(deploy, fault_free):
    deployment = deploy()
    deployment.start_parties(iterations=ITERATIONS)
    deployment.wait_until(_training(1))
    gone = OTHERS[-1]
    deployment.kill_party(gone)
    final = deployment.wait_until(lambda s: s.phase in (pb.DONE, pb.FAILED))
    codes = deployment.wait_for_parties()

    assert final.phase == pb.DONE and final.iteration == ITERATIONS, final.message
    assert codes == {**dict.fromkeys(ROSTER, 0), gone: -9}
    staying = tuple(name for name in ROSTER if name != gone)
    _assert_same_model(deployment, fault_free, staying)


def test_the_key_holder_gone_fails_the_job_for_every_party_with_the_reason(deploy):
    """Its secret key exists nowhere else: past the key-holder deadline the job fails, and
    every remaining party exits non-zero with the coordinator's reason."""
    deployment = deploy(coordinator_flags=("--key-holder-timeout", "10"))
    deployment.start_parties(iterations=ITERATIONS)
    deployment.wait_until(_training(2))
    deployment.kill_party(KEY_HOLDER)
    final = deployment.wait_until(lambda s: s.phase in (pb.DONE, pb.FAILED))
    codes = deployment.wait_for_parties()

    reason = "did not answer task 'refresh' within 10 s (it is not connected)"
    assert final.phase == pb.FAILED and reason in final.message
    assert codes == {**dict.fromkeys(OTHERS, 1), KEY_HOLDER: -9}
    for name in OTHERS:
        assert f"Error: job faults-1 failed: KeyHolderTimeout: the key holder {reason}" in (
            deployment.party_log(name)
        ), name


def _title(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""
