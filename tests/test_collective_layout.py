"""SEAL's serialization layout, as hefl.protocols.collective.seal_layout reads and writes it, pinned
to the TenSEAL version pyproject.toml installs: headers, bodies, and what the keys mean."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts
import tenseal.sealapi as seal

from hefl.params import PARAMETER_SETS
from hefl.protocols.collective import sampling, seal_layout
from hefl.protocols.collective.ring import RnsRing, ring_for
from hefl.protocols.collective.seal_layout import CiphertextPolys

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", params=sorted(PARAMETER_SETS))
def private_context(request: pytest.FixtureRequest) -> ts.Context:
    context: ts.Context = PARAMETER_SETS[request.param].make_context()
    return context


def _secret_polys(context: ts.Context) -> np.ndarray:
    """The secret key of a private TenSEAL context, NTT form (a SEAL SecretKey is a Plaintext)."""
    ring = ring_for_context(context)
    _, _, words = seal_layout.parse_plaintext(
        seal_layout.body_of(seal_layout.save_stream(context.secret_key().data))
    )
    return words.reshape(ring.key_rows, ring.n)


def ring_for_context(context: ts.Context) -> RnsRing:
    bits = tuple(
        m.bit_count()
        for m in context.seal_context().data.key_context_data().parms().coeff_modulus()
    )
    (params,) = [p for p in PARAMETER_SETS.values() if p.coeff_mod_bit_sizes == bits]
    return ring_for(params)


def test_the_layout_is_pinned_to_the_tenseal_version_pyproject_installs() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]

    assert f"tenseal=={seal_layout.TENSEAL_VERSION}" in dependencies
    assert ts.__version__ == seal_layout.TENSEAL_VERSION
    assert any(d.startswith("zstandard>=") for d in dependencies)


def test_seal_streams_have_the_pinned_header(private_context: ts.Context) -> None:
    stream = seal_layout.save_stream(private_context.public_key().data)

    magic, header_size, major, minor, mode, reserved, total = seal_layout.HEADER.unpack_from(stream)

    assert (magic, header_size, reserved, total) == (0xA15E, 16, 0, len(stream))
    assert (major, minor) == seal_layout.SEAL_VERSION
    assert mode == seal_layout.COMPRESSION_ZSTD


def test_a_stream_of_another_seal_version_is_refused() -> None:
    body = b"\x00" * 8
    stream = seal_layout.HEADER.pack(0xA15E, 16, 3, 6, 0, 0, 16 + len(body)) + body

    with pytest.raises(seal_layout.LayoutError, match="SEAL 3.6"):
        seal_layout.body_of(stream)


def test_a_ciphertext_body_round_trips_through_seal(private_context: ts.Context) -> None:
    ring = ring_for_context(private_context)
    vector = ts.ckks_vector(private_context, [0.5, -1.25, 3.0])
    body = seal_layout.body_of(seal_layout.save_stream(vector.ciphertext()[0]))

    polys, end = CiphertextPolys.parse(body)
    reloaded = seal_layout.body_of(seal_layout.save_stream(polys.to_seal(ring)))

    assert end == len(body)
    assert polys.body() == body == reloaded
    assert polys.polys.shape == (2, ring.top_rows, ring.n)
    assert polys.parms_id == ring.parms_id(ring.top_rows)
    assert polys.scale == 2.0**ring.params.scale_bits


# Per parameter set, a seed whose expansion rejects a word: (seed, level, row, coefficient).
REJECTIONS = {
    "n8192-depth4": (hashlib.sha256(b"reject31633").digest() * 2, "key", 5, 2324),
    "n16384-depth4": (hashlib.shake_256(b"top1426").digest(64), "top", 3, 13353),
}


@pytest.mark.parametrize("kind", ["plain", "rejection"])
def test_common_polynomials_are_what_seal_expands_from_their_seed(
    private_context: ts.Context, kind: str
) -> None:
    """A seeded ciphertext body with the seed loads in SEAL (PublicKey at the key level) as the
    polynomial seal_uniform makes, including SEAL's redraw of a word it rejects."""
    ring = ring_for_context(private_context)
    seed, level, row, coefficient = REJECTIONS[ring.params.name]
    if kind == "plain":
        seed = hashlib.shake_256(b"a").digest(64)
    levels = {"top": ring.top_rows, "key": ring.key_rows}
    for rows, loaded in ((levels["top"], seal.Ciphertext()), (levels["key"], seal.PublicKey())):
        mine = sampling.seal_uniform(seed, ring.primes[:rows], ring.n)
        zero = np.zeros((2, rows, ring.n), dtype=np.uint64)
        body = CiphertextPolys(ring.parms_id(rows), 1.0, zero, seed=seed).body()

        seal_layout.load_stream(loaded, ring.seal_context, seal_layout.stream_of(body))

        assert (CiphertextPolys.of(loaded).polys[1] == mine).all()
    if kind == "rejection":  # the redraw path was taken
        rows = levels[level]
        stream = sampling.SealShake256Stream(seed).read(8 * rows * ring.n)
        words = np.frombuffer(stream, dtype="<u8").reshape(rows, ring.n)
        q = ring.primes[row]
        bound = (1 << 64) - 1 - ((1 << 64) - 1) % q - 1
        assert coefficient in np.flatnonzero(words[row] >= np.uint64(bound)).tolist()


