"""SEAL's serialization layout, read and written: the bridge between the protocols and SEAL.

The SEAL binding in TenSEAL saves and loads objects only through files, and exposes no
polynomial coefficients. The collective protocols therefore read a SEAL object by saving it
and parsing its bytes, and make one by writing bytes SEAL then loads (and validates: SEAL checks
sizes, parms_id and that every coefficient is reduced). The files are ``mkstemp`` files (mode
0600) in ``/dev/shm`` (RAM) where it exists, removed at once; they hold keys, ciphertexts and,
in :func:`decode` and the vector case of :func:`encode`, plaintexts (a decoded value, or a
party's transformed mask share), never a secret key share. The layout is that of the SEAL (streams say 4.3) bundled by
TenSEAL :data:`TENSEAL_VERSION`; ``tests/test_collective_layout.py`` pins both against the
installed library and ``pyproject.toml``.

Layout (little-endian):

- Stream: a 16-byte header ``magic 0xA15E (u16), header size 16 (u8), SEAL major, minor (u8),
  compression (u8: 0 none, 1 zlib, 2 zstd), reserved (u16), total size (u64)``, then the body,
  compressed as the header says. SEAL writes zstd; it reads every mode, and we write none.
- Coefficients (``DynArray<uint64>``): an uncompressed stream whose body is ``count (u64)``
  and ``count`` words.
- Ciphertext body: ``parms_id (4 x u64), is_ntt_form (u8), size, N, rows (3 x u64),
  scale (f64), correction_factor (u64)``, coefficients (size x rows x N). In the seeded form
  (2 polynomials only) the coefficients are the first polynomial's (rows x N), followed by a
  stream whose body is the generator type (u8: 1 Blake2xb, 2 SHAKE-256) and its 64-byte seed;
  SEAL expands the second polynomial from it when it loads the ciphertext.
- Plaintext body (a SecretKey is one): ``parms_id (4 x u64), coeff_count (u64), scale (f64)``,
  coefficients.
- PublicKey body: a Ciphertext body (2 polynomials at the key level, NTT form).
- KSwitchKeys body (RelinKeys): ``parms_id (4 x u64), count (u64)``, then per key-switching key
  ``count (u64)`` PublicKey streams; relinearization keys are one key of L (data primes) keys,
  key j satisfying k0 + k1 s = (P mod q_j) s^2 on row j only, plus noise.
- TenSEAL's context: the protobuf ``TenSEALContextProto {bytes encryption_parameters = 1;
  TenSEALPublicProto public_context = 2; ...; uint32 encryption_type = 4}`` with
  ``TenSEALPublicProto {bytes public_key = 1; uint32 auto_flags = 2; double scale = 3;
  bytes relin_keys = 4; bytes galois_keys = 5}`` (``tenseal/proto/tensealcontext.proto``).
"""

from __future__ import annotations

import functools
import os
import struct
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hefl.codec import Array
from hefl.protocols.collective.ring import Poly, RnsRing
from hefl.protocols.collective.sampling import SEAL_SEED_BYTES as SEED_BYTES

if TYPE_CHECKING:
    import tenseal as ts

TENSEAL_VERSION = "0.3.18"
SEAL_VERSION = (4, 3)
MAGIC = 0xA15E
HEADER = struct.Struct("<HBBBBHQ")
COMPRESSION_NONE, COMPRESSION_ZLIB, COMPRESSION_ZSTD = 0, 1, 2
CIPHERTEXT_META = struct.Struct("<4QB3QdQ")
PLAINTEXT_META = struct.Struct("<4QQd")
PARMS_ID = struct.Struct("<4Q")
COUNT = struct.Struct("<Q")
# The largest body we read is a relinearization key: 2 x (L+1)^2 x N words (11 MB at N=16384).
MAX_BODY_BYTES = 64 << 20
# TenSEAL's defaults for a public-key context: auto relinearize, rescale and modulus switch.
TENSEAL_AUTO_FLAGS = 7
TENSEAL_ASYMMETRIC = 0
# A seeded ciphertext's UniformRandomGeneratorInfo body, ahead of its 64-byte seed: the
# generator type (randomgen.h, prng_type::shake256).
SHAKE256_SEED_INFO = bytes([2])


