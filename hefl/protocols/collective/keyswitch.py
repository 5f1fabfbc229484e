"""Collective decryption and key switching to one party's key, with smudging noise.

Mouchet et al., PoPETs 2021, section IV.D: collective key switching (KeySwitch, protocol 3; a
decryption is a switch to the zero key) and public-key switching (PubKeySwitch, protocol 4);
Lattigo's ``multiparty.KeySwitchProtocol`` and ``PublicKeySwitchProtocol``.

Decryption (CKS to the zero key) of ct = (c0, c1) at a level with l primes: party i sends
d_i = c1 s_i + E_i; whoever adds c0 + sum d_i holds m + e + sum E_i and decodes it. Phase 2
seals the shares (or their sum) to the parties, so only they decode.

Public-key switch (PCKS) to a party's own public key (p0', p1') = (-a' s' + e', a'): party i,
with a fresh ternary u_i, sends (c1 s_i + u_i p0' + E_i, u_i p1' + e1_i); the aggregate
(c0 + sum h0_i, sum h1_i) is an ordinary SEAL ciphertext of m + e + sum E_i under s', which that
party decrypts with its own TenSEAL context.

Smudging (noise flooding). The revealed m + e carries the ciphertext's noise e, which depends
on the secret key (Li and Micciancio, EUROCRYPT 2021: a few exact decryptions of known
ciphertexts give s away). Every share therefore adds E_i, a rounded Gaussian of standard
deviation sigma (:class:`Smudging`), drawn by each party from ``os.urandom``: with any n - 1
parties colluding, the honest party's E_i alone floods e. sigma is the larger of

- the Kullback-Leibler bound: over tau revealed decryptions the divergence between the view
  with e and one without is at most tau ||e||_2^2 / (2 sigma^2) <= 2^-s, i.e.
  sigma = 2^(s/2) sqrt(tau / 2) ||e||_2, with ||e||_2 taken as 1.25 sqrt(N) sigma_e; a KL (or
  Hellinger) distance of 2^-s is what s-bit statistical security needs for search and decision
  games (Micciancio and Walter, EUROCRYPT 2018);
- Li, Micciancio, Schultz and Sorrell's bound (CRYPTO 2022, as OpenFHE applies it):
  sigma = sqrt(12 tau) 2^(s/2) t, with t = 9 sigma_e an infinity-norm bound on e.

The first is the larger for every allowed parameter set (by sqrt(N/24) 1.25 / 9: 2.6x at
N = 8192). sigma_e, the standard deviation of a coefficient of e, comes from
:func:`fresh_noise_std`, :func:`sum_noise_std` or :func:`refreshed_noise_std`: the party derives
it from the step it agreed to, not from the ciphertext (which it cannot check). The fresh
estimate is that of an encryption at the ciphertext's own level, sigma (1 + (4/3) n N)^(1/2);
SEAL encrypts one level up and divides by P, which leaves far less (measured 37 against 587 at
N = 8192, n = 3): the budget covers an encryptor that does not.

Budget for n = 3, s = 40, tau = 1024 (:meth:`Smudging.budget`; measured in
``tests/test_collective_decryption.py``), revealing a sum of the three parties' fresh
encryptions at the reveal scale 2^70 (:data:`REVEAL_SCALE_BITS`):

==============  =========  ==========  ==================  ===========================
parameter set   sigma_e    sigma       slot error std      measured (std / max, 4096+)
==============  =========  ==========  ==================  ===========================
n8192-depth4    1016       2^41.3      2.6e-7 (2^-21.9)    2.6e-7 / 9.8e-7
n16384-depth4   1437       2^42.3      7.2e-7 (2^-20.4)    7.3e-7 / 2.8e-6
==============  =========  ==========  ==================  ===========================

(slot error std = sqrt(sigma_e^2 + n sigma^2) sqrt(N/2) / scale.) A refreshed ciphertext
(sigma_e = 5.6) needs sigma = 2^33.8 (N = 8192): 1.4e-9 at 2^70. At the training scale the same
flooding would leave an error of 2.8e5 (2^30) or 7.8e2 (2^40): values are revealed only from
ciphertexts made at the reveal scale, i.e. statistics encrypted at it and refresh outputs
(:mod:`.refresh`) encoded at it; a product computed at the training scale is revealed only after
a collective refresh. At 2^70, values up to 2^100 still fit the top modulus (180 bits at
N = 8192).

Security: semi-honest parties and aggregator, any n - 1 parties colluding. A decryption share
is an RLWE sample of s_i for the public c1 with error E_i. It is not protected against an
aggregator that picks c1 (e.g. c1 = q/2 reveals s_i mod 2): parties must produce shares only
for ciphertexts the protocol they agreed to produced, and only once each (a party answering
twice for one ciphertext gives two samples with the same c1).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from hefl.codec import Array
from hefl.errors import InvalidArgument
from hefl.params import CkksParameters
from hefl.protocols.collective import seal_layout
from hefl.protocols.collective.ring import Poly
from hefl.protocols.collective.sampling import (
    CBD_STD,
    TERNARY_VARIANCE,
    centered_binomial,
    rounded_gaussian,
    ternary,
)
from hefl.protocols.collective.seal_layout import CiphertextPolys
from hefl.protocols.collective.shares import CollectiveJob, complete_shares, pack, unpack
from hefl.protocols.masks import RandomBytes

if TYPE_CHECKING:
    import tenseal as ts

    from hefl.protocols.collective.secret import SecretKeyShare

#: log2 of the scale at which values are revealed (statistics, models): see the module docstring.
REVEAL_SCALE_BITS = 70
_L2_MARGIN = 1.25
_LINF_SIGMAS = 9.0


def fresh_noise_std(params: CkksParameters, parties: int) -> float:
    """Coefficient noise std of one public-key encryption under an n-party collective key.

    e = u e_pk + e0 + e1 s with u ternary, e_pk the sum of n CBD noises, s the sum of n ternary
    shares: Var = sigma^2 (1 + (4/3) n N).
    """
    n = params.poly_modulus_degree
    return CBD_STD * math.sqrt(1 + 2 * TERNARY_VARIANCE * parties * n)


def sum_noise_std(noise_std: float, count: int) -> float:
    """Noise std of a sum of ``count`` independent ciphertexts of noise std ``noise_std``."""
    return noise_std * math.sqrt(count)


def refreshed_noise_std(params: CkksParameters, parties: int) -> float:
    """Noise std of a collective refresh's output: n CBD noises and n + 1 encoding roundings.

    (The refreshed plaintext also holds the input's noise: see :mod:`.refresh`.)
    """
    return math.sqrt(parties * CBD_STD**2 + (parties + 1) / 12)


@dataclass(frozen=True)
class DecryptionBudget:
    """What a smudged decryption costs and guarantees (coefficient-domain stds).

    Attributes:
        parties: n.
        ring_degree: N.
        noise_std: sigma_e, the ciphertext's noise.
        flooding_std: sigma, what each party adds.
        security_bits: s over ``decryptions`` revealed decryptions (KL <= 2^-s).
        decryptions: tau.
    """

    parties: int
    ring_degree: int
    noise_std: float
    flooding_std: float
    security_bits: float
    decryptions: int

    def slot_error_std(self, scale: float) -> float:
        """Standard deviation of a revealed slot's error at ``scale``."""
        total = math.sqrt(self.noise_std**2 + self.parties * self.flooding_std**2)
        return total * math.sqrt(self.ring_degree / 2) / scale


@dataclass(frozen=True)
class Smudging:
    """The statistical security asked of every revealed decryption.

    Attributes:
        security_bits: s (40 or more).
        decryptions: tau, how many related decryptions the key may reveal over its life (a
            job's statistics pieces, model columns and, if revealed, every iterate's columns).
    """

    security_bits: int = 40
    decryptions: int = 1024

    def __post_init__(self) -> None:
        if self.security_bits < 1 or self.decryptions < 1:
            raise InvalidArgument("smudging needs positive security bits and decryptions")

    def flooding_std(self, params: CkksParameters, noise_std: float) -> float:
        """sigma for a ciphertext of coefficient noise std ``noise_std`` (module docstring)."""
        n = params.poly_modulus_degree
        l2 = _L2_MARGIN * math.sqrt(n) * noise_std
        kl = 2.0 ** (self.security_bits / 2) * math.sqrt(self.decryptions / 2) * l2
        lmss = (
            math.sqrt(12 * self.decryptions)
            * 2.0 ** (self.security_bits / 2)
            * (_LINF_SIGMAS * noise_std)
        )
        return max(kl, lmss)

    def budget(self, params: CkksParameters, *, parties: int, noise_std: float) -> DecryptionBudget:
        sigma = self.flooding_std(params, noise_std)
        l2 = _L2_MARGIN * math.sqrt(params.poly_modulus_degree) * noise_std
        bits = 2 * math.log2(sigma / (math.sqrt(self.decryptions / 2) * l2))
        return DecryptionBudget(
            parties=parties,
            ring_degree=params.poly_modulus_degree,
            noise_std=noise_std,
            flooding_std=sigma,
            security_bits=bits,
            decryptions=self.decryptions,
        )


def ciphertext_of(vector: ts.CKKSVector) -> CiphertextPolys:
    """The one SEAL ciphertext of a TenSEAL vector, as polynomials.

    Raises:
        InvalidArgument: Not a relinearized ciphertext (two polynomials).
    """
    polys = CiphertextPolys.of(vector.ciphertext()[0])
    if polys.polys.shape[0] != 2:
        raise InvalidArgument(f"a ciphertext of {polys.polys.shape[0]} polynomials; relinearize it")
    return polys


def ciphertext_digest(ciphertext: CiphertextPolys) -> bytes:
    """What a share is bound to: the level, scale and c1 (c0 never enters a share)."""
    digest = hashlib.sha256()
    digest.update(np.array(ciphertext.parms_id, dtype="<u8").tobytes())
    digest.update(np.array([ciphertext.scale], dtype="<f8").tobytes())
    digest.update(np.ascontiguousarray(ciphertext.polys[1], dtype="<u8").tobytes())
    return digest.digest()


@dataclass(frozen=True)
class DecryptionShare:
    """d_i = c1 s_i + E_i at the ciphertext's level (or the sum of every party's)."""

    tag: bytes
    poly: Poly

    def to_bytes(self) -> bytes:
        return pack("decryption", self.tag, [self.poly])

    @classmethod
    def from_bytes(cls, data: bytes, job: CollectiveJob, *, rows: int) -> DecryptionShare:
        """Raises: InvalidArgument: not a decryption share of ``rows`` primes."""
        ring = job.ring
        tag, (poly,) = unpack(data, kind="decryption", ring=ring, shapes=[(rows, ring.n)])
        return cls(tag, poly)


class CollectiveDecryptProtocol:
    """Collective decryption of one ciphertext, for one stated purpose, with smudging.

    Party: :meth:`gen_share`. Aggregator (or each receiving party): :meth:`aggregate_shares`,
    then :meth:`decrypt`.

    Args:
        job: The job.
        ciphertext: What is decrypted.
        purpose: What it is (e.g. "statistics/0", "model/3"): the shares are bound to it.
        noise_std: The ciphertext's noise std, from the step that made it.
        smudging: The statistical security asked.
    """

    PROTOCOL = "decryption"

    def __init__(
        self,
        job: CollectiveJob,
        ciphertext: CiphertextPolys,
        *,
        purpose: str,
        noise_std: float,
        smudging: Smudging,
    ) -> None:
        self.job = job
        self.ciphertext = ciphertext
        self.tag = job.tag(self.PROTOCOL, purpose, ciphertext_digest(ciphertext))
        self.budget = smudging.budget(job.params, parties=job.size, noise_std=noise_std)

    def gen_share(
        self, secret: SecretKeyShare, *, random_bytes: RandomBytes = os.urandom
    ) -> DecryptionShare:
        ring = self.job.ring
        rows = self.ciphertext.rows
        flood = rounded_gaussian(ring.n, self.budget.flooding_std, random_bytes=random_bytes)
        share = ring.add(
            ring.mul(self.ciphertext.polys[1], secret.ntt(rows)), ring.small_ntt(flood, rows)
        )
        return DecryptionShare(self.tag, share)

    def aggregate_shares(self, shares: Mapping[str, DecryptionShare]) -> DecryptionShare:
        """Raises: ProtocolError: not one share for this ciphertext and purpose per party."""
        complete = complete_shares(self.job, shares, tag=self.tag, what="collective decryption")
        return DecryptionShare(self.tag, self.job.ring.sum([s.poly for s in complete]))

    def plaintext(self, aggregate: DecryptionShare) -> Poly:
        """c0 + sum d_i = m + e + sum E_i, NTT form."""
        return self.job.ring.add(self.ciphertext.polys[0], aggregate.poly)

    def decrypt(self, aggregate: DecryptionShare) -> Array:
        """Every slot's value."""
        ring = self.job.ring
        return seal_layout.decode(
            ring, self.ciphertext.parms_id, self.ciphertext.scale, self.plaintext(aggregate)
        )


@dataclass(frozen=True)
class TargetPublicKey:
    """The public key a public-key switch re-encrypts to: one party's own (p0', p1')."""

    polys: Poly

    @classmethod
    def of_context(cls, job: CollectiveJob, context: ts.Context) -> TargetPublicKey:
        """The public key of a party's own TenSEAL context of the job's parameter set.

        Raises:
            InvalidArgument: The key is not of the job's parameters.
        """
        key = CiphertextPolys.of(context.public_key().data)
        ring = job.ring
        if key.parms_id != ring.parms_id(ring.key_rows) or key.polys.shape[0] != 2:
            raise InvalidArgument(f"the target public key is not of {job.params.name}")
        return cls(key.polys)


@dataclass(frozen=True)
class PublicKeySwitchShare:
    """(c1 s_i + u_i p0' + E_i, u_i p1' + e1_i) at the ciphertext's level (or their sum)."""

    tag: bytes
    polys: Poly

    def to_bytes(self) -> bytes:
        return pack("public-key-switch", self.tag, list(self.polys))

    @classmethod
    def from_bytes(cls, data: bytes, job: CollectiveJob, *, rows: int) -> PublicKeySwitchShare:
        """Raises: InvalidArgument: not a public-key-switch share of ``rows`` primes."""
        ring = job.ring
        tag, polys = unpack(data, kind="public-key-switch", ring=ring, shapes=[(rows, ring.n)] * 2)
        return cls(tag, np.stack(polys))


class PublicKeySwitchProtocol:
    """Collective re-encryption of one ciphertext to one party's public key (PCKS).

    Party: :meth:`gen_share`. Aggregator: :meth:`aggregate_shares`, then :meth:`key_switch`;
    the target party decrypts the result with its own context.

    Args:
        job: The job.
        ciphertext: What is re-encrypted.
        target: The receiving party's public key.
        purpose: What it is; the shares are bound to it, the ciphertext and the target.
        noise_std: The ciphertext's noise std, from the step that made it.
        smudging: The statistical security asked.
    """

    PROTOCOL = "public-key-switch"

    def __init__(
        self,
        job: CollectiveJob,
        ciphertext: CiphertextPolys,
        *,
        target: TargetPublicKey,
        purpose: str,
        noise_std: float,
        smudging: Smudging,
    ) -> None:
        self.job = job
        self.ciphertext = ciphertext
        self.target = target
        target_digest = hashlib.sha256(np.ascontiguousarray(target.polys).tobytes()).digest()
        self.tag = job.tag(self.PROTOCOL, purpose, ciphertext_digest(ciphertext), target_digest)
        self.budget = smudging.budget(job.params, parties=job.size, noise_std=noise_std)

    def gen_share(
        self, secret: SecretKeyShare, *, random_bytes: RandomBytes = os.urandom
    ) -> PublicKeySwitchShare:
        ring = self.job.ring
        rows = self.ciphertext.rows
        u = ring.small_ntt(ternary(ring.n, random_bytes=random_bytes), rows)
        flood = rounded_gaussian(ring.n, self.budget.flooding_std, random_bytes=random_bytes)
        h0 = ring.add(
            ring.add(
                ring.mul(self.ciphertext.polys[1], secret.ntt(rows)),
                ring.mul(u, self.target.polys[0][:rows]),
            ),
            ring.small_ntt(flood, rows),
        )
        h1 = ring.add(
            ring.mul(u, self.target.polys[1][:rows]),
            ring.small_ntt(centered_binomial(ring.n, random_bytes=random_bytes), rows),
        )
        return PublicKeySwitchShare(self.tag, np.stack([h0, h1]))

    def aggregate_shares(self, shares: Mapping[str, PublicKeySwitchShare]) -> PublicKeySwitchShare:
        """Raises: ProtocolError: not one share for this ciphertext, target and purpose per
        party."""
        complete = complete_shares(self.job, shares, tag=self.tag, what="public-key switch")
        return PublicKeySwitchShare(self.tag, self.job.ring.sum([s.polys for s in complete]))

    def key_switch(self, aggregate: PublicKeySwitchShare) -> CiphertextPolys:
        """The ciphertext under the target's key (same level and scale)."""
        ring = self.job.ring
        c0 = ring.add(self.ciphertext.polys[0], aggregate.polys[0])
        return CiphertextPolys(
            self.ciphertext.parms_id, self.ciphertext.scale, np.stack([c0, aggregate.polys[1]])
        )
