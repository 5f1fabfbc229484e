"""The key holder's session with the coordinator: its task stream, kept open across broken
connections and coordinator restarts, and the one answer it may give twice.

:class:`TaskAnswerer` turns a serialized task into a serialized answer (no network): a task it
has not just answered goes to the key holder's state machine (:class:`parties.keyholder.KeyHolder`),
which refuses anything its stage does not allow; a byte-identical repeat of the task it answered
last gets that same answer again, from a cache keyed by the task's SHA-256. That repeat is what
a coordinator sends when a connection broke before the answer arrived, or when it restarted with
the task in flight (it writes every task ahead of sending it, :mod:`coordinator.training`).
Answering it again gives the coordinator nothing it did not already receive; any other request
for a step already taken (a different refresh of the same iteration, a second setup with other
masks, older tasks) is not in the cache and the state machine refuses it.

:class:`KeyHolderSession` runs the stream on its own thread: it opens ``KeyHolderTasks``,
answers each task with ``CompleteTask``, and when the stream breaks it reconnects with backoff
(:class:`parties.reconnect.Outage`) for as long as the party runs; the coordinator sends every
task still waiting for an answer again on the new stream. The party's own watch of the job
bounds how long that is (:mod:`parties.client`): a quiet task stream proves nothing, a status
does.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, Protocol

import grpc

from hefl import chunks
from hefl.errors import HeflError
from hefl.v1 import hefl_pb2 as pb
from hefl.v1 import hefl_pb2_grpc as pb_grpc
from parties.reconnect import Outage, Reconnect, is_transient

log = logging.getLogger("hefl.keyholder")

CALL_TIMEOUT_S = 120.0
# A second stream is refused while the coordinator still counts the broken one as open.
STREAM_TRANSIENT = frozenset({grpc.StatusCode.ALREADY_EXISTS})


class TaskHandler(Protocol):
    """A party's state machine behind its task stream: the key holder's
    (:class:`parties.keyholder.KeyHolder`) or, in collective mode, a roster party's
    (:class:`parties.collective.CollectiveMember`)."""

    def handle(self, task: pb.KeyHolderTask) -> pb.KeyHolderResult: ...


class TaskAnswerer:
    """Answers serialized tasks with the key holder, a repeat of the latest from its cache.

    Attributes:
        handled: Tasks the state machine handled (answered or refused), by kind.
        repeats: Repeats answered from the cache.
        refresh_s: Time spent on refreshes.
    """

    def __init__(self, keyholder: TaskHandler) -> None:
        self._keyholder = keyholder
        self._latest: tuple[bytes, bytes] | None = None  # (task's SHA-256, answer)
        self.handled: Counter[str] = Counter()
        self.repeats = 0
        self.refresh_s = 0.0

    def answer(self, payload: bytes) -> bytes:
        """The serialized :class:`pb.KeyHolderResult` to one serialized task; a refusal is an
        answer too (``error``), and is logged."""
        digest = hashlib.sha256(payload).digest()
        if self._latest is not None and self._latest[0] == digest:
            self.repeats += 1
            log.info("answering a repeat of the latest task from the cache")
            return self._latest[1]
        tick = time.perf_counter()
        task = pb.KeyHolderTask()
        try:
            task.ParseFromString(payload)
            result = self._keyholder.handle(task)
        except HeflError as err:
            log.error("key holder refused task %r: %s", task.WhichOneof("task"), err)
            result = pb.KeyHolderResult(error=str(err))
        except Exception as err:  # a malformed task must not end the session
            log.exception("key holder task %r failed", task.WhichOneof("task"))
            result = pb.KeyHolderResult(error=f"{type(err).__name__}: {err}")
        kind = task.WhichOneof("task") or "unknown"
        if kind == "collective":
            kind = task.collective.step or kind
        self.handled[kind] += 1
        if kind == "refresh":
            self.refresh_s += time.perf_counter() - tick
        answer = result.SerializeToString()
        self._latest = (digest, answer)
        return answer


class KeyHolderSession:
    """The key holder's task loop on its own thread: open the stream, answer, reconnect.

    Args:
        stub: The key holder's stub to the coordinator.
        keyholder: Its state machine for the job.
        job_id: The job.
        party: The key holder's name.
        reconnect: How often to try again when the stream breaks (until stopped: the party
            decides when to give up).
    """

    def __init__(
        self,
        stub: pb_grpc.CoordinatorStub,
        keyholder: TaskHandler,
        *,
        job_id: str,
        party: str,
        reconnect: Reconnect | None = None,
    ) -> None:
        self._stub = stub
        self._party = party
        self.job_id = job_id
        self.answerer = TaskAnswerer(keyholder)
        self._reconnect = reconnect
        self._stopped = threading.Event()
        self._call: Any = None
        self._thread = threading.Thread(target=self._loop, name="key-holder", daemon=True)
        self.reconnects = 0

    @property
    def refresh_s(self) -> float:
        return self.answerer.refresh_s

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._call is not None:
            self._call.cancel()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        policy = replace(self._reconnect or Reconnect(), give_up_s=math.inf)
        outage = Outage(policy, f"key holder of job {self.job_id}", stopped=self._stopped)
        while not self._stopped.is_set():
            try:
                self._call = self._stub.KeyHolderTasks(
                    pb.KeyHolderTasksRequest(job_id=self.job_id, party=self._party)
                )
                self._serve(self._call, outage)
                reason = "it closed the task stream"
            except grpc.RpcError as err:
                if self._stopped.is_set():
                    return
                if not is_transient(err, also=STREAM_TRANSIENT):
                    log.error("the coordinator ended the key holder's session: %s", err)
                    return
                reason = err.code().name  # type: ignore[attr-defined]
            except HeflError as err:  # chunks that do not reassemble: ask again
                reason = str(err)
            if self._stopped.is_set():
                return
            outage.failed(reason)
            self.reconnects = outage.count

    def _serve(self, call: Iterator[pb.TaskChunk], outage: Outage) -> None:
        received: list[pb.TaskChunk] = []
        for chunk in call:
            outage.ok()
            received.append(chunk)
            if len(received) < chunk.count:
                continue
            header, payload = chunks.join_task_chunks(received)
            received = []
            answer = self.answerer.answer(payload)
            try:
                self._stub.CompleteTask(
                    chunks.task_chunks(
                        job_id=self.job_id,
                        party=self._party,
                        task_id=header.task_id,
                        payload=answer,
                    ),
                    timeout=CALL_TIMEOUT_S,
                )
            except grpc.RpcError as err:
                if is_transient(err):
                    raise  # reconnect: the coordinator sends the task again if it still waits
                # It no longer waits for this answer (it gave up on the task, or it restarted
                # and numbers its tasks anew): the session goes on with the next task.
                log.warning(
                    "the coordinator did not take the answer to task %d: %s",
                    header.task_id,
                    err.details(),  # type: ignore[attr-defined]
                )
