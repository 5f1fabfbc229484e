import numpy as np
import pytest

from hefl.errors import InvalidArgument
from tools.splits import split_rows

LABELS = np.array([0.0] * 300 + [1.0] * 200)


@pytest.mark.parametrize("kind", ["iid", "label-skew", "size-skew"])
def test_every_row_goes_to_exactly_one_party_reproducibly(kind):
    parts = split_rows(LABELS, parties=4, kind=kind, seed=3)

    assert sorted(np.concatenate(parts).tolist()) == list(range(500))
    assert all(len(p) >= 2 for p in parts)
    again = split_rows(LABELS, parties=4, kind=kind, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_iid_parts_have_equal_sizes():
    assert [len(p) for p in split_rows(LABELS, parties=4, kind="iid", seed=0)] == [125] * 4


def test_label_skew_gives_parties_different_class_mixes():
    parts = split_rows(LABELS, parties=4, kind="label-skew", seed=0, alpha=0.3)
    positive_share = [LABELS[p].mean() for p in parts]
    assert max(positive_share) - min(positive_share) > 0.3


def test_size_skew_gives_parties_different_sizes():
    sizes = [len(p) for p in split_rows(LABELS, parties=4, kind="size-skew", seed=0, alpha=0.5)]
    assert max(sizes) > 2 * min(sizes)


def test_unknown_split_and_too_few_rows_are_named():
    with pytest.raises(InvalidArgument, match="unknown split 'round-robin'"):
        split_rows(LABELS, parties=2, kind="round-robin", seed=0)
    with pytest.raises(InvalidArgument, match="3 training rows cannot give 2 parties"):
        split_rows(LABELS[:3], parties=2, kind="iid", seed=0)
