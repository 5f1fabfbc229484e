"""The only secrets of the collective protocols: a party's key share and its ephemeral keys.

A :class:`SecretKeyShare` is created by the party that will hold it (:meth:`generate`, from
``os.urandom``) and lives in that party's process for the job: the collective secret key is
s = s_1 + ... + s_n and nobody ever holds it. The protocol types take a share as an argument of
the party-side step (``gen_share``) and never keep it; the coordinator's side of every protocol
(aggregation, finalization) takes no share at all. A share is never logged (its ``repr`` shows
none of it) and never pickled (Ray or multiprocessing would copy it to another process):
saving it is an explicit ``to_bytes(include_secret_key=True)``.

:class:`RelinKeyEphemeral` is the party's ephemeral key u_i between the two rounds of the
relinearization-key protocol; it serves once.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Literal, NoReturn

import numpy as np

from hefl.errors import InvalidArgument, PermissionDenied, ProtocolError
from hefl.params import CkksParameters, get_parameter_set
from hefl.protocols.collective.ring import Multiplier, Poly, RnsRing, SignedPoly, ring_for
from hefl.protocols.collective.sampling import ternary
from hefl.protocols.masks import RandomBytes

_MAGIC = b"HEFL-SKS1"


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


class _Secret:
    """A ternary polynomial known to one party: kept in coefficient and NTT form."""

    __slots__ = ("_coefficients", "_multiplier", "_ntt", "_ring")

    def __init__(self, ring: RnsRing, coefficients: SignedPoly) -> None:
        if coefficients.shape != (ring.n,) or not np.isin(coefficients, (-1, 0, 1)).all():
            raise InvalidArgument("a secret share is a ternary polynomial of the ring's degree")
        self._ring = ring
        self._coefficients = _read_only(coefficients.astype(np.int64))
        self._ntt = _read_only(ring.small_ntt(self._coefficients, ring.key_rows))
        self._multiplier: Multiplier | None = None

    @property
    def params(self) -> CkksParameters:
        return self._ring.params

    def ntt(self, rows: int) -> Poly:
        """The NTT form on the first ``rows`` primes, for the protocols of this package."""
        return self._ntt[:rows]

    def multiplier(self) -> Multiplier:
        """The NTT form on every key row as a fixed operand (:meth:`RnsRing.mul_by`): the
        products of every iteration's shares use it."""
        if self._multiplier is None:
            self._multiplier = self._ring.multiplier(self._ntt)
        return self._multiplier

    def coefficients(self) -> SignedPoly:
        """The ternary coefficients, for the protocols of this package."""
        return self._coefficients

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError(
            f"a {type(self).__name__} is not pickled: it must not leave the party's process"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<secret>, params={self._ring.params.name!r})"


class SecretKeyShare(_Secret):
    """Party i's share s_i of the job's collective secret key (uniform ternary, as SEAL's keys).

    Create it with :meth:`generate` in the party's own process; keep it there.
    """

    __slots__ = ()

    @classmethod
    def generate(
        cls, params: CkksParameters, *, random_bytes: RandomBytes = os.urandom
    ) -> SecretKeyShare:
        """A fresh share from ``random_bytes`` (``os.urandom``; a seeded source only in tests)."""
        ring = ring_for(params)
        return cls(ring, ternary(ring.n, random_bytes=random_bytes))

    def to_bytes(self, *, include_secret_key: Literal[True]) -> bytes:
        """The share, to store in the party's own durable state (never to send).

        Raises:
            PermissionDenied: ``include_secret_key`` is not True.
        """
        if include_secret_key is not True:
            raise PermissionDenied("saving a secret key share needs include_secret_key=True")
        name = self.params.name.encode()
        body = (self._coefficients + 1).astype(np.uint8).tobytes()
        digest = hashlib.sha256(_MAGIC + name + body).digest()
        return _MAGIC + struct.pack("<H", len(name)) + name + body + digest

    @classmethod
    def from_bytes(cls, data: bytes) -> SecretKeyShare:
        """Raises: InvalidArgument: not a share saved by :meth:`to_bytes`, or corrupted."""
        if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 2:
            raise InvalidArgument("not a saved secret key share")
        (length,) = struct.unpack_from("<H", data, len(_MAGIC))
        start = len(_MAGIC) + 2
        name = data[start : start + length]
        try:
            ring = ring_for(get_parameter_set(name.decode()))
        except UnicodeDecodeError as err:
            raise InvalidArgument("saved secret key share names no parameter set") from err
        body = data[start + length : start + length + ring.n]
        digest = data[start + length + ring.n :]
        if len(body) != ring.n or hashlib.sha256(_MAGIC + name + body).digest() != digest:
            raise InvalidArgument("saved secret key share is truncated or corrupted")
        return cls(ring, np.frombuffer(body, dtype=np.uint8).astype(np.int64) - 1)


class RelinKeyEphemeral(_Secret):
    """A party's ephemeral u_i of one run of the relinearization-key protocol.

    It is bound to that run (``tag``) and serves one second round: :meth:`consume` refuses a
    second use, since two second-round shares under one u_i would be two equations in it.
    """

    __slots__ = ("_tag", "_used")

    def __init__(self, ring: RnsRing, coefficients: SignedPoly, *, tag: bytes) -> None:
        super().__init__(ring, coefficients)
        self._tag = tag
        self._used = False

    def consume(self, tag: bytes) -> Poly:
        """The NTT form at the key level, once, for the run ``tag``.

        Raises:
            ProtocolError: Another run's ephemeral key, or one used already.
        """
        if tag != self._tag:
            raise ProtocolError("ephemeral key of another relinearization-key run")
        if self._used:
            raise ProtocolError("the ephemeral key of this relinearization-key run was used")
        self._used = True
        return self.ntt(self._ring.key_rows)
