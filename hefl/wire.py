"""Wire helpers both roles use: message limits, chunking, ciphertext (de)serialization."""

from __future__ import annotations

import functools
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from hefl.algorithm import Hyperparameters
from hefl.errors import InvalidArgument
from hefl.v1 import hefl_pb2 as pb

if TYPE_CHECKING:
    import tenseal as ts

# gRPC's default receive limit; the server enforces it explicitly, every sender stays well below.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024
# An upload chunk carries whole ciphertexts up to about this many bytes.
UPLOAD_CHUNK_BYTES = 2 * 1024 * 1024

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def split_bytes(data: bytes, size: int = CHUNK_BYTES) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def task_chunks(*, job_id: str, party: str, task_id: int, payload: bytes) -> Iterator[pb.TaskChunk]:
    pieces = split_bytes(payload)
    for index, piece in enumerate(pieces):
        yield pb.TaskChunk(
            job_id=job_id, party=party, task_id=task_id, index=index, count=len(pieces), data=piece
        )


def join_task_chunks(chunks: Iterable[pb.TaskChunk]) -> tuple[pb.TaskChunk, bytes]:
    """Reassemble one chunked payload; returns (first chunk's header, payload).

    Raises:
        InvalidArgument: Chunks are missing, out of order or mix tasks.
    """
    header: pb.TaskChunk | None = None
    parts: list[bytes] = []
    for chunk in chunks:
        if header is None:
            header = chunk
        if chunk.task_id != header.task_id or chunk.count != header.count:
            raise InvalidArgument(
                f"task {header.task_id}: chunk {chunk.index} belongs to task {chunk.task_id}"
            )
        if chunk.index != len(parts):
            raise InvalidArgument(
                f"task {header.task_id}: chunk {chunk.index} out of order, expected {len(parts)}"
            )
        parts.append(chunk.data)
        if len(parts) == chunk.count:
            break
    if header is None or len(parts) != header.count:
        got = len(parts)
        raise InvalidArgument(
            f"incomplete task payload: {got} of {header.count if header else '?'}"
        )
    return header, b"".join(parts)


def serialize(vector: ts.CKKSVector) -> bytes:
    return bytes(vector.serialize())


def deserialize(context: ts.Context, data: bytes, *, what: str) -> ts.CKKSVector:
    """Load a CKKS vector under ``context``.

    Raises:
        InvalidArgument: ``data`` is not a ciphertext of this context's parameters; the message
            names ``what`` it was supposed to be.
    """
    import tenseal as ts

    try:
        return ts.ckks_vector_from(context, data)
    except Exception as err:  # TenSEAL raises bare ValueError/RuntimeError from C++
        raise InvalidArgument(
            f"{what} is not a CKKS ciphertext under the job's parameters ({err})"
        ) from err


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


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def add_vectors(context: ts.Context, serialized: Iterable[bytes], *, what: str) -> ts.CKKSVector:
    """The sum of serialized vectors (at least one)."""
    total = None
    for data in serialized:
        vector = deserialize(context, data, what=what)
        if total is None:
            total = vector
        else:
            total += vector
    if total is None:
        raise ValueError(f"no {what} to add up")
    return total


def add_up(
    context: ts.Context, per_source: Sequence[Sequence[bytes]], *, what: str
) -> list[ts.CKKSVector]:
    """Element-wise sum of equally long lists of serialized vectors (one list per source)."""
    return [add_vectors(context, column, what=what) for column in zip(*per_source, strict=True)]


def encrypt_replicated(context: ts.Context, values: Sequence[float], slots: int) -> list[bytes]:
    """One ciphertext per value, the value in every slot (the weights' layout)."""
    import tenseal as ts

    return [serialize(ts.ckks_vector(context, np.full(slots, v))) for v in values]


def hyperparameters_of(options: pb.TrainingOptions) -> Hyperparameters:
    """The optimizer settings carried by resolved (non-zero) training options."""
    return Hyperparameters(
        iterations=options.iterations,
        learning_rate=options.learning_rate,
        l2=options.l2,
        sigmoid_interval=options.sigmoid_interval,
    )


def training_options(hyper: Hyperparameters, *, reveal_intermediate: bool) -> pb.TrainingOptions:
    return pb.TrainingOptions(
        iterations=hyper.iterations,
        learning_rate=hyper.learning_rate,
        l2=hyper.l2,
        sigmoid_interval=hyper.sigmoid_interval,
        reveal_intermediate=reveal_intermediate,
    )
