import numpy as np
import pytest

from hefl.errors import DataError
from parties.data import Dataset, load_csv, write_csv


def _write(tmp_path, text):
    path = tmp_path / "party.csv"
    path.write_text(text)
    return path


def test_valid_csv_loads_with_label_mapping(tmp_path):
    path = _write(tmp_path, "age,dose,outcome\n50,1.5,sick\n61,2,well\n70, 0.5 ,sick\n")

    data = load_csv(path, label="outcome")

    assert data.feature_names == ("age", "dose")
    np.testing.assert_array_equal(data.features, [[50, 1.5], [61, 2], [70, 0.5]])
    np.testing.assert_array_equal(data.labels, [0, 1, 0])  # "sick" < "well"
    assert data.classes == ("sick", "well")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b,label\n1,x,0\n", r"row 2, column 'b': 'x' is not a number"),
        ("a,b,label\n1,2,0\n3,,1\n", r"row 3, column 'b': missing value"),
        ("a,b,y\n1,2,0\n", r"label column 'label' not found"),
        ("a,b,label\n1,2,0\n1,2,1\n1,2,2\n", r"not binary: 3 distinct values"),
        ("a,b,label\n1,2\n", r"row 2 has 2 cells, the header has 3"),
        ("a,a,label\n1,2,0\n", r"duplicate column names \['a'\]"),
        ("a,b,label\n1,inf,0\n", r"'inf' is not finite"),
        ("", r"empty file"),
        ("a,b,label\n", r"no data rows"),
        ("a,b,label\n1,2,\n", r"row 2, column 'label': missing label"),
    ],
)
def test_bad_csv_is_rejected_with_row_and_column(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        load_csv(_write(tmp_path, text), label="label")


def test_single_class_partition_keeps_0_1_meaning(tmp_path):
    data = load_csv(_write(tmp_path, "a,label\n1,1\n2,1\n"), label="label")
    np.testing.assert_array_equal(data.labels, [1, 1])


def test_written_csv_reads_back(tmp_path):
    original = Dataset(
        np.array([[0.1, 2e-9], [3.0, -4.5]]), np.array([1.0, 0.0]), ("x", "y"), "label"
    )
    path = tmp_path / "out.csv"
    write_csv(path, original)
    again = load_csv(path, label="label")
    np.testing.assert_array_equal(again.features, original.features)
    np.testing.assert_array_equal(again.labels, original.labels)
