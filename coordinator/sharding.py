"""The sharding plan: which worker holds which blocks (or columns). No Ray here, so that both
pools (:mod:`coordinator.ray_pool`, :mod:`coordinator.inprocess_pool`) and the tests share it."""

from __future__ import annotations

from coordinator.worker import BlockSource
from hefl.codec import PackingLayout


def assign_blocks(layout: PackingLayout, workers: int) -> list[list[BlockSource]]:
    """Contiguous, balanced runs of blocks per worker; never an empty worker."""
    blocks = all_blocks(layout)
    return [blocks[lo:hi] for lo, hi in balanced_ranges(len(blocks), workers)]


def all_blocks(layout: PackingLayout) -> list[BlockSource]:
    return [
        BlockSource(block, tuple(layout.parties_in_block(block)))
        for block in range(layout.n_blocks)
    ]


def balanced_ranges(count: int, parts: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges cutting ``count`` items into at most ``parts`` contiguous runs whose
    sizes differ by at most one; never an empty run (``count`` >= 1)."""
    parts = max(1, min(parts, count))
    share, extra = divmod(count, parts)
    ranges, start = [], 0
    for i in range(parts):
        stop = start + share + (1 if i < extra else 0)
        ranges.append((start, stop))
        start = stop
    return ranges
