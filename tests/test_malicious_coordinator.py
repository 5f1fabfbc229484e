"""A malicious coordinator, over real mutual TLS, against real parties.

The coordinator here is hefl's own, bent where an attacker would bend it: the servicer serves a
swapped context or a forged model, or the job's link to the key holder tampers with the tasks.
Two parties (``run_party``, each in a thread, with their startup kits) must refuse, with an
error that says what was wrong, and the key holder must answer no plaintext."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from coordinator.inprocess_pool import in_process_pool_factory
from coordinator.jobs import Job
from coordinator.registry import Registry
from coordinator.servicer import CoordinatorServicer
from coordinator.store import JobStore
from hefl import chunks, signed
from hefl.errors import HeflError, PermissionDenied
from hefl.identity import TlsFiles, server_credentials
from hefl.params import DEFAULT_PARAMETER_SET, PARAMETER_SETS
from hefl.v1 import hefl_pb2 as pb
from hefl.v1 import hefl_pb2_grpc as pb_grpc
from parties.client import PartyConfig, PartyFailed, run_party
from parties.data import Dataset, write_csv
from parties.identity import SigningKey
from parties.sealing import SealingKey, seal
from tools.provision import provision

ROSTER = ("kh", "h2")
JOB = "trial-1"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    provision(root, parties=list(ROSTER), coordinator_hosts=("127.0.0.1",))
    rng = np.random.default_rng(7)
    for i, name in enumerate(ROSTER):
        features = rng.normal(size=(40 + 10 * i, 3))
        labels = (features @ [1.0, -1.0, 0.5] > 0).astype(float)
        write_csv(root / f"{name}.csv", Dataset(features, labels, ("a", "b", "c"), "label"))
    return root


class Tampering:
    """Where the test bends the coordinator: a servicer method and the key holder's link."""

    def __init__(self) -> None:
        self.context: Callable[[bytes], bytes] = lambda data: data
        self.model: Callable[[pb.SealedModel], pb.SealedModel] = lambda sealed: sealed
        self.offer: Callable[[pb.JobInfo], pb.JobInfo] = lambda info: info
        self.task: Callable[[pb.KeyHolderTask], pb.KeyHolderTask] = lambda task: task
        self.answers: list[pb.KeyHolderResult] = []


class TamperingServicer(CoordinatorServicer):
    def __init__(self, registry: Registry, tampering: Tampering) -> None:
        super().__init__(registry, authenticated=True)
        self._tampering = tampering

    def GetContext(self, request: pb.GetContextRequest, context: Any) -> Iterator[pb.Blob]:
        data = b"".join(blob.data for blob in super().GetContext(request, context))
        data = self._tampering.context(data)
        for piece in chunks.split_bytes(data):
            yield pb.Blob(data=piece, total_bytes=len(data))

    def GetModel(self, request: pb.GetModelRequest, context: Any) -> pb.SealedModel:
        return self._tampering.model(super().GetModel(request, context))

    def JoinJob(self, request: pb.JoinJobRequest, context: Any) -> pb.JobInfo:
        return self._tampering.offer(super().JoinJob(request, context))


class TamperingRegistry(Registry):
    """Every job's link to the key holder passes its tasks through the tampering first."""

    def __init__(self, workdir: Path, tampering: Tampering) -> None:
        super().__init__(workdir, in_process_pool_factory(workers=1))
        self._tampering = tampering

    def create(self, spec: pb.JobSpec, context_bytes: bytes, *, creator: Any) -> Job:
        job = super().create(spec, context_bytes, creator=creator)
        honest_call = job.link.call

        def call(task: pb.KeyHolderTask, *, timeout_s: float) -> pb.KeyHolderResult:
            result = honest_call(self._tampering.task(task), timeout_s=timeout_s)
            self._tampering.answers.append(result)
            return result

        job.link.call = call  # type: ignore[method-assign]
        return job


def _run(project: Path, tmp_path: Path, tampering: Tampering) -> dict[str, BaseException | None]:
    """Both parties against the tampering coordinator; what each one ended with."""
    registry = TamperingRegistry(tmp_path / "work", tampering)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=chunks.CHANNEL_OPTIONS)
    pb_grpc.add_CoordinatorServicer_to_server(TamperingServicer(registry, tampering), server)
    port = server.add_secure_port(
        "127.0.0.1:0", server_credentials(TlsFiles.load(project / "coordinator"))
    )
    server.start()
    outcome: dict[str, BaseException | None] = {}

    def party(name: str) -> None:
        config = PartyConfig(
            coordinator=f"127.0.0.1:{port}",
            data=project / f"{name}.csv",
            label="label",
            kit=project / name,
            roster=ROSTER,
            job=JOB,
            key_holder=name == "kh",
            trust="key-holder",
            iterations=2,
            join_timeout_s=30,
            # A party left waiting when the server stops gives up soon after.
            reconnect_s=5,
        )
        try:
            run_party(config)
            outcome[name] = None
        except (HeflError, grpc.RpcError) as err:
            outcome[name] = err

    threads = [threading.Thread(target=party, args=(n,), daemon=True) for n in ROSTER]
    threads[0].start()
    threads[1].start()
    try:
        threads[1].join(timeout=120)
        # A job that ended (DONE or FAILED) ends the key holder too; one that stalls because the
        # joining party refused it leaves the key holder waiting, until the server stops.
        jobs = registry.jobs()
        if jobs and jobs[0].status().phase in (pb.DONE, pb.FAILED):
            threads[0].join(timeout=120)
    finally:
        registry.shutdown()
        server.stop(0).wait()
        threads[0].join(timeout=60)
    return outcome


