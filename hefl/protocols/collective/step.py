"""The collective protocols of a training without a key holder: the label term to additive
shares (EncToShare), and every iteration's masked optimizer step (a masked transform whose
output differs per party).

Mouchet et al., PoPETs 2021, section IV.E (collective bootstrapping, protocol 5, with a masked
transform); Lattigo's ``mpckks.EncToShareProtocol`` and ``MaskedLinearTransformationProtocol``.
Like :mod:`.refresh`, whose single-ciphertext variants these generalise, they hold no network
code, and the party's step takes its :class:`~.secret.SecretKeyShare` as an argument.

:class:`EncToShareProtocol` (once per job, the summed label term C, one slot per column, at any
level): party i sends h_i = c1 s_i - M_i + e_i on every coefficient, with a fresh mask M_i
uniform in [-2^b, 2^b) (b from :func:`step_mask_bits`) and CBD noise e_i; the coordinator adds
c0 + sum h_i = m + e + sum e_i - sum M_i and decodes it, learning C - sum_i decode(M_i) (plus
the encryption's and the shares' noise); each party keeps -decode(M_i), its share of the mask.
The masks being uniform 2^b wide on every coefficient, with n - 1 parties colluding the honest
party's M_i alone hides every coefficient: per coefficient b + 1 - log2 |m_k + e_k| bits (the
key part: |e_k| < 2^12, 44 bits at b = 56; the data part: |m_k| <= scale x max|slot| x a few).
That is why parties encrypt their label terms at :data:`LABEL_TERM_SCALE_BITS` (2^20), not at
the context's 2^30: a label term of 10^3 then puts coefficients near 2^30, 27 bits, as the slot
sums get (at 2^30 it was 16 bits); the encryption's noise costs ~1e-3 per value there, against
label-term values in the hundreds (:func:`label_term_bytes`).

:class:`MaskedStepProtocol` (every iteration, every column j of the gradient G_j at the last
level): only coefficient 0 is masked-decrypted, since the sum of a ciphertext's slots is
(N/2) m_0 / scale. Party i draws M_ij, sends h0_ij = (c1_j s_i)_0 - M_ij + e_ij, and learns its
share g_ij = -(N/2) M_ij / scale of what the coordinator will see; it then computes its own
output y_ij = f_i(g_i)_j (any function of its shares: in training, the linear part of the
optimizer step applied to its own masks, :mod:`parties.collective`) and sends the re-encryption
h1_ij = -a_j s_i + e'_ij + Encode(-y_ij), with a_j = CRP(job, "masked-step", column j, iteration
t). The coordinator computes x_j = S_j + sum_i g_ij (S_j: G_j's slot sum, with its noise), its
own output Y_j = F(x)_j, and finalizes (Encode(Y_j) + sum_i h1_ij, a_j): a fresh top-level
ciphertext of Y_j - sum_i y_ij in every slot, which travels as its first polynomial and a_j's
64-byte seed (SEAL's seeded form; the workers' SEAL expands a_j). With F and f_i the same linear map (T(0) = 0,
additive), that is T(S); with F the optimizer step on the masked state and f_i its linear part
on party i's masks, it is the step of the true state (:func:`hefl.algorithm.nesterov_step` is
linear). Security per revealed slot sum as in :mod:`.refresh`: about 45 bits for the key part
of the noise, 27 bits for the data (slot means below 1 at scale 2^30), with b = 56.

Training's first step starts from zero weights, where every model's data gradient is exactly
zero (each kernel form has a factor of the margin): its :class:`MaskedStepProtocol` takes
``zero_columns`` instead of ciphertexts, decrypts nothing (no h0, the parties' shares g_i are 0)
and only re-encrypts.

The re-encryption part -a_j s_i + e'_ij needs neither the gradient nor the masks, so a party can
make it before the gradients exist (:func:`prepare_reencryption`, while the workers compute
them); made once per iteration and used for one share, it changes nothing of the above.

Parties must produce one share per (column, iteration) and only for a ciphertext of the step
they agreed to: their state machine (:mod:`parties.collective`) checks the iteration, the level,
the scale and the parameter id before calling :meth:`MaskedStepProtocol.gen_share`.

Cost: the coefficient 0 of c1 s is N^-1 times the sum of c1 s's NTT values (no inverse
transform), the product by the key share's precomputed Shoup form; the re-encryption share is
one CRP expansion, one such product and one noise transform per column at the top level.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import tenseal as ts

from hefl import sealio
from hefl.codec import Array
from hefl.errors import InvalidArgument, ProtocolError
from hefl.params import CkksParameters
from hefl.protocols.collective import seal_layout
from hefl.protocols.collective.crs import CrsLabel
from hefl.protocols.collective.keyswitch import REVEAL_SCALE_BITS, ciphertext_digest
from hefl.protocols.collective.refresh import mask_bits
from hefl.protocols.collective.ring import Poly, RnsRing
from hefl.protocols.collective.sampling import centered_binomial, uniform_mask
from hefl.protocols.collective.seal_layout import CiphertextPolys
from hefl.protocols.collective.shares import CollectiveJob, complete_shares, pack, unpack
from hefl.protocols.masks import RandomBytes
from hefl.protocols.stats import StatsProtocol
from hefl.v1 import hefl_pb2 as pb

#: A party's (or the coordinator's) output per column, from its masked slot sums per column.
StepOutput = Callable[[Array], Array]

#: The widest masks whose decoded values float64 still adds up exactly enough (module docstring).
MAX_MASK_BITS = 56
#: log2 of the scale of a collective job's label terms (module docstring: what EncToShare hides).
LABEL_TERM_SCALE_BITS = 20


def label_term_bytes(context: ts.Context, values: Array) -> bytes:
    """A party's label term as it uploads it in collective mode: at 2^LABEL_TERM_SCALE_BITS."""
    vector = ts.ckks_vector(context, [float(v) for v in values], scale=2.0**LABEL_TERM_SCALE_BITS)
    return sealio.serialize(vector)


