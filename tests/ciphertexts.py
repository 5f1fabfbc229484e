"""Ciphertexts as an attacker writes them: TenSEAL's vector message, SEAL's ciphertext and zstd
frames built by hand (raw and RLE blocks need no compressor), from real ciphertexts or zeros.

Layouts: tenseal/proto/tensors.proto (``CKKSVectorProto``), SEAL's serialization.h
(``SEALHeader``) and ``Ciphertext::save_members``, RFC 8878 (zstd frames); see
:mod:`hefl.validate`.
"""

from __future__ import annotations

import random
import struct

import tenseal as ts

from hefl.validate import (
    COMPRESSION_NONE,
    COMPRESSION_ZSTD,
    SEAL_HEADER,
    SEAL_MAGIC,
    ZSTD_MAGIC,
    ZSTD_MAX_BLOCK,
    parse_vector,
)


def _seal_version() -> tuple[int, int]:
    """The SEAL version TenSEAL writes (SEAL refuses another minor version's ciphertexts)."""
    from hefl.params import DEFAULT_PARAMETER_SET, PARAMETER_SETS

    context = PARAMETER_SETS[DEFAULT_PARAMETER_SET].make_context()
    (ciphertext,) = parse_vector(ts.ckks_vector(context, [0.0]).serialize(), what="x").ciphertexts
    _, _, major, minor, _, _, _ = SEAL_HEADER.unpack_from(ciphertext)
    return major, minor


SEAL_VERSION = _seal_version()


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def vector_proto(
    *, sizes: list[int], ciphertexts: list[bytes], scale: float | None, packed: bool = True
) -> bytes:
    """TenSEAL's ``CKKSVectorProto`` with whatever fields it is given."""
    out = bytearray()
    if packed and sizes:
        body = b"".join(varint(s) for s in sizes)
        out += b"\x0a" + varint(len(body)) + body
    elif sizes:
        for size in sizes:
            out += b"\x08" + varint(size)
    for ciphertext in ciphertexts:
        out += b"\x12" + varint(len(ciphertext)) + ciphertext
    if scale is not None:
        out += b"\x19" + struct.pack("<d", scale)
    return bytes(out)


def seal_header(compression: int, size: int) -> bytes:
    return SEAL_HEADER.pack(SEAL_MAGIC, SEAL_HEADER.size, *SEAL_VERSION, compression, 0, size)


def ciphertext_members(
    *,
    parms_id: list[int],
    polynomials: int,
    degree: int,
    primes: int,
    scale: float,
    words: bytes | None = None,
) -> bytes:
    """``Ciphertext::save_members`` uncompressed: ``words`` (little-endian uint64) or zeros."""
    count = polynomials * degree * primes
    data = words if words is not None else bytes(8 * count)
    dynarray = seal_header(COMPRESSION_NONE, SEAL_HEADER.size + 8 + len(data))
    return (
        struct.pack("<4Q", *parms_id)
        + b"\x01"
        + struct.pack("<QQQdQ", polynomials, degree, primes, scale, 1)
        + dynarray
        + struct.pack("<Q", len(data) // 8)
        + data
    )


def zstd_frame(content: bytes, *, declared: int | None = None) -> bytes:
    """A single-segment zstd frame of ``content``: RLE blocks for runs of one byte, raw blocks
    elsewhere; it declares ``declared`` as its content size (default: the true size)."""
    size = len(content) if declared is None else declared
    blocks: list[tuple[int, bytes]] = []  # (block type, the block's payload)
    at = 0
    while at < len(content):
        run = at
        while run < len(content) and run - at < ZSTD_MAX_BLOCK and content[run] == content[at]:
            run += 1
        if run - at >= 16:
            blocks.append((1, content[at : at + 1] * (run - at)))
            at = run
            continue
        end = at + 1
        while (
            end < len(content)
            and end - at < ZSTD_MAX_BLOCK
            and content[end : end + 16] != (content[end : end + 1] * 16)
        ):
            end += 1
        blocks.append((0, content[at:end]))
        at = end
    out = bytearray(ZSTD_MAGIC + bytes([0xE0]) + struct.pack("<Q", size))
    for n, (kind, piece) in enumerate(blocks):
        header = int(n == len(blocks) - 1) | kind << 1 | len(piece) << 3
        out += header.to_bytes(3, "little") + (piece[:1] if kind == 1 else piece)
    return bytes(out)


def sealed(members: bytes, *, compression: int = COMPRESSION_ZSTD) -> bytes:
    """SEAL's serialization of ``members``: uncompressed or in a zstd frame."""
    payload = zstd_frame(members) if compression == COMPRESSION_ZSTD else members
    return seal_header(compression, SEAL_HEADER.size + len(payload)) + payload


def levels(context: ts.Context) -> dict[int, list[int]]:
    """parms_id of every data level, by its number of primes."""
    out = {}
    level = context.seal_context().data.first_context_data()
    while level is not None:
        out[level.chain_index() + 1] = list(level.parms_id())
        level = level.next_context_data()
    return out


def zero_vector(
    context: ts.Context,
    *,
    polynomials: int = 2,
    primes: int | None = None,
    values: int = 4096,
    compression: int = COMPRESSION_ZSTD,
) -> bytes:
    """A vector holding one ciphertext of ``polynomials`` zero polynomials (the issue's
    chunk held 40 of 16 polynomials each in 10.6 KB)."""
    chain = levels(context)
    primes = primes or max(chain)
    degree = context.seal_context().data.key_context_data().parms().poly_modulus_degree()
    members = ciphertext_members(
        parms_id=chain[primes],
        polynomials=polynomials,
        degree=degree,
        primes=primes,
        scale=context.global_scale,
    )
    return vector_proto(
        sizes=[values],
        ciphertexts=[sealed(members, compression=compression)],
        scale=context.global_scale,
    )


def uncompressed_vector(context: ts.Context, data: bytes) -> bytes:
    """The same vector with its ciphertext in SEAL's uncompressed form."""
    vector = ts.ckks_vector_from(context, data)
    (ciphertext,) = vector.ciphertext()
    count = ciphertext.size() * ciphertext.poly_modulus_degree() * ciphertext.coeff_modulus_size()
    words = struct.pack(f"<{count}Q", *(ciphertext[i] for i in range(count)))
    members = ciphertext_members(
        parms_id=list(ciphertext.parms_id()),
        polynomials=ciphertext.size(),
        degree=ciphertext.poly_modulus_degree(),
        primes=ciphertext.coeff_modulus_size(),
        scale=ciphertext.scale,
        words=words,
    )
    parsed = parse_vector(data, what="test vector")
    return vector_proto(
        sizes=list(parsed.sizes),
        ciphertexts=[sealed(members, compression=COMPRESSION_NONE)],
        scale=parsed.scales[0],
    )


def mutate(data: bytes, rng: random.Random, *, head: int = 160) -> bytes:
    """1 to 4 bit flips, overwrites, insertions or deletions, half of them in the first
    ``head`` bytes (message tags, SEAL and zstd headers); never ``data`` itself."""
    while True:
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            if not mutated:
                mutated.append(rng.randrange(256))
                continue
            at = rng.randrange(min(head, len(mutated)) if rng.random() < 0.5 else len(mutated))
            kind = rng.choice(["flip", "set", "insert", "delete"])
            if kind == "flip":
                mutated[at] ^= 1 << rng.randrange(8)
            elif kind == "set":
                mutated[at] = rng.randrange(256)
            elif kind == "insert":
                mutated[at:at] = bytes([rng.randrange(256)])
            else:
                del mutated[at]
        if bytes(mutated) != data:
            return bytes(mutated)
