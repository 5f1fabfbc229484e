"""Collective key generation: the public key (one round) and the relinearization key (two).

Mouchet, Troncoso-Pastoriza, Bossuat, Hubaux, "Multiparty Homomorphic Encryption from
Ring-Learning-with-Errors", PoPETs 2021: section IV.B (EncKeyGen, protocol 1) and IV.C
(RelinKeyGen, protocol 2); Lattigo's ``multiparty.PublicKeyGenProtocol`` and
``RelinearizationKeyGenProtocol``. Each party i holds s_i; s = sum s_i is never formed.

Public key (CKG). With a = CRP("public-key") at the key level, party i sends
p_i = -a s_i + e_i; the aggregate is pk = (sum p_i, a), and pk_0 + pk_1 s = sum e_i: an ordinary
SEAL public key of s with noise std sqrt(n) 3.24.

Relinearization key (RKG), for SEAL's RNS gadget: g_j = P mod q_j on row j (0 elsewhere), one
key per data prime j, with a_j = CRP("relin-key", index j).

1. Round 1, party i, with a fresh ephemeral ternary u_i: h0_ij = -u_i a_j + s_i g_j + e0_ij,
   h1_ij = s_i a_j + e1_ij. Aggregate: h0_j = -u a_j + s g_j + e0_j, h1_j = s a_j + e1_j.
2. Round 2, party i: h0'_ij = s_i h0_j + e2_ij, h1'_ij = (u_i - s_i) h1_j + e3_ij. Aggregate,
   and the key is rlk_j = (h0'_j + h1'_j, h1_j): rlk_j0 = s^2 g_j - s^2 a_j + s e0_j +
   (u - s) e1_j + e2_j + e3_j, so rlk_j0 + rlk_j1 s = s^2 g_j + E_j with
   E_j = s e0_j + u e1_j + e2_j + e3_j.

Noise: the key's noise has std sqrt(2 n sigma^2 (n (2/3) N + 1)) (:func:`relin_key_noise_std`,
Lattigo's ``NoiseRelinearizationKey``): 1016 for n = 3, N = 8192 (measured 1018) against 3.24
for a key SEAL makes, i.e. 8.3 more bits in the noise every relinearization adds before the
division by the special prime P. SEAL's key switching takes each RNS digit in [0, q_j), so the
digits have mean q_j / 2 and the key's noise also enters as a fixed bias, (q_j / 2) (1 + X + ...
+ X^(N-1)) E_j / P, which is large only in the slots whose roots lie near 1 (slot 0 first: the
all-ones polynomial is 2 / (1 - zeta) there, about 2N / pi). Measured at N = 8192, scale 2^30,
over 5 key generations: 0 * 0 comes out off by 1.4e-4 to 6.4e-4 in its worst slot (slot 0 or
1), 3-4e-5 in the 10th worst, 3e-6 in the median slot; x * y of values in [-1, 1] by up to
1.2e-3 in slot 0 (SEAL's own key: 5e-5 everywhere). The training kernel's last-level gradients
are off by 1.7e-3 per slot at most (5e-4 under a single key), and their slot sums, which see
the bias only through coefficient 0, stay within 0.02 of the single-key sums
(``tests/test_collective_keys.py``).

Security (semi-honest parties, any n-1 of them colluding with the aggregator): every share is an
RLWE sample of its party's secret (or of the ephemeral u_i) for a uniform CRP, with fresh CBD
noise, hence pseudorandom under RLWE with the parameter set's 128-bit bounds; the aggregate
leaks nothing the public and relinearization keys do not. As in Lattigo, a party must not send
two shares for one CRP (no retries with the same label: SECURITY.md, "On the insecurity of
retries"); the protocols here derive a fresh CRP per label and bind each share to it.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from hefl.errors import ProtocolError
from hefl.params import CkksParameters
from hefl.protocols.collective import seal_layout
from hefl.protocols.collective.crs import CrsLabel
from hefl.protocols.collective.ring import Poly
from hefl.protocols.collective.sampling import (
    CBD_STD,
    TERNARY_VARIANCE,
    centered_binomial,
    ternary,
)
from hefl.protocols.collective.shares import CollectiveJob, complete_shares, pack, unpack
from hefl.protocols.masks import RandomBytes

if TYPE_CHECKING:
    import tenseal as ts

    from hefl.protocols.collective.secret import RelinKeyEphemeral, SecretKeyShare


def relin_key_noise_std(params: CkksParameters, parties: int) -> float:
    """Std of a coefficient of the collective relinearization key's noise s e0 + u e1 + e2 + e3
    (sums over n parties): sqrt(2 n sigma^2 (n (2/3) N + 1)), as Lattigo's estimate."""
    spread = parties * TERNARY_VARIANCE * params.poly_modulus_degree
    return math.sqrt(2 * parties * CBD_STD**2 * (spread + 1))