MASKED_STEP = "masked-step"

if TYPE_CHECKING:
    from hefl.protocols.collective.secret import SecretKeyShare


def step_mask_bits(ring: RnsRing, *, rows: int, parties: int) -> int:
    """b: at most :data:`MAX_MASK_BITS`, and (n + 1) 2^b < Q / 2 at the level."""
    return min(MAX_MASK_BITS, mask_bits(ring, rows=rows, parties=parties))


def _sum_mod(ring: RnsRing, polys: Sequence[Poly]) -> Poly:
    q = np.array(ring.primes[: polys[0].shape[-2]], dtype=np.uint64)[:, None]
    total = polys[0]
    for poly in polys[1:]:
        total = total + poly
        total = np.minimum(total, total - q)  # below q, total - q wraps and is the larger
    return total


def constant_terms(ring: RnsRing, c1: Poly, secret: SecretKeyShare) -> Poly:
    """Coefficient 0 of c1 s for a stack of polynomials c1 (NTT form, shape (columns, rows,
    N)): shape (rows, columns).

    One product by the key share's precomputed Shoup form and a sum of the values
    (:meth:`RnsRing.constant_coefficients`): no transform, exact in uint64.
    """
    return ring.constant_coefficients(ring.mul_by(c1, secret.multiplier()))


@dataclass(frozen=True)
class EncToShareShare:
    """h_i = c1 s_i - M_i + e_i on every coefficient, NTT form at the input's level."""

    tag: bytes
    poly: Poly

    def to_bytes(self) -> bytes:
        return pack("enc-to-share", self.tag, [self.poly])

    @classmethod
    def from_bytes(cls, data: bytes, job: CollectiveJob, *, rows: int) -> EncToShareShare:
        """Raises: InvalidArgument: not such a share of ``rows`` primes."""
        tag, (poly,) = unpack(data, kind="enc-to-share", ring=job.ring, shapes=[(rows, job.ring.n)])
        return cls(tag, poly)


