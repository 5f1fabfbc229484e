"""The coordinator's end of the key holder's task stream, driven through its public calls.

The training thread blocks in ``call`` (here on a worker thread); the key holder's side is what
the servicer does with ``stream`` (tasks out) and ``complete`` (answers in).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from coordinator.keyholder_link import KeyHolderLink, KeyHolderTimeout
from hefl.errors import FailedPrecondition, ProtocolError
from hefl.v1 import hefl_pb2 as pb

# Generous: a deadline for a hung test, never a measured duration.
WAIT_S = 60.0
TASK = pb.KeyHolderTask(refresh=pb.RefreshTask(iteration=3, weights_offset=[1.0, 2.0]))
ANSWER = pb.KeyHolderResult(ciphertexts=pb.Ciphertexts(ciphertexts=[b"w0", b"w1"]))


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="training") as pool:
        yield pool


def _open_until_deadline(link: KeyHolderLink) -> Iterator[tuple[int, bytes]]:
    """A key-holder stream that ends by itself if no task comes (a hang guard, not a timing)."""
    deadline = time.monotonic() + WAIT_S
    return link.stream(lambda: time.monotonic() < deadline)


def _call(executor: ThreadPoolExecutor, link: KeyHolderLink) -> Future[pb.KeyHolderResult]:
    return executor.submit(link.call, TASK, timeout_s=WAIT_S)


def test_a_call_is_answered_through_the_stream(executor: ThreadPoolExecutor) -> None:
    link = KeyHolderLink()
    stream = _open_until_deadline(link)
    result = _call(executor, link)

    task_id, payload = next(stream)
    assert pb.KeyHolderTask.FromString(payload) == TASK
    link.complete(task_id, ANSWER.SerializeToString())

    assert result.result(timeout=WAIT_S) == ANSWER
    assert link.bytes_sent == len(payload)
    assert link.bytes_received == len(ANSWER.SerializeToString())


def test_a_task_is_sent_again_after_the_stream_reconnects_and_answered_once(
    executor: ThreadPoolExecutor,
) -> None:
    link = KeyHolderLink()
    dropped = threading.Event()
    first = link.stream(lambda: not dropped.is_set())
    result = _call(executor, link)
    task_id, payload = next(first)

    dropped.set()  # the stream breaks before the key holder answers
    assert next(first, None) is None
    assert not link.connected
    second = _open_until_deadline(link)
    assert next(second, None) == (task_id, payload)
    link.complete(task_id, ANSWER.SerializeToString())

    assert result.result(timeout=WAIT_S) == ANSWER
    # The key holder's answer to the first sending arrives late: nobody waits for it any more.
    with pytest.raises(FailedPrecondition, match=f"no key holder task {task_id} is waiting"):
        link.complete(task_id, ANSWER.SerializeToString())


def test_a_timeout_without_a_key_holder_says_it_is_not_connected() -> None:
    link = KeyHolderLink()
    with pytest.raises(KeyHolderTimeout, match=r"task 'refresh' .*\(it is not connected\)"):
        link.call(TASK, timeout_s=0)


def test_a_timeout_with_a_key_holder_connected_does_not_blame_the_connection(
    executor: ThreadPoolExecutor,
) -> None:
    link = KeyHolderLink()
    opened, leaving = threading.Event(), threading.Event()

    def active() -> bool:
        opened.set()  # first asked once the stream is counted as connected
        return not leaving.is_set()

    stream = link.stream(active)
    silent = executor.submit(lambda: next(stream, None))  # a key holder that never answers
    assert opened.wait(WAIT_S)
    with pytest.raises(KeyHolderTimeout) as info:
        link.call(TASK, timeout_s=0)
    assert "did not answer task 'refresh'" in str(info.value)
    assert "not connected" not in str(info.value)
    leaving.set()
    silent.result(timeout=WAIT_S)


def test_completing_an_unknown_task_is_refused() -> None:
    link = KeyHolderLink()
    with pytest.raises(FailedPrecondition, match="no key holder task 7 is waiting for an answer"):
        link.complete(7, ANSWER.SerializeToString())
    assert link.bytes_received == 0


def test_an_error_answer_raises_protocol_error(executor: ThreadPoolExecutor) -> None:
    link = KeyHolderLink()
    stream = _open_until_deadline(link)
    result = _call(executor, link)
    task_id, _ = next(stream)

    error = pb.KeyHolderResult(error="task 'refresh' before training setup")
    link.complete(task_id, error.SerializeToString())

    with pytest.raises(ProtocolError, match="key holder failed task 'refresh': task 'refresh' "):
        result.result(timeout=WAIT_S)
