"""Uniform masks from the operating system's cryptographic generator.

A mask hides a value statistically: the party that sees ``value + mask`` learns little about
the value only if it cannot predict the mask. numpy's generators (PCG64, Mersenne Twister) are
predictable from a few of their outputs, so masks come from ``os.urandom`` (the kernel's
CSPRNG) and are mapped to floats here, vectorized over the random bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]

#: Source of random bytes: ``os.urandom`` in every role; tests may pass a seeded one.
RandomBytes = Callable[[int], bytes]

_MANTISSA_BITS = 53


def uniform_masks(
    bits: int, shape: int | tuple[int, ...], *, random_bytes: RandomBytes = os.urandom
) -> Array:
    """Floats uniform in [-2^bits, 2^bits).

    Each value is a 53-bit integer ``u`` (8 random bytes, the low 11 bits dropped) mapped to
    ``(u / 2^52 - 1) * 2^bits``: every step is exact in float64, so the masks are uniform on a
    grid of 2^53 equally spaced points, as fine as a double allows over that range.

    Args:
        bits: log2 of the half-width (:attr:`hefl.params.CkksParameters.mask_bits`).
        shape: Shape of the returned array.
        random_bytes: Where the bytes come from; never a seeded source outside tests.
    """
    count = int(np.prod(shape))
    raw = np.frombuffer(random_bytes(8 * count), dtype="<u8")
    integers = raw >> np.uint64(64 - _MANTISSA_BITS)
    unit = integers.astype(np.float64) * 2.0 ** (1 - _MANTISSA_BITS) - 1.0
    return (unit * 2.0**bits).reshape(shape)