class EncToShareProtocol:
    """A ciphertext to additive shares: the coordinator gets its slots plus every party's mask,
    each party its own mask's share (module docstring).

    Party: :meth:`gen_share` (returns the share and the party's slot values to keep).
    Coordinator: :meth:`aggregate_shares`, :meth:`finalize`.

    Args:
        job: The job.
        ciphertext: The input (in training: the summed label term), at any level.
        purpose: What it is; the shares are bound to it and the ciphertext.
    """

    PROTOCOL = "enc-to-share"

    def __init__(self, job: CollectiveJob, ciphertext: CiphertextPolys, *, purpose: str) -> None:
        if ciphertext.polys.shape[0] != 2:
            raise InvalidArgument("EncToShare takes a relinearized ciphertext")
        self.job = job
        self.ciphertext = ciphertext
        self.mask_bits = step_mask_bits(job.ring, rows=ciphertext.rows, parties=job.size)
        self.tag = job.tag(self.PROTOCOL, purpose, ciphertext_digest(ciphertext))

    def _decode(self, poly: Poly) -> Array:
        return seal_layout.decode(
            self.job.ring, self.ciphertext.parms_id, self.ciphertext.scale, poly
        )

    def gen_share(
        self, secret: SecretKeyShare, *, random_bytes: RandomBytes = os.urandom
    ) -> tuple[EncToShareShare, Array]:
        """The share to send, and this party's additive share of the slots (to keep)."""
        ring = self.job.ring
        rows = self.ciphertext.rows
        mask = uniform_mask(ring.n, self.mask_bits, random_bytes=random_bytes)
        noise = centered_binomial(ring.n, random_bytes=random_bytes)
        share = ring.add(
            ring.mul(self.ciphertext.polys[1], secret.ntt(rows)), ring.small_ntt(noise - mask, rows)
        )
        # The coordinator's slots lack + decode(M_i): this party holds -decode(M_i).
        kept = -self._decode(ring.small_ntt(mask, rows))
        return EncToShareShare(self.tag, share), kept

    def aggregate_shares(self, shares: Mapping[str, EncToShareShare]) -> EncToShareShare:
        """Raises: ProtocolError: not one share for this ciphertext per roster party."""
        complete = complete_shares(self.job, shares, tag=self.tag, what="EncToShare")
        return EncToShareShare(self.tag, _sum_mod(self.job.ring, [s.poly for s in complete]))

    def finalize(self, aggregate: EncToShareShare) -> Array:
        """The coordinator's share: every slot minus the parties' masks.

        Raises:
            ProtocolError: ``aggregate`` is not of this ciphertext and purpose.
        """
        if aggregate.tag != self.tag:
            raise ProtocolError("EncToShare aggregate of another ciphertext or purpose")
        return self._decode(self.job.ring.add(self.ciphertext.polys[0], aggregate.poly))


@dataclass(frozen=True)
class MaskedStepShare:
    """(h0_i, one value per column at the input level; h1_ij, one top-level polynomial per
    column)."""

    tag: bytes
    masked: Poly  # (rows, columns)
    reencrypted: Poly  # (columns, top rows, N)

    def to_bytes(self) -> bytes:
        return pack("masked-step", self.tag, [self.masked, *self.reencrypted])

    @classmethod
    def from_bytes(
        cls, data: bytes, job: CollectiveJob, *, rows: int, columns: int
    ) -> MaskedStepShare:
        """Raises: InvalidArgument: not a masked-step share of that shape."""
        ring = job.ring
        shapes = [(rows, columns)] + [(ring.top_rows, ring.n)] * columns
        tag, polys = unpack(data, kind="masked-step", ring=ring, shapes=shapes)
        return cls(tag, polys[0], np.stack(polys[1:]))


def _step_label(job: CollectiveJob, column: int, iteration: int) -> CrsLabel:
    return CrsLabel(job.job_id, MASKED_STEP, key=str(column), iteration=iteration)


def step_crps(job: CollectiveJob, *, iteration: int, columns: int) -> Poly:
    """a_j = CRP(job, "masked-step", column j, iteration) for every column, at the top level:
    shape (columns, top rows, N). One label per (job, column, iteration): no CRP serves twice."""
    ring = job.ring
    return np.stack(
        [
            job.crs.polynomial(ring, _step_label(job, j, iteration), rows=ring.top_rows)
            for j in range(columns)
        ]
    )


@dataclass(frozen=True, repr=False)
class PreparedReencryption:
    """-a_j s_i + e'_ij for every column of one iteration: the part of party i's re-encryption
    share that needs neither the gradients nor its masks, so it can be made while the workers
    compute them (the CRP expansions, the products by the key share and the noises' transforms
    are most of a share's cost).

    It serves one share: the party drops it once used. It is as sensitive as the share's mask
    part (the share minus it is Encode(-y_ij)), so it stays in the party's process and its
    ``repr`` shows none of it.
    """

    iteration: int
    columns: int
    polys: Poly  # (columns, top rows, N)

    def __repr__(self) -> str:
        return f"PreparedReencryption(iteration={self.iteration}, columns={self.columns})"


def prepare_reencryption(
    job: CollectiveJob,
    secret: SecretKeyShare,
    *,
    iteration: int,
    columns: int,
    random_bytes: RandomBytes = os.urandom,
    crps: Poly | None = None,
) -> PreparedReencryption:
    """-a_j s_i + e'_ij per column, e'_ij fresh CBD noise from ``random_bytes``."""
    ring = job.ring
    top = ring.top_rows
    if crps is None:
        crps = step_crps(job, iteration=iteration, columns=columns)
    errors = np.stack(
        [
            ring.small_ntt(centered_binomial(ring.n, random_bytes=random_bytes), top)
            for _ in range(columns)
        ]
    )
    polys = ring.sub(errors, ring.mul_by(crps, secret.multiplier()))
    return PreparedReencryption(iteration, columns, polys)


