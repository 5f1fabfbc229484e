"""Ciphertexts on the wire: TenSEAL's serialized CKKS vectors, read and written by every role."""

from __future__ import annotations

import functools
import os
import struct
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from hefl.validate import ANY, CiphertextRules, Expected

if TYPE_CHECKING:
    import tenseal as ts


def serialize(vector: ts.CKKSVector) -> bytes:
    return bytes(vector.serialize())


def deserialize(
    context: ts.Context, data: bytes, *, what: str, expected: Expected = ANY
) -> ts.CKKSVector:
    """Load a CKKS vector under ``context``, through :mod:`hefl.validate`'s checks.

    Args:
        expected: What the vector must be; by default one 2-polynomial ciphertext of this
            context at any level, 1 to ``slots`` values (callers that know say more).

    Raises:
        InvalidArgument: ``data`` is not such a ciphertext; the message names ``what`` it was
            supposed to be.
    """
    return CiphertextRules(context).load(data, expected, what=what)


class SealSaveable(Protocol):
    """A SEAL ciphertext, or the seeded form SEAL's symmetric encryption returns."""

    def save(self, path: str) -> None: ...


def vector_bytes(ciphertext: SealSaveable, *, size: int, scale: float) -> bytes:
    """A SEAL ciphertext in TenSEAL's serialized CKKSVector format (:func:`deserialize` loads it).

    That format is the protobuf message ``CKKSVectorProto {uint32 size = 1 (sent packed);
    bytes ciphertext = 2; double scale = 3}`` around SEAL's own (compressed) serialization, which
    the SEAL binding only writes to a file. ``size`` is the number of slots in use.
    """
    handle, name = tempfile.mkstemp(prefix="hefl-ct-", dir=_scratch_dir())
    os.close(handle)
    path = Path(name)
    try:
        ciphertext.save(name)
        sealed = path.read_bytes()
    finally:
        path.unlink(missing_ok=True)
    size_field = _varint(size)
    return (
        b"\x0a" + _varint(len(size_field)) + size_field
        + b"\x12" + _varint(len(sealed)) + sealed
        + b"\x19" + struct.pack("<d", scale)
    )  # fmt: skip


@functools.cache
def _scratch_dir() -> str | None:
    """RAM-backed when the system has it."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def varint(value: int) -> bytes:
    """Protobuf's base-128 varint."""
    return _varint(value)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def add_vectors(
    context: ts.Context, serialized: Iterable[bytes], *, what: str, expected: Expected = ANY
) -> ts.CKKSVector:
    """The sum of serialized vectors (at least one), each checked as it is loaded."""
    rules = CiphertextRules(context)
    total = None
    for data in serialized:
        vector = rules.load(data, expected, what=what)
        if total is None:
            total = vector
        else:
            total += vector
    if total is None:
        raise ValueError(f"no {what} to add up")
    return total


def add_up(
    context: ts.Context,
    per_source: Sequence[Sequence[bytes]],
    *,
    what: str,
    expected: Expected = ANY,
) -> list[ts.CKKSVector]:
    """Element-wise sum of equally long lists of serialized vectors (one list per source)."""
    return [
        add_vectors(context, column, what=what, expected=expected)
        for column in zip(*per_source, strict=True)
    ]


def encrypt_replicated(context: ts.Context, values: Sequence[float], slots: int) -> list[bytes]:
    """One ciphertext per value, the value in every slot (the weights' layout)."""
    import tenseal as ts

    return [serialize(ts.ckks_vector(context, np.full(slots, v))) for v in values]
