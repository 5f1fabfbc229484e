"""The work a Ray worker does, as a plain class: hold encrypted shards, compute gradients.

:mod:`coordinator.ray_pool` wraps it with ``ray.remote``; tests use it directly. A worker
loads its blocks from the job directory (summing the parties' contributions to each block), so
a restarted worker rebuilds exactly the same shards; after that they stay in its memory for the
whole training and only weights and gradient sums travel.

Shards are loaded once and kept as SEAL ciphertexts at the top level; the kernel
(:class:`coordinator.gradient.GradientKernel`) never modifies them.

Every ciphertext a worker loads, from the job directory or in a call, passes
:mod:`hefl.validate` against what it must be there: shards fresh with a block's slots, weights
fresh (seeded when the key holder encrypted them), margins one rescaling down.
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
from hefl.models.base import KernelForm
from hefl.params import PARAMETER_SETS, check_public_context
from hefl.validate import CiphertextRules, Expected

log = logging.getLogger("hefl.worker")


@dataclass(frozen=True)
class BlockSource:
    """Where block ``block`` comes from: the parties whose rows it holds."""

    block: int
    parties: tuple[str, ...]


class ShardWorker:
    """Holds some blocks of a job's encrypted data and computes their gradient sums."""

    def __init__(
        self,
        *,
        parameter_set: str,
        job_root: str,
        blocks: Sequence[BlockSource],
        columns: int,
    ) -> None:
        """Cheap: the shards are read by :meth:`load` (or the first call that needs them), so a
        pool can be started while parties are still uploading. Everything else comes from the
        job directory too (the public context included), so Ray can restart a worker from its
        arguments alone."""
        self._store = JobStore(Path(job_root))
        self._context = ts.context_from(self._store.context_path().read_bytes())
        check_public_context(self._context, parameter_set)
        self._kernel = GradientKernel(self._context)
        self._slots = PARAMETER_SETS[parameter_set].slots
        self._rules = CiphertextRules(self._context)
        self._shard = Expected(values=self._slots)
        self._weight = Expected(values=self._slots, seeded=True)
        self._margin = Expected(values=self._slots, rescales=1)
        self._sources = list(blocks)
        self._columns = columns
        self._loaded: list[list[Ciphertext]] | None = None

    def load(self) -> int:
        """Read this worker's blocks from the job directory; returns how many it holds."""
        if self._loaded is None:
            self._loaded = [
                [self._read_column(source, column) for column in range(self._columns)]
                for source in self._sources
            ]
            log.info("worker %s holds %d blocks", os.getpid(), len(self._loaded))
        return len(self._loaded)

    def _read_column(self, source: BlockSource, column: int) -> Ciphertext:
        """One column of a block: the sum of the parties' contributions to it."""
        paths = [self._store.column_path(party, source.block, column) for party in source.parties]
        total = sealio.add_vectors(
            self._context,
            (path.read_bytes() for path in paths),
            what=f"column {column} of block {source.block}",
            expected=self._shard,
        )
        return self._kernel.open(total)

    @property
    def _blocks(self) -> list[list[Ciphertext]]:
        self.load()  # after a restart by Ray, the first call reloads from disk
        assert self._loaded is not None
        return self._loaded

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
        for index, block in enumerate(self._blocks):
            s = [
                self._kernel.open(self._rules.load(data, self._margin, what="margin"))
                for data in margins[index * outputs : (index + 1) * outputs]
            ]
            totals = self._kernel.accumulate(totals, s, block[lo:hi], form)
        assert totals is not None
        return self._serialize(self._kernel.finish(totals))

    def peak_rss_mb(self) -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
