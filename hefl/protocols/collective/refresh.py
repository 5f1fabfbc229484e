"""Collective masked refresh: a low-level ciphertext becomes a fresh top-level one, nobody
seeing its plaintext, optionally through a linear transform applied to masked values.

Mouchet et al., PoPETs 2021, section IV.E (collective bootstrapping, protocol 5, and its masked
transform variant); Lattigo's ``mpckks.MaskedLinearTransformationProtocol``
(EncToShare + ShareToEnc). TenSEAL has no bootstrapping: this replaces "the key holder decrypts
and re-encrypts", with no key holder.

Protocol, for ct = (c0, c1) at a level of modulus Q_in (in training, the last level: q0 alone)
and a = CRP(label) at the top level (one label per job, column and iteration):

1. Share (each party i): a mask M_i, integers uniform in [-2^b, 2^b) (``os.urandom``), and fresh
   CBD noises e_i, e'_i. Masked decryption share h0_i = c1 s_i - M_i + e_i (mod Q_in); re-
   encryption share h1_i = -a s_i + e'_i + T_i (top level), where T_i encodes the party's own
   mask through the transform (below).
2. Aggregate (coordinator): h0 = sum h0_i, h1 = sum h1_i.
3. Finalize (coordinator): x = c0 + h0 = m + e - sum M_i + sum e_i (mod Q_in), lifted to the
   integers (exact while |x| < Q_in / 2); T_c encodes x through the transform; the output is
   (T_c + h1, a), which decrypts to T(m + e + sum e_i) + sum e'_i: a fresh ciphertext.

Two transforms:

- :class:`RefreshProtocol`: the identity, on all N coefficients, in exact integer arithmetic;
  the output scale is the input's times 2^k (k >= 0), e.g. to raise a value to
  :data:`~hefl.protocols.collective.keyswitch.REVEAL_SCALE_BITS` before it is revealed.
- :class:`MaskedTransformProtocol`: only coefficient 0 is masked-decrypted (parties send one
  value per prime, not N), because the sum of a ciphertext's slots is (N/2) m_0 / scale exactly
  (the other coefficients' contributions cancel over the slots). The transform receives that
  masked slot sum and returns the output slots (e.g. the optimizer step of
  :func:`hefl.algorithm.nesterov_step`, replicated); each party applies it to its own mask's
  share of the sum and the coordinator to the masked sum. It must be linear (T(0) = 0,
  T(x + y) = T(x) + T(y)); affine constants belong to the coordinator alone, after finalizing.

What the coordinator sees: x, i.e. each revealed coefficient of m + e plus the sum of the
parties' masks. With n - 1 parties colluding with it, the honest party's M_i alone hides the
coefficient (smudging lemma, uniform noise): its distribution is within statistical distance
|v| / 2^(b+1) of one independent of v, for v = m_k + e_k. Hence per revealed value:

- the key (Li and Micciancio: e_k depends on s): |e_k| <= t, the input's noise bound, gives
  b + 1 - log2(t) bits. For the training's last-level gradients (:mod:`coordinator.gradient` on
  the collective keys, measured in ``tests/test_collective_refresh.py``) t = 2^11.3 at N = 8192
  and 2^12.5 at N = 16384: 45.7 and 44.6 bits per revealed value for n <= 6 (b = 56), one less
  for 7 <= n <= 14 (b = 55);
- the data: |m_k| <= scale x max|slot| gives b + 1 - log2(scale x max|slot|) bits: for the
  slot sum (coefficient 0 is scale x the mean of the slots), 27 bits when the mean is below 1
  at scale 2^30 (17 at scale 2^40); for the identity on per-row values up to 2^8, 19 bits per
  coefficient (the key holder's slot masks give 17).

b is the largest width with (n + 1) 2^b < Q_in / 2 (:func:`mask_bits`): at the 60-bit q0 of
every allowed parameter set, 57 for n = 2, 56 for n <= 6, 55 for n <= 14, 54 for n <= 30. The
input must satisfy |m + e| <= 2^b, i.e. slots below 2^(b - log2 scale) (2^26 at scale 2^30).

The refreshed plaintext keeps the input's noise e (and sum e_i) as part of its value: it is
smudged toward the coordinator by the masks, but a later decryption of the output reveals it
like any other bit of the value. Flooding it as :mod:`.keyswitch` floods a decryption would need
Gaussian noise ~2^24 times e in the share, i.e. 2^24 times the input's own error, which would
drown the gradient; what a revealed model may carry of it is decided with the training
integration (phase 2 of issue 13).

Precision: the output adds sum e'_i (std sqrt(n) 3.24) and the encodings' rounding; the masked
slot sum is handled in float64: masks of 2^b make it about 2^(b + log2(N/2) - log2 scale) large,
so its rounding error is 2^-52 of that (2^-14 for N = 8192, scale 2^30, b = 56), far below the
slot sum's own CKKS error.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from hefl.errors import InvalidArgument, ProtocolError
from hefl.protocols.collective import seal_layout
from hefl.protocols.collective.crs import CrsLabel
from hefl.protocols.collective.keyswitch import ciphertext_digest
from hefl.protocols.collective.ring import Poly, RnsRing
from hefl.protocols.collective.sampling import centered_binomial, uniform_mask
from hefl.protocols.collective.seal_layout import CiphertextPolys
from hefl.protocols.collective.shares import CollectiveJob, complete_shares, pack, unpack
from hefl.protocols.masks import RandomBytes

#: A linear map from the masked slot sum to the output slots (or one value for every slot).
SlotSumTransform = Callable[[float], Sequence[float] | float]

if TYPE_CHECKING:
    from hefl.protocols.collective.secret import SecretKeyShare


def mask_bits(ring: RnsRing, *, rows: int, parties: int) -> int:
    """b: the widest masks with (n + 1) 2^b < Q / 2 at the level with ``rows`` primes."""
    return (ring.modulus(rows) // (2 * (parties + 1))).bit_length() - 1


@dataclass(frozen=True)
class RefreshShare:
    """(h0_i at the input level, h1_i at the top level); h0 has width N, or 1 for the slot sum."""

    tag: bytes
    masked: Poly
    reencrypted: Poly

    def to_bytes(self) -> bytes:
        return pack("refresh", self.tag, [self.masked, self.reencrypted])

    @classmethod
    def from_bytes(cls, data: bytes, job: CollectiveJob, *, rows: int, width: int) -> RefreshShare:
        """Raises: InvalidArgument: not a refresh share of that shape."""
        ring = job.ring
        tag, (masked, reencrypted) = unpack(
            data, kind="refresh", ring=ring, shapes=[(rows, width), (ring.top_rows, ring.n)]
        )
        return cls(tag, masked, reencrypted)


class _Refresh:
    """What both refresh variants share: the CRP, the masks, the re-encryption share."""

    PROTOCOL = "refresh"

    def __init__(
        self, job: CollectiveJob, ciphertext: CiphertextPolys, *, label: CrsLabel, variant: str
    ) -> None:
        ring = job.ring
        if label.job_id != job.job_id or label.protocol != self.PROTOCOL:
            raise InvalidArgument(f"refresh label {label} is not a refresh of job {job.job_id!r}")
        if ciphertext.polys.shape[0] != 2 or ciphertext.rows >= ring.top_rows:
            raise InvalidArgument(
                f"a refresh takes a relinearized ciphertext below the top level, not "
                f"{ciphertext.polys.shape[0]} polynomials of {ciphertext.rows} primes"
            )
        self.job = job
        self.ciphertext = ciphertext
        self.label = label
        self.mask_bits = mask_bits(ring, rows=ciphertext.rows, parties=job.size)
        self._variant = variant

    def _tag(self, *fields: bytes | str | int) -> bytes:
        label = self.label
        return self.job.tag(
            self.PROTOCOL,
            self._variant,
            label.key,
            label.index,
            label.iteration,
            ciphertext_digest(self.ciphertext),
            *fields,
        )

    @cached_property
    def crp(self) -> Poly:
        ring = self.job.ring
        return self.job.crs.polynomial(ring, self.label, rows=ring.top_rows)

    def _reencryption(
        self, secret: SecretKeyShare, encoded_mask: Poly, random_bytes: RandomBytes
    ) -> Poly:
        """h1_i = -a s_i + e'_i + T_i at the top level."""
        ring = self.job.ring
        rows = ring.top_rows
        noise = ring.small_ntt(centered_binomial(ring.n, random_bytes=random_bytes), rows)
        return ring.add(ring.sub(noise, ring.mul(self.crp, secret.ntt(rows))), encoded_mask)

    def _aggregate(self, shares: Mapping[str, RefreshShare], tag: bytes) -> RefreshShare:
        complete = complete_shares(self.job, shares, tag=tag, what="collective refresh")
        ring = self.job.ring
        masked = _sum_columns(ring, [s.masked for s in complete])
        return RefreshShare(tag, masked, ring.sum([s.reencrypted for s in complete]))

    def _check(self, aggregate: RefreshShare, tag: bytes) -> None:
        if aggregate.tag != tag:
            raise ProtocolError("refresh aggregate of another ciphertext, label or transform")


