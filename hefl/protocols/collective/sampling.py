"""Every random polynomial of the collective protocols, from a CSPRNG or from an XOF.

Secrets (key shares, ephemeral keys), noise and masks come from ``random_bytes``, which is
``os.urandom`` (the kernel's CSPRNG) everywhere but in tests; nothing here uses numpy's
generators. Common random polynomials, which every party must derive identically, come from
SHAKE-256: SEAL's own SHAKE-256 generator and uniform sampler (:func:`seal_uniform`), seeded
from the agreed seed and a label (:mod:`hefl.protocols.collective.crs`).

Distributions, as SEAL uses them for CKKS:

- secret key shares and ephemeral keys: uniform ternary {-1, 0, 1} (variance 2/3);
- fresh noise: centered binomial of 21 + 21 bits, standard deviation sqrt(21/2) = 3.24
  (:data:`CBD_STD`, SEAL's ``sample_poly_cbd``);
- smudging noise: a rounded continuous Gaussian of a chosen standard deviation (the
  HomomorphicEncryption.org standard allows rounded Gaussians), drawn by Box-Muller from two
  53-bit uniforms, so its tails are cut at 8.6 standard deviations;
- masks: exactly uniform integers in [-2^b, 2^b).

Sampling here is not constant-time: it runs in the party's own process on data it alone
sees, and its timing depends only on the random bytes, not on other secrets.
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np

from hefl.protocols.collective.ring import Poly, SignedPoly
from hefl.protocols.masks import RandomBytes

CBD_BITS = 21
CBD_STD = math.sqrt(CBD_BITS / 2)
TERNARY_VARIANCE = 2 / 3
_WORD = 8


def _words(count: int, random_bytes: RandomBytes) -> np.ndarray:
    return np.frombuffer(random_bytes(_WORD * count), dtype="<u8").copy()


def ternary(n: int, *, random_bytes: RandomBytes = os.urandom) -> SignedPoly:
    """n coefficients uniform in {-1, 0, 1}: bytes below 255 taken modulo 3, others rejected."""
    out = np.empty(0, dtype=np.int64)
    while out.size < n:
        raw = np.frombuffer(random_bytes(n + n // 8 + 64), dtype=np.uint8)
        kept = raw[raw < 255].astype(np.int64) % 3 - 1
        out = np.concatenate([out, kept])
    return out[:n]


def centered_binomial(n: int, *, random_bytes: RandomBytes = os.urandom) -> SignedPoly:
    """n coefficients: popcount of 21 random bits minus popcount of 21 others (std 3.24)."""
    words = _words(n, random_bytes)
    low = np.uint64((1 << CBD_BITS) - 1)
    return _popcount(words & low) - _popcount((words >> np.uint64(CBD_BITS)) & low)


def _popcount(words: np.ndarray) -> SignedPoly:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(words).astype(np.int64)
    bits = np.unpackbits(words.astype("<u8").view(np.uint8)).reshape(words.size, 64)
    return bits.sum(axis=1, dtype=np.int64)


def rounded_gaussian(n: int, std: float, *, random_bytes: RandomBytes = os.urandom) -> SignedPoly:
    """n coefficients of a Gaussian of standard deviation ``std``, rounded to integers.

    Raises:
        ValueError: ``std`` is negative or so large that the samples would not fit in 2^62.
    """
    if not 0 <= std <= 2.0**52:
        raise ValueError(f"smudging standard deviation {std} out of range [0, 2^52]")
    if std == 0:
        return np.zeros(n, dtype=np.int64)
    words = _words(2 * n, random_bytes) >> np.uint64(11)  # 53-bit integers
    scale = 2.0**-53
    u1 = (words[:n].astype(np.float64) + 1.0) * scale  # (0, 1]: the logarithm is finite
    u2 = words[n:].astype(np.float64) * scale
    normal = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return np.rint(normal * std).astype(np.int64)


def uniform_mask(n: int, bits: int, *, random_bytes: RandomBytes = os.urandom) -> SignedPoly:
    """n integers exactly uniform in [-2^bits, 2^bits).

    Raises:
        ValueError: ``bits`` is outside [0, 62].
    """
    if not 0 <= bits <= 62:
        raise ValueError(f"mask width 2^{bits} outside [2^0, 2^62]")
    words = _words(n, random_bytes) >> np.uint64(64 - (bits + 1))
    return words.astype(np.int64) - np.int64(1 << bits)


#: SEAL's seed of a uniform generator (``prng_seed_type``: 8 words).
SEAL_SEED_BYTES = 64
#: SEAL's ``UniformRandomGenerator`` refills its buffer this many bytes at a time.
_SEAL_PRNG_BLOCK = 4096
_MAX_WORD = (1 << 64) - 1


class SealShake256Stream:
    """The bytes SEAL's ``Shake256PRNG`` seeded with ``seed`` generates: block c (c = 0, 1, ...)
    is SHAKE-256(seed || c as a little-endian word), 4096 bytes (randomgen.cpp,
    ``Shake256PRNG::refill_buffer``)."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEAL_SEED_BYTES:
            raise ValueError(f"a SEAL generator seed has {SEAL_SEED_BYTES} bytes")
        self._seed = seed
        self._blocks = 0
        self._pending = b""

    def read(self, count: int) -> bytes:
        blocks = -(-(count - len(self._pending)) // _SEAL_PRNG_BLOCK)
        data = self._pending + b"".join(
            hashlib.shake_256(self._seed + (self._blocks + b).to_bytes(8, "little")).digest(
                _SEAL_PRNG_BLOCK
            )
            for b in range(max(blocks, 0))
        )
        self._blocks += max(blocks, 0)
        self._pending = data[count:]
        return data[:count]


def seal_uniform(seed: bytes, primes: tuple[int, ...], n: int) -> Poly:
    """The polynomial SEAL expands from ``seed`` with its SHAKE-256 generator: SEAL's
    ``sample_poly_uniform`` (util/rlwe.cpp), so a ciphertext SEAL stores in its seeded form with
    this seed (``prng_type::shake256``) has this polynomial as its second half, and whoever
    loads it (a Ray worker) expands it in SEAL's C++ code; ``tests/test_collective_layout.py``
    pins the two against each other.

    SEAL reads ``rows x N`` little-endian words from the stream, then walks them row by row:
    a word at or above ``2^64 - 1 - ((2^64 - 1) mod q) - 1`` is replaced by the stream's next
    words until one is below, and every word is reduced mod q. Near uniform (the rejection
    leaves a statistical distance of about 2^-64 per coefficient). A word is rejected with
    probability up to 2^-26 (n8192-depth4's special prime) and 2^-25 (n16384-depth4's data
    primes), so a long job does take the sequential path now and then; the layout test pins a
    rejection of each set against SEAL. Read as NTT form: a uniform polynomial is uniform in
    either form.
    """
    stream = SealShake256Stream(seed)
    words = np.frombuffer(stream.read(_WORD * len(primes) * n), dtype="<u8").reshape(len(primes), n)
    rows = []
    for row, q in zip(words, primes, strict=True):
        bound = _MAX_WORD - _MAX_WORD % q - 1
        row = row.astype(np.uint64)  # a writable copy
        for index in np.flatnonzero(row >= np.uint64(bound)):
            value = bound
            while value >= bound:
                value = int.from_bytes(stream.read(_WORD), "little")
            row[index] = value
        rows.append(row % np.uint64(q))
    return np.stack(rows)
