"""Shared set-up of the collective-protocol tests: three parties' keys per parameter set, and the
test-only joint key that measures noise.

The joint key s = s_1 + s_2 + s_3 exists only here, to measure what the protocols leave in a
ciphertext (noise, errors); the protocols never form it.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal as ts
import tenseal.sealapi as seal

from hefl.codec import Array
from hefl.params import PARAMETER_SETS, CkksParameters
from hefl.protocols.collective import seal_layout
from hefl.protocols.collective.crs import CommonRandomString
from hefl.protocols.collective.keygen import (
    CollectivePublicKey,
    CollectiveRelinKey,
    PublicKeyGenProtocol,
    RelinKeyGenProtocol,
    public_context,
)
from hefl.protocols.collective.ring import Poly, RnsRing
from hefl.protocols.collective.seal_layout import CiphertextPolys
from hefl.protocols.collective.secret import SecretKeyShare
from hefl.protocols.collective.shares import CollectiveJob

PARTIES = ("hospital-a", "hospital-b", "hospital-c")
PARAMETER_SET_NAMES = sorted(PARAMETER_SETS)


def seeded_bytes(label: str) -> Any:
    """A deterministic byte source for tests (SHAKE-256 of a counter): never outside tests."""
    counter = 0

    def random_bytes(count: int) -> bytes:
        nonlocal counter
        counter += 1
        return hashlib.shake_256(f"{label}/{counter}".encode()).digest(count)

    return random_bytes


def job_for(
    params: CkksParameters, *, job_id: str = "job-1", seed: bytes = b"\x07" * 32
) -> CollectiveJob:
    return CollectiveJob(params, job_id, PARTIES, CommonRandomString(seed))


@dataclass(frozen=True)
class Collective:
    """Three parties' shares and the keys they generated together."""

    job: CollectiveJob
    shares: dict[str, SecretKeyShare]
    public_key: CollectivePublicKey
    relin_key: CollectiveRelinKey
    context: ts.Context

    @property
    def ring(self) -> RnsRing:
        return self.job.ring


@functools.cache
def collective(name: str) -> Collective:
    params = PARAMETER_SETS[name]
    job = job_for(params)
    shares = {party: SecretKeyShare.generate(params) for party in PARTIES}
    ckg = PublicKeyGenProtocol(job)
    public_key = ckg.public_key(
        ckg.aggregate_shares({p: ckg.gen_share(s) for p, s in shares.items()})
    )
    rkg = RelinKeyGenProtocol(job)
    round1, ephemeral = {}, {}
    for party, share in shares.items():
        round1[party], ephemeral[party] = rkg.gen_round1(share)
    aggregate1 = rkg.aggregate_round1(round1)
    round2 = {p: rkg.gen_round2(s, ephemeral[p], aggregate1) for p, s in shares.items()}
    relin_key = rkg.relin_key(aggregate1, rkg.aggregate_round2(aggregate1, round2))
    return Collective(
        job, shares, public_key, relin_key, public_context(job, public_key, relin_key)
    )


def joint_secret(ring: RnsRing, shares: dict[str, SecretKeyShare]) -> Poly:
    """s = sum s_i, NTT form at the key level: for measurements in tests only."""
    return ring.sum([share.ntt(ring.key_rows) for share in shares.values()])


def joint_secret_key(ring: RnsRing, secret: Poly) -> Any:
    """The joint key as a SEAL SecretKey (tests only)."""
    body = seal_layout.plaintext_body(ring.parms_id(ring.key_rows), 1.0, secret)
    return seal_layout.load_stream(seal.SecretKey(), ring.seal_context, seal_layout.stream_of(body))


def phase(ring: RnsRing, ciphertext: CiphertextPolys, secret: Poly) -> Poly:
    """c0 + c1 s, coefficient form: the plaintext plus the noise."""
    rows = ciphertext.rows
    return ring.intt(ring.add(ciphertext.polys[0], ring.mul(ciphertext.polys[1], secret[:rows])))


def noise_coefficients(
    ring: RnsRing, ciphertext: CiphertextPolys, secret: Poly, expected: Poly
) -> np.ndarray:
    """The integer noise c0 + c1 s - expected (``expected``: the plaintext, NTT form)."""
    rows = ciphertext.rows
    plain = ring.add(ciphertext.polys[0], ring.mul(ciphertext.polys[1], secret[:rows]))
    return ring.to_integers(ring.intt(ring.sub(plain, expected))).astype(np.float64)


def decrypt_with(ring: RnsRing, ciphertext: CiphertextPolys, secret: Poly) -> Array:
    """Decode c0 + c1 s (tests only)."""
    rows = ciphertext.rows
    plain = ring.add(ciphertext.polys[0], ring.mul(ciphertext.polys[1], secret[:rows]))
    return seal_layout.decode(ring, ciphertext.parms_id, ciphertext.scale, plain)


def at_last_level(ciphertext: CiphertextPolys, ring: RnsRing) -> CiphertextPolys:
    """Modulus switch to the last level (CKKS drops the other primes)."""
    return CiphertextPolys(ring.parms_id(1), ciphertext.scale, ciphertext.polys[:, :1].copy())


def uniform_values(count: int, seed: int, low: float = -1.0, high: float = 1.0) -> Array:
    """Test data (not a secret: numpy's generator is fine here), reproducible."""
    return np.random.default_rng(seed).uniform(low, high, count)