def _sum_columns(ring: RnsRing, polys: Sequence[Poly]) -> Poly:
    """Sum of (rows, width) residue arrays modulo each row's prime (any width)."""
    q = np.array(ring.primes[: polys[0].shape[0]], dtype=np.uint64)[:, None]
    total = polys[0]
    for poly in polys[1:]:
        total = total + poly
        total = np.minimum(total, total - q)  # below q, total - q wraps and is the larger
    return total


class RefreshProtocol(_Refresh):
    """Collective refresh with the identity transform: every coefficient, exact integers.

    Party: :meth:`gen_share`. Coordinator: :meth:`aggregate_shares`, :meth:`finalize`.

    Args:
        job: The job.
        ciphertext: The input, below the top level.
        label: ``CrsLabel(job_id, "refresh", key, index, iteration)``, unique per refresh.
        scale_up_bits: k: the output's scale is the input's times 2^k.
    """

    def __init__(
        self,
        job: CollectiveJob,
        ciphertext: CiphertextPolys,
        *,
        label: CrsLabel,
        scale_up_bits: int = 0,
    ) -> None:
        super().__init__(job, ciphertext, label=label, variant="identity")
        if scale_up_bits < 0:
            raise InvalidArgument(f"scale_up_bits {scale_up_bits} < 0")
        self.scale_up_bits = scale_up_bits
        self.tag = self._tag(scale_up_bits)

    def gen_share(
        self, secret: SecretKeyShare, *, random_bytes: RandomBytes = os.urandom
    ) -> RefreshShare:
        ring = self.job.ring
        rows = self.ciphertext.rows
        mask = uniform_mask(ring.n, self.mask_bits, random_bytes=random_bytes)
        noise = centered_binomial(ring.n, random_bytes=random_bytes)
        masked = ring.add(
            ring.mul(self.ciphertext.polys[1], secret.ntt(rows)), ring.small_ntt(noise - mask, rows)
        )
        lifted = mask.astype(object) * (1 << self.scale_up_bits)
        encoded = ring.ntt(ring.from_integers(lifted, ring.top_rows))
        return RefreshShare(self.tag, masked, self._reencryption(secret, encoded, random_bytes))

    def aggregate_shares(self, shares: Mapping[str, RefreshShare]) -> RefreshShare:
        """Raises: ProtocolError: not one share for this refresh per roster party."""
        return self._aggregate(shares, self.tag)

    def finalize(self, aggregate: RefreshShare) -> CiphertextPolys:
        """The fresh top-level ciphertext.

        Raises:
            ProtocolError: ``aggregate`` is not of this refresh.
        """
        self._check(aggregate, self.tag)
        ring = self.job.ring
        masked = ring.add(self.ciphertext.polys[0], aggregate.masked)
        lifted = ring.to_integers(ring.intt(masked)) * (1 << self.scale_up_bits)
        c0 = ring.add(ring.ntt(ring.from_integers(lifted, ring.top_rows)), aggregate.reencrypted)
        scale = self.ciphertext.scale * 2.0**self.scale_up_bits
        return CiphertextPolys(ring.parms_id(ring.top_rows), scale, np.stack([c0, self.crp]))


