"""CKKS parameter sets hefl allows, and the check every received context must pass.

Both roles import this module: the key holder builds its context from a :class:`CkksParameters`,
the coordinator and the other parties check a received context against the same table.

Security: every set keeps log2(Q*P) within the 128-bit bound of the HomomorphicEncryption.org
standard for ternary secrets (N=8192 -> 218 bits, N=16384 -> 438 bits); SEAL itself refuses
anything larger at context creation.

Level budget: one training iteration consumes exactly ``depth`` rescalings (see
:mod:`hefl.algorithm`), from fresh weights to the masked gradient at the last prime. The first
prime is wide (60 bits) so the coordinator's statistical masks fit under it at the last level
with ``mask_bits`` of headroom.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hefl.errors import InvalidArgument, PermissionDenied

if TYPE_CHECKING:
    import tenseal as ts

MAX_LOG_Q_128_BIT = {8192: 218, 16384: 438, 32768: 881}


@dataclass(frozen=True)
class CkksParameters:
    """One allowed CKKS parameter set.

    Attributes:
        name: Identifier sent on the wire.
        poly_modulus_degree: Ring dimension N; a ciphertext holds N/2 slots.
        coeff_mod_bit_sizes: Primes of the modulus chain, first (q0) to special prime.
        scale_bits: log2 of the encoding scale.
    """

    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        """Rescalings available to a fresh ciphertext: the primes between q0 and the special one."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def log_q(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def mask_bits(self) -> int:
        """log2 of the largest masked value that still decodes at the last level.

        At the last level a value v is stored as v * 2^scale_bits modulo q0, so |v| must stay
        below 2^(q0_bits - scale_bits - 1); we keep 4 more bits for noise and summing.
        """
        return self.coeff_mod_bit_sizes[0] - self.scale_bits - 5

    def make_context(self) -> ts.Context:
        """Create a fresh private context (secret key inside). Key holder only."""
        import tenseal as ts

        context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=self.poly_modulus_degree,
            coeff_mod_bit_sizes=list(self.coeff_mod_bit_sizes),
        )
        context.global_scale = 2.0**self.scale_bits
        context.generate_relin_keys()
        return context


PARAMETER_SETS: dict[str, CkksParameters] = {
    p.name: p
    for p in (
        # Default: 4096 slots, depth 4, 128-bit secure. Fast enough for breast cancer in < 1 s
        # per iteration and a million rows in minutes.
        CkksParameters("n8192-depth4", 8192, (60, 30, 30, 30, 30, 38), 30),
        # More precision (40-bit scale) and 8192 slots, at about 4x the cost per row.
        CkksParameters("n16384-depth4", 16384, (60, 40, 40, 40, 40, 60), 40),
    )
}
DEFAULT_PARAMETER_SET = "n8192-depth4"

for _p in PARAMETER_SETS.values():
    assert _p.log_q <= MAX_LOG_Q_128_BIT[_p.poly_modulus_degree], _p.name


def get_parameter_set(name: str) -> CkksParameters:
    """Look up an allowed parameter set by name.

    Raises:
        InvalidArgument: ``name`` is not one of :data:`PARAMETER_SETS`.
    """
    try:
        return PARAMETER_SETS[name]
    except KeyError:
        allowed = ", ".join(sorted(PARAMETER_SETS))
        raise InvalidArgument(f"unknown CKKS parameter set {name!r}; allowed: {allowed}") from None


def chain_bit_sizes(context: ts.Context) -> tuple[int, ...]:
    """Recover the modulus chain's prime sizes from a TenSEAL context.

    TenSEAL does not expose the primes themselves, but every level of the chain reports its
    total bit count; the differences between consecutive levels are the primes' sizes.
    """
    data = context.seal_context().data
    totals = []
    level = data.key_context_data()
    while level is not None:
        totals.append(level.total_coeff_modulus_bit_count())
        level = level.next_context_data()
    # totals: key level (all primes), first data level, ..., last level (q0 only).
    sizes = [totals[-1]] + [totals[i] - totals[i + 1] for i in range(len(totals) - 2, -1, -1)]
    return tuple(sizes)


def check_public_context(context: ts.Context, parameter_set: str) -> CkksParameters:
    """Check a received context: public only, and exactly one of the allowed parameter sets.

    Raises:
        PermissionDenied: The context carries a secret key.
        InvalidArgument: Scheme, ring size, modulus chain, scale or keys do not match.
    """
    params = get_parameter_set(parameter_set)
    if context.has_secret_key() or context.is_private():
        raise PermissionDenied(
            "the context carries a secret key; send only the public context "
            "(serialize(save_secret_key=False))"
        )
    degree = context.seal_context().data.key_context_data().parms().poly_modulus_degree()
    if degree != params.poly_modulus_degree:
        raise InvalidArgument(
            f"context ring size N={degree} does not match parameter set {params.name} "
            f"(N={params.poly_modulus_degree})"
        )
    chain = chain_bit_sizes(context)
    if chain != params.coeff_mod_bit_sizes:
        raise InvalidArgument(
            f"context modulus chain {list(chain)} does not match parameter set {params.name} "
            f"{list(params.coeff_mod_bit_sizes)}"
        )
    if context.global_scale != 2.0**params.scale_bits:
        raise InvalidArgument(
            f"context scale {context.global_scale} is not 2^{params.scale_bits} "
            f"as parameter set {params.name} requires"
        )
    if not context.has_public_key() or not context.has_relin_keys():
        raise InvalidArgument("the context lacks a public key or relinearization keys")
    return params