class LayoutError(ValueError):
    """SEAL wrote something this module does not know: another SEAL version or a seeded or
    compressed form it does not read."""


@functools.cache
def _scratch_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def save_stream(obj: Any) -> bytes:
    """The bytes SEAL's ``obj.save`` writes (header and compressed body)."""
    handle, name = tempfile.mkstemp(prefix="hefl-seal-", dir=_scratch_dir())
    os.close(handle)
    path = Path(name)
    try:
        obj.save(name)
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)


def load_stream(obj: Any, seal_context: Any, data: bytes) -> Any:
    """Load ``obj`` (a fresh SEAL object) from a stream; SEAL validates it against the context.

    Raises:
        LayoutError: SEAL refuses the bytes (wrong layout, parameters or unreduced values).
    """
    handle, name = tempfile.mkstemp(prefix="hefl-seal-", dir=_scratch_dir())
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        obj.load(seal_context, name)
    except (RuntimeError, ValueError) as err:  # SEAL's C++ exceptions, as pybind11 maps them
        raise LayoutError(f"SEAL refuses the {type(obj).__name__}: {err}") from err
    finally:
        path.unlink(missing_ok=True)
    return obj


def body_of(stream: bytes) -> bytes:
    """The uncompressed body of a SEAL stream.

    Raises:
        LayoutError: Not a stream of this SEAL version, or its size or compression is not what it says.
    """
    magic, header_size, major, minor, mode, _, total = HEADER.unpack_from(stream)
    if magic != MAGIC or header_size != HEADER.size or total != len(stream):
        raise LayoutError(f"not a SEAL stream (magic {magic:#x}, sizes {header_size}, {total})")
    if (major, minor) != SEAL_VERSION:
        raise LayoutError(f"SEAL {major}.{minor} stream; this layout is SEAL {SEAL_VERSION}")
    data = stream[HEADER.size :]
    if mode == COMPRESSION_NONE:
        return data
    if mode == COMPRESSION_ZLIB:
        inflater = zlib.decompressobj()
        out = inflater.decompress(data, MAX_BODY_BYTES)
        if inflater.unconsumed_tail:
            raise LayoutError("zlib body larger than the cap")
        return out
    if mode == COMPRESSION_ZSTD:
        import zstandard

        return zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_BODY_BYTES)
    raise LayoutError(f"unknown SEAL compression mode {mode}")


def stream_of(body: bytes) -> bytes:
    """An uncompressed SEAL stream around ``body``."""
    return (
        HEADER.pack(MAGIC, HEADER.size, *SEAL_VERSION, COMPRESSION_NONE, 0, HEADER.size + len(body))
        + body
    )


def _read_coefficients(body: bytes, offset: int) -> tuple[np.ndarray, int]:
    magic, _, _, _, mode, _, total = HEADER.unpack_from(body, offset)
    if magic != MAGIC or mode != COMPRESSION_NONE:
        raise LayoutError("coefficient array is not an uncompressed SEAL stream")
    (count,) = COUNT.unpack_from(body, offset + HEADER.size)
    start = offset + HEADER.size + COUNT.size
    if total != HEADER.size + COUNT.size + 8 * count:
        raise LayoutError(f"coefficient array of {count} words in {total} bytes")
    return np.frombuffer(body, dtype="<u8", count=count, offset=start).astype(
        np.uint64
    ), offset + total


def _write_coefficients(words: np.ndarray) -> bytes:
    flat = np.ascontiguousarray(words, dtype="<u8").ravel()
    return stream_of(COUNT.pack(flat.size) + flat.tobytes())


