"""Ray as a thin layer: connect to a cluster and run :class:`ShardWorker` actors on it.

Faults. A worker whose process dies (killed, out of memory) is restarted by Ray from its
constructor's arguments, up to :data:`MAX_RESTARTS` times, and the call it was running is
retried on the new process, which first reads its shards again from the job directory
(:class:`coordinator.worker.ShardWorker` is deterministic, so the retried call returns what the
first would have). Beyond that, or past a call's deadline, the pool raises
:class:`coordinator.training.WorkerFailure` naming the call and the reason, and the job fails.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import ray

from coordinator.sharding import all_blocks, assign_blocks, balanced_ranges
from coordinator.training import WorkerFailure, WorkerTimeout
from coordinator.worker import ShardWorker
from hefl import sealio
from hefl.codec import PackingLayout
from hefl.models.base import KernelForm

log = logging.getLogger("hefl.ray")

# Loading a million rows' shards takes a while; one gradient call far less.
LOAD_TIMEOUT_S = 1800.0
CALL_TIMEOUT_S = 600.0
CONNECT_TIMEOUT_S = 120.0
# A worker process may die this many times per job; each time Ray retries the call it ran.
MAX_RESTARTS = 3

_connect_lock = threading.Lock()


def connect(address: str | None, *, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` (``auto``, ``host:port``, ``ray://host:10001``) or start
    a local one bound to loopback when ``address`` is None. Safe to call from several threads."""
    with _connect_lock:
        if not ray.is_initialized():
            _init(address, num_cpus)


def _init(address: str | None, num_cpus: int | None) -> None:
    if address:
        log.info("joining Ray cluster at %s", address)
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while True:
            try:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
                return
            except ConnectionError:
                # A cluster that is still starting (see coordinator.local_ray) refuses at first.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    else:
        log.info("starting a local Ray on 127.0.0.1")
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
            _node_ip_address="127.0.0.1",
        )


def cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


class WorkerPool:
    """The job's Ray actors.

    With at least as many blocks as workers, each worker holds a run of blocks and computes
    their gradient in one call (block sharding). With fewer blocks (small jobs: breast cancer is
    one block), every worker holds all blocks and a range of columns, and an iteration takes two
    calls: partial margins over each worker's columns, summed here, then each worker's columns'
    gradients from the full margins (column sharding). Either way all workers are busy.
    """

    def __init__(
        self,
        *,
        context_bytes: bytes,
        parameter_set: str,
        job_root: str,
        layout: PackingLayout,
        columns: int,
        workers: int,
    ) -> None:
        import tenseal as ts

        self._context = ts.context_from(context_bytes)
        remote = ray.remote(ShardWorker).options(  # type: ignore[attr-defined]
            num_cpus=1, max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS
        )
        self._column_ranges: list[tuple[int, int]] | None = None
        if layout.n_blocks >= workers:
            runs = assign_blocks(layout, workers)
        else:
            self._column_ranges = balanced_ranges(columns, workers)
            runs = [all_blocks(layout)] * len(self._column_ranges)
        # Ray's actor handles are dynamically typed.
        self._actors: list[Any] = [
            remote.remote(
                parameter_set=parameter_set,
                job_root=job_root,
                blocks=run,
                columns=columns,
            )
            for run in runs
        ]

    def load(self) -> None:
        """Have every worker read its shards (all uploads must be complete)."""
        loaded = _get(
            [a.load.remote() for a in self._actors], timeout_s=LOAD_TIMEOUT_S, what="loading"
        )
        mode = "column" if self._column_ranges else "block"
        log.info("%d workers hold %s blocks (%s sharding)", len(self._actors), loaded, mode)

    @property
    def size(self) -> int:
        return len(self._actors)

    def gradient(
        self, masked_weights: Sequence[bytes], unmask: Sequence[float], *, form: KernelForm
    ) -> list[list[bytes]]:
        """Per-(output, column) gradient sums, output-major, as one list per worker to be added
        up (block sharding) or a single list (column sharding)."""
        weights_ref = ray.put(list(masked_weights))
        unmask = list(unmask)
        if self._column_ranges is None:
            futures = [actor.gradient.remote(weights_ref, unmask, form) for actor in self._actors]
            return _get(futures, timeout_s=CALL_TIMEOUT_S, what="the gradient")
        partial = _get(
            [
                actor.margins.remote(weights_ref, unmask, columns, form.outputs)
                for actor, columns in zip(self._actors, self._column_ranges, strict=True)
            ],
            timeout_s=CALL_TIMEOUT_S,
            what="the margins",
        )
        margins = sealio.add_up(self._context, partial, what="margin")
        margins_ref = ray.put([sealio.serialize(m) for m in margins])
        parts = _get(
            [
                actor.gradient_from_margins.remote(margins_ref, columns, form)
                for actor, columns in zip(self._actors, self._column_ranges, strict=True)
            ],
            timeout_s=CALL_TIMEOUT_S,
            what="the gradient",
        )
        # Each worker answers its columns output by output; the refresh wants output-major.
        widths = [hi - lo for lo, hi in self._column_ranges]
        return [
            [
                g
                for o in range(form.outputs)
                for part, width in zip(parts, widths, strict=True)
                for g in part[o * width : (o + 1) * width]
            ]
        ]

    def peak_rss_mb(self) -> list[float]:
        return _get(
            [a.peak_rss_mb.remote() for a in self._actors],
            timeout_s=CALL_TIMEOUT_S,
            what="their memory figures",
        )

    def shutdown(self) -> None:
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []


def _get(refs: list[Any], *, timeout_s: float, what: str) -> list[Any]:
    """``ray.get`` with a deadline, Ray's errors turned into the training's.

    Raises:
        WorkerTimeout: Not every worker answered within ``timeout_s``.
        WorkerFailure: A worker died beyond its restarts or raised.
    """
    try:
        return ray.get(refs, timeout=timeout_s)  # type: ignore[no-any-return]
    except ray.exceptions.GetTimeoutError as err:
        # The driver shuts the pool down (killing the actors) when the job fails.
        raise WorkerTimeout(
            f"the Ray workers did not finish {what} within {timeout_s:.0f} s"
        ) from err
    except ray.exceptions.RayError as err:
        cause = getattr(err, "cause", None) or err
        reason = (str(cause).strip().splitlines() or [""])[-1]
        raise WorkerFailure(
            f"the Ray workers failed {what}: {type(cause).__name__}: {reason}"
        ) from err
