"""Collective key generation: the key share, the public key (CKG), the relinearization key (RKG),
and the ordinary TenSEAL context they make, on which TenSEAL and the training kernel run."""

from __future__ import annotations

import ast
import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts

from coordinator.gradient import GradientKernel
from hefl import sealio
from hefl.algorithm import SigmoidPolynomial
from hefl.errors import InvalidArgument, PermissionDenied, ProtocolError
from hefl.models import get_model
from hefl.params import PARAMETER_SETS, check_public_context
from hefl.protocols.collective.crs import CrsLabel
from hefl.protocols.collective.keygen import (
    PublicKeyGenProtocol,
    PublicKeyShare,
    RelinKeyGenProtocol,
    RelinKeyRound1Share,
    RelinKeyRound2Share,
    relin_key_noise_std,
)
from hefl.protocols.collective.keyswitch import (
    REVEAL_SCALE_BITS,
    CollectiveDecryptProtocol,
    Smudging,
    ciphertext_of,
    refreshed_noise_std,
)
from hefl.protocols.collective.refresh import MaskedTransformProtocol, RefreshProtocol
from hefl.protocols.collective.sampling import CBD_STD
from hefl.protocols.collective.seal_layout import CiphertextPolys
from hefl.protocols.collective.secret import SecretKeyShare
from tests.collective_support import (
    PARAMETER_SET_NAMES,
    PARTIES,
    Collective,
    at_last_level,
    collective,
    decrypt_with,
    job_for,
    joint_secret,
    uniform_values,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = "n8192-depth4"


@pytest.fixture(scope="module", params=PARAMETER_SET_NAMES)
def keys(request: pytest.FixtureRequest) -> Collective:
    return collective(request.param)


@pytest.fixture(scope="module")
def default_keys() -> Collective:
    return collective(DEFAULT)


def _reveal(keys: Collective, ciphertext: CiphertextPolys, purpose: str) -> np.ndarray:
    """Decrypt a fresh (refreshed) ciphertext collectively, smudged for 40 bits."""
    protocol = CollectiveDecryptProtocol(
        keys.job,
        ciphertext,
        purpose=purpose,
        noise_std=refreshed_noise_std(keys.job.params, keys.job.size),
        smudging=Smudging(),
    )
    shares = {p: protocol.gen_share(s) for p, s in keys.shares.items()}
    return protocol.decrypt(protocol.aggregate_shares(shares))


# -- the key share -----------------------------------------------------------------------------


def test_a_key_share_is_ternary_and_shows_nothing_in_its_repr() -> None:
    share = SecretKeyShare.generate(PARAMETER_SETS[DEFAULT])

    assert set(np.unique(share.coefficients()).tolist()) == {-1, 0, 1}
    assert repr(share) == "SecretKeyShare(<secret>, params='n8192-depth4')"


def test_a_key_share_never_leaves_the_process_by_pickling() -> None:
    share = SecretKeyShare.generate(PARAMETER_SETS[DEFAULT])

    with pytest.raises(TypeError, match="must not leave the party's process"):
        pickle.dumps(share)
    with pytest.raises(TypeError):
        copy.deepcopy(share)


def test_saving_a_key_share_is_explicit_and_round_trips() -> None:
    share = SecretKeyShare.generate(PARAMETER_SETS[DEFAULT])

    saved = share.to_bytes(include_secret_key=True)
    restored = SecretKeyShare.from_bytes(saved)

    assert (restored.coefficients() == share.coefficients()).all()
    with pytest.raises(PermissionDenied):
        share.to_bytes(include_secret_key=False)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="corrupted"):
        SecretKeyShare.from_bytes(saved[:-1] + bytes([saved[-1] ^ 1]))


def test_the_coordinator_never_imports_a_key_share() -> None:
    """Key shares are created and held by parties; the coordinator's code cannot name one."""
    offending = []
    for path in sorted((ROOT / "coordinator").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith(
                "collective.secret"
            ):
                offending.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Name | ast.Attribute) and (
                getattr(node, "id", None) in {"SecretKeyShare", "RelinKeyEphemeral"}
                or getattr(node, "attr", None) in {"SecretKeyShare", "RelinKeyEphemeral"}
            ):
                offending.append(f"{path.name}:{node.lineno}")

    assert offending == []


# -- public key ---------------------------------------------------------------------------