class MaskedTransformProtocol(_Refresh):
    """Collective refresh of a ciphertext's slot sum through a linear transform.

    Only coefficient 0 is masked-decrypted. Party: :meth:`gen_share`. Coordinator:
    :meth:`aggregate_shares`, :meth:`finalize`.

    Args:
        job: The job.
        ciphertext: The input, below the top level (in training: a column's gradient).
        label: ``CrsLabel(job_id, "refresh", key, index, iteration)``, unique per refresh.
        transform: T, linear: the masked slot sum -> the output slots.
        transform_id: Names T (e.g. a hash of the optimizer constants): shares are bound to it,
            so parties and coordinator must apply the same one.
        output_scale_bits: log2 of the output's scale.
    """

    def __init__(
        self,
        job: CollectiveJob,
        ciphertext: CiphertextPolys,
        *,
        label: CrsLabel,
        transform: SlotSumTransform,
        transform_id: str,
        output_scale_bits: int,
    ) -> None:
        super().__init__(job, ciphertext, label=label, variant="slot-sum")
        if np.any(np.asarray(transform(0.0), dtype=np.float64) != 0.0):
            raise InvalidArgument("the refresh transform must be linear: T(0) = 0")
        self.transform = transform
        self.output_scale = 2.0**output_scale_bits
        self.tag = self._tag(transform_id, output_scale_bits)

    def _slot_sum(self, constant_term: int) -> float:
        """The slot sum that coefficient 0 stands for: (N/2) m_0 / scale."""
        return float(constant_term) * (self.job.ring.n / 2) / self.ciphertext.scale

    def _encode(self, value: float) -> Poly:
        output = self.transform(value)
        ring = self.job.ring
        return seal_layout.encode(
            ring,
            output if isinstance(output, float | int) else list(output),
            rows=ring.top_rows,
            scale=self.output_scale,
        )

    def gen_share(
        self, secret: SecretKeyShare, *, random_bytes: RandomBytes = os.urandom
    ) -> RefreshShare:
        ring = self.job.ring
        rows = self.ciphertext.rows
        mask = int(uniform_mask(1, self.mask_bits, random_bytes=random_bytes)[0])
        noise = int(centered_binomial(1, random_bytes=random_bytes)[0])
        from hefl.protocols.collective.step import constant_terms

        # Coefficient 0 of c1 s, from the NTT form without a transform (step.py).
        constant = constant_terms(ring, self.ciphertext.polys[1][None], secret)
        masked = np.empty((rows, 1), dtype=np.uint64)
        for j in range(rows):
            q = ring.primes[j]
            masked[j, 0] = (int(constant[j, 0]) - mask + noise) % q
        # The coordinator's masked sum lacks + M_i: the party re-encrypts T of that share.
        encoded = self._encode(self._slot_sum(mask))
        return RefreshShare(self.tag, masked, self._reencryption(secret, encoded, random_bytes))

    def aggregate_shares(self, shares: Mapping[str, RefreshShare]) -> RefreshShare:
        """Raises: ProtocolError: not one share for this refresh per roster party."""
        return self._aggregate(shares, self.tag)

    def masked_slot_sum(self, aggregate: RefreshShare) -> float:
        """What the coordinator learns: the slot sum minus the parties' masks' share of it."""
        self._check(aggregate, self.tag)
        ring = self.job.ring
        c0_constant = ring.intt(self.ciphertext.polys[0])[:, :1]
        constant = _sum_columns(ring, [c0_constant, aggregate.masked])
        return self._slot_sum(int(ring.to_integers(constant)[0]))

    def finalize(self, aggregate: RefreshShare) -> CiphertextPolys:
        """The fresh top-level ciphertext of T(slot sum).

        Raises:
            ProtocolError: ``aggregate`` is not of this refresh.
        """
        ring = self.job.ring
        c0 = ring.add(self._encode(self.masked_slot_sum(aggregate)), aggregate.reencrypted)
        return CiphertextPolys(
            ring.parms_id(ring.top_rows), self.output_scale, np.stack([c0, self.crp])
        )
