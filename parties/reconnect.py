"""Riding out a lost coordinator: which failures are worth a retry, how long to keep trying,
and a ``WatchJob`` stream that survives the coordinator's restarts.

A party only dials out, so when the coordinator restarts or the network drops, it is the party
that reconnects: with exponential backoff (and jitter, so that parties do not return in step),
for a bounded time without any answer (:class:`Reconnect`), after which it gives up with
:class:`CoordinatorLost`. Only failures of the connection are retried; an answer of the
coordinator (``NOT_FOUND``, ``PERMISSION_DENIED``, ``FAILED_PRECONDITION``...) is final.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc

from hefl.errors import HeflError
from hefl.v1 import hefl_pb2 as pb
from hefl.v1 import hefl_pb2_grpc as pb_grpc

log = logging.getLogger("hefl.party")

# What a broken connection or a coordinator going away looks like to a client.
TRANSIENT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}
)
FINISHED = (pb.DONE, pb.FAILED)


class CoordinatorLost(HeflError):
    """The coordinator stayed unreachable for longer than the party waits for it."""


@dataclass(frozen=True)
class Reconnect:
    """How long and how often to try again.

    Attributes:
        give_up_s: Give up after this long without an answer from the coordinator.
        first_s: The first pause; each next one doubles, up to ``max_s``.
        max_s: The longest pause between two attempts.
    """

    give_up_s: float = 300.0
    first_s: float = 0.2
    max_s: float = 5.0


def is_transient(err: grpc.RpcError, *, also: frozenset[grpc.StatusCode] = frozenset()) -> bool:
    """Whether ``err`` is a failure of the connection rather than the coordinator's answer."""
    return err.code() in TRANSIENT | also  # type: ignore[attr-defined]


class Outage:
    """One stretch without the coordinator: pauses between attempts and the deadline.

    Args:
        policy: How long and how often.
        what: What is being retried, for the log and the error.
        stopped: Ends a pause early (the caller is shutting down).
    """

    def __init__(
        self, policy: Reconnect, what: str, *, stopped: threading.Event | None = None
    ) -> None:
        self._policy = policy
        self._what = what
        self._stopped = stopped or threading.Event()
        self._since: float | None = None
        self._pause = policy.first_s
        self.count = 0  # outages so far

    def ok(self) -> None:
        """The coordinator answered: the next failure starts a new outage."""
        self._since = None
        self._pause = self._policy.first_s

    def failed(self, reason: str) -> None:
        """Pause before the next attempt.

        Raises:
            CoordinatorLost: The outage has lasted longer than the policy allows.
        """
        now = time.monotonic()
        if self._since is None:
            self._since = now
            self.count += 1
            bound = self._policy.give_up_s
            log.warning(
                "%s: lost the coordinator (%s); reconnecting %s",
                self._what,
                reason,
                f"for up to {bound:.0f} s" if math.isfinite(bound) else "while the party runs",
            )
        elif now - self._since > self._policy.give_up_s:
            raise CoordinatorLost(
                f"{self._what}: no answer from the coordinator for {self._policy.give_up_s:.0f} s "
                f"({reason})"
            )
        self._stopped.wait(self._pause * random.uniform(0.5, 1.0))  # jitter, not a secret
        self._pause = min(2 * self._pause, self._policy.max_s)


def watch(
    stub: pb_grpc.CoordinatorStub,
    request: pb.WatchJobRequest,
    policy: Reconnect,
    *,
    outages: Callable[[int], None] = lambda _: None,
) -> Iterator[pb.JobStatus]:
    """The job's statuses, as ``WatchJob`` streams them, across broken streams and coordinator
    restarts, until the job is DONE or FAILED.

    Args:
        outages: Told the number of outages so far, after each new one.

    Raises:
        CoordinatorLost: The coordinator stayed away longer than ``policy`` allows.
        grpc.RpcError: The coordinator refused the watch (not a connection failure).
    """
    outage = Outage(policy, f"watching job {request.job_id}")
    while True:
        call = stub.WatchJob(request)
        try:
            for status in call:
                outage.ok()
                yield status
                if status.phase in FINISHED:
                    return
            reason = "it closed the status stream"
        except grpc.RpcError as err:
            if not is_transient(err):
                raise
            reason = err.code().name  # type: ignore[attr-defined]
        finally:
            call.cancel()  # a watcher that stopped reading frees the server's stream at once
        outage.failed(reason)
        outages(outage.count)