def test_the_honest_run_succeeds(project, tmp_path):
    tampering = Tampering()
    assert _run(project, tmp_path, tampering) == {"kh": None, "h2": None}


def test_a_swapped_context_is_refused_by_the_joining_party(project, tmp_path):
    other = PARAMETER_SETS[DEFAULT_PARAMETER_SET].make_context()  # the coordinator's own keys
    tampering = Tampering()
    tampering.context = lambda _: other.serialize(save_secret_key=False)

    outcome = _run(project, tmp_path, tampering)

    assert isinstance(outcome["h2"], PermissionDenied)
    assert "the context is not the one its key holder signed" in str(outcome["h2"])


def test_a_party_added_to_the_roster_is_refused_by_the_joining_party(project, tmp_path):
    tampering = Tampering()

    def add_party(info: pb.JobInfo) -> pb.JobInfo:
        info.charter.roster.add(name="mallory", fingerprint="00" * 32, signing_public_key=bytes(32))
        return info

    tampering.offer = add_party
    outcome = _run(project, tmp_path, tampering)

    assert isinstance(outcome["h2"], PermissionDenied)
    assert "is not the expected ['h2', 'kh']" in str(outcome["h2"])


def test_a_forged_model_is_refused(project, tmp_path):
    """The coordinator seals a model of its choice to the party's (public) sealing key."""
    tampering = Tampering()
    forger = SigningKey.generate()

    def forge(sealed: pb.SealedModel) -> pb.SealedModel:
        # The forger needs only the recipient's public sealing key, which the party joined with.
        record = JobStore(tmp_path / "work" / "jobs" / JOB).read_record()
        key = next(p.hello for p in record.parties if p.name == sealed.party).seal_public_key
        model = json.dumps({"job_id": JOB, "features": ["a", "b", "c"], "weights": [9.0] * 4})
        box = seal(key, model.encode(), associated=f"{JOB}/{sealed.party}".encode())
        parts = signed.model_parts(
            JOB, sealed.party, box.ephemeral_public_key, box.nonce, box.ciphertext
        )
        return pb.SealedModel(
            party=sealed.party,
            ephemeral_public_key=box.ephemeral_public_key,
            nonce=box.nonce,
            ciphertext=box.ciphertext,
            signature=forger.sign(signed.MODEL, parts),
        )

    tampering.model = forge
    outcome = _run(project, tmp_path, tampering)

    for name in ROSTER:
        assert isinstance(outcome[name], PermissionDenied), name
        assert "model signature does not verify" in str(outcome[name])


def test_a_substituted_sealing_key_fails_the_job_and_seals_nothing(project, tmp_path):
    tampering = Tampering()
    coordinators_key = SealingKey().public_bytes

    def substitute(task: pb.KeyHolderTask) -> pb.KeyHolderTask:
        if task.WhichOneof("task") == "finalize":
            task.finalize.parties[1].seal_public_key = coordinators_key
        return task

    tampering.task = substitute
    outcome = _run(project, tmp_path, tampering)

    for name in ROSTER:
        assert isinstance(outcome[name], PartyFailed), name
        assert "seal-key signature does not verify" in str(outcome[name])
    assert not any(answer.HasField("sealed") for answer in tampering.answers)


@pytest.mark.parametrize("extra", ["decrypt_stats", "reveal"])
def test_an_extra_decryption_or_reveal_is_refused(project, tmp_path, extra):
    """After the honest statistics (or the first refresh), the coordinator asks again: for the
    statistics a second time, or for an iterate the key holder never agreed to reveal."""
    tampering = Tampering()
    asked: list[pb.KeyHolderTask] = []

    def again(task: pb.KeyHolderTask) -> pb.KeyHolderTask:
        kind = task.WhichOneof("task")
        asked.append(task)
        if extra == "decrypt_stats" and kind == "setup":
            # The same shares in another order: a byte-identical repeat would get the same
            # summary again from the key holder's cache, which tells the coordinator nothing
            # new (tests/test_keyholder_session.py).
            first = [t for t in asked if t.WhichOneof("task") == "decrypt_stats"][0]
            shares = list(first.decrypt_stats.shares)[::-1]
            return pb.KeyHolderTask(
                decrypt_stats=pb.DecryptStatsTask(
                    features=first.decrypt_stats.features, shares=shares
                )
            )
        if extra == "reveal" and kind == "refresh" and task.refresh.iteration == 1:
            return pb.KeyHolderTask(reveal=pb.RevealTask(iteration=0, model_mask=[0.0] * 4))
        return task

    tampering.task = again
    outcome = _run(project, tmp_path, tampering)

    expected = {
        "decrypt_stats": "task 'decrypt_stats' refused",
        "reveal": "did not opt in to intermediate models",
    }[extra]
    for name in ROSTER:
        assert isinstance(outcome[name], PartyFailed), name
        assert expected in str(outcome[name])
    # No answer but the one honest summary carried values in the clear.
    assert sum(len(a.values.values) > 0 for a in tampering.answers) == 1
