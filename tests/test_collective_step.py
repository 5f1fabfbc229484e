"""The training's collective protocols (hefl.protocols.collective.step): the masked optimizer
step, whose finalized ciphertexts hold the plaintext Nesterov step of the true values although
the coordinator saw only masked slot sums and each party stepped its own masks; EncToShare of
the label term; the vectorised coefficient 0 against the schoolbook product."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import tenseal as ts

from hefl.algorithm import l2_vector, nesterov_step
from hefl.errors import InvalidArgument, ProtocolError
from hefl.protocols.collective.keyswitch import ciphertext_of
from hefl.protocols.collective.seal_layout import CiphertextPolys
from hefl.protocols.collective.step import (
    EncToShareProtocol,
    EncToShareShare,
    MaskedStepProtocol,
    MaskedStepShare,
    constant_terms,
)
from tests.collective_support import (
    PARTIES,
    Collective,
    at_last_level,
    collective,
    decrypt_with,
    joint_secret,
    uniform_values,
)

COLUMNS = 4


@pytest.fixture(scope="module")
def keys() -> Collective:
    return collective("n8192-depth4")


def _gradients(keys: Collective, seed: int) -> tuple[list, np.ndarray]:
    values = [uniform_values(keys.job.params.slots, seed + j, -0.5, 0.5) for j in range(COLUMNS)]
    cts = [at_last_level(ciphertext_of(ts.ckks_vector(keys.context, v)), keys.ring) for v in values]
    return cts, np.array([v.sum() for v in values])


def test_constant_terms_equal_the_product_s_coefficient_0(keys: Collective) -> None:
    ring = keys.ring
    share = keys.shares[PARTIES[0]]
    cts, _ = _gradients(keys, 3)
    fast = constant_terms(ring, np.stack([c.polys[1] for c in cts]), share)
    for column, ct in enumerate(cts):
        product = ring.intt(ring.mul(ct.polys[1], share.ntt(ct.rows)))
        assert fast[:, column].tolist() == product[:, 0].tolist()


def test_masked_step_gives_the_plaintext_nesterov_step(keys: Collective) -> None:
    """Coordinator: nesterov_step on masked values; parties: on their masks; the finalized
    ciphertexts decrypt to k x the true step's weights (replica equality)."""
    rows, lr, k, iteration = 1000, 0.9, 0.25, 2
    l2 = l2_vector(COLUMNS, 0.01)
    rng = np.random.default_rng(0)
    weights, velocity = rng.uniform(-1, 1, COLUMNS), rng.uniform(-1, 1, COLUMNS)
    label_term = rng.uniform(-50, 50, COLUMNS)
    cts, sums = _gradients(keys, 10)
    # State masks of each party (any values: they are linear shares of the masks).
    party_masks = {
        p: (
            rng.uniform(-1e6, 1e6, COLUMNS),
            rng.uniform(-1e6, 1e6, COLUMNS),
            rng.uniform(-1e6, 1e6, COLUMNS),
        )
        for p in PARTIES
    }
    masked_w = weights + sum(m[0] for m in party_masks.values())
    masked_v = velocity + sum(m[1] for m in party_masks.values())
    masked_c = label_term + sum(m[2] for m in party_masks.values())

    def step(w, v, g, c):
        return nesterov_step(
            weights=w,
            velocity=v,
            gradient_sums=g,
            label_term=c,
            rows=rows,
            learning_rate=lr,
            l2=l2,
            iteration=iteration,
        )

    protocol = MaskedStepProtocol(
        keys.job, cts, iteration=iteration, step_id="t", output_scale_bits=30
    )
    new_party = {}

    def party_output(p):
        def output(g):
            new_party[p] = step(party_masks[p][0], party_masks[p][1], g, party_masks[p][2])
            return k * new_party[p][0]

        return output

    shares = {p: protocol.gen_share(s, output=party_output(p)) for p, s in keys.shares.items()}
    for share in shares.values():  # round trip
        again = MaskedStepShare.from_bytes(share.to_bytes(), keys.job, rows=1, columns=COLUMNS)
        assert again.to_bytes() == share.to_bytes()
    aggregate = protocol.aggregate_shares(shares)
    x = protocol.masked_slot_sums(aggregate)
    assert np.all(np.abs(x - sums) > 1e3)  # masked
    new_w, new_v = step(masked_w, masked_v, x, masked_c)
    fresh = protocol.finalize(aggregate, k * new_w)
    true_w, true_v = step(weights, velocity, sums, label_term)
    secret = joint_secret(keys.ring, keys.shares)
    for j, ct in enumerate(fresh):
        decrypted = decrypt_with(keys.ring, ct, secret)
        assert np.max(np.abs(decrypted - k * true_w[j])) < 1e-4
        # It travels in SEAL's seeded form, and SEAL expands a_j from the seed as we do.
        assert (CiphertextPolys.of(ct.to_seal(keys.ring)).polys == ct.polys).all()
        assert len(ct.body()) < ct.polys.nbytes / 2 + 1024
    unmasked_v = new_v - sum(new_party[p][1] for p in PARTIES)
    assert np.max(np.abs(unmasked_v - true_v)) < 1e-5


