import pytest
import tenseal as ts

from hefl.errors import InvalidArgument, PermissionDenied
from hefl.params import (
    MAX_LOG_Q_128_BIT,
    PARAMETER_SETS,
    chain_bit_sizes,
    check_public_context,
    get_parameter_set,
)


@pytest.mark.parametrize("name", sorted(PARAMETER_SETS))
def test_every_parameter_set_is_128_bit_secure_and_deep_enough(name):
    params = PARAMETER_SETS[name]
    assert params.log_q <= MAX_LOG_Q_128_BIT[params.poly_modulus_degree]
    assert params.depth == 4
    assert params.mask_bits >= 15


def test_chain_bit_sizes_are_recovered(private_context):
    assert chain_bit_sizes(private_context) == PARAMETER_SETS["n8192-depth4"].coeff_mod_bit_sizes


def test_public_context_passes(public_context):
    assert check_public_context(public_context, "n8192-depth4").slots == 4096


def test_private_context_is_refused(private_context):
    with pytest.raises(PermissionDenied, match="secret key"):
        check_public_context(private_context, "n8192-depth4")


def test_context_with_other_modulus_chain_is_refused():
    other = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    other.global_scale = 2**30
    other.generate_relin_keys()
    other.make_context_public()
    with pytest.raises(InvalidArgument, match="modulus chain"):
        check_public_context(other, "n8192-depth4")


def test_context_of_other_ring_size_is_refused(public_context):
    with pytest.raises(InvalidArgument, match="ring size"):
        check_public_context(public_context, "n16384-depth4")


def test_unknown_parameter_set_is_named():
    with pytest.raises(InvalidArgument, match="unknown CKKS parameter set 'n4096'"):
        get_parameter_set("n4096")