@dataclass(frozen=True)
class CiphertextPolys:
    """A SEAL ciphertext (or public key) as polynomials.

    Attributes:
        parms_id: SEAL's id of its level.
        scale: Its CKKS scale.
        polys: Shape (size, rows, N), NTT form.
        correction_factor: SEAL's BGV field (1 for CKKS), kept to write the same bytes back.
        seed: The SEAL generator seed (SHAKE-256) the second polynomial expands from, when it
            is a common random polynomial (:mod:`.crs`): :meth:`body` then writes SEAL's seeded
            form, the first polynomial and the seed, and SEAL expands the second where it is
            loaded. Polynomials are kept in full either way; whoever sets a seed sets the
            second polynomial from the same label (checking it here would expand it again).
    """

    parms_id: tuple[int, ...]
    scale: float
    polys: Poly
    correction_factor: int = 1
    seed: bytes | None = None

    def __post_init__(self) -> None:
        if self.seed is not None and (self.polys.shape[0] != 2 or len(self.seed) != SEED_BYTES):
            raise LayoutError(
                f"a seeded ciphertext has 2 polynomials and a {SEED_BYTES}-byte seed, not "
                f"{self.polys.shape[0]} and {len(self.seed)} bytes"
            )

    @property
    def rows(self) -> int:
        return int(self.polys.shape[1])

    def body(self) -> bytes:
        """SEAL's ``Ciphertext::save_members``; in the seeded form when :attr:`seed` is set."""
        size, rows, n = self.polys.shape
        meta = CIPHERTEXT_META.pack(
            *self.parms_id, 1, size, n, rows, self.scale, self.correction_factor
        )
        if self.seed is None:
            return meta + _write_coefficients(self.polys)
        return meta + _write_coefficients(self.polys[0]) + stream_of(SHAKE256_SEED_INFO + self.seed)

    @classmethod
    def parse(cls, body: bytes, offset: int = 0) -> tuple[CiphertextPolys, int]:
        """Raises: LayoutError: not an NTT-form ciphertext with every coefficient present."""
        *parms_id, ntt, size, n, rows, scale, correction = CIPHERTEXT_META.unpack_from(body, offset)
        words, end = _read_coefficients(body, offset + CIPHERTEXT_META.size)
        if not ntt or words.size != size * rows * n:
            raise LayoutError(
                f"ciphertext of {size} x {rows} x {n} coefficients holds {words.size} words "
                f"(ntt form {ntt}; a seeded ciphertext must be loaded and saved again first)"
            )
        polys = words.reshape(size, rows, n)
        return cls(tuple(parms_id), scale, polys, correction), end

    @classmethod
    def of(cls, ciphertext: Any) -> CiphertextPolys:
        """Read a SEAL Ciphertext or PublicKey."""
        polys, _ = cls.parse(body_of(save_stream(ciphertext)))
        return polys

    def to_seal(self, ring: RnsRing) -> Any:
        """A SEAL Ciphertext of these polynomials (SEAL validates them)."""
        import tenseal.sealapi as seal

        return load_stream(seal.Ciphertext(), ring.seal_context, stream_of(self.body()))


def vector_bytes_of(ciphertext: CiphertextPolys, *, size: int) -> bytes:
    """TenSEAL's serialized vector of ``size`` slots around ``ciphertext``, written directly
    (an uncompressed SEAL stream; no SEAL object, file or compression on the way). Whoever
    loads it checks it (:mod:`hefl.validate`)."""
    from hefl import sealio

    sealed = stream_of(ciphertext.body())
    size_field = sealio.varint(size)
    return (
        b"\x0a" + sealio.varint(len(size_field)) + size_field
        + b"\x12" + sealio.varint(len(sealed)) + sealed
        + b"\x19" + struct.pack("<d", ciphertext.scale)
    )  # fmt: skip


def polys_of_vector_bytes(data: bytes) -> CiphertextPolys:
    """The one ciphertext of a serialized TenSEAL vector that :mod:`hefl.validate` checked,
    read from its bytes (no SEAL object, no second compression).

    Raises:
        LayoutError: Not one ciphertext in a layout this module reads.
    """
    from hefl.validate import parse_vector

    vector = parse_vector(data, what="ciphertext")
    if len(vector.ciphertexts) != 1:
        raise LayoutError("a vector of one ciphertext was expected")
    polys, _ = CiphertextPolys.parse(body_of(vector.ciphertexts[0]))
    if polys.polys.shape[0] != 2:
        raise LayoutError(f"a ciphertext of {polys.polys.shape[0]} polynomials; relinearize it")
    return polys