def test_the_zero_step_decrypts_nothing_and_gives_the_plaintext_step(keys: Collective) -> None:
    """Training's first step (zero weights, so zero data gradients): the shares carry no
    decryption part, the coordinator's slot sums are 0, and the finalized ciphertexts decrypt
    to k x the step of a zero gradient."""
    rows, lr, k, l2 = 1000, 0.9, 0.25, l2_vector(COLUMNS, 0.01)
    rng = np.random.default_rng(1)
    label_term = rng.uniform(-50, 50, COLUMNS)
    label_masks = {p: rng.uniform(-1e6, 1e6, COLUMNS) for p in PARTIES}
    zeros = np.zeros(COLUMNS)

    def step(c, g):
        return nesterov_step(
            weights=zeros, velocity=zeros, gradient_sums=g, label_term=c, rows=rows,
            learning_rate=lr, l2=l2, iteration=0,
        )  # fmt: skip

    protocol = MaskedStepProtocol(
        keys.job, [], iteration=0, step_id="t", output_scale_bits=30, zero_columns=COLUMNS
    )

    def party_output(party: str) -> Callable[[np.ndarray], np.ndarray]:
        return lambda g: k * step(label_masks[party], g)[0]

    shares = {p: protocol.gen_share(s, output=party_output(p)) for p, s in keys.shares.items()}
    for share in shares.values():
        assert share.masked.shape == (0, COLUMNS)
        again = MaskedStepShare.from_bytes(share.to_bytes(), keys.job, rows=0, columns=COLUMNS)
        assert again.to_bytes() == share.to_bytes()
    aggregate = protocol.aggregate_shares(shares)
    sums = protocol.masked_slot_sums(aggregate)
    assert sums.tolist() == [0.0] * COLUMNS
    masked_c = label_term + sum(label_masks.values())
    fresh = protocol.finalize(aggregate, k * step(masked_c, sums)[0])
    secret = joint_secret(keys.ring, keys.shares)
    true_w = step(label_term, zeros)[0]
    for j, ct in enumerate(fresh):
        assert np.max(np.abs(decrypt_with(keys.ring, ct, secret) - k * true_w[j])) < 1e-4
    with pytest.raises(InvalidArgument, match="gradients or a count of zero columns"):
        MaskedStepProtocol(keys.job, [], iteration=0, step_id="t", output_scale_bits=30)


def test_masked_step_refuses_missing_and_foreign_shares(keys: Collective) -> None:
    cts, _ = _gradients(keys, 20)
    protocol = MaskedStepProtocol(keys.job, cts, iteration=0, step_id="t", output_scale_bits=30)
    other = MaskedStepProtocol(keys.job, cts, iteration=1, step_id="t", output_scale_bits=30)
    zero = lambda g: 0 * g  # noqa: E731
    shares = {p: protocol.gen_share(s, output=zero) for p, s in keys.shares.items()}
    with pytest.raises(ProtocolError):
        protocol.aggregate_shares({p: shares[p] for p in PARTIES[:-1]})
    shares[PARTIES[0]] = other.gen_share(keys.shares[PARTIES[0]], output=zero)
    with pytest.raises(ProtocolError):
        protocol.aggregate_shares(shares)
    with pytest.raises(InvalidArgument):
        MaskedStepProtocol(
            keys.job,
            [ciphertext_of(ts.ckks_vector(keys.context, [1.0]))],
            iteration=0,
            step_id="t",
            output_scale_bits=30,
        )


def test_enc_to_share_gives_masked_slots_and_additive_shares(keys: Collective) -> None:
    values = uniform_values(COLUMNS, 5, -300, 300)
    ct = ciphertext_of(ts.ckks_vector(keys.context, values))
    protocol = EncToShareProtocol(keys.job, ct, purpose="label-term")
    made = {p: protocol.gen_share(s) for p, s in keys.shares.items()}
    shares = {
        p: EncToShareShare.from_bytes(m[0].to_bytes(), keys.job, rows=ct.rows)
        for p, m in made.items()
    }
    coordinator = protocol.finalize(protocol.aggregate_shares(shares))[:COLUMNS]
    assert np.all(np.abs(coordinator - values) > 1e3)
    total = coordinator - sum(m[1][:COLUMNS] for m in made.values())
    assert np.max(np.abs(total - values)) < 1e-3


