"""The encrypted gradient kernel: plain maths on TenSEAL ciphertexts, no Ray, no gRPC.

For one block of the feature-major layout (:mod:`hefl.codec`), with weights encrypted
pre-scaled by k and replicated in every slot, it computes per column j the slot vector

    G_j = s * X_j * ((s^2 + a)^2 + b),     s = sum_j (k W_j) * X_j = k z,

whose slots hold p(z_i) x_ij (:meth:`hefl.algorithm.SigmoidPolynomial.encrypted_form`), so
that sum over slots of G_j = S_j, the data part of the gradient.

Levels (depth 4, every allowed parameter set has exactly that): s at 1, s^2 at 2,
(s^2 + a)^2 at 3, s * X_j at 2, G_j at 4 = the last prime. Cost per block: 3 (d + 1) + 2
ciphertext products. The final products skip relinearization: the size-3 results are only
added up and decrypted (by the key holder), and both work on size-3 ciphertexts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import tenseal as ts


@contextmanager
def _without_relinearization(context: ts.Context) -> Iterator[None]:
    previous = context.auto_relin
    context.auto_relin = False
    try:
        yield
    finally:
        context.auto_relin = previous


def margin(
    scaled_weights: Sequence[ts.CKKSVector], columns: Sequence[ts.CKKSVector]
) -> ts.CKKSVector:
    """s = sum_j (k W_j) * X_j over the given columns (all of them, or one worker's share)."""
    s = scaled_weights[0] * columns[0]
    for weight, column in zip(scaled_weights[1:], columns[1:], strict=True):
        s += weight * column
    return s


def gradient_from_margin(
    context: ts.Context,
    s: ts.CKKSVector,
    columns: Sequence[ts.CKKSVector],
    *,
    a: float,
    b: float,
) -> list[ts.CKKSVector]:
    """G_j for the given columns of one block, from the block's full margin ``s``.

    ``columns`` are consumed: TenSEAL mod-switches them in place.
    """
    inner = s.square()
    inner += a
    inner.square_()
    inner += b
    products = [s * column for column in columns]
    with _without_relinearization(context):
        return [product * inner for product in products]


def block_gradient(
    context: ts.Context,
    scaled_weights: Sequence[ts.CKKSVector],
    columns: Sequence[ts.CKKSVector],
    *,
    a: float,
    b: float,
) -> list[ts.CKKSVector]:
    """G_j for one block (see the module docstring). ``columns`` are consumed."""
    return gradient_from_margin(context, margin(scaled_weights, columns), columns, a=a, b=b)


def add_into(
    total: list[ts.CKKSVector] | None, partial: list[ts.CKKSVector]
) -> list[ts.CKKSVector]:
    """Slot-wise running sum of per-column gradients."""
    if total is None:
        return partial
    for acc, value in zip(total, partial, strict=True):
        acc += value
    return total


def gradient_sums(
    context: ts.Context,
    scaled_weights: Sequence[ts.CKKSVector],
    blocks: Iterable[Sequence[ts.CKKSVector]],
    *,
    a: float,
    b: float,
) -> list[ts.CKKSVector]:
    """Slot-wise sum of :func:`block_gradient` over ``blocks``; one ciphertext per column."""
    total: list[ts.CKKSVector] | None = None
    for columns in blocks:
        total = add_into(total, block_gradient(context, scaled_weights, columns, a=a, b=b))
    if total is None:
        raise ValueError("no blocks to compute a gradient on")
    return total
