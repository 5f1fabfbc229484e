"""What every collective protocol shares: the job's setting, share tags and the wire format.

A share is a few polynomials plus a 32-byte tag: the SHA-256 of what the share is for (the
protocol, the job, the parameter set, the agreed seed, and where relevant the ciphertext and its
purpose). A party computes the tag of the step it agreed to and stamps its share with it; the
aggregator recomputes the tag of the step it runs and refuses any share whose tag differs, so a
share made for another job, key, iteration or ciphertext is never added in (it would not
combine anyway: it is an RLWE sample for another polynomial).

Wire format (little-endian): ``b"HEFL-CS2"``, kind (u8), tag (32 bytes), count (u16), then per
polynomial ``rows (u16), width (u32)`` and per row a word size (u8: 4 or 8) and width words of
that size: 4 bytes where every word of the row fits (the 30-bit primes' rows), 8 otherwise, so a
re-encryption share at the default set's top level (one 60-bit and four 30-bit primes) takes 24
bytes per coefficient instead of 40. Parsing checks the kind, the shapes the protocol expects,
the word sizes and that every word is reduced modulo its row's prime, and refuses trailing
bytes: the validation layer for shares, where they enter a process.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from hefl.errors import InvalidArgument, ProtocolError
from hefl.params import CkksParameters
from hefl.protocols.collective.crs import CommonRandomString, encode_fields
from hefl.protocols.collective.ring import Poly, RnsRing, ring_for

_MAGIC = b"HEFL-CS2"
_TAG_DOMAIN = b"hefl/collective/share-tag/v1"
TAG_BYTES = 32
KINDS = {
    "public-key": 1,
    "relin-key-round-1": 2,
    "relin-key-round-2": 3,
    "decryption": 4,
    "public-key-switch": 5,
    "refresh": 6,
    "masked-step": 7,
    "enc-to-share": 8,
}


@dataclass(frozen=True)
class CollectiveJob:
    """The setting every protocol of one job runs in.

    Attributes:
        params: The job's CKKS parameter set.
        job_id: The job.
        parties: The roster, in the charter's order: every protocol needs all of them (n-of-n).
        crs: The common random string the parties agreed on
            (:class:`~hefl.protocols.collective.crs.SeedAgreementProtocol`).
    """

    params: CkksParameters
    job_id: str
    parties: tuple[str, ...]
    crs: CommonRandomString

    def __post_init__(self) -> None:
        if not self.parties or len(set(self.parties)) != len(self.parties):
            raise InvalidArgument(f"a roster of distinct parties, not {list(self.parties)}")

    @property
    def ring(self) -> RnsRing:
        return ring_for(self.params)

    @property
    def size(self) -> int:
        """n, the number of parties."""
        return len(self.parties)

    def tag(self, protocol: str, *fields: bytes | str | int) -> bytes:
        """The tag of a share of ``protocol`` for this job and these ``fields``."""
        material = encode_fields(
            _TAG_DOMAIN,
            protocol,
            self.job_id,
            self.params.name,
            hashlib.sha256(self.crs.seed).digest(),
            *self.parties,
            *fields,
        )
        return hashlib.sha256(material).digest()


class Share(Protocol):
    @property
    def tag(self) -> bytes: ...


S = TypeVar("S", bound=Share)


def complete_shares(
    job: CollectiveJob, shares: Mapping[str, S], *, tag: bytes, what: str
) -> list[S]:
    """The shares of every roster party, in roster order, each carrying ``tag``.

    Raises:
        ProtocolError: A party is missing or off the roster, or a share was made for another
            job, key, iteration or ciphertext (its tag differs).
    """
    missing = [p for p in job.parties if p not in shares]
    extra = sorted(set(shares) - set(job.parties))
    if missing or extra:
        raise ProtocolError(
            f"{what} of job {job.job_id!r} needs a share of every roster party (n-of-n): "
            f"missing {missing}, not on the roster {extra}"
        )
    for party in job.parties:
        if shares[party].tag != tag:
            raise ProtocolError(
                f"{what}: the share of party {party!r} was made for another job, key, "
                f"iteration or ciphertext than this one"
            )
    return [shares[p] for p in job.parties]


_WORD_SIZES = {4: "<u4", 8: "<u8"}
_U32_MAX = np.uint64(0xFFFFFFFF)


def pack(kind: str, tag: bytes, polys: Sequence[Poly]) -> bytes:
    out = [_MAGIC, struct.pack("<B", KINDS[kind]), tag, struct.pack("<H", len(polys))]
    for poly in polys:
        rows, width = poly.shape
        out.append(struct.pack("<HI", rows, width))
        for row in poly:
            size = 4 if width == 0 or row.max() <= _U32_MAX else 8
            out.append(struct.pack("<B", size))
            out.append(np.ascontiguousarray(row, dtype=_WORD_SIZES[size]).tobytes())
    return b"".join(out)


def unpack(
    data: bytes, *, kind: str, ring: RnsRing, shapes: Sequence[tuple[int, int]]
) -> tuple[bytes, list[Poly]]:
    """(tag, polynomials) of a share of ``kind`` whose polynomials have ``shapes``.

    Raises:
        InvalidArgument: Not such a share: the message says what differs.
    """
    head = len(_MAGIC) + 1 + TAG_BYTES + 2
    if len(data) < head or not data.startswith(_MAGIC):
        raise InvalidArgument(f"not a {kind} share")
    (found,) = struct.unpack_from("<B", data, len(_MAGIC))
    if found != KINDS[kind]:
        raise InvalidArgument(f"a share of kind {found} where a {kind} share was expected")
    tag = data[len(_MAGIC) + 1 : len(_MAGIC) + 1 + TAG_BYTES]
    (count,) = struct.unpack_from("<H", data, head - 2)
    if count != len(shapes):
        raise InvalidArgument(f"{kind} share of {count} polynomials, expected {len(shapes)}")
    offset, polys = head, []
    for expected in shapes:
        if offset + 6 > len(data):
            raise InvalidArgument(f"truncated {kind} share")
        rows, width = struct.unpack_from("<HI", data, offset)
        offset += 6
        if (rows, width) != expected:
            raise InvalidArgument(
                f"{kind} share polynomial of shape {(rows, width)}, expected {expected}"
            )
        poly = np.empty((rows, width), dtype=np.uint64)
        for j in range(rows):
            if offset + 1 > len(data):
                raise InvalidArgument(f"truncated {kind} share")
            (word,) = struct.unpack_from("<B", data, offset)
            if word not in _WORD_SIZES:
                raise InvalidArgument(f"{kind} share row of {word}-byte words")
            offset += 1
            if offset + word * width > len(data):
                raise InvalidArgument(f"truncated {kind} share")
            poly[j] = np.frombuffer(data, dtype=_WORD_SIZES[word], count=width, offset=offset)
            offset += word * width
        if (poly >= np.array(ring.primes[:rows], dtype=np.uint64)[:, None]).any():
            raise InvalidArgument(f"{kind} share with coefficients not reduced modulo the primes")
        polys.append(poly)
    if offset != len(data):
        raise InvalidArgument(f"{kind} share with {len(data) - offset} trailing bytes")
    return tag, polys
