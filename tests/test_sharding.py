"""The sharding plan: which worker holds which blocks, and whose rows each block sums."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from coordinator.sharding import all_blocks, assign_blocks, balanced_ranges
from coordinator.worker import BlockSource
from hefl.codec import PackingLayout


def test_balanced_ranges_cut_every_item_once_into_near_equal_non_empty_runs() -> None:
    cases = [*itertools.product(range(1, 18), range(1, 9)), (5, 0), (1, 100)]
    for count, parts in cases:
        ranges = balanced_ranges(count, parts)

        case = f"{count} items in {parts} parts: {ranges}"
        assert len(ranges) == max(1, min(parts, count)), case
        assert ranges[0][0] == 0 and ranges[-1][1] == count, case
        assert all(hi == lo for (_, hi), (lo, _) in itertools.pairwise(ranges)), case
        sizes = [hi - lo for lo, hi in ranges]
        assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1, case


def _owners_by_row(layout: PackingLayout) -> list[str]:
    """The party of every row, in packing order (rows are concatenated party after party)."""
    return [placed.name for placed in layout.parties for _ in range(placed.rows)]


def _expected_sources(layout: PackingLayout) -> list[BlockSource]:
    """Each block with the parties that own at least one of its slots, from row ownership."""
    owners = _owners_by_row(layout)
    sources = []
    for block in range(layout.n_blocks):
        in_block = owners[block * layout.slots : (block + 1) * layout.slots]
        sources.append(BlockSource(block, tuple(dict.fromkeys(in_block))))
    return sources


@pytest.mark.parametrize(
    ("party_rows", "expected"),
    [
        # A party that ends exactly at a block boundary is not in the next block.
        ([("a", 4), ("b", 1)], [("a",), ("b",)]),
        # One row short of the boundary: the next party starts in the same block.
        ([("a", 3), ("b", 2)], [("a", "b"), ("b",)]),
        # A party spanning three blocks, a one-row party, one starting on a boundary.
        ([("a", 9), ("b", 1), ("c", 2), ("d", 4)], [("a",), ("a",), ("a", "b", "c"), ("d",)]),
    ],
)
def test_each_block_sums_exactly_the_parties_with_rows_in_it(
    party_rows: list[tuple[str, int]], expected: list[tuple[str, ...]]
) -> None:
    layout = PackingLayout.assign(slots=4, party_rows=party_rows)
    assert all_blocks(layout) == [BlockSource(b, parties) for b, parties in enumerate(expected)]


def test_block_parties_match_row_ownership_on_random_layouts() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        parties = int(rng.integers(1, 6))
        rows = rng.integers(1, 20, size=parties)
        layout = PackingLayout.assign(
            slots=int(rng.integers(1, 9)),
            party_rows=[(f"p{i}", int(r)) for i, r in enumerate(rows)],
        )
        assert all_blocks(layout) == _expected_sources(layout)


@pytest.mark.parametrize("workers", [1, 2, 3, 5, 7, 50])
@pytest.mark.parametrize("party_rows", [[("a", 1)], [("a", 30), ("b", 1), ("c", 7)], [("a", 28)]])
def test_every_block_goes_to_exactly_one_worker_in_balanced_contiguous_runs(
    party_rows: list[tuple[str, int]], workers: int
) -> None:
    layout = PackingLayout.assign(slots=4, party_rows=party_rows)

    runs = assign_blocks(layout, workers)

    assert len(runs) == min(workers, layout.n_blocks)
    assert [source for run in runs for source in run] == all_blocks(layout)
    sizes = [len(run) for run in runs]
    assert min(sizes) >= 1
    assert max(sizes) - min(sizes) <= 1
