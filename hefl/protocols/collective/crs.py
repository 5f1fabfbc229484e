"""The common random string: a seed the parties agree on, and the polynomials expanded from it.

Several protocols need a uniformly random polynomial every party knows and none chose (the
"a" of the public key, one per gadget index of the relinearization key, one per refresh). They
come from SHAKE-256 keyed by a 32-byte seed and a :class:`CrsLabel` naming the job, the
protocol, the key, the gadget index and the iteration, so no two uses ever share a polynomial
(Mouchet et al., PoPETs 2021, section IV: the common reference string; reusing a common
polynomial for two keys or two refreshes would let the shares be combined against each other).

The seed itself comes from :class:`SeedAgreementProtocol`, a commit-then-reveal coin toss
among the roster's parties, relayed by the coordinator:

1. Commit (each party, :meth:`SeedAgreementParty.commitment`): draw a 32-byte seed from
   ``os.urandom``; send ``SHA-256(domain, job, party, seed)``.
2. Reveal (each party, :meth:`SeedAgreementParty.reveal`), only once it has every roster
   party's commitment, its own among them unchanged: send the seed.
3. Finalize (everyone, :meth:`SeedAgreementProtocol.agree`): check every reveal against its
   commitment (refusing a mismatch, a missing or an extra party) and hash all the seeds, in
   roster order, into the job's seed. Each party computes it itself; nobody takes the
   coordinator's word for it.

Security: a party that committed cannot change its seed after seeing others' (SHA-256 is
binding), and cannot see others' seeds before committing (each commitment hides a 256-bit
uniform seed), so the agreed seed is uniform as long as one party is honest. The last party to
reveal can still abort after seeing the others (one bit of bias at the cost of stopping the
job). A coordinator that shows different commitments to different parties makes them derive
different seeds: the keys they then generate do not work together (a denial of service, not a
leak); signing the commitments (phase 2) makes that attributable.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from hefl.errors import InvalidArgument, ProtocolError
from hefl.protocols.collective.ring import Poly, RnsRing
from hefl.protocols.collective.sampling import SEAL_SEED_BYTES, seal_uniform
from hefl.protocols.masks import RandomBytes

SEED_BYTES = 32
_CRS_DOMAIN = b"hefl/collective/crs/v2"
_COMMIT_DOMAIN = b"hefl/collective/seed-commitment/v1"
_SEED_DOMAIN = b"hefl/collective/seed/v1"


def _field(value: bytes | str | int) -> bytes:
    """One length-prefixed field: encodings of different tuples never collide."""
    if isinstance(value, int):
        data = value.to_bytes(8, "little", signed=True)
    elif isinstance(value, str):
        data = value.encode()
    else:
        data = value
    return struct.pack("<I", len(data)) + data


def encode_fields(*values: bytes | str | int) -> bytes:
    return b"".join(_field(v) for v in values)


@dataclass(frozen=True)
class CrsLabel:
    """What a common random polynomial is for; no two uses of the string share a label.

    Attributes:
        job_id: The job.
        protocol: The protocol ("public-key", "relin-key", "refresh", ...).
        key: Which key or ciphertext within the protocol (e.g. a column name).
        index: The gadget index (relinearization key) or 0.
        iteration: The training iteration (refresh) or 0.
    """

    job_id: str
    protocol: str
    key: str = ""
    index: int = 0
    iteration: int = 0

    def encode(self) -> bytes:
        return encode_fields(
            _CRS_DOMAIN, self.job_id, self.protocol, self.key, self.index, self.iteration
        )


@dataclass(frozen=True)
class CommonRandomString:
    """The job's agreed seed, expanded per :class:`CrsLabel` with SHAKE-256: the label's SEAL
    generator seed is SHAKE-256(seed, label, parameter set, rows), and the polynomial is what
    SEAL's own SHAKE-256 generator and uniform sampler make of it
    (:func:`~hefl.protocols.collective.sampling.seal_uniform`). So a ciphertext whose second
    polynomial is a common one travels in SEAL's seeded form: its first polynomial and the
    64-byte seed, half the bytes, and SEAL expands it where it is loaded."""

    seed: bytes

    def __post_init__(self) -> None:
        if len(self.seed) != SEED_BYTES:
            raise InvalidArgument(f"a common random string seed has {SEED_BYTES} bytes")

    def generator_seed(self, ring: RnsRing, label: CrsLabel, *, rows: int) -> bytes:
        """The SEAL generator seed of ``label``'s polynomial on the first ``rows`` primes."""
        key = encode_fields(self.seed, label.encode(), ring.params.name, rows)
        return hashlib.shake_256(key).digest(SEAL_SEED_BYTES)

    def polynomial(self, ring: RnsRing, label: CrsLabel, *, rows: int) -> Poly:
        """The uniform polynomial of ``label`` on the first ``rows`` primes (NTT form)."""
        seed = self.generator_seed(ring, label, rows=rows)
        return seal_uniform(seed, ring.primes[:rows], ring.n)


# -- the seed, by commit-then-reveal -------------------------------------------------------


def _commitment_digest(job_id: str, party: str, seed: bytes) -> bytes:
    return hashlib.sha256(encode_fields(_COMMIT_DOMAIN, job_id, party, seed)).digest()


