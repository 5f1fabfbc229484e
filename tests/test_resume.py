"""Training resumed after the coordinator stops at any point, without a network: the
coordinator's loop with its journal on disk, a real worker, and the real key holder behind its
session's answerer (the cache of its latest answer). Every task crosses as bytes.

Wherever the coordinator stops (a task lost before the key holder saw it, an answer lost after
it handled the task, a worker failing between two tasks), a new loop on the same journal
finishes the job with the float64 replica's model, and the key holder takes each step exactly
once. A coordinator that lost its journal, or that makes a new request for an iteration the key
holder already refreshed, is refused."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts

from coordinator.checkpoint import FileJournal, JournalDamaged
from coordinator.inprocess_pool import InProcessPool
from coordinator.store import JobStore
from coordinator.training import Checkpoint, PendingTask, TrainingInputs, WorkerFailure, train
from hefl import sealio, signed
from hefl.algorithm import (
    Hyperparameters,
    add_bias,
    choose_hyperparameters,
    label_term,
    standardize,
    train_replica,
)
from hefl.codec import AggregateStats, PackingLayout
from hefl.errors import ProtocolError
from hefl.models.base import KernelForm
from hefl.params import DEFAULT_PARAMETER_SET, PARAMETER_SETS
from hefl.protocols.refresh import Recipient, RefreshMasks
from hefl.protocols.stats import StatsProtocol, StatsRequest, summary_from_proto
from hefl.v1 import hefl_pb2 as pb
from parties.identity import SigningKey
from parties.keyholder import KeyHolder, associated_data
from parties.sealing import SealedBox, SealingKey
from parties.session import TaskAnswerer

PARAMS = PARAMETER_SETS[DEFAULT_PARAMETER_SET]
ITERATIONS = 3
FEATURES = ["f0", "f1", "f2", "f3"]
PARTY_ROWS = [("a", 150), ("b", 130)]
# Task numbers of a run with reveals: 1 setup, then refresh/reveal pairs, then the finalize.
SETUP, FIRST_REFRESH, FINALIZE = 1, 2, 2 + 2 * ITERATIONS


class Crash(Exception):
    """The coordinator process stops here."""


@dataclass(frozen=True)
class UploadedJob:
    root: Path
    stats: StatsRequest
    features: np.ndarray  # raw rows, layout order
    labels: np.ndarray


@pytest.fixture(scope="module")
def uploaded(tmp_path_factory: pytest.TempPathFactory, public_context) -> UploadedJob:
    """Two parties' statistics shares and uploads, standardized with the plaintext statistics
    (the key holder's decrypted ones agree to CKKS noise, well inside the bound)."""
    root = tmp_path_factory.mktemp("job")
    rng = np.random.default_rng(4)
    raw = rng.normal(size=(280, 4)) * [1.0, 3.0, 0.5, 2.0] + [0.0, 5.0, -1.0, 2.0]
    labels = (raw @ [1.0, -0.4, 2.0, 0.3] + rng.normal(size=280) > -1.0).astype(float)
    protocol = StatsProtocol(features=4, slots=PARAMS.slots)
    stats = StatsRequest(
        job_id="job-1",
        features=4,
        shares=(
            ("a", protocol.gen_share(public_context, raw[:150])),
            ("b", protocol.gen_share(public_context, raw[150:])),
        ),
    )
    plain = AggregateStats.of_rows(raw)
    columns = add_bias(standardize(raw, plain.mean, plain.std))
    store = JobStore(root)
    store.context_path().write_bytes(public_context.serialize())
    layout = PackingLayout.assign(slots=PARAMS.slots, party_rows=PARTY_ROWS)
    for party in layout.parties:
        rows = slice(party.offset, party.offset + party.rows)
        for block, column, vector in layout.pack(party.name, columns[rows]):
            path = store.column_path(party.name, block, column)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(sealio.serialize(ts.ckks_vector(public_context, vector)))
        path = store.label_term_path(party.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        vector = ts.ckks_vector(public_context, label_term(columns[rows], labels[rows]))
        path.write_bytes(sealio.serialize(vector))
    return UploadedJob(root=root, stats=stats, features=raw, labels=labels)


class AnsweringLink:
    """The key holder's session answerer in this process, with the coordinator stopping at task
    ``crash_at``: ``lost`` before the key holder sees it, ``unanswered`` after it answered."""

    def __init__(self, answerer: TaskAnswerer, crash_at: int = 0, mode: str = "") -> None:
        self._answerer = answerer
        self._crash_at, self._mode = crash_at, mode
        self.sent: list[bytes] = []
        self.bytes_sent = self.bytes_received = 0

    def call(self, task: pb.KeyHolderTask, *, timeout_s: float) -> pb.KeyHolderResult:
        payload = task.SerializeToString()
        self.sent.append(payload)
        crash = len(self.sent) == self._crash_at
        if crash and self._mode == "lost":
            raise Crash
        result = pb.KeyHolderResult.FromString(self._answerer.answer(payload))
        if crash and self._mode == "unanswered":
            raise Crash
        if result.WhichOneof("result") == "error":
            raise ProtocolError(
                f"key holder failed task {task.WhichOneof('task')!r}: {result.error}"
            )
        return result


class FailingPool(InProcessPool):
    """Workers that fail their ``fail_at``-th gradient call (counted from 0), as Ray's do when
    a worker dies beyond its restarts."""

    fail_at: int | None = None
    calls = 0

    def gradient(
        self, masked_weights: Sequence[bytes], unmask: Sequence[float], *, form: KernelForm
    ) -> list[list[bytes]]:
        self.calls += 1
        if self.calls - 1 == self.fail_at:
            raise WorkerFailure("the Ray workers failed the gradient: ActorDiedError")
        return super().gradient(masked_weights, unmask, form=form)


@dataclass
class KeyHolderSide:
    keyholder: KeyHolder
    answerer: TaskAnswerer
    hyper: Hyperparameters
    recipient: Recipient
    sealing_key: SealingKey


@pytest.fixture
def key_holder(uploaded: UploadedJob, private_context) -> KeyHolderSide:
    """The key holder after the statistics: it outlives every coordinator of these tests."""
    keyholder = KeyHolder(
        context=private_context,
        job_id="job-1",
        features=FEATURES,
        options=pb.TrainingOptions(iterations=ITERATIONS, reveal_intermediate=True),
        signing_key=SigningKey.generate(),
    )
    answerer = TaskAnswerer(keyholder)
    task = pb.KeyHolderTask(decrypt_stats=uploaded.stats.to_proto())
    summary = summary_from_proto(
        pb.KeyHolderResult.FromString(answerer.answer(task.SerializeToString())).values,
        features=4,
    )
    sealing_key, signing_key = SealingKey(), SigningKey.generate()
    signature = signing_key.sign(
        signed.SEAL_KEY, signed.seal_key_parts("job-1", "a", sealing_key.public_bytes)
    )
    return KeyHolderSide(
        keyholder=keyholder,
        answerer=answerer,
        hyper=choose_hyperparameters(curvature=summary.curvature, iterations=ITERATIONS),
        recipient=Recipient("a", sealing_key.public_bytes, signing_key.public_bytes, signature),
        sealing_key=sealing_key,
    )


def _coordinator(
    uploaded: UploadedJob,
    side: KeyHolderSide,
    public_context,
    journal: FileJournal,
    link: AnsweringLink,
    *,
    fail_gradient_at: int | None = None,
) -> list[pb.SealedModel]:
    """One coordinator process's training: everything it has comes from the job directory."""
    store = JobStore(uploaded.root)
    label = sealio.add_vectors(
        public_context,
        (store.label_term_path(name).read_bytes() for name, _ in PARTY_ROWS),
        what="label term",
    )
    pool = FailingPool(
        parameter_set=PARAMS.name,
        job_root=str(uploaded.root),
        layout=PackingLayout.assign(slots=PARAMS.slots, party_rows=PARTY_ROWS),
        columns=5,
    )
    pool.fail_at = fail_gradient_at
    models, _ = train(
        TrainingInputs(
            context=public_context,
            params=PARAMS,
            hyper=side.hyper,
            rows=280,
            columns=5,
            label_term=label,
            recipients=(side.recipient,),
            reveal_intermediate=True,
        ),
        pool=pool,
        link=link,
        journal=journal,
    )
    return models


def _opened(side: KeyHolderSide, models: list[pb.SealedModel]) -> dict:
    (sealed,) = models
    box = SealedBox(sealed.ephemeral_public_key, sealed.nonce, sealed.ciphertext)
    return dict(json.loads(side.sealing_key.open(box, associated=associated_data("job-1", "a"))))


def _replica(uploaded: UploadedJob, hyper: Hyperparameters) -> np.ndarray:
    stats = AggregateStats.of_rows(uploaded.features)
    columns = add_bias(standardize(uploaded.features, stats.mean, stats.std))
    return train_replica(columns, uploaded.labels, hyper).weights


@pytest.mark.parametrize(
    ("mode", "crash_at"),
    [
        ("lost", SETUP),
        ("unanswered", SETUP),
        ("lost", FIRST_REFRESH + 2),  # refresh 1
        ("unanswered", FIRST_REFRESH + 2),
        ("unanswered", FIRST_REFRESH + 3),  # reveal 1
        ("unanswered", FINALIZE),
        ("gradient", 2),  # between two tasks: the workers fail iteration 2
    ],
)
def test_training_resumes_wherever_the_coordinator_stopped(
    uploaded, key_holder, public_context, tmp_path, mode, crash_at
):
    journal = FileJournal(tmp_path / "training")
    first = AnsweringLink(key_holder.answerer, crash_at, mode)
    with pytest.raises(WorkerFailure if mode == "gradient" else Crash):
        _coordinator(
            uploaded,
            key_holder,
            public_context,
            journal,
            first,
            fail_gradient_at=crash_at if mode == "gradient" else None,
        )

    second = AnsweringLink(key_holder.answerer)
    models = _coordinator(uploaded, key_holder, public_context, FileJournal(journal.root), second)

    model = _opened(key_holder, models)
    np.testing.assert_allclose(model["weights"], _replica(uploaded, key_holder.hyper), atol=2e-3)
    assert len(model["intermediate"]) == ITERATIONS
    # Every step taken once by the key holder's protocol; a lost answer is given again.
    assert key_holder.answerer.handled == {
        "decrypt_stats": 1,
        "setup": 1,
        "refresh": ITERATIONS,
        "reveal": ITERATIONS,
        "finalize": 1,
    }
    # The task in flight is sent again byte for byte; if the key holder had answered it (or
    # the next task had not been written yet), the same answer comes from its cache.
    assert second.sent[0] == first.sent[-1]
    assert key_holder.answerer.repeats == (0 if mode == "lost" else 1)
    assert len(first.sent) + len(second.sent) == FINALIZE + 1


def test_a_coordinator_that_lost_its_journal_cannot_start_over(
    uploaded, key_holder, public_context, tmp_path
):
    journal = FileJournal(tmp_path / "training")
    with pytest.raises(Crash):
        _coordinator(
            uploaded,
            key_holder,
            public_context,
            journal,
            AnsweringLink(key_holder.answerer, FIRST_REFRESH + 2, "unanswered"),
        )
    journal.remove()

    with pytest.raises(ProtocolError, match="task 'setup' refused: the job is at its 'training'"):
        _coordinator(
            uploaded, key_holder, public_context, journal, AnsweringLink(key_holder.answerer)
        )
    assert key_holder.answerer.handled["setup"] == 2  # the second one refused


class RecordingJournal(FileJournal):
    """A journal that also keeps a copy of every checkpoint it saved (a backup, say)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.saved: list[Checkpoint] = []

    def save(self, checkpoint: Checkpoint) -> None:
        super().save(checkpoint)
        self.saved.append(checkpoint)


def test_a_coordinator_resuming_from_an_older_journal_is_refused(
    uploaded, key_holder, public_context, tmp_path
):
    """Restored from a backup taken ahead of refresh 0, the coordinator sends refresh 0 again:
    the key holder has refreshed iterations 0 and 1 since, and that is not its latest task."""
    journal = RecordingJournal(tmp_path / "training")
    with pytest.raises(Crash):
        _coordinator(
            uploaded,
            key_holder,
            public_context,
            journal,
            AnsweringLink(key_holder.answerer, FIRST_REFRESH + 2, "unanswered"),
        )
    (backup,) = [c for c in journal.saved if c.pending and c.pending.kind == "refresh"][:1]
    journal.save(backup)

    with pytest.raises(
        ProtocolError, match="refresh of iteration 0 refused: the next iteration is 2"
    ):
        _coordinator(
            uploaded, key_holder, public_context, journal, AnsweringLink(key_holder.answerer)
        )
    assert key_holder.answerer.repeats == 0


def test_the_journal_reads_back_what_was_saved_and_names_a_damaged_file(tmp_path, public_context):
    journal = FileJournal(tmp_path / "training")
    assert journal.load() is None
    weights = tuple(sealio.encrypt_replicated(public_context, [0.5, -1.25], PARAMS.slots))
    task = pb.KeyHolderTask(reveal=pb.RevealTask(iteration=2, model_mask=[1.0, 2.0]))
    checkpoint = Checkpoint(
        # Values that need every bit of a double to come back equal.
        masks=RefreshMasks(
            label=(0.1, 1 / 3), weights=(2.0**25 - 1e-9, -7.7), velocity=(1e-300, 3.0)
        ),
        done=3,
        revealed=2,
        weights=weights,
        pending=PendingTask.of(task, iteration=2),
    )
    journal.save(checkpoint)
    assert journal.load() == checkpoint
    # A checkpoint replaces the previous one whole; blobs it no longer names are gone.
    journal.save(replace(checkpoint, pending=None))
    assert journal.load() == replace(checkpoint, pending=None)
    assert len(list((tmp_path / "training" / "blobs").iterdir())) == 1

    (blob,) = (tmp_path / "training" / "blobs").iterdir()
    blob.write_bytes(blob.read_bytes()[:-1])
    with pytest.raises(JournalDamaged, match=f"{blob.name} does not match its hash"):
        journal.load()
    blob.unlink()
    with pytest.raises(JournalDamaged, match=f"{blob.name} is missing"):
        journal.load()
