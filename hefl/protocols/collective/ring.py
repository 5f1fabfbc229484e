"""The RNS ring of a parameter set, with SEAL's own primes and number-theoretic transform.

Every polynomial of the collective protocols is an array of shape (rows, N) of uint64: row j
holds the residues modulo the j-th prime of the key-level chain (q_0, ..., q_{L-1}, then the
special prime P), in SEAL's NTT form unless a name says otherwise. A ciphertext at a level with
l primes uses rows 0..l-1; keys use all L+1 rows. This is exactly how SEAL stores ciphertexts,
public keys and key-switching keys, so the protocols' results load into SEAL unchanged
(:mod:`hefl.protocols.collective.seal_layout`).

The transform is SEAL's own (``tenseal.sealapi.util.ntt_negacyclic_harvey`` with SEAL's tables
for each prime), so there is no second NTT to keep bit-compatible (a numpy NTT over stacks of
polynomials was measured slower than SEAL's per row). Products modulo a prime are exact: in
uint64 when the prime is below 2^32 (the product fits); above, the quotient is estimated in
80-bit long double (off by at most one) and the remainder computed exactly in wrapping uint64
arithmetic and corrected, so floating point only guesses, never rounds a result.
"""

from __future__ import annotations

import array
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hefl.params import CkksParameters

Poly = NDArray[np.uint64]
SignedPoly = NDArray[np.int64]

_SMALL_PRIME = 1 << 32


