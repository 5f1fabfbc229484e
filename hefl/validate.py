"""The one gate every ciphertext passes where it enters a process (coordinator, Ray worker, key
holder): parse, check, load one ciphertext at a time, check again.

SEAL and TenSEAL check only that what they deserialize is self-consistent, not that it is what the
application expects: a vector may carry any number of ciphertexts of up to 16 polynomials, its
``sizes`` may exceed the slots (``decrypt()`` then reads past them), and SEAL inflates compressed
data before it looks at it (a few KB can ask for gigabytes). So before TenSEAL sees a byte,
:class:`CiphertextRules` parses the wire format itself:

1. TenSEAL's ``CKKSVectorProto`` (tenseal/proto/tensors.proto): ``repeated uint32 sizes = 1;
   repeated bytes ciphertexts = 2; double scale = 3``. Exactly one ciphertext, one ``sizes``
   entry equal to the values the caller expects, the expected scale (the context's, or the
   kernel's exact one for margins and gradients), no other field, nothing
   repeated, nothing trailing; the whole message within a byte cap derived from the parameters.
2. SEAL's serialization header (native/src/seal/serialization.h, ``SEALHeader``): magic 0xA15E,
   16 bytes, SEAL 4, no compression or zstd, its size field the ciphertext's length.
3. What SEAL will inflate: the uncompressed payload is ``Ciphertext::save_members``
   (ciphertext.cpp): parms_id, NTT flag, size, N, number of primes, scale, correction factor,
   then the coefficients (``2 * N * primes`` words, or half of them and the random generator's
   seed in the seeded form SEAL's symmetric encryption writes). Its length is therefore known for
   a 2-polynomial ciphertext at each level. For zstd (RFC 8878) the frame must declare that length
   as its content size, and its blocks, walked without decompressing, must bound what they can
   produce (raw and RLE blocks exactly, compressed blocks at the format's 128 KiB maximum) to
   at most twice that; a single frame that ends where the data ends.
   The payload nests SEAL streams of its own (the coefficient array, a seeded ciphertext's
   generator seed), which the gate does not parse: the SEAL that TenSEAL 0.3.18 bundles
   inflates a nested compressed stream on demand, only as far as it reads, which is the words a
   ciphertext of the checked shape has (a nested frame declaring gigabytes more loads in a few
   MB: ``tests/test_validate.py``), and callers keep the re-serialized form.

Only then TenSEAL loads it (SEAL checks every coefficient against its prime), and the loaded
ciphertext must have 2 polynomials, the expected level's parms_id and number of primes, N, NTT
form, the expected scale, and must not be transparent (a zero second polynomial encrypts
nothing). Every failure is an :class:`~hefl.errors.InvalidArgument` naming ``what`` the
ciphertext was supposed to be (the caller says job, party, block, column).

Callers load and check one ciphertext, then the next, so the memory in flight is one ciphertext
at a time whatever a request carries; what they keep or store is the re-serialized ciphertext
(:meth:`CiphertextRules.canonical`), never the bytes they received.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hefl.errors import InvalidArgument

if TYPE_CHECKING:
    import tenseal as ts

    from hefl.models.base import KernelForm

SEAL_MAGIC = 0xA15E
SEAL_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, major, minor, compression, 0, size
SEAL_MAJOR_VERSION = 4
COMPRESSION_NONE = 0
COMPRESSION_ZSTD = 2
# Ciphertext::save_members: parms_id (4 words), NTT flag (1 byte), size, N, primes (a word each),
# scale (a double), correction factor (a word); then the coefficients as a DynArray, which is
# saved with its own SEAL header and a word for its length.
MEMBERS_BYTES = 32 + 1 + 3 * 8 + 8 + 8
DYNARRAY_OVERHEAD = SEAL_HEADER.size + 8
# The seeded form's UniformRandomGeneratorInfo: a SEAL header, the generator type, a 64-byte seed.
SEED_INFO_BYTES = SEAL_HEADER.size + 1 + 64
POLYNOMIALS = 2

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_MAX_BLOCK = 128 * 1024
# Honest frames of SEAL's zstd bound at most 1.53 times their content (measured over every
# level of both parameter sets): compressed blocks often regenerate less than the maximum.
ZSTD_BOUND_FACTOR = 2
# Proto tags and length prefixes, zstd frame and block headers: far below this.
FRAMING_BYTES = 1024


@dataclass(frozen=True)
class Expected:
    """What one ciphertext must be.

    Attributes:
        values: The slots in use (the vector's one ``sizes`` entry); None: any from 1 to the
            slot count (for callers that cannot know, e.g. a decryptor serving several steps).
        rescales: Rescalings since encryption, 0 for a fresh top-level ciphertext; None: any
            level of the chain.
        seeded: It may come in SEAL's seeded form (secret-key encryption).
        scale: Its scale; None: the context's (collective mode encrypts what is revealed at
            :data:`hefl.protocols.collective.keyswitch.REVEAL_SCALE_BITS`; the kernel's margins
            and gradients have exact scales of their own, :meth:`CiphertextRules.gradient`).
    """

    values: int | None
    rescales: int | None = 0
    seeded: bool = False
    scale: float | None = None


ANY = Expected(values=None, rescales=None, seeded=True)


@dataclass(frozen=True)
class VectorProto:
    """TenSEAL's serialized CKKS vector, parsed but not loaded."""

    sizes: tuple[int, ...]
    ciphertexts: tuple[bytes, ...]
    scales: tuple[float, ...]


