"""The collective setup (keys, statistics, label terms) resumed after the coordinator stopped
with a step in flight, without a network: three roster parties' state machines behind their task
answerers (the same cache and state machine as over gRPC) and the coordinator's setup over a
:class:`coordinator.collective.JournaledRelay` with its journal on disk
(:class:`coordinator.checkpoint.SetupFileJournal`). Two parties answered the step in flight (their
answers are lost), the third never got it. A new relay on the same journal and the same parties
replays the steps answered, sends the one in flight again byte for byte, and the job trains to
the replica's model; a journal that names another step gets the exact refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.checkpoint import JournalDamaged, SetupFileJournal
from coordinator.collective import JournaledRelay, Relay, SetupStep, train
from hefl.algorithm import train_replica
from hefl.errors import ProtocolError
from hefl.models import get_model
from hefl.v1 import hefl_pb2 as pb
from tests.helpers import COLLECTIVE_BOUND as BOUND
from tests.test_collective_job import PARTIES, AnswererLink, _data, prepare_job, roster_parties

ITERATIONS = 4
ANSWERED = PARTIES[:2]  # answered the step in flight before the coordinator stopped


class CoordinatorStopped(Exception):
    """The coordinator process ends here (the test's stand-in for SIGKILL)."""


class StoppingLink:
    """A party's link of a coordinator that stops with setup ``step`` in flight: the parties of
    ``ANSWERED`` answer it (the answer never arrives), the others never get it."""

    def __init__(self, link: AnswererLink, party: str, step: str) -> None:
        self._link = link
        self._party = party
        self._step = step
        self.bytes_sent = self.bytes_received = 0

    def call(self, task: pb.KeyHolderTask, *, timeout_s: float) -> pb.KeyHolderResult:
        if task.collective.step == self._step:
            if self._party in ANSWERED:
                self._link.call(task, timeout_s=timeout_s)
            raise CoordinatorStopped(f"stopped with {self._step} in flight")
        return self._link.call(task, timeout_s=timeout_s)


def _steps_sent(link: AnswererLink) -> list[str]:
    return [pb.KeyHolderTask.FromString(t).collective.step for t in link.tasks]


@pytest.mark.parametrize("stopped_at", ["keys-reveal", "stats-open", "label-release"])
def test_the_setup_resumes_from_the_step_in_flight_and_the_job_trains(
    tmp_path: Path, stopped_at: str
) -> None:
    x, y = _data()
    model, options = get_model("logistic"), pb.TrainingOptions(iterations=ITERATIONS)
    parties = roster_parties(x, y, model, options)
    links = parties["links"]
    journal = SetupFileJournal(tmp_path / "setup")
    stopping = {p: StoppingLink(links[p], p, stopped_at) for p in PARTIES}
    with pytest.raises(ProtocolError, match=f"stopped with {stopped_at} in flight"):
        prepare_job(
            x,
            y,
            model,
            options,
            parties=parties,
            setup_relay=JournaledRelay(stopping, journal=journal),
        )
    (in_flight,) = [s for s in journal.load() if s.answers is None]
    assert in_flight.step == stopped_at
    sent_before = {p: _steps_sent(links[p]) for p in PARTIES}

    resumed = JournaledRelay(links, journal=journal)
    assert resumed.resuming
    job = prepare_job(x, y, model, options, parties=parties, setup_relay=resumed)
    job["report"] = train(job["inputs"], pool=job["pool"], relay=Relay(links))

    for party in PARTIES:
        before, after = sent_before[party], _steps_sent(links[party])[len(sent_before[party]) :]
        # Nothing answered before the stop is asked again; the step in flight is, once, and to
        # a party that answered it byte for byte as before (answered from its cache).
        assert after[0] == stopped_at and stopped_at not in after[1:], after
        assert not (set(before) - {stopped_at}) & set(after), after
        assert links[party].answerer.repeats == (1 if party in ANSWERED else 0)
        if party in ANSWERED:
            assert links[party].tasks[len(before)] == links[party].tasks[len(before) - 1]
    replica = train_replica(job["xs"], job["y"], job["hyper"])
    for member in job["members"].values():
        assert np.max(np.abs(np.asarray(member.model["weights"]) - replica.weights)) < BOUND
    assert all(s.answers is not None for s in journal.load())


_SEED_COMMIT = pb.KeyHolderTask(
    collective=pb.CollectiveTask(step="seed-commit")
).SerializeToString()


@pytest.mark.parametrize(
    ("recorded", "refusal"),
    [
        (
            SetupStep("keys", dict.fromkeys(PARTIES, b"")),
            f"the setup journal's step 0 is 'keys' to {sorted(PARTIES)}, not 'seed-commit' to "
            f"{list(PARTIES)}",
        ),
        (
            SetupStep("seed-commit", {**dict.fromkeys(PARTIES, _SEED_COMMIT), PARTIES[1]: b""}),
            f"the setup's step 'seed-commit' to {[PARTIES[1]]} differs from the one sent before "
            "the restart",
        ),
    ],
    ids=["another-step", "other-tasks"],
)
def test_a_journal_other_than_the_setup_made_again_is_refused(
    tmp_path: Path, recorded: SetupStep, refusal: str
) -> None:
    x, y = _data()
    model, options = get_model("logistic"), pb.TrainingOptions(iterations=ITERATIONS)
    parties = roster_parties(x, y, model, options)
    journal = SetupFileJournal(tmp_path / "setup")
    journal.save([recorded])

    with pytest.raises(ProtocolError) as refused:
        prepare_job(
            x,
            y,
            model,
            options,
            parties=parties,
            setup_relay=JournaledRelay(parties["links"], journal=journal),
        )

    assert str(refused.value) == refusal
    assert all(not parties["links"][p].tasks for p in PARTIES)  # nothing was sent


def test_a_damaged_journal_is_named(tmp_path: Path) -> None:
    journal = SetupFileJournal(tmp_path / "setup")
    journal.save([SetupStep("seed-commit", {"a": b"task"}, {"a": b"answer"})])
    (blob,) = [b for b in (tmp_path / "setup" / "blobs").iterdir() if b.read_bytes() == b"answer"]
    blob.write_bytes(b"altered")

    with pytest.raises(JournalDamaged, match="does not match its hash"):
        journal.load()
