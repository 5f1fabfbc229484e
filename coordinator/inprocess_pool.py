"""Workers inside the coordinator's own process, for tests and single-process use.

:class:`InProcessPool` is a :class:`coordinator.training.GradientPool` that runs
:class:`coordinator.worker.ShardWorker` objects directly, one after the other, on the block runs
the Ray pool's block sharding gives them (:func:`coordinator.sharding.assign_blocks`). Its
workers read the job directory themselves and return the same per-worker gradient sums as Ray
workers given those blocks; it just computes them without parallelism and without a Ray
cluster.
"""

from __future__ import annotations

from collections.abc import Sequence

from coordinator.driver import PoolFactory
from coordinator.sharding import assign_blocks
from coordinator.worker import ShardWorker
from hefl.codec import PackingLayout
from hefl.models.base import KernelForm


class InProcessPool:
    """Shard workers in this process, each holding a contiguous run of the job's blocks.

    Args:
        parameter_set: The job's CKKS parameter set.
        job_root: The job directory the workers read their shards from.
        layout: Where every party's rows sit.
        columns: Columns per block, bias included.
        workers: At most this many workers (never more than blocks).
    """

    def __init__(
        self,
        *,
        parameter_set: str,
        job_root: str,
        layout: PackingLayout,
        columns: int,
        workers: int = 1,
    ) -> None:
        self._parameter_set = parameter_set
        self._job_root = job_root
        self._runs = assign_blocks(layout, workers)
        self._columns = columns
        self._workers: list[ShardWorker] = []

    @property
    def size(self) -> int:
        return len(self._runs)

    def load(self) -> None:
        if not self._workers:
            self._workers = [
                ShardWorker.from_job_directory(
                    parameter_set=self._parameter_set,
                    job_root=self._job_root,
                    blocks=run,
                    columns=self._columns,
                )
                for run in self._runs
            ]

    def gradient(
        self, masked_weights: Sequence[bytes], unmask: Sequence[float], *, form: KernelForm
    ) -> list[list[bytes]]:
        """Per-(output, column) gradient sums, one list per worker, to be added up."""
        self.load()
        return [worker.gradient(masked_weights, unmask, form) for worker in self._workers]

    def peak_rss_mb(self) -> list[float]:
        """Every worker's figure is this process's peak."""
        return [worker.peak_rss_mb() for worker in self._workers]

    def shutdown(self) -> None:
        self._workers = []


def in_process_pool_factory(*, workers: int = 1) -> PoolFactory:
    """Makes each job's :class:`InProcessPool` (its workers read the job directory, the public
    context included)."""

    def make(
        context_bytes: bytes, parameter_set: str, job_root: str, layout: PackingLayout, columns: int
    ) -> InProcessPool:
        return InProcessPool(
            parameter_set=parameter_set,
            job_root=job_root,
            layout=layout,
            columns=columns,
            workers=workers,
        )

    return make