@dataclass(frozen=True)
class PublicKeyShare:
    """p_i = -a s_i + e_i at the key level (or the sum of every party's)."""

    tag: bytes
    poly: Poly

    def to_bytes(self) -> bytes:
        return pack("public-key", self.tag, [self.poly])

    @classmethod
    def from_bytes(cls, data: bytes, job: CollectiveJob) -> PublicKeyShare:
        """Raises: InvalidArgument: not a public-key share of the job's parameters."""
        ring = job.ring
        tag, (poly,) = unpack(data, kind="public-key", ring=ring, shapes=[(ring.key_rows, ring.n)])
        return cls(tag, poly)


@dataclass(frozen=True)
class CollectivePublicKey:
    """The collective public key (pk_0, pk_1), shape (2, key rows, N), NTT form."""

    polys: Poly


class PublicKeyGenProtocol:
    """Collective public-key generation (CKG), one round.

    Party: :meth:`gen_share`. Aggregator: :meth:`aggregate_shares`, then :meth:`public_key`.
    """

    PROTOCOL = "public-key"

    def __init__(self, job: CollectiveJob) -> None:
        self.job = job
        self.tag = job.tag(self.PROTOCOL)

    @cached_property
    def crp(self) -> Poly:
        """a, uniform at the key level, from the job's common random string."""
        ring = self.job.ring
        label = CrsLabel(self.job.job_id, self.PROTOCOL)
        return self.job.crs.polynomial(ring, label, rows=ring.key_rows)

    def gen_share(
        self, secret: SecretKeyShare, *, random_bytes: RandomBytes = os.urandom
    ) -> PublicKeyShare:
        ring = self.job.ring
        noise = ring.small_ntt(centered_binomial(ring.n, random_bytes=random_bytes), ring.key_rows)
        share = ring.sub(noise, ring.mul(self.crp, secret.ntt(ring.key_rows)))
        return PublicKeyShare(self.tag, share)

    def aggregate_shares(self, shares: Mapping[str, PublicKeyShare]) -> PublicKeyShare:
        """Raises: ProtocolError: not one share of this protocol per roster party."""
        complete = complete_shares(self.job, shares, tag=self.tag, what="public-key generation")
        return PublicKeyShare(self.tag, self.job.ring.sum([s.poly for s in complete]))

    def public_key(self, aggregate: PublicKeyShare) -> CollectivePublicKey:
        return CollectivePublicKey(np.stack([aggregate.poly, self.crp]))


@dataclass(frozen=True)
class RelinKeyRound1Share:
    """Round 1: (h0_j, h1_j) for every gadget index j, shape (L, 2, key rows, N)."""

    tag: bytes
    polys: Poly

    def to_bytes(self) -> bytes:
        return pack(
            "relin-key-round-1", self.tag, list(self.polys.reshape(-1, *self.polys.shape[2:]))
        )

    @classmethod
    def from_bytes(cls, data: bytes, job: CollectiveJob) -> RelinKeyRound1Share:
        """Raises: InvalidArgument: not a round-1 share of the job's parameters."""
        return cls(*_unpack_pairs(data, "relin-key-round-1", job))

    def digest(self) -> bytes:
        """What a round-2 share is bound to."""
        return hashlib.sha256(self.to_bytes()).digest()


@dataclass(frozen=True)
class RelinKeyRound2Share:
    """Round 2: (h0'_j, h1'_j) for every gadget index j, shape (L, 2, key rows, N)."""

    tag: bytes
    polys: Poly

    def to_bytes(self) -> bytes:
        return pack(
            "relin-key-round-2", self.tag, list(self.polys.reshape(-1, *self.polys.shape[2:]))
        )

    @classmethod
    def from_bytes(cls, data: bytes, job: CollectiveJob) -> RelinKeyRound2Share:
        """Raises: InvalidArgument: not a round-2 share of the job's parameters."""
        return cls(*_unpack_pairs(data, "relin-key-round-2", job))


def _unpack_pairs(data: bytes, kind: str, job: CollectiveJob) -> tuple[bytes, Poly]:
    ring = job.ring
    shapes = [(ring.key_rows, ring.n)] * (2 * ring.top_rows)
    tag, polys = unpack(data, kind=kind, ring=ring, shapes=shapes)
    return tag, np.stack(polys).reshape(ring.top_rows, 2, ring.key_rows, ring.n)


@dataclass(frozen=True)
class CollectiveRelinKey:
    """One key per data prime j, each (k0, k1) at the key level: shape (L, 2, key rows, N)."""

    polys: Poly


