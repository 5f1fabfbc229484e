"""The packing codec: where each party's values sit in the CKKS slots.

Feature-major packing. The job's rows, all parties concatenated in the layout's order, are cut
into blocks of ``slots`` rows; block ``b`` is stored as one ciphertext per column (features,
then the bias column of ones), slot ``i`` holding global row ``b * slots + i``. A party encrypts,
for every block its rows touch, a vector that is zero outside its own rows; the coordinator adds
the parties' vectors of the same block and column. No rotation is ever needed: the weight of
column j is encrypted replicated in every slot, so ``z = sum_j W_j * X_j`` is slot-wise, and
padding slots (zero in every column, bias included) contribute nothing to any gradient.

Small vectors (statistics, label terms, weights) use the first slots of one ciphertext.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from hefl.errors import InvalidArgument, NotFound

Array = NDArray[np.float64]


@dataclass(frozen=True)
class PartyRows:
    name: str
    rows: int
    offset: int


@dataclass(frozen=True)
class PackingLayout:
    """Where every party's rows sit in the job's blocks."""

    slots: int
    parties: tuple[PartyRows, ...]

    @classmethod
    def assign(cls, *, slots: int, party_rows: Sequence[tuple[str, int]]) -> PackingLayout:
        """Concatenate the parties' rows in the given order."""
        offset = 0
        placed = []
        for name, rows in party_rows:
            if rows <= 0:
                raise InvalidArgument(f"party {name!r} has no rows")
            placed.append(PartyRows(name=name, rows=rows, offset=offset))
            offset += rows
        return cls(slots=slots, parties=tuple(placed))

    @property
    def total_rows(self) -> int:
        return sum(p.rows for p in self.parties)

    @property
    def n_blocks(self) -> int:
        return -(-self.total_rows // self.slots)

    def party(self, name: str) -> PartyRows:
        for placed in self.parties:
            if placed.name == name:
                return placed
        raise NotFound(f"party {name!r} is not in the job's layout")

    def blocks_of(self, name: str) -> range:
        placed = self.party(name)
        first = placed.offset // self.slots
        last = (placed.offset + placed.rows - 1) // self.slots
        return range(first, last + 1)

    def parties_in_block(self, block: int) -> list[str]:
        return [p.name for p in self.parties if block in self.blocks_of(p.name)]

    def pack(self, name: str, columns: Array) -> Iterator[tuple[int, int, Array]]:
        """Yield (block, column, slot vector) for every ciphertext party ``name`` uploads.

        Args:
            name: The party.
            columns: Its rows, shape (rows, n_columns), bias column included.
        """
        placed = self.party(name)
        if columns.shape[0] != placed.rows:
            raise InvalidArgument(
                f"party {name!r} packs {columns.shape[0]} rows but the layout has {placed.rows}"
            )
        for block in self.blocks_of(name):
            start = max(placed.offset, block * self.slots)
            stop = min(placed.offset + placed.rows, (block + 1) * self.slots)
            rows = columns[start - placed.offset : stop - placed.offset]
            for column in range(columns.shape[1]):
                vector = np.zeros(self.slots)
                vector[start - block * self.slots : stop - block * self.slots] = rows[:, column]
                yield block, column, vector


def stats_vector(features: Array) -> Array:
    """(count, sum of each feature, sum of squares of each feature) of a party's rows."""
    return np.concatenate([[features.shape[0]], features.sum(axis=0), (features**2).sum(axis=0)])


def unpack_stats(values: Sequence[float], n_features: int) -> tuple[int, Array, Array]:
    """Aggregate (count, mean, std) from a summed :func:`stats_vector`.

    Constant features get std 1 so standardizing leaves them at zero instead of dividing by 0.
    """
    totals = np.asarray(values, dtype=np.float64)
    count = int(round(totals[0]))
    if count <= 0:
        raise InvalidArgument(f"aggregate row count is {count}")
    mean = totals[1 : 1 + n_features] / count
    variance = totals[1 + n_features : 1 + 2 * n_features] / count - mean**2
    std = np.sqrt(np.clip(variance, 0.0, None))
    std[std < 1e-8 * np.maximum(1.0, np.abs(mean))] = 1.0
    return count, mean, std
