"""The common random string (XOF polynomials per label, the seed by commit-then-reveal) and the
samplers every secret, noise and mask comes from."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest

from hefl.errors import InvalidArgument, ProtocolError
from hefl.params import PARAMETER_SETS
from hefl.protocols.collective import sampling
from hefl.protocols.collective.crs import (
    CommonRandomString,
    CrsLabel,
    SeedAgreementParty,
    SeedAgreementProtocol,
    SeedCommitment,
    SeedReveal,
)
from hefl.protocols.collective.ring import ring_for
from tests.collective_support import PARTIES, seeded_bytes

ROOT = Path(__file__).resolve().parent.parent
RING = ring_for(PARAMETER_SETS["n8192-depth4"])
CRS = CommonRandomString(b"\x01" * 32)


def _agree(protocol: SeedAgreementProtocol) -> tuple[list[SeedCommitment], list[SeedReveal]]:
    parties = [SeedAgreementParty(protocol, name) for name in protocol.parties]
    commitments = [party.commitment() for party in parties]
    return commitments, [party.reveal(commitments) for party in parties]


# -- common random polynomials ----------------------------------------------------------------


def test_a_label_gives_the_same_polynomial_to_everyone() -> None:
    label = CrsLabel("job-1", "relin-key", index=2)

    first = CRS.polynomial(RING, label, rows=RING.key_rows)
    again = CommonRandomString(b"\x01" * 32).polynomial(RING, label, rows=RING.key_rows)

    assert (first == again).all()


@pytest.mark.parametrize(
    "other",
    [
        CrsLabel("job-2", "relin-key", index=2),
        CrsLabel("job-1", "public-key", index=2),
        CrsLabel("job-1", "relin-key", key="x", index=2),
        CrsLabel("job-1", "relin-key", index=3),
        CrsLabel("job-1", "relin-key", index=2, iteration=1),
    ],
)
def test_every_label_field_changes_the_polynomial(other: CrsLabel) -> None:
    label = CrsLabel("job-1", "relin-key", index=2)

    same = CRS.polynomial(RING, label, rows=2) == CRS.polynomial(RING, other, rows=2)

    assert same.mean() < 1e-3  # equal coefficients only by chance (probability ~ 2^-30 each)


def test_another_seed_gives_another_polynomial() -> None:
    label = CrsLabel("job-1", "public-key")

    same = CRS.polynomial(RING, label, rows=2) == CommonRandomString(b"\x02" * 32).polynomial(
        RING, label, rows=2
    )

    assert same.mean() < 1e-3


def test_label_fields_cannot_be_shifted_into_each_other() -> None:
    assert CrsLabel("job-1", "ab", key="c").encode() != CrsLabel("job-1", "a", key="bc").encode()
    assert CrsLabel("1", "x").encode() != CrsLabel("", "1x").encode()


def test_common_polynomials_are_uniform_modulo_each_prime() -> None:
    poly = CRS.polynomial(RING, CrsLabel("job-1", "public-key"), rows=RING.key_rows)

    for row, q in zip(poly, RING.primes, strict=True):
        assert int(row.max()) < q
        # The mean of N uniform values is q/2 within a few q / sqrt(12 N) (q/313 at N=8192).
        assert abs(row.astype(np.float64).mean() / q - 0.5) < 4 / math.sqrt(12 * RING.n)


def test_a_seed_is_32_bytes() -> None:
    with pytest.raises(InvalidArgument):
        CommonRandomString(b"short")


# -- the seed, by commit-then-reveal ----------------------------------------------------------


def test_every_party_derives_the_same_seed_from_every_reveal() -> None:
    protocol = SeedAgreementProtocol("job-1", PARTIES)
    commitments, reveals = _agree(protocol)

    seeds = {
        SeedAgreementProtocol("job-1", PARTIES).agree(commitments, reveals).seed for _ in PARTIES
    }

    assert len(seeds) == 1
    assert seeds != {r.seed for r in reveals}


def test_two_runs_agree_on_different_seeds() -> None:
    protocol = SeedAgreementProtocol("job-1", PARTIES)

    first = protocol.agree(*_agree(protocol))
    second = protocol.agree(*_agree(protocol))

    assert first.seed != second.seed


def test_a_reveal_that_does_not_match_its_commitment_is_refused() -> None:
    protocol = SeedAgreementProtocol("job-1", PARTIES)
    commitments, reveals = _agree(protocol)
    changed = [SeedReveal(reveals[1].party, b"\x00" * 32), reveals[0], reveals[2]]

    with pytest.raises(ProtocolError, match="hospital-b.*does not match its commitment"):
        protocol.agree(commitments, changed)


def test_a_reveal_made_for_another_job_is_refused() -> None:
    commitments, reveals = _agree(SeedAgreementProtocol("job-1", PARTIES))

    with pytest.raises(ProtocolError, match="does not match"):
        SeedAgreementProtocol("job-2", PARTIES).agree(commitments, reveals)


@pytest.mark.parametrize("drop", ["commitment", "reveal"])
def test_every_roster_party_must_commit_and_reveal(drop: str) -> None:
    protocol = SeedAgreementProtocol("job-1", PARTIES)
    commitments, reveals = _agree(protocol)
    if drop == "commitment":
        commitments = commitments[:-1]
    else:
        reveals = reveals[:-1]

    with pytest.raises(ProtocolError, match="missing \\['hospital-c'\\]"):
        protocol.agree(commitments, reveals)


def test_a_party_off_the_roster_is_refused() -> None:
    protocol = SeedAgreementProtocol("job-1", PARTIES)
    stranger = SeedAgreementParty(SeedAgreementProtocol("job-1", ("stranger",)), "stranger")
    commitments = [SeedAgreementParty(protocol, p).commitment() for p in PARTIES]

    with pytest.raises(ProtocolError, match="not on the roster \\['stranger'\\]"):
        protocol.aggregate_commitments([*commitments, stranger.commitment()])
    with pytest.raises(InvalidArgument):
        SeedAgreementParty(protocol, "stranger")


def test_a_party_reveals_only_after_every_commitment_with_its_own_unchanged() -> None:
    protocol = SeedAgreementProtocol("job-1", PARTIES)
    parties = [SeedAgreementParty(protocol, p) for p in PARTIES]
    commitments = [p.commitment() for p in parties]
    replaced = [SeedCommitment(PARTIES[0], b"\x00" * 32), *commitments[1:]]

    with pytest.raises(ProtocolError, match="missing"):
        parties[0].reveal(commitments[:2])
    with pytest.raises(ProtocolError, match="do not carry its own commitment"):
        parties[0].reveal(replaced)
    parties[0].reveal(commitments)
    with pytest.raises(ProtocolError, match="revealed its seed share already"):
        parties[0].reveal(commitments)


def test_seed_messages_round_trip_and_are_checked() -> None:
    protocol = SeedAgreementProtocol("job-1", PARTIES)
    commitments, reveals = _agree(protocol)

    assert SeedCommitment.from_bytes(commitments[0].to_bytes()) == commitments[0]
    assert SeedReveal.from_bytes(reveals[0].to_bytes()) == reveals[0]
    with pytest.raises(InvalidArgument):
        SeedReveal.from_bytes(reveals[0].to_bytes()[:-1])
    with pytest.raises(InvalidArgument):
        SeedCommitment.from_bytes(commitments[0].to_bytes() + b"\x00")


def test_a_party_does_not_show_its_seed_in_its_repr() -> None:
    protocol = SeedAgreementProtocol("job-1", PARTIES)
    parties = [SeedAgreementParty(protocol, p) for p in PARTIES]
    commitments = [p.commitment() for p in parties]

    seed = parties[0].reveal(commitments).seed

    assert seed.hex() not in repr(parties[0]) and repr(seed) not in repr(parties[0])


# -- samplers -----------------------------------------------------------------------------


def test_ternary_is_uniform_on_minus_one_zero_one() -> None:
    values = sampling.ternary(3 * 8192)

    counts = [(values == v).mean() for v in (-1, 0, 1)]

    assert set(np.unique(values).tolist()) == {-1, 0, 1}
    assert all(abs(c - 1 / 3) < 0.02 for c in counts)


def test_fresh_noise_is_seals_centered_binomial() -> None:
    values = sampling.centered_binomial(1 << 16)

    assert np.abs(values).max() <= 21
    assert abs(values.mean()) < 0.05
    assert abs(values.std() - sampling.CBD_STD) < 0.05


def test_smudging_noise_has_the_asked_deviation() -> None:
    std = 2.0**40

    values = sampling.rounded_gaussian(1 << 16, std)

    assert abs(values.std() / std - 1) < 0.02
    assert abs(values.mean()) < 0.02 * std
    assert np.abs(values).max() < 8.6 * std


def test_masks_are_uniform_on_their_range() -> None:
    values = sampling.uniform_mask(1 << 16, 56)

    assert values.min() >= -(2**56) and values.max() < 2**56
    assert abs(values.astype(np.float64).mean()) < 0.02 * 2**56
    assert abs(values.astype(np.float64).std() / (2**56 / math.sqrt(3)) - 1) < 0.02


def test_samplers_draw_only_from_the_given_byte_source() -> None:
    first = sampling.ternary(64, random_bytes=seeded_bytes("t"))
    second = sampling.ternary(64, random_bytes=seeded_bytes("t"))

    assert (first == second).all()


def test_no_numpy_generator_in_the_collective_protocols() -> None:
    """Secrets, noise, masks and ephemeral keys come from os.urandom or SHAKE-256 only."""
    package = ROOT / "hefl" / "protocols" / "collective"
    offending = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in {"random", "default_rng"}:
                offending.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                if any(n == "random" or n.startswith("numpy.random") for n in names):
                    offending.append(f"{path.name}:{node.lineno}")

    assert offending == []


def test_fresh_noise_is_the_same_with_or_without_numpys_popcount(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with_popcount = sampling.centered_binomial(4096, random_bytes=seeded_bytes("cbd"))
    monkeypatch.delattr(np, "bitwise_count", raising=False)

    without = sampling.centered_binomial(4096, random_bytes=seeded_bytes("cbd"))

    assert (with_popcount == without).all()