def vector_of(context: ts.Context, ciphertext: CiphertextPolys, *, size: int) -> ts.CKKSVector:
    """A TenSEAL vector of ``size`` slots around ``ciphertext``, loaded (and checked) by SEAL
    under ``context``."""
    import tenseal as ts
    import tenseal.sealapi as seal

    from hefl import sealio

    loaded = load_stream(
        seal.Ciphertext(), context.seal_context().data, stream_of(ciphertext.body())
    )
    return ts.ckks_vector_from(
        context, sealio.vector_bytes(loaded, size=size, scale=ciphertext.scale)
    )


def plaintext_body(parms_id: Sequence[int], scale: float, poly: Poly) -> bytes:
    flat = np.ascontiguousarray(poly, dtype=np.uint64).ravel()
    return PLAINTEXT_META.pack(*parms_id, flat.size, scale) + _write_coefficients(flat)


def parse_plaintext(body: bytes) -> tuple[tuple[int, ...], float, np.ndarray]:
    """(parms_id, scale, coefficients) of a Plaintext or SecretKey body."""
    *parms_id, count, scale = PLAINTEXT_META.unpack_from(body)
    words, end = _read_coefficients(body, PLAINTEXT_META.size)
    if words.size != count or end != len(body):
        raise LayoutError(f"plaintext of {count} coefficients holds {words.size}")
    return tuple(parms_id), scale, words


def public_key_body(ring: RnsRing, polys: Poly) -> bytes:
    """A PublicKey body: (p0, p1) at the key level."""
    return CiphertextPolys(ring.parms_id(ring.key_rows), 1.0, polys).body()


def relin_keys_body(ring: RnsRing, keys: Sequence[Poly]) -> bytes:
    """A RelinKeys body: one key-switching key (for s^2) of one key per data prime."""
    out = [PARMS_ID.pack(*ring.parms_id(ring.key_rows)), COUNT.pack(1), COUNT.pack(len(keys))]
    out.extend(stream_of(public_key_body(ring, key)) for key in keys)
    return b"".join(out)


def parse_relin_keys(body: bytes) -> tuple[tuple[int, ...], list[list[CiphertextPolys]]]:
    """(parms_id, keys[i][j]) of a KSwitchKeys body."""
    parms_id = PARMS_ID.unpack_from(body)
    offset = PARMS_ID.size
    (outer,) = COUNT.unpack_from(body, offset)
    offset += COUNT.size
    keys: list[list[CiphertextPolys]] = []
    for _ in range(outer):
        (inner,) = COUNT.unpack_from(body, offset)
        offset += COUNT.size
        row = []
        for _ in range(inner):
            total = HEADER.unpack_from(body, offset)[-1]
            key, end = CiphertextPolys.parse(body[offset + HEADER.size : offset + total])
            if end != total - HEADER.size:
                raise LayoutError("key-switching key with trailing bytes")
            row.append(key)
            offset += total
        keys.append(row)
    if offset != len(body):
        raise LayoutError("key-switching keys with trailing bytes")
    return tuple(parms_id), keys


def decode(ring: RnsRing, parms_id: Sequence[int], scale: float, poly: Poly) -> Array:
    """CKKS-decode an NTT-form plaintext polynomial with SEAL's encoder: every slot's real part."""
    import tenseal.sealapi as seal

    plain = load_stream(
        seal.Plaintext(), ring.seal_context, stream_of(plaintext_body(parms_id, scale, poly))
    )
    return np.asarray(seal.CKKSEncoder(ring.seal_context).decode_double(plain), dtype=np.float64)


def encode(ring: RnsRing, values: Sequence[float] | float, *, rows: int, scale: float) -> Poly:
    """CKKS-encode at the level with ``rows`` primes: the NTT-form polynomial, shape (rows, N).

    A scalar fills every slot: like SEAL's encoder, it becomes the constant polynomial
    round(value x scale), whose NTT form is that constant everywhere (no transform, no file).
    A vector goes through SEAL's encoder.
    """
    import tenseal.sealapi as seal

    if isinstance(values, float | int):
        constant = int(round(float(values) * scale))
        column = np.array([constant % q for q in ring.primes[:rows]], dtype=np.uint64)
        return np.repeat(column[:, None], ring.n, axis=1)
    plain = seal.Plaintext()
    encoder = seal.CKKSEncoder(ring.seal_context)
    encoder.encode([float(v) for v in values], list(ring.parms_id(rows)), scale, plain)
    _, _, words = parse_plaintext(body_of(save_stream(plain)))
    return words.reshape(rows, ring.n)