class RelinKeyGenProtocol:
    """Collective relinearization-key generation (RKG), two rounds.

    Party: :meth:`gen_round1` (keeps the returned ephemeral key), then :meth:`gen_round2` on the
    round-1 aggregate. Aggregator: :meth:`aggregate_round1`, :meth:`aggregate_round2`,
    :meth:`relin_key`.
    """

    PROTOCOL = "relin-key"

    def __init__(self, job: CollectiveJob) -> None:
        self.job = job
        self.tag1 = job.tag(self.PROTOCOL, 1)

    def tag2(self, round1: RelinKeyRound1Share) -> bytes:
        return self.job.tag(self.PROTOCOL, 2, round1.digest())

    @cached_property
    def crps(self) -> list[Poly]:
        """a_j for every gadget index j (one per data prime), at the key level."""
        ring = self.job.ring
        return [
            self.job.crs.polynomial(
                ring, CrsLabel(self.job.job_id, self.PROTOCOL, index=j), rows=ring.key_rows
            )
            for j in range(ring.top_rows)
        ]

    def _noise(self, random_bytes: RandomBytes) -> Poly:
        ring = self.job.ring
        return ring.small_ntt(centered_binomial(ring.n, random_bytes=random_bytes), ring.key_rows)

    def gen_round1(
        self, secret: SecretKeyShare, *, random_bytes: RandomBytes = os.urandom
    ) -> tuple[RelinKeyRound1Share, RelinKeyEphemeral]:
        """The round-1 share and the ephemeral key the party keeps for round 2."""
        # Party side only: the coordinator's process never imports the secret types.
        from hefl.protocols.collective.secret import RelinKeyEphemeral

        ring = self.job.ring
        rows = ring.key_rows
        ephemeral = RelinKeyEphemeral(
            ring, ternary(ring.n, random_bytes=random_bytes), tag=self.tag1
        )
        u = ephemeral.ntt(rows)
        s = secret.ntt(rows)
        pairs = []
        for j, a in enumerate(self.crps):
            h0 = ring.sub(self._noise(random_bytes), ring.mul(u, a))
            gadget = ring.special_prime % ring.primes[j]
            q = np.uint64(ring.primes[j])
            s_g = (s[j].astype(object) * gadget % ring.primes[j]).astype(np.uint64)
            h0[j] = (h0[j] + s_g) % q
            h1 = ring.add(ring.mul(s, a), self._noise(random_bytes))
            pairs.append(np.stack([h0, h1]))
        return RelinKeyRound1Share(self.tag1, np.stack(pairs)), ephemeral

    def aggregate_round1(self, shares: Mapping[str, RelinKeyRound1Share]) -> RelinKeyRound1Share:
        """Raises: ProtocolError: not one round-1 share of this run per roster party."""
        complete = complete_shares(
            self.job, shares, tag=self.tag1, what="relinearization-key round 1"
        )
        return RelinKeyRound1Share(self.tag1, _sum_pairs(self.job, [s.polys for s in complete]))

    def gen_round2(
        self,
        secret: SecretKeyShare,
        ephemeral: RelinKeyEphemeral,
        round1: RelinKeyRound1Share,
        *,
        random_bytes: RandomBytes = os.urandom,
    ) -> RelinKeyRound2Share:
        """The round-2 share on the round-1 aggregate; uses up ``ephemeral``.

        Raises:
            ProtocolError: ``round1`` is not an aggregate of this run, or ``ephemeral`` is
                another run's or used already.
        """
        if round1.tag != self.tag1:
            raise ProtocolError("round-1 aggregate of another relinearization-key run")
        ring = self.job.ring
        rows = ring.key_rows
        s = secret.ntt(rows)
        u_minus_s = ring.sub(ephemeral.consume(self.tag1), s)
        pairs = []
        for h0, h1 in round1.polys:
            pairs.append(
                np.stack(
                    [
                        ring.add(ring.mul(s, h0), self._noise(random_bytes)),
                        ring.add(ring.mul(u_minus_s, h1), self._noise(random_bytes)),
                    ]
                )
            )
        return RelinKeyRound2Share(self.tag2(round1), np.stack(pairs))

    def aggregate_round2(
        self, round1: RelinKeyRound1Share, shares: Mapping[str, RelinKeyRound2Share]
    ) -> RelinKeyRound2Share:
        """Raises: ProtocolError: not one round-2 share on ``round1`` per roster party."""
        tag = self.tag2(round1)
        complete = complete_shares(self.job, shares, tag=tag, what="relinearization-key round 2")
        return RelinKeyRound2Share(tag, _sum_pairs(self.job, [s.polys for s in complete]))

    def relin_key(
        self, round1: RelinKeyRound1Share, round2: RelinKeyRound2Share
    ) -> CollectiveRelinKey:
        ring = self.job.ring
        keys = [
            np.stack([ring.add(h0p, h1p), h1])
            for (_, h1), (h0p, h1p) in zip(round1.polys, round2.polys, strict=True)
        ]
        return CollectiveRelinKey(np.stack(keys))


def _sum_pairs(job: CollectiveJob, shares: list[Poly]) -> Poly:
    return job.ring.sum(shares)


def public_context(
    job: CollectiveJob,
    public_key: CollectivePublicKey,
    relin_key: CollectiveRelinKey | None,
) -> ts.Context:
    """An ordinary public TenSEAL context carrying the collective keys, at the parameter set's
    scale: ``ts.ckks_vector``, serialization and :mod:`coordinator.gradient` work on it unchanged.
    """
    return seal_layout.public_context(
        job.ring,
        public_key=public_key.polys,
        relin_keys=None if relin_key is None else list(relin_key.polys),
        scale=2.0**job.params.scale_bits,
    )
