"""Every random polynomial of the collective protocols, from a CSPRNG or from an XOF.

Secrets (key shares, ephemeral keys), noise and masks come from ``random_bytes``, which is
``os.urandom`` (the kernel's CSPRNG) everywhere but in tests; nothing here uses numpy's
generators. Common random polynomials, which every party must derive identically, come from
SHAKE-256 (:func:`xof_uniform`) keyed by the agreed seed and a label
(:mod:`hefl.protocols.collective.crs`).

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


def xof_uniform(key: bytes, primes: tuple[int, ...], n: int) -> Poly:
    """A polynomial uniform modulo every prime, expanded from ``key`` with SHAKE-256.

    Row j reads 64-bit little-endian words from SHAKE-256(key || j), keeps the low
    bit_length(q_j) bits, and accepts the word if it is below q_j (rejection sampling: exactly
    uniform). SHAKE's output for a longer length extends the shorter one, so asking for more
    bytes when rejections leave a row short changes nothing already accepted. Read as SEAL's NTT
    form: a uniform polynomial is uniform in either form.
    """
    rows = []
    for j, q in enumerate(primes):
        xof = hashlib.shake_256(key + j.to_bytes(2, "little"))
        mask = np.uint64((1 << q.bit_length()) - 1)
        length = n + n // 4 + 64
        while True:
            words = np.frombuffer(xof.digest(_WORD * length), dtype="<u8") & mask
            accepted = words[words < np.uint64(q)]
            if accepted.size >= n:
                rows.append(accepted[:n].astype(np.uint64))
                break
            length *= 2
    return np.stack(rows)