@dataclass(frozen=True, eq=False)
class RnsRing:
    """The key-level RNS basis of one CKKS parameter set.

    Built by :func:`ring_for` (one per parameter set and process). The SEAL context made here
    holds parameters only: no key is ever generated in it.

    Attributes:
        params: The parameter set.
        n: Ring dimension N.
        primes: q_0, ..., q_{L-1}, P: the data primes, then the special prime.
    """

    params: CkksParameters
    n: int
    primes: tuple[int, ...]
    _seal_context: Any = field(repr=False)
    _moduli: tuple[Any, ...] = field(repr=False)
    _tables: tuple[Any, ...] = field(repr=False)
    _parms_ids: dict[int, tuple[int, ...]] = field(repr=False)

    @property
    def key_rows(self) -> int:
        """Rows of a key: every data prime and the special prime."""
        return len(self.primes)

    @property
    def top_rows(self) -> int:
        """Rows of a fresh ciphertext: every data prime."""
        return len(self.primes) - 1

    @property
    def special_prime(self) -> int:
        return self.primes[-1]

    @property
    def seal_context(self) -> Any:
        """SEAL's context of these parameters (no keys), to load and decode SEAL objects."""
        return self._seal_context

    def parms_id(self, rows: int) -> tuple[int, ...]:
        """SEAL's parms_id of the level with ``rows`` primes (``key_rows`` for keys)."""
        return self._parms_ids[rows]

    def rows_of(self, parms_id: Sequence[int]) -> int:
        """How many primes the level ``parms_id`` has.

        Raises:
            ValueError: ``parms_id`` is no level of these parameters.
        """
        for rows, candidate in self._parms_ids.items():
            if tuple(parms_id) == candidate:
                return rows
        raise ValueError(f"parms_id {tuple(parms_id)} is no level of {self.params.name}")

    def modulus(self, rows: int) -> int:
        """Q of the level with ``rows`` primes: the product of its primes."""
        return functools.reduce(lambda a, b: a * b, self.primes[:rows], 1)

    def _column(self, rows: int) -> NDArray[np.uint64]:
        return np.array(self.primes[:rows], dtype=np.uint64)[:, None]

    # -- arithmetic, modulo each row's prime ------------------------------------------------
    # Rows are the second-to-last axis; leading axes (stacks of polynomials) broadcast.

    def add(self, a: Poly, b: Poly) -> Poly:
        q = self._column(a.shape[-2])
        total = a + b  # < 2^61, no overflow
        # Where total < q, total - q wraps above 2^63 and the minimum keeps total.
        return np.minimum(total, total - q)

    def sub(self, a: Poly, b: Poly) -> Poly:
        q = self._column(a.shape[-2])
        difference = a - b  # wraps above 2^63 where a < b; adding q then wraps back below q
        return np.minimum(difference, difference + q)

    def neg(self, a: Poly) -> Poly:
        q = self._column(a.shape[-2])
        return np.where(a == 0, a, q - a)

    def mul(self, a: Poly, b: Poly) -> Poly:
        """Coefficient-wise product (a product of polynomials when both are in NTT form)."""
        a, b = np.broadcast_arrays(a, b)
        out = np.empty(a.shape, dtype=np.uint64)
        for j in range(a.shape[-2]):
            q = self.primes[j]
            if q < _SMALL_PRIME:
                out[..., j, :] = (a[..., j, :] * b[..., j, :]) % np.uint64(q)
            else:
                out[..., j, :] = _mulmod_large(a[..., j, :], b[..., j, :], q)
        return out

    def multiplier(self, b: Poly) -> Multiplier:
        """``b`` (shape (rows, N), reduced) with its Shoup quotients, for many products by the
        same operand (:meth:`mul_by`): floor(b 2^32 / q) on rows whose prime is below 2^31,
        floor(b 2^64 / q) on the others."""
        rows = b.shape[-2]
        shifts = np.array([32 if q < _SHOUP_32 else 64 for q in self.primes[:rows]], dtype=object)
        q = np.array(self.primes[:rows], dtype=object)[:, None]
        quotients = ((b.astype(object) << shifts[:, None]) // q).astype(np.uint64)
        return Multiplier(_read_only(np.array(b, dtype=np.uint64)), _read_only(quotients))

    def mul_by(self, a: Poly, b: Multiplier) -> Poly:
        """a b coefficient-wise for a fixed operand ``b`` (Shoup's product: exact in uint64;
        ``a`` reduced, rows on the second-to-last axis). Below 2^31 the quotient is one
        product of words, a >> 32; above it takes the 128-bit product's high word."""
        rows = a.shape[-2]
        out = np.empty(np.broadcast_shapes(a.shape, b.values[:rows].shape), dtype=np.uint64)
        small = [j for j in range(rows) if self.primes[j] < _SHOUP_32]
        large = [j for j in range(rows) if self.primes[j] >= _SHOUP_32]
        for picked, high_word in ((small, _mulhi32), (large, _mulhi)):
            if not picked:
                continue
            index = slice(picked[0], picked[-1] + 1) if _contiguous(picked) else picked
            q = np.array([self.primes[j] for j in picked], dtype=np.uint64)[:, None]
            part = a[..., index, :]
            estimate = high_word(part, b.quotients[index])  # floor(a b / q) or one less
            remainder = part * b.values[index] - estimate * q  # exact modulo 2^64: [0, 2q)
            out[..., index, :] = np.minimum(remainder, remainder - q)
        return out

    def constant_coefficients(self, a: Poly) -> Poly:
        """Coefficient 0 of every NTT-form polynomial of a stack ``a`` (shape (count, rows,
        N)), without the inverse transform: shape (rows, count).

        SEAL's NTT evaluates at the N odd powers of a primitive 2N-th root of unity, whose m-th
        powers sum to zero for 0 < m < N, so coefficient 0 is N^-1 times the sum of the values:
        summed exactly in uint64 on 32-bit halves (N <= 2^15 terms below 2^32 each).
        """
        rows = a.shape[-2]
        low, high = (a & _LOW).sum(axis=-1), (a >> _32).sum(axis=-1)
        out = np.empty((rows, a.shape[0]), dtype=np.uint64)
        for j in range(rows):
            q = self.primes[j]
            inverse = pow(self.n, -1, q)
            for k in range(a.shape[0]):
                total = (int(high[k, j]) << 32) + int(low[k, j])
                out[j, k] = total * inverse % q
        return out

    def sum(self, polys: Sequence[Poly]) -> Poly:
        total = polys[0]
        for poly in polys[1:]:
            total = self.add(total, poly)
        return total

    # -- transforms and conversions -----------------------------------------------------------

    def ntt(self, a: Poly) -> Poly:
        """Coefficient form -> SEAL's NTT form, row by row."""
        import tenseal.sealapi.util as seal_util

        return np.stack(
            [
                _words(seal_util.ntt_negacyclic_harvey(a[j].tolist(), self._tables[j]))
                for j in range(a.shape[0])
            ]
        )

    def intt(self, a: Poly) -> Poly:
        """SEAL's NTT form -> coefficient form, row by row (fully reduced)."""
        import tenseal.sealapi.util as seal_util

        out = np.stack(
            [
                _words(seal_util.inverse_ntt_negacyclic_harvey(a[j].tolist(), self._tables[j]))
                for j in range(a.shape[0])
            ]
        )
        q = self._column(a.shape[0])
        return np.minimum(out, out - q)  # SEAL's inverse leaves values below 2q

    def from_signed(self, coefficients: SignedPoly, rows: int) -> Poly:
        """Signed integer coefficients (|c| < 2^63) -> residues on the first ``rows`` primes."""
        c = np.asarray(coefficients, dtype=np.int64)
        primes = self.primes[:rows]
        if c.size and int(np.abs(c).max()) < min(primes):  # noise, masks: one conditional add
            negative = (c < 0).astype(np.uint64)
            return np.stack([c.view(np.uint64) + negative * np.uint64(q) for q in primes])
        return np.stack([np.mod(c, np.int64(q)).astype(np.uint64) for q in primes])

    def small_ntt(self, coefficients: SignedPoly, rows: int) -> Poly:
        """A signed integer polynomial in NTT form on the first ``rows`` primes.

        Small coefficients (noise, key shares: at least -:data:`SMALL_SHIFT`) are shifted to
        non-negative values below every prime, so that one list serves every row, and the
        shift's transform taken off afterwards (the transform is linear).
        """
        import tenseal.sealapi.util as seal_util

        c = np.asarray(coefficients, dtype=np.int64)
        if not c.size or c.min() < -SMALL_SHIFT or c.max() + SMALL_SHIFT >= min(self.primes):
            return self.ntt(self.from_signed(c, rows))
        shifted = (c + SMALL_SHIFT).tolist()
        out = np.stack(
            [_words(seal_util.ntt_negacyclic_harvey(shifted, self._tables[j])) for j in range(rows)]
        )
        return self.sub(out, _shift_ntt(self)[:rows])

    def from_integers(self, coefficients: NDArray[Any], rows: int) -> Poly:
        """Arbitrary Python integers (an object array) -> residues on the first ``rows`` primes."""
        return np.stack([(coefficients % q).astype(np.uint64) for q in self.primes[:rows]])

    def to_integers(self, a: Poly) -> NDArray[Any]:
        """Coefficient-form residues -> the integers they represent, centered in (-Q/2, Q/2]
        for the Q of their rows (Chinese remaindering); an object array of Python integers."""
        rows = a.shape[0]
        modulus = self.modulus(rows)
        total = np.zeros(a.shape[1], dtype=object)
        for j in range(rows):
            q = self.primes[j]
            cofactor = modulus // q
            basis = cofactor * pow(cofactor, -1, q)
            total = total + a[j].astype(object) * basis
        total = total % modulus
        return np.where(total > modulus // 2, total - modulus, total)


@dataclass(frozen=True, repr=False)
class Multiplier:
    """A fixed operand of many products and its Shoup quotients (:meth:`RnsRing.multiplier`).
    Its ``repr`` shows no values: the operand may be a key share."""

    values: Poly
    quotients: Poly

    def __repr__(self) -> str:
        return f"Multiplier(<{self.values.shape[0]} rows>)"


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _words(values: list[int]) -> Poly:
    """SEAL's list of residues as uint64 (through a C array: 3x faster than ``np.array``)."""
    return np.frombuffer(array.array("Q", values), dtype=np.uint64)


#: Small polynomials are shifted by this before their transform (:meth:`RnsRing.small_ntt`).
SMALL_SHIFT = 64


@functools.cache
def _shift_ntt(ring: RnsRing) -> Poly:
    """The transform of the polynomial with every coefficient :data:`SMALL_SHIFT`."""
    return _read_only(ring.ntt(np.full((ring.key_rows, ring.n), SMALL_SHIFT, dtype=np.uint64)))


_LOW = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)


_SHOUP_32 = 1 << 31


def _contiguous(rows: list[int]) -> bool:
    return rows == list(range(rows[0], rows[-1] + 1))


def _mulhi32(a: Poly, b: Poly) -> Poly:
    """floor(a b / 2^32) for a < 2^31, b < 2^32: the product fits in 63 bits."""
    return (a * b) >> _32


def _mulhi(a: Poly, b: Poly) -> Poly:
    """The high 64 bits of the 128-bit products a b, from four 32 x 32-bit products."""
    a_low, a_high = a & _LOW, a >> _32
    b_low, b_high = b & _LOW, b >> _32
    low_high, high_low = a_low * b_high, a_high * b_low
    middle = ((a_low * b_low) >> _32) + (low_high & _LOW) + (high_low & _LOW)  # < 3 x 2^32
    return a_high * b_high + (low_high >> _32) + (high_low >> _32) + (middle >> _32)


# The long-double quotient below is exact enough only with x87's 80-bit format (64-bit
# mantissa); where long double is IEEE double (ARM64 macOS, Windows) or double-double (POWER),
# the products take the exact Python-integer path instead.
LONG_DOUBLE_MULMOD = bool(np.finfo(np.longdouble).nmant >= 63)


def _mulmod_large(a: Poly, b: Poly, q: int) -> Poly:
    """a b mod q for residues below q < 2^62, exactly (:data:`LONG_DOUBLE_MULMOD` picks the
    path)."""
    if LONG_DOUBLE_MULMOD:
        return _mulmod_long_double(a, b, q)
    return _mulmod_python(a, b, q)


def _mulmod_long_double(a: Poly, b: Poly, q: int) -> Poly:
    """The quotient estimated in long double (64-bit mantissa: off by at most one), the
    remainder in wrapping uint64 then corrected. 4x faster than :func:`_mulmod_python`."""
    modulus = np.uint64(q)
    estimate = np.floor(
        a.astype(np.longdouble) * b.astype(np.longdouble) / np.longdouble(q)
    ).astype(np.uint64)
    remainder = (a * b - estimate * modulus).view(np.int64)  # exact: in (-q, 2q)
    remainder = np.where(remainder < 0, remainder + np.int64(q), remainder)
    remainder = np.where(remainder >= np.int64(q), remainder - np.int64(q), remainder)
    return remainder.astype(np.uint64)


def _mulmod_python(a: Poly, b: Poly, q: int) -> Poly:
    """The same product in Python integers: exact on every platform."""
    return ((a.astype(object) * b.astype(object)) % q).astype(np.uint64)


@functools.cache
def ring_for(params: CkksParameters) -> RnsRing:
    """The ring of ``params``: SEAL's primes for (N, bit sizes), its parms_ids and NTT tables."""
    import tenseal.sealapi as seal
    import tenseal.sealapi.util as seal_util

    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(params.poly_modulus_degree)
    parms.set_coeff_modulus(
        seal.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_mod_bit_sizes))
    )
    context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    if not context.parameters_set():
        raise ValueError(f"SEAL refuses {params.name}: {context.parameters_error_message()}")
    key_data = context.key_context_data()
    moduli = tuple(key_data.parms().coeff_modulus())
    log_n = params.poly_modulus_degree.bit_length() - 1
    parms_ids = {len(moduli): tuple(context.key_parms_id())}
    data = context.first_context_data()
    while data is not None:
        parms_ids[len(data.parms().coeff_modulus())] = tuple(data.parms_id())
        data = data.next_context_data()
    return RnsRing(
        params=params,
        n=params.poly_modulus_degree,
        primes=tuple(int(m.value()) for m in moduli),
        _seal_context=context,
        _moduli=moduli,
        _tables=tuple(seal_util.NTTTables(log_n, m) for m in moduli),
        _parms_ids=parms_ids,
    )