@dataclass(frozen=True)
class SeedCommitment:
    """A party's commitment to its seed share: SHA-256(domain, job, party, seed)."""

    party: str
    digest: bytes

    def to_bytes(self) -> bytes:
        return encode_fields(self.party, self.digest)

    @classmethod
    def from_bytes(cls, data: bytes) -> SeedCommitment:
        """Raises: InvalidArgument: not a commitment."""
        party, digest = _decode_fields(data, 2, what="seed commitment")
        if len(digest) != hashlib.sha256().digest_size:
            raise InvalidArgument(f"seed commitment digest of {len(digest)} bytes")
        return cls(party=party.decode(), digest=digest)


@dataclass(frozen=True)
class SeedReveal:
    """A party's seed share, revealed after every commitment is in."""

    party: str
    seed: bytes

    def to_bytes(self) -> bytes:
        return encode_fields(self.party, self.seed)

    @classmethod
    def from_bytes(cls, data: bytes) -> SeedReveal:
        """Raises: InvalidArgument: not a reveal."""
        party, seed = _decode_fields(data, 2, what="seed reveal")
        if len(seed) != SEED_BYTES:
            raise InvalidArgument(f"seed reveal of {len(seed)} bytes, expected {SEED_BYTES}")
        return cls(party=party.decode(), seed=seed)


def _decode_fields(data: bytes, count: int, *, what: str) -> list[bytes]:
    fields, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(data):
            raise InvalidArgument(f"truncated {what}")
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + length > len(data):
            raise InvalidArgument(f"truncated {what}")
        fields.append(data[offset : offset + length])
        offset += length
    if offset != len(data):
        raise InvalidArgument(f"{what} with trailing bytes")
    return fields


@dataclass(frozen=True)
class SeedAgreementProtocol:
    """The commit-then-reveal coin toss of one job among ``parties`` (the roster).

    The coordinator calls :meth:`aggregate_commitments` and relays; every party runs
    :class:`SeedAgreementParty` and computes the seed with :meth:`agree` itself.
    """

    job_id: str
    parties: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(set(self.parties)) != len(self.parties) or not self.parties:
            raise InvalidArgument(f"a roster of distinct parties, not {list(self.parties)}")

    def _complete(self, names: Sequence[str], *, what: str) -> None:
        missing = sorted(set(self.parties) - set(names))
        extra = sorted(set(names) - set(self.parties))
        if missing or extra or len(names) != len(self.parties):
            raise ProtocolError(
                f"{what} of job {self.job_id!r}: missing {missing}, not on the roster {extra}, "
                f"{len(names)} for {len(self.parties)} parties"
            )

    def aggregate_commitments(
        self, commitments: Sequence[SeedCommitment]
    ) -> dict[str, SeedCommitment]:
        """Every roster party's commitment, once each.

        Raises:
            ProtocolError: A party is missing, off the roster or twice.
        """
        self._complete([c.party for c in commitments], what="seed commitments")
        return {c.party: c for c in commitments}

    def agree(
        self, commitments: Sequence[SeedCommitment], reveals: Sequence[SeedReveal]
    ) -> CommonRandomString:
        """The job's common random string, from reveals that match their commitments.

        Raises:
            ProtocolError: A commitment or reveal is missing, extra or twice, or a reveal does
                not match its commitment.
        """
        committed = self.aggregate_commitments(commitments)
        self._complete([r.party for r in reveals], what="seed reveals")
        by_party = {r.party: r for r in reveals}
        for party in self.parties:
            expected = committed[party].digest
            actual = _commitment_digest(self.job_id, party, by_party[party].seed)
            if not hmac.compare_digest(expected, actual):
                raise ProtocolError(
                    f"party {party!r} revealed a seed that does not match its commitment "
                    f"in job {self.job_id!r}"
                )
        material = encode_fields(
            _SEED_DOMAIN, self.job_id, *(x for p in self.parties for x in (p, by_party[p].seed))
        )
        return CommonRandomString(hashlib.sha256(material).digest())


class SeedAgreementParty:
    """One party's side of the coin toss: commit, then reveal once, after every commitment.

    The party's seed share never leaves this object before :meth:`reveal`, which refuses unless
    it is given every roster party's commitment with its own unchanged, and answers once.
    """

    def __init__(
        self,
        protocol: SeedAgreementProtocol,
        party: str,
        *,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        if party not in protocol.parties:
            raise InvalidArgument(f"party {party!r} is not on the roster of {protocol.job_id!r}")
        self._protocol = protocol
        self._party = party
        self._seed = random_bytes(SEED_BYTES)
        self._commitment = SeedCommitment(
            party, _commitment_digest(protocol.job_id, party, self._seed)
        )
        self._revealed = False

    def commitment(self) -> SeedCommitment:
        return self._commitment

    def reveal(self, commitments: Sequence[SeedCommitment]) -> SeedReveal:
        """The seed share, once every roster party has committed.

        Raises:
            ProtocolError: A commitment is missing or extra, this party's own is not the one it
                made, or the seed was revealed already.
        """
        if self._revealed:
            raise ProtocolError(f"party {self._party!r} revealed its seed share already")
        own = self._protocol.aggregate_commitments(commitments)[self._party]
        if not hmac.compare_digest(own.digest, self._commitment.digest):
            raise ProtocolError(
                f"the commitments relayed to {self._party!r} do not carry its own commitment"
            )
        self._revealed = True
        return SeedReveal(self._party, self._seed)

    def __repr__(self) -> str:
        return f"SeedAgreementParty({self._party!r}, job={self._protocol.job_id!r})"
