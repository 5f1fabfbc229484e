"""Collective masked refresh: a last-level ciphertext back to a fresh top-level one, as is or
through a linear transform of its slot sum; what the coordinator sees of it (masked values, with
the stated security per value), and what n - 1 parties' or another refresh's shares give."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tenseal as ts

from coordinator.gradient import GradientKernel
from hefl.algorithm import SigmoidPolynomial
from hefl.errors import InvalidArgument, ProtocolError
from hefl.models import get_model
from hefl.protocols.collective import seal_layout
from hefl.protocols.collective.crs import CrsLabel
from hefl.protocols.collective.keyswitch import (
    REVEAL_SCALE_BITS,
    CollectiveDecryptProtocol,
    Smudging,
    ciphertext_of,
    refreshed_noise_std,
)
from hefl.protocols.collective.refresh import (
    MaskedTransformProtocol,
    RefreshProtocol,
    RefreshShare,
    mask_bits,
)
from hefl.protocols.collective.seal_layout import CiphertextPolys
from tests.collective_support import (
    PARAMETER_SET_NAMES,
    PARTIES,
    Collective,
    at_last_level,
    collective,
    decrypt_with,
    joint_secret,
    phase,
    uniform_values,
)

DEFAULT = "n8192-depth4"


@pytest.fixture(scope="module", params=PARAMETER_SET_NAMES)
def keys(request: pytest.FixtureRequest) -> Collective:
    return collective(request.param)


@pytest.fixture(scope="module")
def default_keys() -> Collective:
    return collective(DEFAULT)


def _label(keys: Collective, key: str = "column-0", iteration: int = 0) -> CrsLabel:
    return CrsLabel(keys.job.job_id, "refresh", key=key, iteration=iteration)


def _last_level(keys: Collective, values: np.ndarray) -> CiphertextPolys:
    """A ciphertext at the last level (q0 only), as the training's gradients are."""
    return at_last_level(ciphertext_of(ts.ckks_vector(keys.context, values)), keys.ring)


def _refresh(
    protocol: RefreshProtocol | MaskedTransformProtocol, keys: Collective
) -> CiphertextPolys:
    shares = {p: protocol.gen_share(s) for p, s in keys.shares.items()}
    return protocol.finalize(protocol.aggregate_shares(shares))


def _slot_sum_refresh(
    keys: Collective, ciphertext: CiphertextPolys, *, factor: float = 1.0, key: str = "column-0"
) -> MaskedTransformProtocol:
    return MaskedTransformProtocol(
        keys.job,
        ciphertext,
        label=_label(keys, key),
        transform=lambda total: factor * total,
        transform_id=f"times {factor}",
        output_scale_bits=REVEAL_SCALE_BITS,
    )


def _reveal(keys: Collective, ciphertext: CiphertextPolys) -> np.ndarray:
    protocol = CollectiveDecryptProtocol(
        keys.job,
        ciphertext,
        purpose="refreshed",
        noise_std=refreshed_noise_std(keys.job.params, len(PARTIES)),
        smudging=Smudging(),
    )
    shares = {p: protocol.gen_share(s) for p, s in keys.shares.items()}
    return protocol.decrypt(protocol.aggregate_shares(shares))


def test_a_refresh_returns_the_same_values_fresh_at_the_top_level(keys: Collective) -> None:
    ring = keys.ring
    secret = joint_secret(ring, keys.shares)
    values = uniform_values(keys.job.params.slots, seed=4, low=-8, high=8)
    stale = _last_level(keys, values)

    fresh = _refresh(RefreshProtocol(keys.job, stale, label=_label(keys)), keys)
    again = seal_layout.vector_of(keys.context, fresh, size=values.size)
    squared = again * again + 1.0  # a fresh ciphertext has every level again

    assert stale.rows == 1 and fresh.rows == ring.top_rows
    assert fresh.scale == stale.scale
    # The refresh adds only sum e_i at the input's scale (3 x std 3.24: ~3e-7 per slot).
    np.testing.assert_allclose(
        decrypt_with(ring, fresh, secret), decrypt_with(ring, stale, secret), atol=3e-6
    )
    np.testing.assert_allclose(
        decrypt_with(ring, ciphertext_of(squared), secret)[: values.size],
        values**2 + 1,
        atol=0.05,
    )


