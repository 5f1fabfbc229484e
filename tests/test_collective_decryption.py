"""Collective decryption and public-key switching with smudging: round trips at the reveal scale,
the smudging budget as measured, and what n - 1 parties' shares (or another ciphertext's, job's
or purpose's) give: nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tenseal as ts

from hefl.errors import InvalidArgument, ProtocolError
from hefl.params import PARAMETER_SETS
from hefl.protocols.collective import seal_layout
from hefl.protocols.collective.keyswitch import (
    REVEAL_SCALE_BITS,
    CollectiveDecryptProtocol,
    DecryptionShare,
    PublicKeySwitchProtocol,
    PublicKeySwitchShare,
    Smudging,
    TargetPublicKey,
    ciphertext_of,
    fresh_noise_std,
    sum_noise_std,
)
from hefl.protocols.collective.seal_layout import CiphertextPolys
from tests.collective_support import (
    PARAMETER_SET_NAMES,
    PARTIES,
    Collective,
    collective,
    job_for,
    joint_secret,
    noise_coefficients,
    uniform_values,
)

DEFAULT = "n8192-depth4"
REVEAL_SCALE = 2.0**REVEAL_SCALE_BITS


@pytest.fixture(scope="module", params=PARAMETER_SET_NAMES)
def keys(request: pytest.FixtureRequest) -> Collective:
    return collective(request.param)


@pytest.fixture(scope="module")
def default_keys() -> Collective:
    return collective(DEFAULT)


def _summed_statistics(keys: Collective) -> tuple[CiphertextPolys, np.ndarray]:
    """What phase 2's statistics are: every party's values encrypted at the reveal scale, summed."""
    slots = keys.job.params.slots
    per_party = [uniform_values(slots, seed=i, low=-1e3, high=1e3) for i in range(len(PARTIES))]
    vectors = [ts.ckks_vector(keys.context, v, scale=REVEAL_SCALE) for v in per_party]
    total = vectors[0] + vectors[1] + vectors[2]
    return ciphertext_of(total), np.sum(per_party, axis=0)


def _decryption(
    keys: Collective, ciphertext: CiphertextPolys, purpose: str = "statistics/0"
) -> CollectiveDecryptProtocol:
    noise = sum_noise_std(fresh_noise_std(keys.job.params, len(PARTIES)), len(PARTIES))
    return CollectiveDecryptProtocol(
        keys.job, ciphertext, purpose=purpose, noise_std=noise, smudging=Smudging()
    )


def test_summed_statistics_decrypt_collectively_within_the_stated_error(keys: Collective) -> None:
    ciphertext, expected = _summed_statistics(keys)
    protocol = _decryption(keys, ciphertext)

    shares = {p: protocol.gen_share(s) for p, s in keys.shares.items()}
    revealed = protocol.decrypt(protocol.aggregate_shares(shares))

    error_std = protocol.budget.slot_error_std(ciphertext.scale)
    assert protocol.budget.security_bits >= 40
    assert error_std < 1e-6
    np.testing.assert_allclose(revealed, expected, atol=7 * error_std)


def test_the_smudging_budget(keys: Collective) -> None:
    params = keys.job.params
    noise = sum_noise_std(fresh_noise_std(params, 3), 3)

    budget = Smudging(security_bits=40, decryptions=1024).budget(params, parties=3, noise_std=noise)
    lmss = math.sqrt(12 * 1024) * 2**20 * 9 * noise  # Li-Micciancio-Schultz-Sorrell, t = 9 sigma

    assert budget.security_bits == pytest.approx(40)
    assert budget.flooding_std >= lmss
    # 2^(s/2) sqrt(tau/2) ||e||_2, with ||e||_2 = 1.25 sqrt(N) sigma_e
    assert budget.flooding_std == pytest.approx(
        2**20 * math.sqrt(512) * 1.25 * math.sqrt(params.poly_modulus_degree) * noise
    )


def test_the_fresh_noise_estimate_bounds_what_seal_encryption_leaves(keys: Collective) -> None:
    """The budget assumes an encryption at the ciphertext's own level; SEAL encrypts one level up
    and divides by P, which leaves far less. Measured at the training scale, where encoding is
    exact enough to see the noise."""
    ring = keys.ring
    slots = keys.job.params.slots
    scale = 2.0**keys.job.params.scale_bits
    values = uniform_values(slots, seed=9)
    encoded = seal_layout.encode(ring, list(values), rows=ring.top_rows, scale=scale)

    vectors = [ts.ckks_vector(keys.context, values) for _ in PARTIES]
    total = ciphertext_of(vectors[0] + vectors[1] + vectors[2])
    noise = noise_coefficients(
        ring, total, joint_secret(ring, keys.shares), ring.add(ring.add(encoded, encoded), encoded)
    )

    estimate = sum_noise_std(fresh_noise_std(keys.job.params, 3), 3)
    assert noise.std() < estimate / 4


def test_each_share_floods_with_the_stated_deviation(default_keys: Collective) -> None:
    keys = default_keys
    ring = keys.ring
    ciphertext, _ = _summed_statistics(keys)
    protocol = _decryption(keys, ciphertext)
    party = PARTIES[0]
    share = keys.shares[party]

    flood = ring.sub(
        protocol.gen_share(share).poly,
        ring.mul(ciphertext.polys[1], share.ntt(ciphertext.rows)),
    )
    coefficients = ring.to_integers(ring.intt(flood)).astype(np.float64)

    assert abs(coefficients.std() / protocol.budget.flooding_std - 1) < 0.03
    assert abs(coefficients.mean()) < 0.05 * protocol.budget.flooding_std


@pytest.mark.parametrize("missing", PARTIES)
def test_any_n_minus_1_decryption_shares_give_garbage(
    default_keys: Collective, missing: str
) -> None:
    keys = default_keys
    ring = keys.ring
    ciphertext, expected = _summed_statistics(keys)
    protocol = _decryption(keys, ciphertext)
    shares = [protocol.gen_share(s).poly for p, s in keys.shares.items() if p != missing]

    partial = ring.add(ciphertext.polys[0], ring.sum(shares))
    values = seal_layout.decode(ring, ciphertext.parms_id, ciphertext.scale, partial)
    coefficients = ring.to_integers(ring.intt(partial)).astype(np.float64)

    # Without the missing c1 s_i the plaintext is uniform modulo Q: |coefficient| averages Q/4
    # (the true one is below 2^100 of Q = 2^180+), and the decoded slots are nowhere near.
    assert np.abs(coefficients).mean() > ring.modulus(ciphertext.rows) / 8
    assert np.abs(values - expected).min() > 1e6


def test_shares_bind_the_ciphertext_the_purpose_and_the_job(default_keys: Collective) -> None:
    keys = default_keys
    ciphertext, _ = _summed_statistics(keys)
    other_ciphertext, _ = _summed_statistics(keys)
    protocol = _decryption(keys, ciphertext)
    shares = {p: protocol.gen_share(s) for p, s in keys.shares.items()}
    party = PARTIES[1]
    foreign = {
        "another ciphertext": _decryption(keys, other_ciphertext).gen_share(keys.shares[party]),
        "another purpose": _decryption(keys, ciphertext, "model/0").gen_share(keys.shares[party]),
        "another job": CollectiveDecryptProtocol(
            job_for(keys.job.params, job_id="job-2"),
            ciphertext,
            purpose="statistics/0",
            noise_std=1.0,
            smudging=Smudging(),
        ).gen_share(keys.shares[party]),
    }

    for share in foreign.values():
        with pytest.raises(ProtocolError, match="hospital-b.*another job, key, iteration"):
            protocol.aggregate_shares({**shares, party: share})


def test_decryption_shares_round_trip_and_are_checked(default_keys: Collective) -> None:
    keys = default_keys
    ciphertext, _ = _summed_statistics(keys)
    share = _decryption(keys, ciphertext).gen_share(keys.shares[PARTIES[0]])

    parsed = DecryptionShare.from_bytes(share.to_bytes(), keys.job, rows=ciphertext.rows)

    assert parsed.tag == share.tag and (parsed.poly == share.poly).all()
    with pytest.raises(InvalidArgument, match="shape"):
        DecryptionShare.from_bytes(share.to_bytes(), keys.job, rows=1)


# -- public-key switch to one party's own key ----------------------------------------------


def _switch(
    keys: Collective, ciphertext: CiphertextPolys, target: ts.Context
) -> PublicKeySwitchProtocol:
    noise = sum_noise_std(fresh_noise_std(keys.job.params, len(PARTIES)), len(PARTIES))
    return PublicKeySwitchProtocol(
        keys.job,
        ciphertext,
        target=TargetPublicKey.of_context(keys.job, target),
        purpose="model/0",
        noise_std=noise,
        smudging=Smudging(),
    )


def test_a_ciphertext_switched_to_a_partys_own_key_decrypts_with_its_context(
    keys: Collective,
) -> None:
    ciphertext, expected = _summed_statistics(keys)
    own = keys.job.params.make_context()  # the receiving party's own, ordinary private context
    protocol = _switch(keys, ciphertext, own)

    shares = {p: protocol.gen_share(s) for p, s in keys.shares.items()}
    switched = protocol.key_switch(protocol.aggregate_shares(shares))
    vector = seal_layout.vector_of(own, switched, size=keys.job.params.slots)

    error_std = protocol.budget.slot_error_std(ciphertext.scale)
    np.testing.assert_allclose(vector.decrypt(), expected, atol=7 * error_std + 1e-6)


def test_only_the_target_decrypts_a_switched_ciphertext(default_keys: Collective) -> None:
    keys = default_keys
    ciphertext, expected = _summed_statistics(keys)
    target = keys.job.params.make_context()
    bystander = keys.job.params.make_context()
    protocol = _switch(keys, ciphertext, target)
    shares = {p: protocol.gen_share(s) for p, s in keys.shares.items()}

    switched = protocol.key_switch(protocol.aggregate_shares(shares))
    partial = protocol.key_switch(
        PublicKeySwitchShare(protocol.tag, keys.ring.sum([shares[p].polys for p in PARTIES[:2]]))
    )
    by_bystander = seal_layout.vector_of(bystander, switched, size=keys.job.params.slots)
    by_target_partial = seal_layout.vector_of(target, partial, size=keys.job.params.slots)

    assert np.abs(np.array(by_bystander.decrypt()) - expected).min() > 1e6
    assert np.abs(np.array(by_target_partial.decrypt()) - expected).min() > 1e6


def test_a_target_key_of_other_parameters_is_refused(default_keys: Collective) -> None:
    other = PARAMETER_SETS["n16384-depth4"].make_context()

    with pytest.raises(InvalidArgument, match="not of n8192-depth4"):
        TargetPublicKey.of_context(default_keys.job, other)


def test_public_key_switch_shares_round_trip(default_keys: Collective) -> None:
    keys = default_keys
    ciphertext, _ = _summed_statistics(keys)
    share = _switch(keys, ciphertext, keys.job.params.make_context()).gen_share(
        keys.shares[PARTIES[0]]
    )

    parsed = PublicKeySwitchShare.from_bytes(share.to_bytes(), keys.job, rows=ciphertext.rows)

    assert parsed.tag == share.tag and (parsed.polys == share.polys).all()
