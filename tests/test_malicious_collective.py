"""A malicious coordinator against collective (n-of-n) parties, over real mutual TLS.

hefl's own coordinator, bent where an attacker would bend it: every roster party's task link
tampers with the steps it relays. Three parties (``run_party`` in threads, with their startup
kits) must refuse what their state machine did not agree to (parties/collective.py), with an
error naming it, and the job fails for everyone. Also: n - 1 parties' key shares do not
decrypt an upload."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tenseal as ts

from coordinator.inprocess_pool import in_process_pool_factory
from coordinator.jobs import Job
from coordinator.registry import Registry
from coordinator.servicer import CoordinatorServicer
from hefl import chunks
from hefl.errors import HeflError
from hefl.identity import TlsFiles, server_credentials
from hefl.params import DEFAULT_PARAMETER_SET, PARAMETER_SETS
from hefl.protocols.collective.keyswitch import ciphertext_of
from hefl.v1 import hefl_pb2 as pb
from hefl.v1 import hefl_pb2_grpc as pb_grpc
from parties.client import PartyConfig, PartyFailed, run_party
from parties.data import Dataset, write_csv
from tests.collective_support import PARTIES, collective, decrypt_with, joint_secret
from tools.provision import provision

ROSTER = ("ha", "hb", "hc")
JOB = "trial-collective"

Tamper = Callable[[str, pb.KeyHolderTask], pb.KeyHolderTask]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    provision(root, parties=list(ROSTER), coordinator_hosts=("127.0.0.1",))
    rng = np.random.default_rng(11)
    for i, name in enumerate(ROSTER):
        features = rng.normal(size=(40 + 10 * i, 3))
        labels = (features @ [1.0, -1.0, 0.5] > 0).astype(float)
        write_csv(root / f"{name}.csv", Dataset(features, labels, ("a", "b", "c"), "label"))
    return root


class TamperingRegistry(Registry):
    """Every roster party's task link passes its tasks through ``tamper`` first."""

    def __init__(self, workdir: Path, tamper: Tamper) -> None:
        super().__init__(workdir, in_process_pool_factory(workers=1))
        self._tamper = tamper
        self.answers: list[pb.KeyHolderResult] = []

    def create(self, spec: pb.JobSpec, context_bytes: bytes, *, creator: Any) -> Job:
        job = super().create(spec, context_bytes, creator=creator)
        for party, link in job.links.items():
            honest = link.call

            def call(
                task: pb.KeyHolderTask,
                *,
                timeout_s: float,
                party: str = party,
                honest: Any = honest,
            ) -> pb.KeyHolderResult:
                result: pb.KeyHolderResult = honest(self._tamper(party, task), timeout_s=timeout_s)
                self.answers.append(result)
                return result

            link.call = call  # type: ignore[method-assign]
        return job


def _run(project: Path, tmp_path: Path, tamper: Tamper) -> tuple[dict[str, Any], list]:
    """Every party against the tampering coordinator: what each ended with (its result or its
    error), and every answer the parties gave."""
    registry = TamperingRegistry(tmp_path / "work", tamper)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=chunks.CHANNEL_OPTIONS)
    pb_grpc.add_CoordinatorServicer_to_server(
        CoordinatorServicer(registry, authenticated=True), server
    )
    port = server.add_secure_port(
        "127.0.0.1:0", server_credentials(TlsFiles.load(project / "coordinator"))
    )
    server.start()
    outcome: dict[str, Any] = {}

    def party(name: str) -> None:
        config = PartyConfig(
            coordinator=f"127.0.0.1:{port}",
            data=project / f"{name}.csv",
            label="label",
            kit=project / name,
            roster=ROSTER,
            job=JOB,
            key_holder=name == ROSTER[0],
            trust="collective",
            iterations=2,
            join_timeout_s=30,
            reconnect_s=5,
        )
        try:
            outcome[name] = run_party(config)
        except (HeflError, grpc.RpcError) as err:
            outcome[name] = err

    threads = [threading.Thread(target=party, args=(n,), daemon=True) for n in ROSTER]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join(timeout=300)
    finally:
        registry.shutdown()
        server.stop(0).wait()
    return outcome, registry.answers


def _refused_by_all(outcome: dict[str, Any], expected: str) -> None:
    for name in ROSTER:
        assert isinstance(outcome[name], PartyFailed), (name, outcome[name])
        assert expected in str(outcome[name]), (name, str(outcome[name]))


