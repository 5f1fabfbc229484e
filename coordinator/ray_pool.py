"""Ray as a thin layer: connect to a cluster and run :class:`ShardWorker` actors on it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import ray

from coordinator.worker import BlockSource, ShardWorker
from hefl.codec import PackingLayout

log = logging.getLogger("hefl.ray")

# Loading a million rows' shards takes a while; one gradient call far less.
LOAD_TIMEOUT_S = 1800.0
CALL_TIMEOUT_S = 600.0

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
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
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


def assign_blocks(layout: PackingLayout, workers: int) -> list[list[BlockSource]]:
    """Contiguous, balanced runs of blocks per worker; never an empty worker."""
    blocks = [
        BlockSource(block, tuple(layout.parties_in_block(block))) for block in range(layout.n_blocks)
    ]
    workers = max(1, min(workers, len(blocks)))
    share, extra = divmod(len(blocks), workers)
    runs, start = [], 0
    for i in range(workers):
        stop = start + share + (1 if i < extra else 0)
        runs.append(blocks[start:stop])
        start = stop
    return runs


class WorkerPool:
    """The job's Ray actors, each holding a run of blocks."""

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
        context_ref = ray.put(context_bytes)
        remote = ray.remote(ShardWorker).options(  # type: ignore[attr-defined]
            num_cpus=1, max_restarts=3, max_task_retries=3
        )
        self._actors = [
            remote.remote(
                context_bytes=context_ref,
                parameter_set=parameter_set,
                job_root=job_root,
                blocks=run,
                columns=columns,
            )
            for run in assign_blocks(layout, workers)
        ]
        loaded = ray.get([a.ready.remote() for a in self._actors], timeout=LOAD_TIMEOUT_S)
        log.info("%d workers hold %s blocks", len(self._actors), loaded)

    @property
    def size(self) -> int:
        return len(self._actors)

    def gradient(
        self, masked_weights: Sequence[bytes], unmask: Sequence[float], *, a: float, b: float
    ) -> list[list[bytes]]:
        """Every worker's per-column gradient sums, computed in parallel."""
        weights_ref = ray.put(list(masked_weights))
        futures = [actor.gradient.remote(weights_ref, list(unmask), a, b) for actor in self._actors]
        return ray.get(futures, timeout=CALL_TIMEOUT_S)

    def peak_rss_mb(self) -> list[float]:
        return ray.get([a.peak_rss_mb.remote() for a in self._actors], timeout=CALL_TIMEOUT_S)

    def shutdown(self) -> None:
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