def parse_vector(data: bytes, *, what: str) -> VectorProto:
    """Parse ``CKKSVectorProto`` strictly: its three fields only, in any order, well formed.

    Raises:
        InvalidArgument: Not such a message.
    """
    sizes: list[int] = []
    ciphertexts: list[bytes] = []
    scales: list[float] = []
    view = memoryview(data)
    at = 0
    while at < len(view):
        key, at = _varint(view, at, what)
        field, wire = key >> 3, key & 7
        if field == 1 and wire == 0:  # an unpacked size
            size, at = _varint(view, at, what)
            sizes.append(_uint32(size, what))
        elif field == 1 and wire == 2:  # packed sizes
            body, at = _length_delimited(view, at, what)
            inner = 0
            while inner < len(body):
                size, inner = _varint(body, inner, what)
                sizes.append(_uint32(size, what))
        elif field == 2 and wire == 2:
            body, at = _length_delimited(view, at, what)
            ciphertexts.append(bytes(body))
        elif field == 3 and wire == 1:
            if at + 8 > len(view):
                raise InvalidArgument(f"{what}: truncated scale")
            scales.append(struct.unpack_from("<d", view, at)[0])
            at += 8
        else:
            raise InvalidArgument(
                f"{what}: not a TenSEAL CKKS vector (field {field} of wire type {wire})"
            )
    return VectorProto(sizes=tuple(sizes), ciphertexts=tuple(ciphertexts), scales=tuple(scales))


