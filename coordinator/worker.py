"""The work a Ray worker does, as a plain class: hold encrypted shards, compute gradients.

:mod:`coordinator.ray_pool` wraps it with ``ray.remote``; tests use it directly. A worker
loads its blocks from the job directory (summing the parties' contributions to each block), so
a restarted worker rebuilds exactly the same shards; after that they stay in its memory for the
whole training and only weights and gradient sums travel.

Shards are kept serialized (SEAL's compressed form, about half the size of the in-memory
ciphertext) and loaded afresh for every iteration: TenSEAL mod-switches a ciphertext operand in
place when multiplying it with a lower-level one, so a kept object would sink one level per
iteration, and ``CKKSVector.copy`` costs more than a load.
"""

from __future__ import annotations

import logging
import os
import resource
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tenseal as ts

from coordinator.gradient import add_into, gradient_from_margin, gradient_sums, margin
from coordinator.store import JobStore
from hefl import wire
from hefl.params import check_public_context

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
        self._sources = list(blocks)
        self._columns = columns
        self._loaded: list[list[bytes]] | None = None
        self._opened: list[list[ts.CKKSVector]] | None = None

    def load(self) -> int:
        """Read this worker's blocks from the job directory; returns how many it holds."""
        if self._loaded is None:
            self._loaded = [
                [self._read_column(source, column) for column in range(self._columns)]
                for source in self._sources
            ]
            log.info("worker %s holds %d blocks", os.getpid(), len(self._loaded))
        return len(self._loaded)

    def _read_column(self, source: BlockSource, column: int) -> bytes:
        paths = [self._store.column_path(party, source.block, column) for party in source.parties]
        if len(paths) == 1:
            return paths[0].read_bytes()
        total = None
        for path in paths:
            vector = wire.deserialize(self._context, path.read_bytes(), what=str(path))
            total = vector if total is None else total + vector
        assert total is not None
        return wire.serialize(total)

    @property
    def _blocks(self) -> list[list[bytes]]:
        self.load()  # after a restart by Ray, the first call reloads from disk
        assert self._loaded is not None
        return self._loaded

    def _weights(
        self, masked_weights: Sequence[bytes], unmask: Sequence[float]
    ) -> list[ts.CKKSVector]:
        """k * W_j from the key holder's fresh k * (w_j + mask_j) and the masks k * mask_j
        (workers are on the coordinator's side of the trust boundary)."""
        return [
            wire.deserialize(self._context, w, what="weights") - float(m)
            for w, m in zip(masked_weights, unmask, strict=True)
        ]

    def _open_columns(self, block: Sequence[bytes]) -> list[ts.CKKSVector]:
        return [wire.deserialize(self._context, column, what="shard") for column in block]

    def gradient(
        self, masked_weights: Sequence[bytes], unmask: Sequence[float], a: float, b: float
    ) -> list[bytes]:
        """Per-column gradient sums over this worker's blocks (block sharding).

        Args:
            masked_weights: The key holder's fresh ciphertexts of k * (w_j + mask_j).
            unmask: k * mask_j.
            a, b: The sigmoid's encrypted form (:meth:`SigmoidPolynomial.encrypted_form`).
        """
        weights = self._weights(masked_weights, unmask)
        blocks = (self._open_columns(block) for block in self._blocks)
        return [wire.serialize(g) for g in gradient_sums(self._context, weights, blocks, a=a, b=b)]

    def margins(
        self, masked_weights: Sequence[bytes], unmask: Sequence[float], columns: tuple[int, int]
    ) -> list[bytes]:
        """Column sharding, phase 1: each block's margin over columns [lo, hi)."""
        lo, hi = columns
        weights = self._weights(masked_weights[lo:hi], unmask[lo:hi])
        # W * X leaves X at its level: phase 2 reuses these instead of loading them again.
        self._opened = [self._open_columns(block[lo:hi]) for block in self._blocks]
        return [wire.serialize(margin(weights, opened)) for opened in self._opened]

    def gradient_from_margins(
        self, margins: Sequence[bytes], columns: tuple[int, int], a: float, b: float
    ) -> list[bytes]:
        """Column sharding, phase 2: gradient sums of columns [lo, hi) from full margins."""
        lo, hi = columns
        opened, self._opened = self._opened, None
        if opened is None:  # restarted between the phases
            opened = [self._open_columns(block[lo:hi]) for block in self._blocks]
        total = None
        for block_columns, data in zip(opened, margins, strict=True):
            s = wire.deserialize(self._context, data, what="margin")
            total = add_into(total, gradient_from_margin(self._context, s, block_columns, a=a, b=b))
        assert total is not None
        return [wire.serialize(g) for g in total]

    def peak_rss_mb(self) -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