def test_the_collective_public_key_is_a_public_key_of_the_summed_shares(keys: Collective) -> None:
    ring = keys.ring
    secret = joint_secret(ring, keys.shares)

    pk0, pk1 = keys.public_key.polys
    noise = ring.to_integers(ring.intt(ring.add(pk0, ring.mul(pk1, secret)))).astype(np.float64)

    assert np.abs(noise).max() <= 21 * len(PARTIES)
    assert abs(noise.std() / (np.sqrt(len(PARTIES)) * CBD_STD) - 1) < 0.05


def test_the_collective_keys_make_an_ordinary_public_context(keys: Collective) -> None:
    context = keys.context
    wire = context.serialize()

    reloaded = ts.context_from(wire)

    assert check_public_context(reloaded, keys.job.params.name) == keys.job.params
    assert not reloaded.has_secret_key() and reloaded.has_relin_keys()


def test_what_is_encrypted_under_the_collective_key_decrypts_under_the_summed_shares(
    keys: Collective,
) -> None:
    values = uniform_values(keys.job.params.slots, seed=1)

    vector = ts.ckks_vector(keys.context, values)
    wire = ts.ckks_vector_from(ts.context_from(keys.context.serialize()), vector.serialize())
    decrypted = decrypt_with(keys.ring, ciphertext_of(wire), joint_secret(keys.ring, keys.shares))

    np.testing.assert_allclose(decrypted[: values.size], values, atol=1e-4)


# -- relinearization key ----------------------------------------------------------------------


def test_the_relinearization_key_holds_s_squared_with_the_estimated_noise(
    keys: Collective,
) -> None:
    ring = keys.ring
    secret = joint_secret(ring, keys.shares)
    squared = ring.mul(secret, secret)

    stds = []
    for j, (k0, k1) in enumerate(keys.relin_key.polys):
        q = ring.primes[j]
        gadget = np.zeros_like(squared)
        gadget[j] = (squared[j].astype(object) * (ring.special_prime % q) % q).astype(np.uint64)
        phase = ring.sub(ring.add(k0, ring.mul(k1, secret)), gadget)
        stds.append(ring.to_integers(ring.intt(phase)).astype(np.float64).std())

    expected = relin_key_noise_std(keys.job.params, len(PARTIES))
    assert all(abs(std / expected - 1) < 0.1 for std in stds)


def test_an_ephemeral_key_serves_one_second_round_of_its_own_run(default_keys: Collective) -> None:
    job = default_keys.job
    share = default_keys.shares[PARTIES[0]]
    protocol = RelinKeyGenProtocol(job)
    round1, ephemeral = protocol.gen_round1(share)
    other = RelinKeyGenProtocol(job_for(job.params, job_id="job-2"))
    _, foreign = other.gen_round1(share)
    aggregate = RelinKeyRound1Share(protocol.tag1, round1.polys)

    protocol.gen_round2(share, ephemeral, aggregate)

    with pytest.raises(ProtocolError, match="was used"):
        protocol.gen_round2(share, ephemeral, aggregate)
    with pytest.raises(ProtocolError, match="another relinearization-key run"):
        protocol.gen_round2(share, foreign, aggregate)
    with pytest.raises(TypeError):
        pickle.dumps(foreign)


def test_a_product_and_relinearization_under_the_collective_keys_decrypt_collectively(
    default_keys: Collective,
) -> None:
    keys = default_keys
    ring = keys.ring
    x = uniform_values(keys.job.params.slots, seed=2)
    y = uniform_values(keys.job.params.slots, seed=3)

    product = ts.ckks_vector(keys.context, x) * ts.ckks_vector(keys.context, y)  # relin + rescale
    ciphertext = ciphertext_of(product)
    refresh = RefreshProtocol(
        keys.job,
        at_last_level(ciphertext, ring),
        label=CrsLabel(keys.job.job_id, "refresh", key="x*y"),
        scale_up_bits=REVEAL_SCALE_BITS - keys.job.params.scale_bits,
    )
    fresh = refresh.finalize(
        refresh.aggregate_shares({p: refresh.gen_share(s) for p, s in keys.shares.items()})
    )
    revealed = _reveal(keys, fresh, "x*y")

    errors = np.abs(revealed[: x.size] - x * y)
    assert ciphertext.rows == ring.top_rows - 1
    # The collective key's noise (std ~1000, not 3.24) meets SEAL's digits, which lie in
    # [0, q_j) and so have a mean q_j / 2: the slots whose roots lie near 1 (slot 0 first)
    # carry a key-dependent bias of ~1e-3 (module docstring of keygen); every other slot is
    # within a few 1e-5.
    assert errors.max() < 4e-3
    assert np.median(errors) < 3e-5