def test_a_refresh_raises_the_scale_for_a_smudged_reveal(default_keys: Collective) -> None:
    keys = default_keys
    values = uniform_values(keys.job.params.slots, seed=5)
    stale = _last_level(keys, values)
    bits = REVEAL_SCALE_BITS - keys.job.params.scale_bits

    fresh = _refresh(RefreshProtocol(keys.job, stale, label=_label(keys), scale_up_bits=bits), keys)
    revealed = _reveal(keys, fresh)

    assert fresh.scale == 2.0**REVEAL_SCALE_BITS
    np.testing.assert_allclose(revealed, values, atol=1e-4)  # the input's own CKKS error


def test_the_slot_sum_transform_refreshes_a_linear_map_of_the_sum(keys: Collective) -> None:
    values = uniform_values(keys.job.params.slots, seed=6)
    stale = _last_level(keys, values)
    factor = 0.5 / values.size

    protocol = _slot_sum_refresh(keys, stale, factor=factor)
    revealed = _reveal(keys, _refresh(protocol, keys))

    # The sum of 4096 (8192) slots carries their CKKS errors: ~2^-20 each at scale 2^30.
    np.testing.assert_allclose(revealed, factor * values.sum(), atol=factor * 0.05)


def test_the_coordinator_sees_the_slot_sum_masked_afresh_every_time(
    default_keys: Collective,
) -> None:
    keys = default_keys
    values = uniform_values(keys.job.params.slots, seed=7)
    stale = _last_level(keys, values)
    protocol = _slot_sum_refresh(keys, stale)

    first = protocol.masked_slot_sum(
        protocol.aggregate_shares({p: protocol.gen_share(s) for p, s in keys.shares.items()})
    )
    second = protocol.masked_slot_sum(
        protocol.aggregate_shares({p: protocol.gen_share(s) for p, s in keys.shares.items()})
    )

    # Each party's mask moves the sum by (N/2) M_i / scale with M_i uniform in [-2^56, 2^56):
    # about 2^38 here, against a true sum below 2^12.
    assert min(abs(first - values.sum()), abs(second - values.sum()), abs(first - second)) > 2**20


def test_each_revealed_value_hides_the_key_dependent_noise_by_40_bits_or_more(
    default_keys: Collective,
) -> None:
    """The training's last-level gradients (coordinator.gradient on the collective keys): their
    noise t, against the honest party's mask 2^(b+1) wide: b + 1 - log2 t bits per value."""
    keys = default_keys
    ring = keys.ring
    slots = keys.job.params.slots
    sigmoid = SigmoidPolynomial.fit(16.0)
    k, a, b = sigmoid.encrypted_form()
    rng = np.random.default_rng(8)
    features = np.column_stack([rng.uniform(-2, 2, (slots, 3)), np.ones(slots)])
    weights = np.array([0.8, -0.5, 0.3, 0.1])
    kernel = GradientKernel(keys.context)
    columns = [kernel.open(ts.ckks_vector(keys.context, features[:, j])) for j in range(4)]
    scaled = [kernel.open(ts.ckks_vector(keys.context, np.full(slots, k * w))) for w in weights]
    gradients = kernel.gradient_sums(scaled, [columns], get_model().kernel())
    terms = (sigmoid(features @ weights) - 0.5)[:, None] * features
    secret = joint_secret(ring, keys.shares)

    worst = 0.0
    for j, gradient in enumerate(gradients):
        ciphertext = CiphertextPolys.of(gradient)
        exact = ring.to_integers(
            ring.intt(seal_layout.encode(ring, list(terms[:, j]), rows=1, scale=ciphertext.scale))
        ).astype(np.float64)
        actual = ring.to_integers(phase(ring, ciphertext, secret)).astype(np.float64)
        # TenSEAL labels rescaled ciphertexts with the global scale, off by a public factor
        # (7.5e-4): fit it, and what remains is the ciphertext's noise.
        fitted = (actual @ exact) / (exact @ exact)
        worst = max(worst, float(np.abs(actual - fitted * exact).max()))

    bits = mask_bits(ring, rows=1, parties=len(PARTIES)) + 1 - math.log2(worst)
    assert bits >= 40


