"""Framing both roles use: gRPC message limits and chunking of payloads larger than one message."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from hefl.errors import InvalidArgument
from hefl.v1 import hefl_pb2 as pb

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
