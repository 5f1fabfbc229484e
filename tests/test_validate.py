"""The ciphertext gate (hefl.validate): honest ciphertexts of every kind pass, and everything an
attacker can write into TenSEAL's and SEAL's formats is refused with InvalidArgument, the
dangerous ones before TenSEAL reads a byte."""

from __future__ import annotations

import random
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts
import tenseal.sealapi as sealapi

from hefl import sealio
from hefl.errors import InvalidArgument
from hefl.params import PARAMETER_SETS
from hefl.validate import (
    ANY,
    COMPRESSION_NONE,
    COMPRESSION_ZSTD,
    SEAL_HEADER,
    CiphertextRules,
    Expected,
    parse_vector,
)
from parties.keyholder import SecretKey
from tests.ciphertexts import (
    ciphertext_members,
    levels,
    mutate,
    seal_header,
    sealed,
    uncompressed_vector,
    vector_proto,
    zero_vector,
    zstd_frame,
)

FRESH = Expected(values=4096)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=sorted(PARAMETER_SETS))
def contexts(request: pytest.FixtureRequest) -> tuple[ts.Context, ts.Context]:
    """(private, public) contexts of each parameter set."""
    private = PARAMETER_SETS[request.param].make_context()
    return private, ts.context_from(private.serialize(save_secret_key=False))


@pytest.fixture
def rules(public_context: ts.Context) -> CiphertextRules:
    return CiphertextRules(public_context)


@pytest.fixture(scope="module")
def column(public_context: ts.Context) -> bytes:
    """An honest upload column: fresh, 4096 values."""
    return sealio.serialize(ts.ckks_vector(public_context, np.linspace(-1, 1, 4096)))


@pytest.fixture(scope="module")
def last_level(public_context: ts.Context, column: bytes) -> bytes:
    """A gradient-sized ciphertext at the last level (131 KB inflated: quick to load)."""
    return _rescaled(public_context, column, 4)


