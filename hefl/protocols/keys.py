"""What the protocols ask of the secret key, as interfaces.

Secret keys exist only in :mod:`parties`: the key holder's :class:`parties.keyholder.SecretKey`
implements these, and the protocol types in this package take them as arguments. Nothing here
can decrypt on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from hefl.validate import ANY, Expected

Array = NDArray[np.float64]


class Decryptor(Protocol):
    """Decrypts a serialized CKKS vector of the job's context."""

    def decrypt(self, ciphertext: bytes, *, what: str, expected: Expected = ANY) -> Array:
        """Every slot in use of ``ciphertext`` (``what`` names it in errors).

        Raises:
            InvalidArgument: ``ciphertext`` is not a CKKS vector of the job's parameters, or
                not as ``expected`` (by default: any level, the context's scale).
        """
        ...


class KeyHolderKeys(Decryptor, Protocol):
    """Decryption and fresh encryption of the weights, with the secret key."""

    def encrypt_replicated(self, values: Sequence[float]) -> list[bytes]:
        """One fresh top-level ciphertext per value, the value in every slot."""
        ...
