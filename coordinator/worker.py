"""The work a Ray worker does, as a plain class: hold encrypted shards, compute gradients.

:mod:`coordinator.ray_pool` wraps it with ``ray.remote``; tests use it directly. A worker is
given its blocks (:meth:`ShardWorker.hold`: each party's serialized contributions to a block,
which it sums), one block at a time, by whoever reads the job directory: the coordinator, which
sends them through Ray's object store, so that a worker needs no access to the coordinator's
disk. After that the shards stay in its memory for the whole training and only weights and
gradient sums travel. A worker restarted by Ray comes back empty and says so
(:class:`ShardsMissing`) on its next call, and the coordinator gives it its blocks again.

Shards are kept as SEAL ciphertexts at the top level; the kernel
(:class:`coordinator.gradient.GradientKernel`) never modifies them.

Every ciphertext a worker loads, from the coordinator or in a call, passes
:mod:`hefl.validate` against what it must be there: shards fresh with a block's slots, weights
fresh and possibly in SEAL's seeded form (the key holder's symmetric encryption, or a
collective refresh, whose second polynomial is a common random one), margins one rescaling
down.
"""

from __future__ import annotations

import logging
import os
import resource
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tenseal as ts

from coordinator.gradient import Ciphertext, GradientKernel
from coordinator.store import JobStore
from hefl import sealio
from hefl.errors import HeflError, InvalidArgument
from hefl.models.base import KernelForm
from hefl.params import PARAMETER_SETS, check_public_context
from hefl.validate import CiphertextRules, Expected

log = logging.getLogger("hefl.worker")


@dataclass(frozen=True)
class BlockSource:
    """Where block ``block`` comes from: the parties whose rows it holds."""

    block: int
    parties: tuple[str, ...]


# A block as it travels to a worker: for each party of the block (in BlockSource order), its
# serialized ciphertexts, one per column.
BlockBytes = list[list[bytes]]


def read_block(store: JobStore, source: BlockSource, columns: int) -> BlockBytes:
    """The job directory's files of one block, as :meth:`ShardWorker.hold` takes them."""
    return [
        [store.column_path(party, source.block, column).read_bytes() for column in range(columns)]
        for party in source.parties
    ]


class ShardsMissing(HeflError):
    """A worker was asked to compute before it held all its blocks: Ray restarted it (its
    process died) and nobody has given them again yet."""