@pytest.mark.parametrize(
    ("parties", "bits"),
    [(2, 57), (3, 56), (4, 56), (6, 56), (7, 55), (14, 55), (15, 54), (8, 55), (16, 54)],
)
def test_masks_are_as_wide_as_the_last_prime_allows(parties: int, bits: int) -> None:
    ring = collective(DEFAULT).ring
    q0 = ring.primes[0]

    width = mask_bits(ring, rows=1, parties=parties)

    assert width == bits
    assert (parties + 1) * 2**width < q0 // 2 <= (parties + 1) * 2 ** (width + 1)


@pytest.mark.parametrize("missing", PARTIES)
def test_n_minus_1_refresh_shares_refresh_nothing(default_keys: Collective, missing: str) -> None:
    keys = default_keys
    ring = keys.ring
    values = uniform_values(keys.job.params.slots, seed=9)
    stale = _last_level(keys, values)
    protocol = RefreshProtocol(keys.job, stale, label=_label(keys))
    shares = {p: protocol.gen_share(s) for p, s in keys.shares.items() if p != missing}
    partial = RefreshShare(
        protocol.tag,
        ring.sum([s.masked for s in shares.values()]),
        ring.sum([s.reencrypted for s in shares.values()]),
    )

    garbage = decrypt_with(ring, protocol.finalize(partial), joint_secret(ring, keys.shares))

    assert np.abs(garbage[: values.size] - values).min() > 1e3
    with pytest.raises(ProtocolError, match=f"missing \\['{missing}'\\]"):
        protocol.aggregate_shares(shares)


def test_a_share_of_another_refresh_does_not_combine(default_keys: Collective) -> None:
    keys = default_keys
    values = uniform_values(keys.job.params.slots, seed=10)
    stale = _last_level(keys, values)
    other = _last_level(keys, values)
    protocol = _slot_sum_refresh(keys, stale)
    shares = {p: protocol.gen_share(s) for p, s in keys.shares.items()}
    party = PARTIES[2]
    foreign: dict[str, RefreshProtocol | MaskedTransformProtocol] = {
        "another iteration": MaskedTransformProtocol(
            keys.job,
            stale,
            label=_label(keys, iteration=1),
            transform=lambda total: total,
            transform_id="times 1.0",
            output_scale_bits=REVEAL_SCALE_BITS,
        ),
        "another column": _slot_sum_refresh(keys, stale, key="column-1"),
        "another ciphertext": _slot_sum_refresh(keys, other),
        "another transform": _slot_sum_refresh(keys, stale, factor=2.0),
        "the identity refresh": RefreshProtocol(keys.job, stale, label=_label(keys)),
    }

    for refresh in foreign.values():
        share = refresh.gen_share(keys.shares[party])
        with pytest.raises(ProtocolError, match="hospital-c"):
            protocol.aggregate_shares({**shares, party: share})


def test_what_a_refresh_takes_is_checked(default_keys: Collective) -> None:
    keys = default_keys
    values = uniform_values(8, seed=11)
    fresh = ciphertext_of(ts.ckks_vector(keys.context, values))
    stale = at_last_level(fresh, keys.ring)

    with pytest.raises(InvalidArgument, match="below the top level"):
        RefreshProtocol(keys.job, fresh, label=_label(keys))
    with pytest.raises(InvalidArgument, match="not a refresh of job"):
        RefreshProtocol(keys.job, stale, label=CrsLabel("job-2", "refresh"))
    with pytest.raises(InvalidArgument, match="linear"):
        MaskedTransformProtocol(
            keys.job,
            stale,
            label=_label(keys),
            transform=lambda total: total + 1.0,
            transform_id="affine",
            output_scale_bits=REVEAL_SCALE_BITS,
        )


def test_refresh_shares_round_trip(default_keys: Collective) -> None:
    keys = default_keys
    stale = _last_level(keys, uniform_values(keys.job.params.slots, seed=12))
    identity = RefreshProtocol(keys.job, stale, label=_label(keys)).gen_share(
        keys.shares[PARTIES[0]]
    )
    slot_sum = _slot_sum_refresh(keys, stale).gen_share(keys.shares[PARTIES[0]])

    for share, width in [(identity, keys.ring.n), (slot_sum, 1)]:
        parsed = RefreshShare.from_bytes(share.to_bytes(), keys.job, rows=1, width=width)
        assert parsed.to_bytes() == share.to_bytes()
    with pytest.raises(InvalidArgument, match="shape"):
        RefreshShare.from_bytes(slot_sum.to_bytes(), keys.job, rows=1, width=keys.ring.n)