def test_the_honest_collective_run_gives_every_party_the_same_model(project, tmp_path):
    outcome, _ = _run(project, tmp_path, lambda party, task: task)

    weights = [np.asarray(outcome[name].weights) for name in ROSTER]
    assert all(len(w) == 4 for w in weights)
    for other in weights[1:]:
        np.testing.assert_array_equal(other, weights[0])
    assert not (tmp_path / "work" / "jobs" / JOB / "models").exists()
    for name in ROSTER:
        tasks = outcome[name].key_holder_tasks
        assert tasks["refresh"] == 2 and tasks["keys"] == 1 and tasks["model-open"] == 1


def _at(step: str, change: Callable[[pb.CollectiveTask], None], only: str | None = None) -> Tamper:
    def tamper(party: str, task: pb.KeyHolderTask) -> pb.KeyHolderTask:
        if task.collective.step == step and (only is None or party == only):
            changed = pb.KeyHolderTask()
            changed.CopyFrom(task)
            change(changed.collective)
            return changed
        return task

    return tamper


def test_a_context_whose_keys_are_not_the_aggregate_is_refused(project, tmp_path):
    """The coordinator serves a context of keys it made itself (it could decrypt under them)."""
    own = PARAMETER_SETS[DEFAULT_PARAMETER_SET].make_context()
    swapped = own.serialize(save_secret_key=False, save_galois_keys=False)

    def swap(task: pb.CollectiveTask) -> None:
        for item in task.inputs:
            if item.name == "context/":
                item.data = swapped

    outcome, _ = _run(project, tmp_path, _at("context", swap))
    _refused_by_all(outcome, "not the aggregate of the roster's relayed shares")


def test_a_second_key_generation_is_refused(project, tmp_path):
    """Asked for its public-key share again (a second CKG) instead of round 2."""

    def again(task: pb.CollectiveTask) -> None:
        task.step = "keys"

    outcome, _ = _run(project, tmp_path, _at("relin-key-2", again, only="hb"))
    _refused_by_all(outcome, "step 'keys' refused")


def test_statistics_other_than_the_signed_sum_get_no_decryption_share(project, tmp_path):
    """One party's statistics swapped for another ciphertext (e.g. an upload): its signature no
    longer verifies, and no party makes a decryption share."""

    def swap(task: pb.CollectiveTask) -> None:
        task.stats[1].ciphertexts[0] = task.stats[0].ciphertexts[0]

    outcome, answers = _run(project, tmp_path, _at("stats", swap))
    _refused_by_all(outcome, "stats signature does not verify")
    boxes = [o for a in answers for o in a.collective.outputs if o.name.startswith("box/")]
    assert boxes == []


def test_a_label_term_other_than_the_signed_one_gets_no_share(project, tmp_path):
    """The coordinator passes another ciphertext (here another party's) off as a party's label
    term: it is not the one that party committed to, so no party EncToShares the sum."""

    def swap(task: pb.CollectiveTask) -> None:
        terms = [item for item in task.inputs if item.name.startswith("label-term/")]
        terms[1].data = terms[0].data

    outcome, answers = _run(project, tmp_path, _at("setup", swap))
    _refused_by_all(outcome, "the label term relayed as 'hb''s differs from its signed commitment")
    shares = [o for a in answers for o in a.collective.outputs if o.name == "label-term"]
    assert shares == []