def test_a_seeded_ciphertext_has_two_polynomials_and_a_64_byte_seed() -> None:
    polys = np.zeros((2, 1, 8), dtype=np.uint64)
    with pytest.raises(seal_layout.LayoutError, match="2 polynomials and a 64-byte seed"):
        CiphertextPolys((0, 0, 0, 0), 1.0, polys, seed=b"short")
    with pytest.raises(seal_layout.LayoutError, match="not 3 and 64 bytes"):
        CiphertextPolys((0, 0, 0, 0), 1.0, np.zeros((3, 1, 8), np.uint64), seed=bytes(64))


def test_the_secret_key_is_a_ternary_plaintext_in_seals_ntt_form(
    private_context: ts.Context,
) -> None:
    ring = ring_for_context(private_context)
    secret = _secret_polys(private_context)

    coefficients = [ring.to_integers(ring.intt(secret[:1]))]
    per_row = [
        np.where(row > q // 2, row.astype(np.int64) - q, row.astype(np.int64))
        for row, q in zip(ring.intt(secret), ring.primes, strict=True)
    ]

    assert set(np.unique(coefficients[0]).tolist()) <= {-1, 0, 1}
    assert all((row == per_row[0]).all() for row in per_row)  # one polynomial, every prime
    assert (ring.ntt(ring.from_signed(per_row[0], ring.key_rows)) == secret).all()


def test_a_public_key_is_a_key_level_ciphertext_of_zero(private_context: ts.Context) -> None:
    ring = ring_for_context(private_context)
    secret = _secret_polys(private_context)
    body = seal_layout.body_of(seal_layout.save_stream(private_context.public_key().data))

    key, _ = CiphertextPolys.parse(body)
    noise = ring.to_integers(ring.intt(ring.add(key.polys[0], ring.mul(key.polys[1], secret))))

    assert seal_layout.public_key_body(ring, key.polys) == body
    assert key.parms_id == ring.parms_id(ring.key_rows)
    assert np.abs(noise).max() <= 21  # SEAL's centered binomial noise: at most 21


def test_relinearization_keys_hold_p_mod_q_j_times_s_squared_on_row_j(
    private_context: ts.Context,
) -> None:
    ring = ring_for_context(private_context)
    secret = _secret_polys(private_context)
    squared = ring.mul(secret, secret)
    body = seal_layout.body_of(seal_layout.save_stream(private_context.relin_keys().data))

    parms_id, keys = seal_layout.parse_relin_keys(body)

    assert parms_id == ring.parms_id(ring.key_rows)
    assert len(keys) == 1 and len(keys[0]) == ring.top_rows
    assert seal_layout.relin_keys_body(ring, [k.polys for k in keys[0]]) == body
    for j, key in enumerate(keys[0]):
        gadget = np.zeros_like(squared)
        q = ring.primes[j]
        gadget[j] = (squared[j].astype(object) * (ring.special_prime % q) % q).astype(np.uint64)
        phase = ring.add(key.polys[0], ring.mul(key.polys[1], secret))
        noise = ring.to_integers(ring.intt(ring.sub(phase, gadget)))
        assert np.abs(noise).max() <= 21


def test_encode_and_decode_are_seals(private_context: ts.Context) -> None:
    ring = ring_for_context(private_context)
    values = np.linspace(-3.0, 3.0, ring.n // 2)
    scale = 2.0**40

    poly = seal_layout.encode(ring, list(values), rows=ring.top_rows, scale=scale)
    decoded = seal_layout.decode(ring, ring.parms_id(ring.top_rows), scale, poly)

    np.testing.assert_allclose(decoded, values, atol=1e-9)


def test_the_context_protobuf_mirror_reads_and_writes_tenseals_bytes(
    private_context: ts.Context,
) -> None:
    public = private_context.serialize(save_secret_key=False)

    message = seal_layout.tenseal_context_message()
    message.ParseFromString(public)

    assert message.SerializeToString() == public
    assert message.encryption_type == seal_layout.TENSEAL_ASYMMETRIC
    assert message.public_context.auto_flags == seal_layout.TENSEAL_AUTO_FLAGS
    assert message.public_context.scale == private_context.global_scale
    assert not message.HasField("private_context")


def test_a_context_built_from_a_contexts_own_keys_is_that_public_context(
    private_context: ts.Context,
) -> None:
    ring = ring_for_context(private_context)
    key, _ = CiphertextPolys.parse(
        seal_layout.body_of(seal_layout.save_stream(private_context.public_key().data))
    )
    _, relin = seal_layout.parse_relin_keys(
        seal_layout.body_of(seal_layout.save_stream(private_context.relin_keys().data))
    )

    built = seal_layout.public_context(
        ring,
        public_key=key.polys,
        relin_keys=[k.polys for k in relin[0]],
        scale=private_context.global_scale,
    )
    vector = ts.ckks_vector(built, [1.5, 2.5])

    assert built.serialize() == private_context.serialize(save_secret_key=False)
    assert built.is_public() and not built.has_secret_key()
    np.testing.assert_allclose(
        ts.ckks_vector_from(private_context, vector.serialize()).decrypt(), [1.5, 2.5], atol=1e-4
    )


def test_seal_checks_what_it_loads(private_context: ts.Context) -> None:
    ring = ring_for_context(private_context)
    polys = CiphertextPolys.of(ts.ckks_vector(private_context, [1.0]).ciphertext()[0])
    unreduced = polys.polys.copy()
    unreduced[0, 0, 0] = ring.primes[0]  # not reduced modulo q_0

    with pytest.raises(ValueError):
        CiphertextPolys(polys.parms_id, polys.scale, unreduced).to_seal(ring)
    with pytest.raises(ValueError):
        seal_layout.load_stream(seal.Ciphertext(), ring.seal_context, b"\x00" * 64)


@pytest.mark.parametrize(("value", "scale_bits"), [(0.7351, 30), (-123456.789, 70), (3.0e8, 40)])
def test_a_scalar_encodes_as_seals_encoder_encodes_it(value: float, scale_bits: int) -> None:
    ring = ring_for(PARAMETER_SETS["n8192-depth4"])
    plain = seal.Plaintext()
    seal.CKKSEncoder(ring.seal_context).encode(
        value, list(ring.parms_id(ring.top_rows)), 2.0**scale_bits, plain
    )

    _, _, words = seal_layout.parse_plaintext(seal_layout.body_of(seal_layout.save_stream(plain)))
    ours = seal_layout.encode(ring, value, rows=ring.top_rows, scale=2.0**scale_bits)

    assert (ours == words.reshape(ring.top_rows, ring.n)).all()