def test_the_training_kernel_runs_unchanged_on_the_collective_context(
    default_keys: Collective,
) -> None:
    """coordinator.gradient on the collective keys; each column's slot sum S_j revealed through
    the slot-sum refresh and a smudged collective decryption, against float64 and against the
    same kernel under a single SEAL key."""
    keys = default_keys
    slots = keys.job.params.slots
    sigmoid = SigmoidPolynomial.fit(16.0)
    k, a, b = sigmoid.encrypted_form()
    rng = np.random.default_rng(5)
    features = np.column_stack([rng.uniform(-2, 2, (slots, 3)), np.ones(slots)])
    weights = np.array([0.8, -0.5, 0.3, 0.1])
    terms = (sigmoid(features @ weights) - 0.5)[:, None] * features
    single = keys.job.params.make_context()

    def gradient_sums(context: ts.Context) -> list[CiphertextPolys]:
        kernel = GradientKernel(context)
        columns = [kernel.open(ts.ckks_vector(context, features[:, j])) for j in range(4)]
        scaled = [kernel.open(ts.ckks_vector(context, np.full(slots, k * w))) for w in weights]
        return [
            CiphertextPolys.of(g)
            for g in kernel.gradient_sums(scaled, [columns], get_model().kernel())
        ]

    revealed = []
    for j, gradient in enumerate(gradient_sums(keys.context)):
        transform = MaskedTransformProtocol(
            keys.job,
            gradient,
            label=CrsLabel(keys.job.job_id, "refresh", key=f"column-{j}"),
            transform=lambda total: total,
            transform_id="identity",
            output_scale_bits=REVEAL_SCALE_BITS,
        )
        shares = {p: transform.gen_share(s) for p, s in keys.shares.items()}
        fresh = transform.finalize(transform.aggregate_shares(shares))
        revealed.append(_reveal(keys, fresh, f"S/{j}")[0])
    single_sums = [
        float(
            np.sum(
                ts.ckks_vector_from(
                    single, sealio.vector_bytes(g.to_seal(keys.ring), size=slots, scale=g.scale)
                ).decrypt()
            )
        )
        for g in gradient_sums(single)
    ]

    # Both keys share TenSEAL's scale labelling (7.5e-4 relative); the collective keys add ~0.02.
    exact = terms.sum(axis=0)
    assert np.abs(np.array(revealed) - single_sums).max() < 0.05, (revealed, single_sums)
    assert (np.abs(np.array(revealed) - exact) < 2e-3 * np.abs(terms).sum(axis=0)).all()


# -- shares: wire, roster, jobs ---------------------------------------------------------------


def test_key_generation_shares_round_trip(default_keys: Collective) -> None:
    keys = default_keys
    share = keys.shares[PARTIES[0]]
    ckg = PublicKeyGenProtocol(keys.job)
    rkg = RelinKeyGenProtocol(keys.job)
    public = ckg.gen_share(share)
    round1, ephemeral = rkg.gen_round1(share)
    round2 = rkg.gen_round2(share, ephemeral, round1)

    parsed_public = PublicKeyShare.from_bytes(public.to_bytes(), keys.job)
    parsed_round1 = RelinKeyRound1Share.from_bytes(round1.to_bytes(), keys.job)
    parsed_round2 = RelinKeyRound2Share.from_bytes(round2.to_bytes(), keys.job)

    assert (parsed_public.tag, parsed_public.to_bytes()) == (public.tag, public.to_bytes())
    assert (parsed_round1.tag, parsed_round1.to_bytes()) == (round1.tag, round1.to_bytes())
    assert (parsed_round2.tag, parsed_round2.to_bytes()) == (round2.tag, round2.to_bytes())