@pytest.mark.parametrize("attack", ["repeat", "extra", "level", "first"])
def test_a_refresh_outside_the_agreed_steps_is_refused(project, tmp_path, attack):
    """A repeated iteration (a second share for one iteration), an iteration beyond the agreed
    count, a ciphertext at another level than the gradient's, or a ciphertext to decrypt in
    the first step (from zero weights, which has no gradient)."""
    seen: dict[str, pb.KeyHolderTask] = {}
    fresh = ts.ckks_vector(collective(DEFAULT_PARAMETER_SET).context, [1.0] * 8)

    def tamper(party: str, task: pb.KeyHolderTask) -> pb.KeyHolderTask:
        step = task.collective.step
        if step == "refresh" and task.collective.iteration == 0:
            seen[party] = task
        if attack == "repeat" and step == "refresh" and task.collective.iteration == 1:
            # Iteration 1's gradients as iteration 0 again (a byte-identical repeat of the
            # latest task would get the same answer from the session's cache: nothing new).
            changed = pb.KeyHolderTask()
            changed.CopyFrom(task)
            changed.collective.iteration = 0
            return changed
        if attack == "extra" and step == "model":
            extra = pb.KeyHolderTask()
            extra.CopyFrom(seen[party])
            extra.collective.iteration = 2
            return extra
        if attack == "first" and step == "refresh" and task.collective.iteration == 0:
            changed = pb.KeyHolderTask()
            changed.CopyFrom(task)
            changed.collective.inputs.add(name="gradient", data=fresh.serialize())
            return changed
        if attack == "level" and step == "refresh" and task.collective.iteration == 1:
            changed = pb.KeyHolderTask()
            changed.CopyFrom(task)
            changed.collective.inputs[0].data = fresh.serialize()
            return changed
        return task

    outcome, _ = _run(project, tmp_path, tamper)
    expected = {
        "repeat": (
            "refresh of iteration 0 refused: party 'ha' answered it already for other "
            "gradients, and makes one share per iteration"
        ),
        "extra": "refresh of iteration 2 refused: the job's 2 iterations are done",
        "level": "gradient of column 0 (iteration 1)",
        "first": (
            "refresh 0: 1 inputs for 0 column gradients (the first step, from zero weights, "
            "has none)"
        ),
    }[attack]
    _refused_by_all(outcome, expected)


def test_n_minus_1_key_shares_do_not_decrypt_an_upload():
    """Any two of three parties' shares (and everything public) give noise, not the rows."""
    keys = collective(DEFAULT_PARAMETER_SET)
    rows = np.random.default_rng(3).uniform(-2, 2, 4096)
    upload = ciphertext_of(ts.ckks_vector(keys.context, rows.tolist()))
    everyone = decrypt_with(keys.ring, upload, joint_secret(keys.ring, keys.shares))
    assert np.max(np.abs(everyone - rows)) < 1e-3
    for missing in PARTIES:
        some = {p: s for p, s in keys.shares.items() if p != missing}
        guess = decrypt_with(keys.ring, upload, joint_secret(keys.ring, some))
        assert np.median(np.abs(guess - rows)) > 1e3
        assert abs(np.corrcoef(guess, rows)[0, 1]) < 0.1


def test_a_coordinator_restarted_before_the_collective_keys_restores_the_job_waiting(
    project, tmp_path
):
    """Only the initiator has joined (the job waits for the others) when the coordinator stops;
    restarted on the same directory, it restores the job still waiting for its parties, the
    initiator a member, and no context yet: the roster makes it once all have joined (the setup
    resumes from its journal: tests/test_collective_setup_resume.py)."""
    workdir = tmp_path / "work"
    registry = Registry(workdir, in_process_pool_factory(workers=1))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=chunks.CHANNEL_OPTIONS)
    pb_grpc.add_CoordinatorServicer_to_server(
        CoordinatorServicer(registry, authenticated=True), server
    )
    port = server.add_secure_port(
        "127.0.0.1:0", server_credentials(TlsFiles.load(project / "coordinator"))
    )
    server.start()
    config = PartyConfig(
        coordinator=f"127.0.0.1:{port}",
        data=project / "ha.csv",
        label="label",
        kit=project / "ha",
        roster=ROSTER,
        job=JOB,
        key_holder=True,
        trust="collective",
        reconnect_s=1,
    )
    ended: list[BaseException | None] = []

    def initiator() -> None:
        try:
            run_party(config)
            ended.append(None)
        except (HeflError, grpc.RpcError) as err:
            ended.append(err)

    thread = threading.Thread(target=initiator, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if registry.jobs():
                break
            threading.Event().wait(0.1)
        (job,) = registry.jobs()
        assert job.collective and job.status().phase == pb.WAITING_FOR_PARTIES
    finally:
        registry.shutdown()
        server.stop(0).wait()
    thread.join(timeout=60)
    assert ended and ended[0] is not None  # the initiator gave up on the vanished coordinator

    restarted = Registry(workdir, in_process_pool_factory(workers=1))
    try:
        (restored,) = restarted.jobs()
        assert restored.status().phase == pb.WAITING_FOR_PARTIES, restored.status().message
        assert restored.is_member("ha") and not restored.context_bytes
    finally:
        restarted.shutdown()