@pytest.mark.parametrize("name", ["n8192-depth4", "n16384-depth4"])
def test_products_modulo_the_large_primes_are_exact(name: str) -> None:
    """The long-double quotient estimate never changes a residue: random and extreme values."""
    from hefl.params import get_parameter_set
    from hefl.protocols.collective.ring import ring_for

    ring = ring_for(get_parameter_set(name))
    rng = np.random.default_rng(5)
    for q in ring.primes:
        a = np.concatenate([rng.integers(0, q, 20000, dtype=np.uint64), [0, 1, q - 1, q - 2]])
        b = np.concatenate([rng.integers(0, q, 20000, dtype=np.uint64), [q - 1, q - 1, q - 1, 2]])
        a, b = a.astype(np.uint64)[None, :], b.astype(np.uint64)[None, :]
        column = np.array([q], dtype=object)
        exact = (a.astype(object) * b.astype(object)) % column[:, None]
        row = ring.primes.index(q)
        padded_a = np.zeros((row + 1, a.shape[1]), dtype=np.uint64)
        padded_b = np.zeros_like(padded_a)
        padded_a[row], padded_b[row] = a[0], b[0]
        assert ring.mul(padded_a, padded_b)[row].tolist() == exact[0].tolist()


@pytest.mark.parametrize("name", ["n8192-depth4", "n16384-depth4"])
def test_the_long_double_and_python_integer_products_agree(name: str) -> None:
    """Both paths of _mulmod_large (long double where it has a 64-bit mantissa, Python integers
    elsewhere) give the same residues; this machine's path is the one its long double allows."""
    import hefl.protocols.collective.ring as ring_module
    from hefl.params import get_parameter_set

    assert ring_module.LONG_DOUBLE_MULMOD == (np.finfo(np.longdouble).nmant >= 63)
    ring = ring_module.ring_for(get_parameter_set(name))
    rng = np.random.default_rng(6)
    for q in ring.primes:
        a = np.concatenate([rng.integers(0, q, 5000, dtype=np.uint64), [0, 1, q - 1, q - 2]])
        b = np.concatenate([rng.integers(0, q, 5000, dtype=np.uint64), [q - 1, q - 1, q - 1, 2]])
        a, b = a.astype(np.uint64), b.astype(np.uint64)
        exact = ring_module._mulmod_python(a, b, q)
        assert exact.dtype == np.uint64 and int(exact.max()) < q
        expected = [(int(x) * int(y)) % q for x, y in zip(a.tolist(), b.tolist(), strict=True)]
        assert exact.tolist() == expected
        if ring_module.LONG_DOUBLE_MULMOD:
            assert ring_module._mulmod_long_double(a, b, q).tolist() == expected


@pytest.mark.parametrize("name", ["n8192-depth4", "n16384-depth4"])
def test_the_fast_ring_paths_equal_the_exact_integers(name: str) -> None:
    """Shoup products by a fixed operand, the branch-free add and sub, coefficient 0 from the
    NTT form and the shifted transform of small polynomials, against Python integers and the
    plain transform, edge residues included."""
    from hefl.params import get_parameter_set
    from hefl.protocols.collective.ring import ring_for
    from hefl.protocols.collective.sampling import centered_binomial

    ring = ring_for(get_parameter_set(name))
    rng = np.random.default_rng(8)
    a = np.stack(
        [rng.integers(0, q, size=(3, ring.n), dtype=np.uint64) for q in ring.primes], axis=1
    )
    b = np.stack([rng.integers(0, q, size=ring.n, dtype=np.uint64) for q in ring.primes])
    for j, q in enumerate(ring.primes):
        a[0, j, :4], b[j, :4] = [0, 1, q - 1, q - 2], [q - 1, q - 1, q - 1, 0]
    moduli = np.array(ring.primes, dtype=object)[:, None]
    wide_a, wide_b = a.astype(object), b.astype(object)

    assert np.array_equal(ring.mul_by(a, ring.multiplier(b)), (wide_a * wide_b) % moduli)
    assert np.array_equal(ring.add(a, b), (wide_a + wide_b) % moduli)
    assert np.array_equal(ring.sub(a, b), (wide_a - wide_b) % moduli)
    assert np.array_equal(ring.sub(b, a), (wide_b - wide_a) % moduli)
    top = a[:, : ring.top_rows]
    expected = np.stack([ring.intt(poly)[:, 0] for poly in top], axis=1)
    assert np.array_equal(ring.constant_coefficients(top), expected)
    for small in (centered_binomial(ring.n), np.full(ring.n, -64), np.full(ring.n, -65)):
        plain = ring.ntt(ring.from_signed(small, ring.key_rows))
        assert np.array_equal(ring.small_ntt(small, ring.key_rows), plain)