@pytest.fixture
def no_tenseal_load(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Records every vector that reaches TenSEAL's loader (it is still called)."""
    reached: list[bytes] = []
    load = ts.ckks_vector_from

    def spy(context: ts.Context, data: bytes) -> ts.CKKSVector:
        reached.append(data)
        return load(context, data)

    monkeypatch.setattr(ts, "ckks_vector_from", spy)
    yield reached


def _rescaled(context: ts.Context, data: bytes, times: int) -> bytes:
    """The vector in ``data`` switched ``times`` levels down (what rescaling leaves)."""
    vector = ts.ckks_vector_from(context, data)
    (ciphertext,) = vector.ciphertext()
    evaluator = sealapi.Evaluator(context.seal_context().data)
    for _ in range(times):
        evaluator.mod_switch_to_next_inplace(ciphertext)
    return sealio.vector_bytes(ciphertext, size=vector.size(), scale=ciphertext.scale)


# ----- honest ciphertexts ---------------------------------------------------------------------


def test_every_honest_kind_loads_at_its_level(contexts: tuple[ts.Context, ts.Context]) -> None:
    private, public = contexts
    rules = CiphertextRules(public)
    slots = rules.slots
    fresh = sealio.serialize(ts.ckks_vector(public, np.arange(slots, dtype=float)))
    label_term = sealio.serialize(ts.ckks_vector(public, [0.5, -1.5, 2.0]))
    (seeded,) = SecretKey(private).encrypt_replicated([0.25])

    assert rules.load(fresh, Expected(values=slots), what="column").size() == slots
    assert rules.load(label_term, Expected(values=3), what="label term").size() == 3
    assert rules.load(seeded, Expected(values=slots, seeded=True), what="weights").size() == slots
    for rescales in range(1, rules.top):
        lower = _rescaled(public, fresh, rescales)
        expected = Expected(values=slots, rescales=rescales)
        loaded = rules.load(lower, expected, what="margin")
        assert loaded.ciphertext()[0].coeff_modulus_size() == rules.top - rescales
        assert rules.load(lower, ANY, what="anything").size() == slots
        with pytest.raises(InvalidArgument, match="not a ciphertext of 2 polynomials at the exp"):
            rules.load(lower, Expected(values=slots), what="column")


def test_the_kept_form_is_the_re_serialized_one(public_context: ts.Context, column: bytes) -> None:
    rules = CiphertextRules(public_context)
    uncompressed = uncompressed_vector(public_context, column)

    assert rules.canonical(column, FRESH, what="column") == column
    assert len(uncompressed) > len(column)
    # Same ciphertext, other bytes: what is kept is SEAL's own serialization of it.
    assert rules.canonical(uncompressed, FRESH, what="column") == column


def test_seeded_ciphertexts_only_where_the_key_holder_sends_them(
    private_context: ts.Context, rules: CiphertextRules
) -> None:
    (seeded,) = SecretKey(private_context).encrypt_replicated([1.0])

    with pytest.raises(InvalidArgument, match="inflates to 327858 bytes"):
        rules.load(seeded, FRESH, what="column")
    expanded = rules.canonical(seeded, Expected(values=4096, seeded=True), what="weights")
    assert rules.load(expanded, FRESH, what="column").size() == 4096


# ----- the attacks of issue 12 ------------------------------------------------------------------


def test_a_ciphertext_of_16_polynomials_is_refused_before_it_is_inflated(
    public_context: ts.Context, rules: CiphertextRules, no_tenseal_load: list[bytes]
) -> None:
    """The issue's 10.6 KB chunk held 40 of these and loaded as 407 MB."""
    bomb = zero_vector(public_context, polynomials=16)

    assert len(bomb) < 400  # 5.2 MB once inflated
    with pytest.raises(InvalidArgument, match=r"inflates to 5242977 bytes.*2 polynomials"):
        rules.load(bomb, FRESH, what="job j party 'p' block 0 column 3")
    with pytest.raises(InvalidArgument, match="3 polynomials|inflates to 983137"):
        rules.load(zero_vector(public_context, polynomials=3), FRESH, what="column")
    assert no_tenseal_load == []


def test_a_vector_without_its_ciphertext_is_refused(
    public_context: ts.Context, rules: CiphertextRules
) -> None:
    """``sizes=[496]`` and no ciphertext passed SubmitStats and later crashed the coordinator."""
    empty = vector_proto(sizes=[496], ciphertexts=[], scale=public_context.global_scale)

    with pytest.raises(InvalidArgument, match="holds 0 ciphertexts of 1 sizes"):
        rules.load(empty, Expected(values=496), what="statistics of party 'p' (piece 0)")
    with pytest.raises(InvalidArgument, match="holds 0 ciphertexts"):
        rules.load(empty, ANY, what="statistics")


def test_sizes_beyond_the_slots_are_refused(
    public_context: ts.Context, rules: CiphertextRules, column: bytes
) -> None:
    """``decrypt()`` of such a vector read past the decoded slots (values like 2.5e193)."""
    (ciphertext,) = parse_vector(column, what="x").ciphertexts
    wide = vector_proto(sizes=[5000], ciphertexts=[ciphertext], scale=public_context.global_scale)

    with pytest.raises(InvalidArgument, match="claims 5000 values; a ciphertext has 1 to 4096"):
        rules.load(wide, ANY, what="masked gradient")
    with pytest.raises(InvalidArgument, match="holds 5000 values, expected 4096"):
        rules.load(wide, FRESH, what="column")


def test_more_than_one_ciphertext_or_size_is_refused(
    public_context: ts.Context, rules: CiphertextRules, last_level: bytes
) -> None:
    (ciphertext,) = parse_vector(last_level, what="x").ciphertexts
    scale = public_context.global_scale
    two = vector_proto(sizes=[4096, 4096], ciphertexts=[ciphertext] * 2, scale=scale)
    sizes = vector_proto(sizes=[2048, 2048], ciphertexts=[ciphertext], scale=scale)

    with pytest.raises(InvalidArgument, match="holds 2 ciphertexts of 2 sizes"):
        rules.load(two, ANY, what="column")
    with pytest.raises(InvalidArgument, match="holds 1 ciphertexts of 2 sizes"):
        rules.load(sizes, ANY, what="column")


# ----- the vector message -------------------------------------------------------------------


def test_the_vector_message_is_parsed_strictly(
    public_context: ts.Context, rules: CiphertextRules, column: bytes
) -> None:
    (ciphertext,) = parse_vector(column, what="x").ciphertexts
    scale = public_context.global_scale
    unpacked = vector_proto(sizes=[4096], ciphertexts=[ciphertext], scale=scale, packed=False)
    cases = {
        "field 4 of wire type 0": column + b"\x20\x01",
        "truncated CKKS vector": column[:-12],
        "truncated scale": column[:-4],
        "scale \\[1073741824.0, 1073741824.0\\]": column + b"\x19" + struct.pack("<d", scale),
        "scale \\[\\]": vector_proto(sizes=[4096], ciphertexts=[ciphertext], scale=None),
        "scale \\[2.0\\]": vector_proto(sizes=[4096], ciphertexts=[ciphertext], scale=2.0),
        "does not fit 32 bits": b"\x08" + b"\xff" * 9 + b"\x01",
        "a varint over 10 bytes": b"\x08" + b"\xff" * 11,
    }

    assert rules.canonical(unpacked, FRESH, what="column") == column
    for message, data in cases.items():
        with pytest.raises(InvalidArgument, match=message):
            rules.load(data, FRESH, what="column")


def test_the_byte_cap_comes_before_parsing(
    contexts: tuple[ts.Context, ts.Context], column: bytes
) -> None:
    """A ciphertext of the larger parameter set is over the smaller one's cap, and the other
    way round the level does not match."""
    _, public = contexts
    rules = CiphertextRules(public)
    big = rules.max_bytes(FRESH) + 1

    with pytest.raises(InvalidArgument, match=f"is {big} bytes; .* has at most {big - 1}"):
        rules.load(b"\x00" * big, FRESH, what="column")
    if rules.slots != 4096:  # a ciphertext of n8192-depth4 under n16384-depth4's rules
        with pytest.raises(InvalidArgument, match="holds 4096 values, expected 8192"):
            rules.load(column, Expected(values=8192), what="column")
        with pytest.raises(InvalidArgument, match="has scale \\[1073741824.0\\]"):
            rules.load(column, ANY, what="column")


# ----- SEAL's header and zstd -----------------------------------------------------------------


def test_the_seal_header_is_checked(
    public_context: ts.Context, rules: CiphertextRules, column: bytes
) -> None:
    (ciphertext,) = parse_vector(column, what="x").ciphertexts
    scale = public_context.global_scale
    fields = list(SEAL_HEADER.unpack_from(ciphertext))

    def header(**changes: int) -> bytes:
        names = ["magic", "size_of_header", "major", "minor", "compression", "reserved", "size"]
        values = [changes.get(name, value) for name, value in zip(names, fields, strict=True)]
        return SEAL_HEADER.pack(*values) + ciphertext[SEAL_HEADER.size :]

    cases = {
        "bad header": header(magic=0x1234),
        "written by SEAL 3": header(major=3),
        "compression mode 1": header(compression=1),
        f"says {fields[-1] + 1} bytes": header(size=fields[-1] + 1),
        "truncated SEAL ciphertext": ciphertext[:10],
    }
    for message, data in cases.items():
        with pytest.raises(InvalidArgument, match=message):
            vector = vector_proto(sizes=[4096], ciphertexts=[data], scale=scale)
            rules.load(vector, FRESH, what="column")


def test_zstd_frames_that_could_inflate_beyond_their_ciphertext_are_refused(
    public_context: ts.Context, rules: CiphertextRules, no_tenseal_load: list[bytes]
) -> None:
    """A frame whose content size is an honest ciphertext's but whose RLE blocks regenerate
    5 MB; frames with a dictionary, without a content size, or with bytes after them."""
    chain = levels(public_context)
    scale = public_context.global_scale
    members = ciphertext_members(
        parms_id=chain[rules.top], polynomials=16, degree=8192, primes=rules.top, scale=scale
    )
    honest_size = rules.inflated_bytes(rules.top, seeded=False)
    lying = zstd_frame(members, declared=honest_size)
    frame = zstd_frame(members[:honest_size])

    def vector(frame: bytes) -> bytes:
        ciphertext = seal_header(COMPRESSION_ZSTD, SEAL_HEADER.size + len(frame)) + frame
        return vector_proto(sizes=[4096], ciphertexts=[ciphertext], scale=scale)

    cases = {
        "could inflate to more than the 655457 bytes": lying,
        "with a dictionary or reserved bits": frame[:4] + bytes([frame[4] | 1]) + frame[5:],
        "does not declare its content size": frame[:4] + b"\x00" + frame[13:],
        "bytes where the zstd frame should end": frame + b"\x00\x00",
        "truncated zstd frame": frame[:-1],
        "not a zstd frame": b"\x00" * 4 + frame[4:],
    }
    for message, data in cases.items():
        with pytest.raises(InvalidArgument, match=message):
            rules.load(vector(data), FRESH, what="column")
    assert no_tenseal_load == []


def test_what_seal_itself_refuses_is_an_invalid_argument(
    public_context: ts.Context, rules: CiphertextRules
) -> None:
    """Coefficients beyond their prime, and a parms_id of no level: SEAL's own checks."""
    chain = levels(public_context)
    scale = public_context.global_scale
    count = 2 * 8192 * rules.top
    too_large = ciphertext_members(
        parms_id=chain[rules.top],
        polynomials=2,
        degree=8192,
        primes=rules.top,
        scale=scale,
        words=b"\xff" * (8 * count),
    )
    unknown = ciphertext_members(
        parms_id=[1, 2, 3, 4], polynomials=2, degree=8192, primes=rules.top, scale=scale
    )
    for members in (too_large, unknown):
        for compression in (COMPRESSION_NONE, COMPRESSION_ZSTD):
            data = vector_proto(
                sizes=[4096], ciphertexts=[sealed(members, compression=compression)], scale=scale
            )
            with pytest.raises(InvalidArgument, match="not a CKKS ciphertext under the job's"):
                rules.load(data, FRESH, what="column")


def test_a_transparent_ciphertext_is_refused(
    public_context: ts.Context, rules: CiphertextRules
) -> None:
    for compression in (COMPRESSION_NONE, COMPRESSION_ZSTD):
        zeros = zero_vector(public_context, compression=compression)
        with pytest.raises(InvalidArgument, match="transparent"):
            rules.load(zeros, FRESH, what="column")


# ----- mutations ---------------------------------------------------------------------------


def test_a_mutated_ciphertext_loads_as_what_was_expected_or_is_refused(
    public_context: ts.Context, last_level: bytes
) -> None:
    """300 mutants of an honest ciphertext (fixed seed): each is a vector that passes every
    check, or InvalidArgument; nothing else escapes."""
    rules = CiphertextRules(public_context)
    expected = Expected(values=4096, rescales=4)
    rng = random.Random(12)
    refused = 0
    for _ in range(300):
        try:
            vector = rules.load(mutate(last_level, rng, head=120), expected, what="gradient")
        except InvalidArgument:
            refused += 1
            continue
        (ciphertext,) = vector.ciphertext()
        assert vector.size() == 4096 and ciphertext.size() == 2
        assert ciphertext.coeff_modulus_size() == 1 and ciphertext.scale == rules.scale
    assert refused > 150


NESTED_ZSTD_BOMB = """
import resource, struct, sys

import tenseal as ts
import zstandard

from hefl import sealio
from hefl.params import PARAMETER_SETS
from hefl.protocols.collective import seal_layout
from hefl.protocols.collective.keyswitch import ciphertext_of
from hefl.validate import CiphertextRules, Expected

context = PARAMETER_SETS["n8192-depth4"].make_context()
honest = ciphertext_of(ts.ckks_vector(context, [0.5] * 4096))
size, rows, n = honest.polys.shape
meta = seal_layout.CIPHERTEXT_META.pack(*honest.parms_id, 1, size, n, rows, honest.scale, 1)
coefficients = seal_layout._write_coefficients(honest.polys)  # header, count, words
# The coefficient array as a nested zstd stream of the same length: its words compressed,
# then RLE blocks of 128 KiB each (4 bytes apiece) to the end, declaring gigabytes more.
frame = bytearray(
    zstandard.ZstdCompressor(level=19, write_content_size=False, write_checksum=False).compress(
        coefficients[16:]
    )
)
at = 6  # magic, descriptor, window: no content size, not single-segment
while True:
    header = int.from_bytes(frame[at : at + 3], "little")
    kind, length = (header >> 1) & 3, header >> 3
    if header & 1:
        frame[at : at + 3] = (header & ~1).to_bytes(3, "little")
        break
    at += 3 + (1 if kind == 1 else length)
blocks = (len(coefficients) - 16 - len(frame)) // 4
for i in range(blocks):
    frame += ((i == blocks - 1) | (1 << 1) | (128 * 1024 << 3)).to_bytes(3, "little") + b"\\0"
frame += bytes(len(coefficients) - 16 - len(frame))  # past the last block: never read
nested = struct.pack("<HBBBBHQ", 0xA15E, 16, 4, 3, 2, 0, 16 + len(frame)) + bytes(frame)
stream = seal_layout.stream_of(meta + nested)
size_field = sealio.varint(4096)
data = (
    b"\\x0a" + sealio.varint(len(size_field)) + size_field
    + b"\\x12" + sealio.varint(len(stream)) + stream
    + b"\\x19" + struct.pack("<d", honest.scale)
)
rules = CiphertextRules(context)
honest_bytes = seal_layout.vector_bytes_of(honest, size=4096)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kept = rules.canonical(data, Expected(values=4096), what="column")
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
same = kept == rules.canonical(honest_bytes, Expected(values=4096), what="column")
print(blocks * 128 * 1024 // 2**30, round(grown), same)
"""


def test_a_nested_zstd_stream_is_inflated_only_as_far_as_seal_reads_it() -> None:
    """SEAL streams nest (a ciphertext's coefficient array is one): the gate checks the outer
    stream's inflated size, and the SEAL that TenSEAL bundles inflates nested zstd on demand,
    reading only the words a ciphertext has. So a nested frame declaring gigabytes more loads
    as the honest ciphertext within a few MB (kept re-serialized), in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", NESTED_ZSTD_BOMB],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    declared_gb, grown_mb, same = done.stdout.split()
    assert int(declared_gb) >= 4
    assert int(grown_mb) < 64
    assert same == "True"