class MaskedStepProtocol:
    """One iteration's collective refresh of every column's slot sum through a step whose
    output differs per party (module docstring).

    Party: :meth:`gen_share`. Coordinator: :meth:`aggregate_shares`, :meth:`masked_slot_sums`,
    :meth:`finalize`.

    Args:
        job: The job.
        ciphertexts: One per column, all at one level below the top, one scale.
        iteration: The training iteration (labels the CRPs: one per column and iteration).
        step_id: Names the step (e.g. a hash of the optimizer constants); shares are bound to it.
        output_scale_bits: log2 of the outputs' scale.
        crps: The CRPs of this iteration (:func:`step_crps`), if expanded ahead of time.
        zero_columns: Instead of ``ciphertexts``: the zero step of that many columns, whose slot
            sums are known to be 0 (training's first step, from zero weights: every model's
            kernel form has a factor of the margin). Nothing is decrypted; each party's output
            is taken at a share of 0 and only re-encrypted.
    """

    PROTOCOL = MASKED_STEP

    def __init__(
        self,
        job: CollectiveJob,
        ciphertexts: Sequence[CiphertextPolys],
        *,
        iteration: int,
        step_id: str,
        output_scale_bits: int,
        crps: Poly | None = None,
        zero_columns: int = 0,
    ) -> None:
        ring = job.ring
        if bool(ciphertexts) == bool(zero_columns):
            raise InvalidArgument("a masked step takes gradients or a count of zero columns")
        columns = len(ciphertexts) or zero_columns
        if crps is not None and crps.shape != (columns, ring.top_rows, ring.n):
            raise InvalidArgument(f"CRPs of shape {crps.shape} for {columns} columns")
        for ciphertext in ciphertexts:
            if ciphertext.polys.shape[0] != 2 or ciphertext.rows >= ring.top_rows:
                raise InvalidArgument(
                    "a masked step takes relinearized ciphertexts below the top level"
                )
            first = ciphertexts[0]  # every column at the first one's level and scale
            if ciphertext.parms_id != first.parms_id or ciphertext.scale != first.scale:
                raise InvalidArgument("a masked step takes columns of one level and scale")
        self.job = job
        self.ciphertexts = tuple(ciphertexts)
        self._columns = columns
        self._crps = crps
        self.iteration = iteration
        # The zero step decrypts nothing: no rows, no scale, no masks.
        self.rows = ciphertexts[0].rows if ciphertexts else 0
        self.scale = ciphertexts[0].scale if ciphertexts else 0.0
        self.output_scale = 2.0**output_scale_bits
        self.mask_bits = step_mask_bits(ring, rows=self.rows, parties=job.size) if self.rows else 0
        self.tag = job.tag(
            self.PROTOCOL,
            iteration,
            step_id,
            output_scale_bits,
            *(
                [ciphertext_digest(c) for c in self.ciphertexts]
                if ciphertexts
                else [f"zero gradients of {zero_columns} columns"]
            ),
        )

    @property
    def columns(self) -> int:
        return self._columns

    @cached_property
    def crps(self) -> Poly:
        """a_j per column, at the top level: shape (columns, top rows, N)."""
        if self._crps is not None:
            return self._crps
        return step_crps(self.job, iteration=self.iteration, columns=self.columns)

    def _slot_sums(self, constants: Array) -> Array:
        """The slot sums that coefficients 0 stand for: (N/2) m_0 / scale."""
        return np.asarray(constants, dtype=np.float64) * (self.job.ring.n / 2) / self.scale

    def _encode(self, values: Array) -> Poly:
        ring = self.job.ring
        return np.stack(
            [
                seal_layout.encode(ring, float(v), rows=ring.top_rows, scale=self.output_scale)
                for v in values
            ]
        )

    def gen_share(
        self,
        secret: SecretKeyShare,
        *,
        output: StepOutput,
        prepared: PreparedReencryption | None = None,
        random_bytes: RandomBytes = os.urandom,
    ) -> MaskedStepShare:
        """The party's share; ``output`` maps its shares g_i of the masked slot sums (one per
        column) to the values it subtracts from the result (one per column).

        ``prepared``: this iteration's -a_j s_i + e'_ij (:func:`prepare_reencryption`), made
        ahead of time with the same key share; made here if None.

        Raises:
            InvalidArgument: ``prepared`` is of another iteration or column count, or the
                output is not one value per column.
        """
        ring = self.job.ring
        if prepared is None:
            prepared = prepare_reencryption(
                self.job,
                secret,
                iteration=self.iteration,
                columns=self.columns,
                random_bytes=random_bytes,
                crps=self.crps,
            )
        elif (prepared.iteration, prepared.columns) != (self.iteration, self.columns):
            raise InvalidArgument(
                f"a re-encryption prepared for iteration {prepared.iteration} and "
                f"{prepared.columns} columns, not {self.iteration} and {self.columns}"
            )
        if self.ciphertexts:
            masks = uniform_mask(self.columns, self.mask_bits, random_bytes=random_bytes)
            noise = centered_binomial(self.columns, random_bytes=random_bytes)
            c1 = np.stack([c.polys[1] for c in self.ciphertexts])
            constants = constant_terms(ring, c1, secret)
            q = np.array(ring.primes[: self.rows], dtype=object)[:, None]
            masked = (
                (constants.astype(object) + (noise - masks).astype(object)[None, :]) % q
            ).astype(np.uint64)
            shares_of_sums = -self._slot_sums(masks.astype(np.float64))
        else:  # the zero step: nothing to decrypt, the party's share of the sums is 0
            masked = np.zeros((0, self.columns), dtype=np.uint64)
            shares_of_sums = np.zeros(self.columns)
        values = np.asarray(output(shares_of_sums), dtype=np.float64)
        if values.shape != (self.columns,):
            raise InvalidArgument(f"step output of shape {values.shape} for {self.columns} columns")
        reencrypted = ring.add(prepared.polys, self._encode(-values))
        return MaskedStepShare(self.tag, masked, reencrypted)

    def aggregate_shares(self, shares: Mapping[str, MaskedStepShare]) -> MaskedStepShare:
        """Raises: ProtocolError: not one share of this step per roster party."""
        complete = complete_shares(self.job, shares, tag=self.tag, what="masked step")
        ring = self.job.ring
        return MaskedStepShare(
            self.tag,
            _sum_mod(ring, [s.masked for s in complete]),
            ring.sum([s.reencrypted for s in complete]),
        )

    def masked_slot_sums(self, aggregate: MaskedStepShare) -> Array:
        """What the coordinator learns: every column's slot sum plus the parties' g_ij.

        Raises:
            ProtocolError: ``aggregate`` is not of this step.
        """
        if aggregate.tag != self.tag:
            raise ProtocolError("masked-step aggregate of another iteration, step or ciphertext")
        if not self.ciphertexts:
            return np.zeros(self.columns)
        ring = self.job.ring
        c0 = ring.constant_coefficients(np.stack([c.polys[0] for c in self.ciphertexts]))
        total = _sum_mod(ring, [c0, aggregate.masked])
        constants = [float(v) for v in ring.to_integers(total)]  # centered, per column
        return self._slot_sums(np.array(constants, dtype=np.float64))

    def finalize(self, aggregate: MaskedStepShare, outputs: Array) -> list[CiphertextPolys]:
        """Fresh top-level ciphertexts of outputs_j - sum_i y_ij, one per column, each with the
        seed of its a_j: they serialize in SEAL's seeded form, half the bytes.

        Raises:
            ProtocolError: ``aggregate`` is not of this step, or not one output per column.
        """
        if aggregate.tag != self.tag:
            raise ProtocolError("masked-step aggregate of another iteration, step or ciphertext")
        values = np.asarray(outputs, dtype=np.float64)
        if values.shape != (self.columns,):
            raise ProtocolError(f"{values.shape} outputs for {self.columns} columns")
        ring = self.job.ring
        c0 = ring.add(self._encode(values), aggregate.reencrypted)
        parms = ring.parms_id(ring.top_rows)
        return [
            CiphertextPolys(
                parms,
                self.output_scale,
                np.stack([c0[j], self.crps[j]]),
                seed=self.job.crs.generator_seed(
                    ring, _step_label(self.job, j, self.iteration), rows=ring.top_rows
                ),
            )
            for j in range(self.columns)
        ]


def step_id(setup: pb.TrainingSetup) -> str:
    """Names the optimizer step of a job (its public constants): masked-step shares are bound
    to it, so the parties and the coordinator apply the same one."""
    material = repr(
        (
            setup.rows,
            setup.columns,
            setup.iterations,
            setup.learning_rate,
            tuple(setup.l2),
            setup.weight_scale,
        )
    )
    return hashlib.sha256(material.encode()).hexdigest()


def stats_protocol(features: int, params: CkksParameters) -> StatsProtocol:
    """The statistics of a collective job, encrypted at the reveal scale: their sum is revealed
    by a smudged collective decryption (:mod:`.keyswitch`), which needs it for its precision."""
    return StatsProtocol(features=features, slots=params.slots, scale=2.0**REVEAL_SCALE_BITS)
