"""The coordinator's end of the key holder's task stream.

The key holder dials out and opens ``KeyHolderTasks``; the coordinator queues tasks here and
blocks in :meth:`KeyHolderLink.call` until the answer arrives through ``CompleteTask``, or its
deadline passes. A task whose answer has not arrived is sent again when the key holder
reconnects: the key holder answers a byte-identical repeat of its latest task from its cache, so
nothing is applied twice.

Task ids only route an answer to its call. Each link numbers its tasks from a random point, so
an answer the key holder computed for a coordinator that has since restarted cannot be taken
for the answer to another task of the new one (it is refused as unknown).
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections.abc import Callable, Iterator

from google.protobuf.message import DecodeError

from hefl.errors import AlreadyExists, FailedPrecondition, InvalidArgument, ProtocolError
from hefl.v1 import hefl_pb2 as pb


class KeyHolderTimeout(FailedPrecondition):
    """The key holder did not answer in time (is it connected?)."""


class KeyHolderLink:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._ids = itertools.count(1 + secrets.randbits(62))
        self._pending: dict[int, bytes] = {}
        self._results: dict[int, pb.KeyHolderResult] = {}
        self._streams = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._streams > 0

    def wait_until_connected(self, *, timeout_s: float) -> bool:
        """Wait for the key holder's stream; returns whether it is open."""
        with self._cond:
            return self._cond.wait_for(lambda: self._streams > 0, timeout=timeout_s)

    def call(self, task: pb.KeyHolderTask, *, timeout_s: float) -> pb.KeyHolderResult:
        """Send ``task`` to the key holder and wait for its result.

        Raises:
            KeyHolderTimeout: No answer within ``timeout_s``.
            ProtocolError: The key holder answered with an error.
        """
        payload = task.SerializeToString()
        with self._cond:
            task_id = next(self._ids)
            self._pending[task_id] = payload
            self.bytes_sent += len(payload)
            self._cond.notify_all()
            deadline = time.monotonic() + timeout_s
            while task_id not in self._results:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._pending.pop(task_id, None)
                    kind = task.WhichOneof("task")
                    raise KeyHolderTimeout(
                        f"the key holder did not answer task {kind!r} within {timeout_s:.0f} s"
                        + ("" if self._streams else " (it is not connected)")
                    )
                self._cond.wait(left)
            result = self._results.pop(task_id)
        if result.WhichOneof("result") == "error":
            kind = task.WhichOneof("task")
            if kind == "collective":
                raise ProtocolError(f"refused step {task.collective.step!r}: {result.error}")
            raise ProtocolError(f"key holder failed task {kind!r}: {result.error}")
        return result

    def stream(self, is_active: Callable[[], bool]) -> Iterator[tuple[int, bytes]]:
        """Tasks for the connected key-holder stream, until ``is_active()`` turns false.

        Raises:
            AlreadyExists: Another stream is open: tasks go to one key holder stream only.
        """
        sent: set[int] = set()
        with self._cond:
            if self._streams:
                raise AlreadyExists("the key holder's task stream is already open elsewhere")
            self._streams += 1
            self._cond.notify_all()
        try:
            while is_active():
                with self._cond:
                    ready = [(i, p) for i, p in self._pending.items() if i not in sent]
                    if not ready:
                        self._cond.wait(0.5)
                        continue
                for task_id, payload in ready:
                    sent.add(task_id)
                    yield task_id, payload
        finally:
            with self._cond:
                self._streams -= 1

    def complete(self, task_id: int, payload: bytes) -> None:
        """Deliver the key holder's answer to ``task_id``.

        Raises:
            InvalidArgument: ``payload`` is not a KeyHolderResult.
            FailedPrecondition: No such task is waiting (already answered or timed out).
        """
        result = pb.KeyHolderResult()
        try:
            result.ParseFromString(payload)
        except DecodeError as err:
            raise InvalidArgument(f"the answer to task {task_id} is not a KeyHolderResult") from err
        with self._cond:
            if self._pending.pop(task_id, None) is None:
                raise FailedPrecondition(f"no key holder task {task_id} is waiting for an answer")
            self._results[task_id] = result
            self.bytes_received += len(payload)
            self._cond.notify_all()