def _varint(view: memoryview, at: int, what: str) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if at >= len(view):
            raise InvalidArgument(f"{what}: truncated CKKS vector")
        byte = view[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
    raise InvalidArgument(f"{what}: malformed CKKS vector (a varint over 10 bytes)")


def _uint32(value: int, what: str) -> int:
    if value >= 1 << 32:
        raise InvalidArgument(f"{what}: a vector size of {value} does not fit 32 bits")
    return value


def _length_delimited(view: memoryview, at: int, what: str) -> tuple[memoryview, int]:
    length, at = _varint(view, at, what)
    if length > len(view) - at:
        raise InvalidArgument(f"{what}: truncated CKKS vector")
    return view[at : at + length], at + length


class CiphertextRules:
    """The checks of :mod:`hefl.validate` under one context (its ring, chain and scale).

    Args:
        context: The job's context (public or private: only its parameters are used).
    """

    def __init__(self, context: ts.Context) -> None:
        self._context = context
        data = context.seal_context().data
        self.degree: int = data.key_context_data().parms().poly_modulus_degree()
        self.slots = self.degree // 2
        self.scale: float = context.global_scale
        # parms_id of every data level by its number of primes (the last level keeps q0 only).
        self._levels: dict[int, list[int]] = {}
        level = data.first_context_data()
        while level is not None:
            self._levels[level.chain_index() + 1] = list(level.parms_id())
            level = level.next_context_data()
        self.top = max(self._levels)
        # The data primes, q0 first: the kernel's scales (:meth:`margin`, :meth:`gradient`).
        # tenseal.sealapi registers seal::Modulus, which coeff_modulus() returns.
        import tenseal.sealapi  # noqa: F401

        self._primes = tuple(m.value() for m in data.first_context_data().parms().coeff_modulus())

    # ----- what the gradient kernel sends --------------------------------------------------------

    def margin(self, form: KernelForm) -> Expected:
        """A margin (or a worker's partial one): every slot, one rescale down, its exact scale."""
        return Expected(
            values=self.slots, rescales=1, scale=form.scales(self.scale, self._primes).margin
        )

    def gradient(self, form: KernelForm) -> Expected:
        """A gradient sum of ``form``: every slot, at the last level, its exact scale."""
        return Expected(
            values=self.slots,
            rescales=self.top - 1,
            scale=form.scales(self.scale, self._primes).gradient,
        )

    # ----- sizes -----------------------------------------------------------------------------

    def primes(self, expected: Expected) -> list[int]:
        """The numbers of primes a ciphertext ``expected`` may have."""
        if expected.rescales is None:
            return sorted(self._levels)
        primes = self.top - expected.rescales
        if primes not in self._levels:
            raise ValueError(f"no level {expected.rescales} rescalings below the top")
        return [primes]

    def inflated_bytes(self, primes: int, *, seeded: bool) -> int:
        """What SEAL inflates a 2-polynomial ciphertext with ``primes`` primes to."""
        words = (1 if seeded else POLYNOMIALS) * self.degree * primes
        return MEMBERS_BYTES + DYNARRAY_OVERHEAD + 8 * words + (SEED_INFO_BYTES if seeded else 0)

    def _allowed_inflated(self, expected: Expected) -> set[int]:
        sizes = set()
        for primes in self.primes(expected):
            sizes.add(self.inflated_bytes(primes, seeded=False))
            if expected.seeded:
                sizes.add(self.inflated_bytes(primes, seeded=True))
        return sizes

    def max_bytes(self, expected: Expected) -> int:
        """The byte cap of a serialized vector ``expected``, checked before anything is parsed."""
        return max(self._allowed_inflated(expected)) + SEAL_HEADER.size + FRAMING_BYTES

    # ----- checks ------------------------------------------------------------------------------

    def load(self, data: bytes, expected: Expected, *, what: str) -> ts.CKKSVector:
        """The vector in ``data``, checked before and after TenSEAL loads it.

        Raises:
            InvalidArgument: Anything but one ciphertext ``expected`` under this context.
        """
        import tenseal as ts

        vector = self._parse(data, expected, what=what)
        self._check_seal_bytes(vector.ciphertexts[0], expected, what=what)
        try:
            loaded = ts.ckks_vector_from(self._context, data)
        except Exception as err:  # TenSEAL raises bare ValueError/RuntimeError from C++
            raise InvalidArgument(
                f"{what} is not a CKKS ciphertext under the job's parameters ({err})"
            ) from err
        self._check_loaded(loaded, vector.sizes[0], expected, what=what)
        return loaded

    def canonical(self, data: bytes, expected: Expected, *, what: str) -> bytes:
        """``data`` checked, loaded and serialized again: what a process may keep or store.

        Raises:
            InvalidArgument: As :meth:`load`.
        """
        return bytes(self.load(data, expected, what=what).serialize())

    def _parse(self, data: bytes, expected: Expected, *, what: str) -> VectorProto:
        cap = self.max_bytes(expected)
        if len(data) > cap:
            raise InvalidArgument(
                f"{what} is {len(data)} bytes; a ciphertext of the job's parameters at this "
                f"level has at most {cap}"
            )
        vector = parse_vector(data, what=what)
        if len(vector.ciphertexts) != 1 or len(vector.sizes) != 1:
            raise InvalidArgument(
                f"{what} holds {len(vector.ciphertexts)} ciphertexts of {len(vector.sizes)} "
                f"sizes; expected exactly one ciphertext"
            )
        (size,) = vector.sizes
        if expected.values is not None and size != expected.values:
            raise InvalidArgument(f"{what} holds {size} values, expected {expected.values}")
        if not 1 <= size <= self.slots:
            raise InvalidArgument(
                f"{what} claims {size} values; a ciphertext has 1 to {self.slots} slots"
            )
        scale = self.scale if expected.scale is None else expected.scale
        if vector.scales != (scale,):
            raise InvalidArgument(f"{what} has scale {list(vector.scales)}, expected {scale}")
        return vector

    def _check_seal_bytes(self, ciphertext: bytes, expected: Expected, *, what: str) -> None:
        if len(ciphertext) < SEAL_HEADER.size:
            raise InvalidArgument(f"{what}: truncated SEAL ciphertext")
        magic, header_size, major, _, compression, reserved, size = SEAL_HEADER.unpack_from(
            ciphertext
        )
        if magic != SEAL_MAGIC or header_size != SEAL_HEADER.size or reserved != 0:
            raise InvalidArgument(f"{what}: not a SEAL ciphertext (bad header)")
        if major != SEAL_MAJOR_VERSION:
            raise InvalidArgument(
                f"{what}: written by SEAL {major}, expected SEAL {SEAL_MAJOR_VERSION}"
            )
        if size != len(ciphertext):
            raise InvalidArgument(
                f"{what}: its SEAL header says {size} bytes, it has {len(ciphertext)}"
            )
        allowed = self._allowed_inflated(expected)
        payload = memoryview(ciphertext)[SEAL_HEADER.size :]
        if compression == COMPRESSION_NONE:
            inflated = len(payload)
        elif compression == COMPRESSION_ZSTD:
            inflated = _zstd_content_size(payload, allowed, what=what)
        else:
            raise InvalidArgument(
                f"{what}: SEAL compression mode {compression}; hefl accepts none or zstd"
            )
        if inflated not in allowed:
            raise InvalidArgument(
                f"{what} inflates to {inflated} bytes, which is not a ciphertext of "
                f"{POLYNOMIALS} polynomials at the expected level ({_sizes(allowed)})"
            )

    def _check_loaded(
        self, vector: ts.CKKSVector, size: int, expected: Expected, *, what: str
    ) -> None:
        ciphertexts = vector.ciphertext()
        if len(ciphertexts) != 1 or vector.size() != size:
            raise InvalidArgument(f"{what} did not load as one ciphertext of {size} values")
        (ciphertext,) = ciphertexts
        primes = ciphertext.coeff_modulus_size()
        if ciphertext.size() != POLYNOMIALS:
            raise InvalidArgument(
                f"{what} has {ciphertext.size()} polynomials, expected {POLYNOMIALS}"
            )
        if primes not in self.primes(expected) or list(ciphertext.parms_id()) != self._levels.get(
            primes
        ):
            wanted = self.primes(expected)
            raise InvalidArgument(
                f"{what} is at the level of {primes} primes, expected {' or '.join(map(str, wanted))}"
            )
        if ciphertext.poly_modulus_degree() != self.degree or not ciphertext.is_ntt_form():
            raise InvalidArgument(f"{what} is not a CKKS ciphertext of ring size {self.degree}")
        scale = self.scale if expected.scale is None else expected.scale
        if ciphertext.scale != scale:
            raise InvalidArgument(f"{what} has scale {ciphertext.scale}, expected {scale}")
        if ciphertext.is_transparent():
            raise InvalidArgument(f"{what} is transparent (its second polynomial is zero)")


def _zstd_content_size(frame: memoryview, allowed: set[int], *, what: str) -> int:
    """The content size a zstd frame declares, once it is one of ``allowed`` and the frame's
    blocks bound what it can inflate to.

    Raises:
        InvalidArgument: Not one plain zstd frame (no dictionary, content size declared, no
            reserved block type), another content size, trailing bytes, or blocks that could
            inflate to more than :data:`ZSTD_BOUND_FACTOR` times the declared size.
    """
    if len(frame) < 6 or bytes(frame[:4]) != ZSTD_MAGIC:
        raise InvalidArgument(f"{what}: not a zstd frame")
    descriptor = frame[4]
    size_flag, single_segment = descriptor >> 6, (descriptor >> 5) & 1
    checksum, dictionary = (descriptor >> 2) & 1, descriptor & 3
    if descriptor & 0x08 or dictionary:
        raise InvalidArgument(f"{what}: a zstd frame with a dictionary or reserved bits")
    at = 5
    window = 0
    if not single_segment:
        exponent, mantissa = frame[at] >> 3, frame[at] & 7
        base = 1 << (10 + exponent)
        window = base + base // 8 * mantissa
        at += 1
    width = (1 if single_segment else 0, 2, 4, 8)[size_flag]
    if width == 0:
        raise InvalidArgument(f"{what}: the zstd frame does not declare its content size")
    if at + width > len(frame):
        raise InvalidArgument(f"{what}: truncated zstd frame")
    content = int.from_bytes(frame[at : at + width], "little") + (256 if width == 2 else 0)
    at += width
    if content not in allowed:
        raise InvalidArgument(
            f"{what} inflates to {content} bytes, which is not a ciphertext of "
            f"{POLYNOMIALS} polynomials at the expected level ({_sizes(allowed)})"
        )
    block_max = min(window or content, ZSTD_MAX_BLOCK)
    # Honest frames have a block per 64-128 KiB; this bounds the walk over tiny blocks.
    blocks_left = content // 1024 + 16
    bound = 0
    while True:
        blocks_left -= 1
        if at + 3 > len(frame) or blocks_left < 0:
            raise InvalidArgument(f"{what}: truncated zstd frame, or one of too many blocks")
        header = int.from_bytes(frame[at : at + 3], "little")
        at += 3
        last, kind, size = header & 1, (header >> 1) & 3, header >> 3
        if kind == 0:  # raw: size bytes follow and are the content
            bound, at = bound + size, at + size
        elif kind == 1:  # RLE: one byte repeated size times
            bound, at = bound + size, at + 1
        elif kind == 2:  # compressed: at most the block maximum
            if size > ZSTD_MAX_BLOCK:
                raise InvalidArgument(f"{what}: a zstd block over 128 KiB")
            bound, at = bound + block_max, at + size
        else:
            raise InvalidArgument(f"{what}: a reserved zstd block type")
        if bound > ZSTD_BOUND_FACTOR * content + ZSTD_MAX_BLOCK:
            raise InvalidArgument(
                f"{what}: its zstd blocks could inflate to more than the {content} bytes "
                f"the frame declares"
            )
        if at > len(frame):
            raise InvalidArgument(f"{what}: truncated zstd frame")
        if last:
            break
    at += 4 if checksum else 0
    if at != len(frame):
        raise InvalidArgument(f"{what}: {len(frame) - at} bytes where the zstd frame should end")
    return content


def _sizes(allowed: set[int]) -> str:
    return " or ".join(f"{size} bytes" for size in sorted(allowed))
