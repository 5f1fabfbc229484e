"""The key holder's session. Its answerer, without a network: a byte-identical repeat of its
latest task gets the same answer from its cache, and nothing else gets past the key holder's
state machine twice (what a coordinator that restarted or lost an answer may and may not ask).
Its task loop, over gRPC: an answer the coordinator no longer waits for does not end it."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import tenseal as ts

from coordinator.keyholder_link import KeyHolderTimeout
from hefl.algorithm import choose_hyperparameters
from hefl.errors import ProtocolError
from hefl.params import DEFAULT_PARAMETER_SET, PARAMETER_SETS
from hefl.protocols.refresh import RefreshCoordinator
from hefl.protocols.stats import StatsProtocol, StatsRequest, summary_from_proto
from hefl.v1 import hefl_pb2 as pb
from parties.identity import SigningKey
from parties.keyholder import KeyHolder
from parties.session import KeyHolderSession, TaskAnswerer
from tests.conftest import RunningCoordinator
from tests.helpers import FEATURES, create_job, kernel_gradients

PARAMS = PARAMETER_SETS[DEFAULT_PARAMETER_SET]


def _answer(answerer: TaskAnswerer, task: pb.KeyHolderTask | bytes) -> pb.KeyHolderResult:
    payload = task if isinstance(task, bytes) else task.SerializeToString()
    return pb.KeyHolderResult.FromString(answerer.answer(payload))


@pytest.fixture
def started(private_context, public_context) -> tuple[TaskAnswerer, RefreshCoordinator, bytes]:
    """A key holder (2 iterations) past its statistics; the coordinator half that matches, and
    the statistics task as it was sent."""
    keyholder = KeyHolder(
        context=private_context,
        job_id="job-1",
        features=["a", "b"],
        options=pb.TrainingOptions(iterations=2),
        signing_key=SigningKey.generate(),
    )
    answerer = TaskAnswerer(keyholder)
    rows = np.random.default_rng(1).normal(size=(30, 2))
    share = StatsProtocol(features=2, slots=PARAMS.slots).gen_share(public_context, rows)
    stats = pb.KeyHolderTask(
        decrypt_stats=StatsRequest(job_id="job-1", features=2, shares=(("a", share),)).to_proto()
    ).SerializeToString()
    summary = summary_from_proto(_answer(answerer, stats).values, features=2)
    coordinator = RefreshCoordinator(
        context=public_context,
        params=PARAMS,
        hyper=choose_hyperparameters(curvature=summary.curvature, iterations=2),
        rows=30,
        columns=3,
    )
    return answerer, coordinator, stats


def _gradients(public_context: ts.Context) -> list[ts.CKKSVector]:
    return kernel_gradients(public_context, 3)


def test_a_repeat_of_the_latest_task_gets_the_same_answer_once_computed(started, public_context):
    answerer, coordinator, stats = started
    _answer(answerer, pb.KeyHolderTask(setup=coordinator.setup(_label(public_context)).to_proto()))
    refresh = pb.KeyHolderTask(
        refresh=coordinator.request(_gradients(public_context), iteration=0).to_proto()
    ).SerializeToString()

    first = answerer.answer(refresh)
    again = answerer.answer(refresh)

    assert again == first  # the same fresh ciphertexts: nothing new for the coordinator
    assert pb.KeyHolderResult.FromString(first).WhichOneof("result") == "ciphertexts"
    assert answerer.handled["refresh"] == 1 and answerer.repeats == 1


def test_only_the_latest_task_is_cached_older_ones_are_refused(started, public_context):
    answerer, coordinator, stats = started
    _answer(answerer, pb.KeyHolderTask(setup=coordinator.setup(_label(public_context)).to_proto()))

    refused = _answer(answerer, stats)  # the statistics again, once the setup came after them

    assert "task 'decrypt_stats' refused" in refused.error
    assert answerer.repeats == 0


def test_a_new_request_for_a_refreshed_iteration_is_refused(started, public_context):
    """The iteration just refreshed, asked again with other masks (a different task)."""
    answerer, coordinator, _ = started
    _answer(answerer, pb.KeyHolderTask(setup=coordinator.setup(_label(public_context)).to_proto()))
    gradients = _gradients(public_context)
    _answer(
        answerer, pb.KeyHolderTask(refresh=coordinator.request(gradients, iteration=0).to_proto())
    )

    other = coordinator.request(gradients, iteration=0)
    refused = _answer(answerer, pb.KeyHolderTask(refresh=other.to_proto()))

    assert "refresh of iteration 0 refused: the next iteration is 1" in refused.error


def test_a_second_setup_with_other_masks_is_refused(started, public_context):
    answerer, coordinator, _ = started
    _answer(answerer, pb.KeyHolderTask(setup=coordinator.setup(_label(public_context)).to_proto()))

    other = coordinator.setup(_label(public_context))  # the label term masked again
    refused = _answer(answerer, pb.KeyHolderTask(setup=other.to_proto()))

    assert "task 'setup' refused: the job is at its 'training' stage" in refused.error
    assert answerer.handled["setup"] == 2 and answerer.repeats == 0


def test_a_task_that_does_not_parse_is_answered_with_an_error(started):
    answerer, _, _ = started
    refused = _answer(answerer, b"\xff\xff not a task")
    assert refused.WhichOneof("result") == "error"


def _label(public_context: ts.Context) -> ts.CKKSVector:
    return ts.ckks_vector(public_context, [1.0, -2.0, 0.5])


class SlowKeyHolder(KeyHolder):
    """A key holder that holds its first answer until released: the coordinator gives up on
    that task meanwhile (past its deadline, or because it restarted)."""

    def __init__(self, release: threading.Event, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._release = release
        self.holding = threading.Event()

    def handle(self, task: pb.KeyHolderTask) -> pb.KeyHolderResult:
        if not self.holding.is_set():
            self.holding.set()
            assert self._release.wait(60)
        return super().handle(task)


def test_an_answer_the_coordinator_no_longer_waits_for_does_not_end_the_session(
    coordinator: RunningCoordinator, private_context, public_context_bytes
):
    create_job(coordinator.stub, public_context_bytes)
    release = threading.Event()
    keyholder = SlowKeyHolder(
        release,
        context=private_context,
        job_id="job-1",
        features=FEATURES,
        options=pb.TrainingOptions(iterations=2),
        signing_key=SigningKey.generate(),
    )
    session = KeyHolderSession(coordinator.stub, keyholder, job_id="job-1", party="kh")
    session.start()
    link = coordinator.registry.get("job-1").link
    try:
        assert link.wait_until_connected(timeout_s=60)
        while not keyholder.holding.is_set():  # until a task reached it, each given up on
            with pytest.raises(KeyHolderTimeout):
                link.call(pb.KeyHolderTask(setup=pb.TrainingSetup()), timeout_s=1)
        release.set()  # its answer arrives for a task nobody waits for any more

        # The session goes on: the next task is answered (refused, at this stage).
        with pytest.raises(ProtocolError, match="task 'refresh' refused: .* 'decrypt_stats'"):
            link.call(pb.KeyHolderTask(refresh=pb.RefreshTask(iteration=0)), timeout_s=60)
    finally:
        session.stop()