def test_a_share_that_is_not_one_is_refused_where_it_enters(default_keys: Collective) -> None:
    keys = default_keys
    data = PublicKeyGenProtocol(keys.job).gen_share(keys.shares[PARTIES[0]]).to_bytes()
    unreduced = bytearray(data)
    unreduced[-8:] = (2**64 - 1).to_bytes(8, "little")

    with pytest.raises(InvalidArgument, match="trailing"):
        PublicKeyShare.from_bytes(data + b"\x00", keys.job)
    with pytest.raises(InvalidArgument, match="truncated"):
        PublicKeyShare.from_bytes(data[:-8], keys.job)
    with pytest.raises(InvalidArgument, match="not reduced"):
        PublicKeyShare.from_bytes(bytes(unreduced), keys.job)
    with pytest.raises(InvalidArgument, match="where a relin-key-round-1 share was expected"):
        RelinKeyRound1Share.from_bytes(data, keys.job)
    with pytest.raises(InvalidArgument, match="shape"):
        PublicKeyShare.from_bytes(data, job_for(PARAMETER_SETS["n16384-depth4"]))


def test_a_share_sends_rows_of_primes_below_2_32_as_4_byte_words(
    default_keys: Collective,
) -> None:
    keys = default_keys
    ring = keys.ring
    share = PublicKeyGenProtocol(keys.job).gen_share(keys.shares[PARTIES[0]])
    data = share.to_bytes()
    head = len(b"HEFL-CS2") + 1 + 32 + 2
    row_bytes = sum(1 + (4 if q < 2**32 else 8) * ring.n for q in ring.primes)
    bad_word = bytearray(data)
    bad_word[head + 6] = 5  # the first row's word size

    assert len(data) == head + 6 + row_bytes  # one polynomial at the key level
    assert PublicKeyShare.from_bytes(data, keys.job).to_bytes() == data
    with pytest.raises(InvalidArgument, match="5-byte words"):
        PublicKeyShare.from_bytes(bytes(bad_word), keys.job)


def test_key_generation_needs_every_roster_party(default_keys: Collective) -> None:
    keys = default_keys
    ckg = PublicKeyGenProtocol(keys.job)
    shares = {p: ckg.gen_share(s) for p, s in keys.shares.items()}

    with pytest.raises(ProtocolError, match=r"n-of-n.*missing \['hospital-c'\]"):
        ckg.aggregate_shares({p: shares[p] for p in PARTIES[:2]})
    with pytest.raises(ProtocolError, match=r"not on the roster \['stranger'\]"):
        ckg.aggregate_shares({**shares, "stranger": shares[PARTIES[0]]})


def test_a_share_of_another_job_does_not_combine(default_keys: Collective) -> None:
    keys = default_keys
    ring = keys.ring
    ckg = PublicKeyGenProtocol(keys.job)
    other = PublicKeyGenProtocol(job_for(keys.job.params, job_id="job-2"))
    shares = {p: ckg.gen_share(s) for p, s in keys.shares.items()}
    foreign = other.gen_share(keys.shares[PARTIES[2]])

    with pytest.raises(ProtocolError, match="hospital-c.*another job"):
        ckg.aggregate_shares({**shares, PARTIES[2]: foreign})

    # Stamped with this job's tag, a share for another job's polynomial makes no key: the
    # would-be public key's noise is uniform modulo Q (mean |coefficient| Q/4), not small.
    forged = PublicKeyShare(ckg.tag, foreign.poly)
    key = ckg.public_key(ckg.aggregate_shares({**shares, PARTIES[2]: forged})).polys
    secret = joint_secret(ring, keys.shares)
    noise = ring.to_integers(ring.intt(ring.add(key[0], ring.mul(key[1], secret))[:1]))
    assert np.abs(noise.astype(np.float64)).mean() > ring.primes[0] / 8


def test_a_second_round_on_another_first_round_does_not_combine(
    default_keys: Collective,
) -> None:
    keys = default_keys
    rkg = RelinKeyGenProtocol(keys.job)
    round1, ephemeral = {}, {}
    for party, share in keys.shares.items():
        round1[party], ephemeral[party] = rkg.gen_round1(share)
    aggregate = rkg.aggregate_round1(round1)
    shifted = RelinKeyRound1Share(aggregate.tag, keys.ring.neg(aggregate.polys))
    round2 = {
        p: rkg.gen_round2(s, ephemeral[p], shifted if p == PARTIES[1] else aggregate)
        for p, s in keys.shares.items()
    }

    with pytest.raises(ProtocolError, match="hospital-b"):
        rkg.aggregate_round2(aggregate, round2)
