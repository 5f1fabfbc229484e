"""A collective training resumed after the coordinator stopped mid-iteration, without a network:
three roster parties' state machines behind their task answerers (the same cache and state
machine as over gRPC), the coordinator's training loop (coordinator.collective.train) with its
journal on disk (coordinator.checkpoint.CollectiveFileJournal). The coordinator "dies" with
refresh 3 in flight: two parties answered it (their answers are lost), the third never got it.
A new loop on the same journal and the same parties finishes the job; a journal whose step in
flight was altered gets the exact refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.checkpoint import CollectiveFileJournal
from coordinator.collective import CollectiveCheckpoint, Relay, train
from hefl.algorithm import train_replica
from hefl.errors import ProtocolError
from hefl.models import get_model
from hefl.v1 import hefl_pb2 as pb
from parties.collective import STEPS
from tests.helpers import COLLECTIVE_BOUND as BOUND
from tests.test_collective_job import PARTIES, AnswererLink, _data, prepare_job

ITERATIONS = 6
CRASH_AT = 3  # the refresh in flight when the coordinator stops
ANSWERED = PARTIES[:2]  # answered it before the coordinator stopped


class CoordinatorStopped(Exception):
    """The coordinator process ends here (the test's stand-in for SIGKILL)."""


class StoppingLink:
    """A party's link of a coordinator that stops with ``step`` (of iteration ``iteration``)
    in flight: the parties of ``ANSWERED`` answer it (the answer never arrives), the others
    never get it."""

    def __init__(self, link: AnswererLink, party: str, step: str, iteration: int) -> None:
        self._link = link
        self._party = party
        self._step = step
        self._iteration = iteration
        self.bytes_sent = self.bytes_received = 0

    def call(self, task: pb.KeyHolderTask, *, timeout_s: float) -> pb.KeyHolderResult:
        step = task.collective
        if step.step == self._step and step.iteration == self._iteration:
            if self._party in ANSWERED:
                self._link.call(task, timeout_s=timeout_s)
            raise CoordinatorStopped(f"stopped with {self._step} in flight")
        return self._link.call(task, timeout_s=timeout_s)


def _stop(tmp_path: Path, step: str, iteration: int = 0) -> dict:
    """The job, trained until the coordinator stopped with ``step`` in flight."""
    x, y = _data()
    job = prepare_job(x, y, get_model("logistic"), pb.TrainingOptions(iterations=ITERATIONS))
    journal = CollectiveFileJournal(tmp_path / "collective")
    stopping = Relay(
        {p: StoppingLink(link, p, step, iteration) for p, link in job["links"].items()}
    )
    with pytest.raises(ProtocolError, match=f"stopped with {step} in flight"):
        train(job["inputs"], pool=job["pool"], relay=stopping, journal=journal)
    job["journal_root"] = tmp_path / "collective"
    return job


@pytest.fixture
def stopped(tmp_path: Path) -> dict:
    """The job, trained until the coordinator stopped with refresh ``CRASH_AT`` in flight."""
    return _stop(tmp_path, "refresh", CRASH_AT)


@pytest.mark.parametrize(
    ("step", "done"),
    [
        ("setup", 0),
        ("refresh", CRASH_AT),
        ("model", ITERATIONS),
        ("model-open", ITERATIONS),
        ("model-confirm", ITERATIONS),
    ],  # fmt: skip
)
def test_training_resumes_from_the_step_in_flight_and_every_party_gets_the_model(
    tmp_path: Path, step: str, done: int
) -> None:
    stopped = _stop(tmp_path, step, CRASH_AT if step == "refresh" else 0)
    journal = CollectiveFileJournal(stopped["journal_root"])
    left = journal.load()
    assert left is not None and (left.step, left.done) == (step, done)

    report = train(
        stopped["inputs"], pool=stopped["pool"], relay=Relay(stopped["links"]), journal=journal
    )

    assert report.resumed_at == (None if step == "setup" else done)
    replica = train_replica(stopped["xs"], stopped["y"], stopped["hyper"])
    models = [np.asarray(m.model["weights"]) for m in stopped["members"].values()]
    for weights in models:
        np.testing.assert_array_equal(weights, models[0])
        assert np.max(np.abs(weights - replica.weights)) < BOUND
    for party, link in stopped["links"].items():
        # Every step taken once, one share per iteration: the step in flight was answered
        # again from the cache by the parties that had answered it, for the first time by the
        # other.
        assert link.answerer.handled == {**dict.fromkeys(STEPS, 1), "refresh": ITERATIONS}, party
        assert link.answerer.repeats == (1 if party in ANSWERED else 0), party
        assert len(stopped["members"][party]._refreshed_gradients) == ITERATIONS


def test_a_resumed_coordinator_asking_for_other_gradients_is_refused(stopped):
    """The step in flight altered on disk (another column's gradient in column 0's place, a
    valid ciphertext): a party that answered that iteration refuses a second share."""
    journal = CollectiveFileJournal(stopped["journal_root"])
    left = journal.load()
    assert left is not None
    tasks = {}
    for party, payload in left.tasks.items():
        task = pb.KeyHolderTask.FromString(payload)
        task.collective.inputs[0].data = task.collective.inputs[1].data
        tasks[party] = task.SerializeToString()
    journal.save(
        CollectiveCheckpoint(
            step=left.step,
            tasks=tasks,
            done=left.done,
            label=left.label,
            weights=left.weights,
            velocity=left.velocity,
        )
    )

    with pytest.raises(ProtocolError) as refused:
        train(
            stopped["inputs"], pool=stopped["pool"], relay=Relay(stopped["links"]), journal=journal
        )

    for party in ANSWERED:
        assert (
            f"{party}: refresh of iteration {CRASH_AT} refused: party "
            f"{party!r} answered it already for other gradients, and makes one share per "
            f"iteration"
        ) in str(refused.value)
    for party in ANSWERED:
        assert len(stopped["members"][party]._refreshed_gradients) == CRASH_AT + 1


def test_a_repeat_of_an_answered_refresh_that_is_not_the_latest_task_is_refused(stopped):
    """The same gradients again, once the party has answered something since: not from the
    cache (it holds the latest answer only), and never computed a second time."""
    member = stopped["members"][ANSWERED[0]]
    answerer = stopped["links"][ANSWERED[0]].answerer
    journal = CollectiveFileJournal(stopped["journal_root"])
    left = journal.load()
    assert left is not None
    in_flight = left.tasks[ANSWERED[0]]
    answerer.answer(
        pb.KeyHolderTask(collective=pb.CollectiveTask(step="model")).SerializeToString()
    )

    answer = pb.KeyHolderResult.FromString(answerer.answer(in_flight))

    assert answer.error == (
        f"refresh of iteration {CRASH_AT} refused: party {ANSWERED[0]!r} answered it already; it "
        f"answers only a byte-identical repeat of its latest task, from its cache"
    )
    assert len(member._refreshed_gradients) == CRASH_AT + 1
