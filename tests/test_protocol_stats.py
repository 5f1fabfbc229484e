"""The encrypted-statistics protocol: shares, their sum and the key holder's summary."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from hefl.codec import AggregateStats, stats_vector
from hefl.errors import InvalidArgument, ProtocolError
from hefl.params import PARAMETER_SETS
from hefl.protocols.stats import (
    StatsProtocol,
    StatsRequest,
    StatsShare,
    pieces_of,
    summary_from_proto,
    summary_to_proto,
)
from hefl.v1 import hefl_pb2 as pb
from hefl.validate import CiphertextRules
from parties.keyholder import SecretKey
from tests.ciphertexts import uncompressed_vector


@pytest.fixture(scope="module", params=sorted(PARAMETER_SETS))
def contexts(request) -> tuple[ts.Context, ts.Context]:
    """(private, public) contexts of each parameter set."""
    private = PARAMETER_SETS[request.param].make_context()
    return private, ts.context_from(private.serialize(save_secret_key=False))


def _parties(features: int) -> list[np.ndarray]:
    """Three parties' raw rows, on scales like breast cancer's (up to thousands), two columns
    strongly correlated."""
    rng = np.random.default_rng(3)
    parts = [rng.normal(50.0, 20.0, size=(rows, features)) for rows in (40, 55, 23)]
    for part in parts:
        part[:, 0] *= 30.0
        part[:, 1] = 0.5 * part[:, 0] + rng.normal(0.0, 5.0, size=len(part))
    return parts


@pytest.mark.parametrize("features", [6, 100])  # one ciphertext; two pieces at N=8192
def test_summary_of_the_encrypted_sum_is_the_summary_of_all_rows(contexts, features):
    private, public = contexts
    slots = public.seal_context().data.key_context_data().parms().poly_modulus_degree() // 2
    protocol = StatsProtocol(features=features, slots=slots)
    parts = _parties(features)

    shares = [protocol.gen_share(public, rows) for rows in parts]
    for i, share in enumerate(shares):
        protocol.check_share(public, share, party=f"p{i}")
    aggregate = protocol.aggregate(public, shares)
    summary = protocol.summarize(aggregate, SecretKey(private))
    accepted = protocol.accept_summary(summary, shares)

    expected = AggregateStats.of_rows(np.vstack(parts))
    assert [len(share.pieces) for share in shares] == [len(protocol.piece_sizes)] * 3
    assert accepted.count == expected.count == 118
    # CKKS adds about 2^-20 absolute per slot and party; the sums reach 1e9 (squares of
    # values near 1500), so relative errors stay far below 1e-6.
    np.testing.assert_allclose(accepted.mean, expected.mean, rtol=1e-7)
    np.testing.assert_allclose(accepted.std, expected.std, rtol=1e-6)
    assert accepted.curvature == pytest.approx(expected.curvature, rel=1e-6)


def test_messages_round_trip_through_protobuf():
    share = StatsShare(pieces=(b"\x01\x02", b"\x03"), rows=12, signature=b"s" * 64)
    request = StatsRequest(job_id="j", features=3, shares=(("p", share), ("q", share)))
    summary = AggregateStats.of_rows(np.arange(12.0).reshape(4, 3) ** 2)

    assert StatsShare.from_proto(share.to_proto(job_id="j", party="p")) == share
    chunks = list(share.to_chunks(job_id="j", party="p"))
    assert chunks[0].header == pb.StatsHeader(job_id="j", party="p", rows=12, signature=b"s" * 64)
    assert tuple(pieces_of(chunks[1:])) == share.pieces
    assert StatsRequest.from_proto(request.to_proto()) == request
    again = summary_from_proto(summary_to_proto(summary), features=3)
    assert again.to_values() == summary.to_values()


def test_malformed_shares_are_refused(public_context):
    protocol = StatsProtocol(features=3, slots=4096)
    good = protocol.gen_share(public_context, np.ones((5, 3)))
    narrow = StatsProtocol(features=2, slots=4096).gen_share(public_context, np.ones((5, 2)))

    with pytest.raises(InvalidArgument, match=r"party 'b' \(piece 0\) holds 6 values, expected 10"):
        protocol.check_share(public_context, narrow, party="b")
    with pytest.raises(InvalidArgument, match=r"statistics of party 'b' \(piece 0\)"):
        protocol.check_share(public_context, StatsShare((b"junk",), rows=5), party="b")
    with pytest.raises(InvalidArgument, match="party 'b' come in 2 pieces, expected 1"):
        protocol.check_share(public_context, StatsShare(good.pieces * 2, rows=5), party="b")
    with pytest.raises(InvalidArgument, match="party 'b' declares 0 rows"):
        protocol.check_share(public_context, StatsShare(good.pieces, rows=0), party="b")
    with pytest.raises(InvalidArgument, match="expected 3 features"):
        protocol.gen_share(public_context, np.ones((5, 4)))
    with pytest.raises(InvalidArgument, match="only pieces may follow the header"):
        list(pieces_of(good.to_chunks(job_id="j", party="b")))


def test_the_coordinator_keeps_a_piece_as_it_re_serializes(public_context):
    """A piece arrives as TenSEAL serializes it, which is what its party signed; the same
    ciphertext in SEAL's uncompressed form is refused, since its signed bytes would change."""
    protocol = StatsProtocol(features=3, slots=4096)
    rules = CiphertextRules(public_context)
    (piece,) = protocol.gen_share(public_context, np.ones((5, 3))).pieces

    assert protocol.check_piece(rules, piece, index=0, party="b") == piece
    with pytest.raises(InvalidArgument, match=r"\(piece 1\): a share of 3 features has 1 pieces"):
        protocol.check_piece(rules, piece, index=1, party="b")
    uncompressed = uncompressed_vector(public_context, piece)
    assert rules.load(uncompressed, protocol.expected(0), what="x").size() == 10
    with pytest.raises(InvalidArgument, match="not serialized as TenSEAL serializes it"):
        protocol.check_piece(rules, uncompressed, index=0, party="b")


def test_the_coordinator_refuses_a_count_other_than_the_declared_rows(
    private_context, public_context
):
    protocol = StatsProtocol(features=3, slots=4096)
    shares = [protocol.gen_share(public_context, np.ones((n, 3))) for n in (5, 7)]
    summary = protocol.summarize(
        protocol.aggregate(public_context, shares), SecretKey(private_context)
    )
    lying = [shares[0], StatsShare(shares[1].pieces, rows=8)]

    assert protocol.accept_summary(summary, shares).count == 12
    with pytest.raises(InvalidArgument, match="parties declare 13 rows .* count 12"):
        protocol.accept_summary(summary, lying)


def test_the_key_holder_refuses_a_sum_of_another_shape(private_context, public_context):
    share = StatsProtocol(features=3, slots=4096).gen_share(public_context, np.ones((5, 3)))
    key = SecretKey(private_context)

    with pytest.raises(ProtocolError, match="in 2 ciphertexts, expected 1"):
        StatsProtocol(features=3, slots=4096).summarize(share.pieces * 2, key)


def test_a_share_hides_the_party_statistics_from_the_public_context(public_context):
    """What the coordinator holds cannot be decrypted with what it has."""
    share = StatsProtocol(features=3, slots=4096).gen_share(public_context, np.ones((5, 3)))
    vector = ts.ckks_vector_from(public_context, share.pieces[0])

    with pytest.raises(ValueError, match="secret_key"):
        vector.decrypt()
    assert len(stats_vector(np.ones((5, 3)))) == vector.size()
