"""How a simulation deals training rows out to parties.

- ``iid``: a seeded shuffle cut into near-equal parts.
- ``label-skew``: each party's share of each class drawn from Dirichlet(alpha); small alpha
  gives parties very different class mixes (alpha=0.5 by default).
- ``size-skew``: party sizes drawn from Dirichlet(alpha) over parties, rows iid.

Every party gets at least ``min_rows`` rows so that it has something to encrypt.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from hefl.errors import InvalidArgument

SPLITS = ("iid", "label-skew", "size-skew")


def split_rows(
    labels: NDArray[np.float64],
    *,
    parties: int,
    kind: str,
    seed: int,
    alpha: float = 0.5,
    min_rows: int = 2,
) -> list[NDArray[np.int64]]:
    """Row indices for each party.

    Raises:
        InvalidArgument: Unknown ``kind``, or fewer rows than ``parties * min_rows``.
    """
    n = len(labels)
    if parties < 1:
        raise InvalidArgument("need at least one party")
    if n < parties * min_rows:
        raise InvalidArgument(
            f"{n} training rows cannot give {parties} parties {min_rows} rows each"
        )
    rng = np.random.default_rng(seed)
    if kind == "iid":
        return [np.sort(p) for p in np.array_split(rng.permutation(n), parties)]
    if kind == "size-skew":
        sizes = _sizes(rng.dirichlet(np.full(parties, alpha)), n, parties, min_rows)
        cuts = np.cumsum(sizes)[:-1]
        return [np.sort(p) for p in np.split(rng.permutation(n), cuts)]
    if kind == "label-skew":
        assigned: list[list[int]] = [[] for _ in range(parties)]
        for cls in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet(np.full(parties, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for party, part in enumerate(np.split(members, cuts)):
                assigned[party].extend(part.tolist())
        _rebalance(assigned, rng, min_rows)
        return [np.sort(np.asarray(p, dtype=np.int64)) for p in assigned]
    raise InvalidArgument(f"unknown split {kind!r}; choose one of {', '.join(SPLITS)}")


def _sizes(shares: NDArray[np.float64], n: int, parties: int, min_rows: int) -> NDArray[np.int64]:
    spare = n - parties * min_rows
    sizes = min_rows + np.floor(shares * spare).astype(np.int64)
    sizes[np.argmax(sizes)] += n - sizes.sum()
    return sizes


def _rebalance(assigned: list[list[int]], rng: np.random.Generator, min_rows: int) -> None:
    """Move rows from the largest party to any party below ``min_rows``."""
    for party in assigned:
        while len(party) < min_rows:
            donor = max(assigned, key=len)
            party.append(donor.pop(int(rng.integers(len(donor)))))