# -- TenSEAL's context protobuf ----------------------------------------------------------------


@functools.cache
def _tenseal_context_message() -> Any:
    """TenSEAL's TenSEALContextProto, declared here field for field (its .proto is not shipped
    as Python); tests check it reads and writes TenSEAL's own bytes unchanged."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(
        name="hefl_tenseal_context_mirror.proto", package="hefl_tenseal_mirror", syntax="proto3"
    )
    t = descriptor_pb2.FieldDescriptorProto
    public = fdp.message_type.add(name="TenSEALPublicProto")
    for number, (name, kind) in enumerate(
        [
            ("public_key", t.TYPE_BYTES),
            ("auto_flags", t.TYPE_UINT32),
            ("scale", t.TYPE_DOUBLE),
            ("relin_keys", t.TYPE_BYTES),
            ("galois_keys", t.TYPE_BYTES),
        ],
        start=1,
    ):
        public.field.add(name=name, number=number, type=kind, label=t.LABEL_OPTIONAL)
    private = fdp.message_type.add(name="TenSEALPrivateProto")
    for number, (name, kind) in enumerate(
        [
            ("secret_key", t.TYPE_BYTES),
            ("relin_keys_generated", t.TYPE_BOOL),
            ("galois_keys_generated", t.TYPE_BOOL),
        ],
        start=1,
    ):
        private.field.add(name=name, number=number, type=kind, label=t.LABEL_OPTIONAL)
    context = fdp.message_type.add(name="TenSEALContextProto")
    context.field.add(
        name="encryption_parameters", number=1, type=t.TYPE_BYTES, label=t.LABEL_OPTIONAL
    )
    context.field.add(
        name="public_context",
        number=2,
        type=t.TYPE_MESSAGE,
        type_name=".hefl_tenseal_mirror.TenSEALPublicProto",
        label=t.LABEL_OPTIONAL,
    )
    context.field.add(
        name="private_context",
        number=3,
        type=t.TYPE_MESSAGE,
        type_name=".hefl_tenseal_mirror.TenSEALPrivateProto",
        label=t.LABEL_OPTIONAL,
    )
    context.field.add(name="encryption_type", number=4, type=t.TYPE_UINT32, label=t.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("hefl_tenseal_mirror.TenSEALContextProto")
    )


def tenseal_context_message() -> Any:
    """A new, empty TenSEALContextProto message."""
    return _tenseal_context_message()()


def public_context_bytes(
    ring: RnsRing, *, public_key: Poly, relin_keys: Sequence[Poly] | None, scale: float
) -> bytes:
    """A serialized public TenSEAL context whose keys are the given (collective) ones.

    It is built from the parameters alone: no secret key is generated for it anywhere.
    """
    import tenseal.sealapi as seal

    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(ring.n)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(ring.n, list(ring.params.coeff_mod_bit_sizes)))
    message = tenseal_context_message()
    message.encryption_parameters = save_stream(parms)
    message.encryption_type = TENSEAL_ASYMMETRIC
    public = message.public_context
    public.public_key = stream_of(public_key_body(ring, public_key))
    public.auto_flags = TENSEAL_AUTO_FLAGS
    public.scale = scale
    if relin_keys is not None:
        public.relin_keys = stream_of(relin_keys_body(ring, relin_keys))
    return bytes(message.SerializeToString())


def public_context(
    ring: RnsRing, *, public_key: Poly, relin_keys: Sequence[Poly] | None, scale: float
) -> ts.Context:
    """:func:`public_context_bytes`, loaded by TenSEAL (which has SEAL validate every key)."""
    import tenseal as ts

    return ts.context_from(
        public_context_bytes(ring, public_key=public_key, relin_keys=relin_keys, scale=scale)
    )