class ShardWorker:
    """Holds some blocks of a job's encrypted data and computes their gradient sums."""

    def __init__(
        self,
        *,
        parameter_set: str,
        context: bytes,
        blocks: Sequence[BlockSource],
        columns: int,
    ) -> None:
        """Cheap: the shards come later (:meth:`hold`), so a pool can be started while parties
        are still uploading. Ray restarts a worker from these arguments alone (the public
        context is an object the pool keeps in Ray's store for the job's lifetime)."""
        self._context = ts.context_from(context)
        check_public_context(self._context, parameter_set)
        self._kernel = GradientKernel(self._context)
        self._slots = PARAMETER_SETS[parameter_set].slots
        self._rules = CiphertextRules(self._context)
        self._shard = Expected(values=self._slots)
        self._weight = Expected(values=self._slots, seeded=True)
        self._sources = {source.block: source for source in blocks}
        self._order = [source.block for source in blocks]
        self._columns = columns
        self._held: dict[int, list[Ciphertext]] = {}

    @classmethod
    def from_job_directory(
        cls, *, parameter_set: str, job_root: str, blocks: Sequence[BlockSource], columns: int
    ) -> ShardWorker:
        """A worker holding its blocks, read from a job directory it can see (one process)."""
        store = JobStore(Path(job_root))
        worker = cls(
            parameter_set=parameter_set,
            context=store.context_path().read_bytes(),
            blocks=blocks,
            columns=columns,
        )
        for source in blocks:
            worker.hold(source.block, read_block(store, source, columns))
        return worker

    def hold(self, block: int, contributions: BlockBytes) -> int:
        """Keep block ``block``: the sum of its parties' contributions, column by column.
        Returns how many of its blocks this worker holds.

        Raises:
            InvalidArgument: A ciphertext fails the gate, or the block is not this worker's, or
                its parties or columns differ from the plan.
        """
        source = self._sources.get(block)
        if source is None or len(contributions) != len(source.parties):
            raise InvalidArgument(f"block {block} is not this worker's as given")
        if any(len(party) != self._columns for party in contributions):
            raise InvalidArgument(f"block {block} must have {self._columns} columns per party")
        self._held[block] = [
            self._kernel.open(
                sealio.add_vectors(
                    self._context,
                    (party[column] for party in contributions),
                    what=f"column {column} of block {block}",
                    expected=self._shard,
                )
            )
            for column in range(self._columns)
        ]
        if len(self._held) == len(self._order):
            log.info("worker %s holds its %d blocks", os.getpid(), len(self._held))
        return len(self._held)

    def missing(self) -> list[int]:
        """This worker's blocks it does not hold (all of them after a restart by Ray)."""
        return [block for block in self._order if block not in self._held]

    @property
    def _blocks(self) -> list[list[Ciphertext]]:
        if len(self._held) < len(self._order):
            raise ShardsMissing(
                f"worker {os.getpid()} holds {len(self._held)} of its {len(self._order)} blocks"
            )
        return [self._held[block] for block in self._order]

    def _weights(
        self, masked_weights: Sequence[bytes], unmask: Sequence[float]
    ) -> list[Ciphertext]:
        """k * W_j from the key holder's fresh k * (w_j + mask_j) and the masks k * mask_j
        (workers are on the coordinator's side of the trust boundary)."""
        weights = []
        for data, mask in zip(masked_weights, unmask, strict=True):
            weight = self._kernel.open(self._rules.load(data, self._weight, what="weights"))
            self._kernel.add_constant(weight, -float(mask))
            weights.append(weight)
        return weights

    def _serialize(self, ciphertexts: Sequence[Ciphertext]) -> list[bytes]:
        return [sealio.vector_bytes(c, size=self._slots, scale=c.scale) for c in ciphertexts]

    def gradient(
        self, masked_weights: Sequence[bytes], unmask: Sequence[float], form: KernelForm
    ) -> list[bytes]:
        """Per-(output, column) gradient sums over this worker's blocks (block sharding).

        Args:
            masked_weights: The key holder's fresh ciphertexts of k * (w_j + mask_j), one per
                (output, column), output-major.
            unmask: k * mask_j.
            form: The model's polynomial (:meth:`hefl.models.Model.kernel`).
        """
        weights = self._weights(masked_weights, unmask)
        return self._serialize(self._kernel.gradient_sums(weights, self._blocks, form))

    def margins(
        self,
        masked_weights: Sequence[bytes],
        unmask: Sequence[float],
        columns: tuple[int, int],
        outputs: int = 1,
    ) -> list[bytes]:
        """Column sharding, phase 1: each block's margins over columns [lo, hi), one per output
        (block-major)."""
        lo, hi = columns
        picked = [o * self._columns + j for o in range(outputs) for j in range(lo, hi)]
        weights = self._weights([masked_weights[i] for i in picked], [unmask[i] for i in picked])
        return self._serialize(
            [
                s
                for block in self._blocks
                for s in self._kernel.margins(weights, block[lo:hi], outputs)
            ]
        )

    def gradient_from_margins(
        self, margins: Sequence[bytes], columns: tuple[int, int], form: KernelForm
    ) -> list[bytes]:
        """Column sharding, phase 2: gradient sums of columns [lo, hi) from full margins, one
        per (output, column), output-major."""
        lo, hi = columns
        outputs = form.outputs
        totals = None
        margin = self._rules.margin(form)
        for index, block in enumerate(self._blocks):
            s = [
                self._kernel.open(self._rules.load(data, margin, what="margin"))
                for data in margins[index * outputs : (index + 1) * outputs]
            ]
            totals = self._kernel.accumulate(totals, s, block[lo:hi], form)
        assert totals is not None
        return self._serialize(self._kernel.finish(totals))

    def peak_rss_mb(self) -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
