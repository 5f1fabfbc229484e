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
    """A party's (count, per-feature sums, sums of pairwise products) as one flat vector.

    The products are the upper triangle, row by row and diagonal included, of
    ``sum_i x_i x_i^T``: the diagonal holds the sums of squares. Summed over the parties this is
    all the job needs to standardize the features and to bound the loss curvature
    (:meth:`AggregateStats.from_sums`).
    """
    upper = np.triu_indices(features.shape[1])
    return np.concatenate(
        [[features.shape[0]], features.sum(axis=0), (features.T @ features)[upper]]
    )


def stats_length(n_features: int) -> int:
    return 1 + n_features + n_features * (n_features + 1) // 2


def piece_sizes(length: int, slots: int) -> list[int]:
    """Sizes of the ciphertexts a vector of ``length`` values is encrypted in."""
    return [min(slots, length - start) for start in range(0, length, slots)]


def split_vector(values: Array, slots: int) -> list[Array]:
    """Cut a long vector into :func:`piece_sizes` pieces, one ciphertext each."""
    return np.split(values, np.cumsum(piece_sizes(len(values), slots))[:-1])


@dataclass(frozen=True)
class AggregateStats:
    """What the job learns from the parties' summed statistics: all that leaves the key holder.

    Attributes:
        count: Rows over all parties.
        mean, std: Per feature, over all rows. Constant features get std 1, so standardizing
            leaves them at zero instead of dividing by 0.
        curvature: Largest eigenvalue of the second-moment matrix of the standardized features
            with the bias column: the largest eigenvalue of the features' correlation matrix, or
            1 (the bias column) if that is smaller. The logistic loss's Hessian is at most
            ``sigmoid slope x curvature``, which bounds a safe step size
            (:func:`hefl.algorithm.choose_hyperparameters`).
    """

    count: int
    mean: Array
    std: Array
    curvature: float

    @classmethod
    def from_sums(cls, values: Sequence[float] | Array, n_features: int) -> AggregateStats:
        """Summarize a summed :func:`stats_vector` (the key holder does, after decrypting)."""
        totals = np.asarray(values, dtype=np.float64)
        if len(totals) != stats_length(n_features):
            raise InvalidArgument(
                f"{len(totals)} statistics for {n_features} features, expected "
                f"{stats_length(n_features)}"
            )
        count = int(round(totals[0]))
        if count <= 0:
            raise InvalidArgument(f"aggregate row count is {count}")
        mean = totals[1 : 1 + n_features] / count
        products = np.zeros((n_features, n_features))
        products[np.triu_indices(n_features)] = totals[1 + n_features :]
        products = products + np.triu(products, 1).T
        covariance = products / count - np.outer(mean, mean)
        std = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
        std[std < 1e-8 * np.maximum(1.0, np.abs(mean))] = 1.0
        correlation = covariance / np.outer(std, std)
        curvature = max(1.0, float(np.linalg.eigvalsh(correlation)[-1]))
        return cls(count=count, mean=mean, std=std, curvature=curvature)

    @classmethod
    def of_rows(cls, features: Array) -> AggregateStats:
        """The same summary of rows held in one place (the plaintext replica, benchmarks)."""
        return cls.from_sums(stats_vector(features), features.shape[1])

    def to_values(self) -> list[float]:
        return [float(self.count), *self.mean, *self.std, self.curvature]

    @classmethod
    def from_values(cls, values: Sequence[float], n_features: int) -> AggregateStats:
        """Inverse of :meth:`to_values`."""
        if len(values) != 2 + 2 * n_features:
            raise InvalidArgument(
                f"{len(values)} aggregate values for {n_features} features, expected "
                f"{2 + 2 * n_features}"
            )
        array = np.asarray(values, dtype=np.float64)
        return cls(
            count=int(round(array[0])),
            mean=array[1 : 1 + n_features],
            std=array[1 + n_features : 1 + 2 * n_features],
            curvature=float(array[-1]),
        )
