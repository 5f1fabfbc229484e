import numpy as np
import pytest
import tenseal as ts

from hefl.codec import (
    AggregateStats,
    PackingLayout,
    piece_sizes,
    split_vector,
    stats_length,
    stats_vector,
)
from hefl.errors import InvalidArgument
from hefl.params import PARAMETER_SETS


def test_layout_concatenates_parties_and_spans_blocks():
    layout = PackingLayout.assign(slots=8, party_rows=[("a", 5), ("b", 6), ("c", 2)])

    assert layout.total_rows == 13
    assert layout.n_blocks == 2
    assert list(layout.blocks_of("a")) == [0]
    assert list(layout.blocks_of("b")) == [0, 1]
    assert list(layout.blocks_of("c")) == [1]
    assert layout.parties_in_block(1) == ["b", "c"]


def test_packed_vectors_of_all_parties_add_up_to_the_union():
    rng = np.random.default_rng(0)
    rows = {
        "a": rng.normal(size=(5, 3)),
        "b": rng.normal(size=(6, 3)),
        "c": rng.normal(size=(2, 3)),
    }
    layout = PackingLayout.assign(slots=8, party_rows=[(k, len(v)) for k, v in rows.items()])
    blocks = np.zeros((layout.n_blocks, 3, 8))

    for name, data in rows.items():
        for block, column, vector in layout.pack(name, data):
            blocks[block, column] += vector

    union = np.vstack(list(rows.values()))
    padded = np.zeros((16, 3))
    padded[:13] = union
    np.testing.assert_array_equal(blocks.transpose(0, 2, 1).reshape(16, 3), padded)


def test_pack_rejects_wrong_row_count():
    layout = PackingLayout.assign(slots=8, party_rows=[("a", 5)])
    with pytest.raises(InvalidArgument, match="packs 4 rows"):
        list(layout.pack("a", np.zeros((4, 2))))


def test_stats_aggregate_to_global_mean_std_and_curvature():
    rng = np.random.default_rng(1)
    parts = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (10, 20, 7)]
    for part in parts:
        part[:, 3] = part[:, 0] * 2.0 + rng.normal(0.0, 0.1, size=len(part))
    total = sum(stats_vector(p) for p in parts)

    stats = AggregateStats.from_sums(total, 4)

    union = np.vstack(parts)
    assert stats.count == 37
    np.testing.assert_allclose(stats.mean, union.mean(axis=0))
    np.testing.assert_allclose(stats.std, union.std(axis=0))
    correlation = np.corrcoef(union, rowvar=False)
    assert stats.curvature == pytest.approx(np.linalg.eigvalsh(correlation)[-1])
    assert AggregateStats.from_values(stats.to_values(), 4).to_values() == stats.to_values()


def test_constant_feature_gets_unit_std_and_uncorrelated_data_curvature_one():
    stats = AggregateStats.from_sums(stats_vector(np.ones((5, 1)) * 7.0), 1)
    assert stats.std[0] == 1.0
    assert stats.curvature == 1.0


def test_statistics_of_wide_data_are_cut_into_ciphertext_pieces():
    vector = stats_vector(np.ones((3, 100)))
    pieces = split_vector(vector, 4096)

    assert len(vector) == stats_length(100) == 5151
    assert [len(p) for p in pieces] == piece_sizes(5151, 4096) == [4096, 1055]
    np.testing.assert_array_equal(np.concatenate(pieces), vector)


def test_statistics_of_the_wrong_length_are_refused():
    with pytest.raises(InvalidArgument, match="expected 10"):
        AggregateStats.from_sums(stats_vector(np.ones((3, 2))), 3)


@pytest.mark.parametrize("name", sorted(PARAMETER_SETS))
def test_packed_vector_round_trips_through_ckks(name):
    params = PARAMETER_SETS[name]
    context = params.make_context()
    layout = PackingLayout.assign(slots=params.slots, party_rows=[("a", 100)])
    data = np.random.default_rng(2).normal(size=(100, 2))

    for _, column, vector in layout.pack("a", data):
        decrypted = np.array(ts.ckks_vector(context, vector).decrypt())
        np.testing.assert_allclose(decrypted[:100], data[:, column], atol=1e-4)
        np.testing.assert_allclose(decrypted[100:], 0.0, atol=1e-4)
