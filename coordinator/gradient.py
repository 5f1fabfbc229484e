"""The encrypted gradient kernel: plain maths on SEAL ciphertexts, no Ray, no gRPC.

For one block of the feature-major layout (:mod:`hefl.codec`), with weights encrypted
pre-scaled by k and replicated in every slot, it computes per column j the slot vector

    G_j = (s * X_j) * ((s^2 + a)^2 + b),     s = sum_j (k W_j) * X_j = k z,

whose slots hold p(z_i) x_ij (:meth:`hefl.algorithm.SigmoidPolynomial.encrypted_form`), so
that sum over slots of G_j = S_j, the data part of the gradient.

Levels (depth 4, every allowed parameter set has exactly that; level l has l primes dropped):

    s at 1,  s^2 at 2,  inner = (s^2 + a)^2 + b at 3,  s * X_j computed at 2 -> 3,  G_j at 4.

That is the logistic sigmoid's shape (``odd5``). Every model of :mod:`hefl.models` gives its
polynomial as a :class:`hefl.models.base.KernelForm` in one of three shapes, and each lands on
the last level so that the refresh never sees which model it is:

- ``linear`` (linear regression, G_j = s * X_j): s and X_j switched down to level 3 and
  multiplied there: per block one margin and d products at the cheapest level, no
  relinearization (``finish`` relinearizes once per column per job);
- ``odd5`` (logistic, multiclass): as above;
- ``quartic`` (Poisson, G_j = s (s + c) ((s + a)^2 + b) * X_j): s (s + c) and (s + a)^2 + b at
  2, their product at 3, times X_j at 3: three relinearizations per block and d products.

A model with k outputs (multiclass) has k margins per block from the same shards, its weights
and sums output-major.

Every shape has a factor of s, so at zero weights every G_j is exactly zero: collective
training's first step relies on it and computes no gradient (:mod:`coordinator.collective`);
a new shape must keep that factor.

The kernel works on TenSEAL's SEAL objects directly (``tenseal.sealapi``) because TenSEAL's
vector API decides relinearization, rescaling and modulus switching per operation, and those
decisions are most of the cost. Measured at N=8192 (one core): relinearization 6.9 ms at
level 0, 3.8 at 1, 2.2 at 2; a product 0.2-0.8 ms; a rescale 0.5-2.3 ms. So the kernel

- adds the d products W_j * X_j unrelinearized and relinearizes and rescales their sum once;
- forms s * X_j at level 2, not 1 (cheaper relinearization, same precision: modulus switching
  only drops primes);
- never modifies a shard (modulus switching into a fresh ciphertext costs 0.01-0.04 ms), so
  shards stay loaded for the whole training;
- leaves the final products unrelinearized and unrescaled: they are only summed over blocks,
  and :meth:`GradientKernel.finish` relinearizes and rescales each column's sum once.

Scales are SEAL's true ones: a rescale divides the scale by the prime it drops, and constants
are encoded at the scale of what they are added to. TenSEAL's convention, which labels every
rescaled ciphertext with the global scale, is off by the primes' distance from 2^30 (up to
3e-4 each on the default chain) and put every gradient sum 3e-4 (linear) to 7e-4 off, relatively, in both trust
modes. Every margin and gradient of a form has one exact scale
(:meth:`hefl.models.base.KernelForm.scales`), which whoever receives it checks
(:meth:`hefl.validate.CiphertextRules.gradient`); :func:`hefl.sealio.vector_bytes` wraps a
ciphertext into TenSEAL's serialized vector format with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeAlias

import tenseal as ts
import tenseal.sealapi as seal

from hefl.models.base import KernelForm

# SEAL's ciphertext as TenSEAL binds it (untyped); tenseal.sealapi's evaluator works on it.
Ciphertext: TypeAlias = Any


class GradientKernel:
    """The per-block gradient maths under one public context (relinearization keys needed)."""

    def __init__(self, context: ts.Context) -> None:
        seal_context = context.seal_context().data
        self._evaluator = seal.Evaluator(seal_context)
        self._encoder = seal.CKKSEncoder(seal_context)
        self._relin_keys = context.relin_keys().data
        # parms_id of every level, top (all primes) first.
        self._levels = []
        data = seal_context.first_context_data()
        while data is not None:
            self._levels.append(data.parms_id())
            data = data.next_context_data()

    @staticmethod
    def open(vector: ts.CKKSVector) -> Ciphertext:
        return vector.ciphertext()[0]

    def _product(self, left: Ciphertext, right: Ciphertext) -> Ciphertext:
        out = seal.Ciphertext()
        self._evaluator.multiply(left, right, out)
        return out

    def _settle(self, ciphertext: Ciphertext) -> Ciphertext:
        """Relinearize and rescale in place (SEAL divides the scale by the dropped prime)."""
        self._evaluator.relinearize_inplace(ciphertext, self._relin_keys)
        self._evaluator.rescale_to_next_inplace(ciphertext)
        return ciphertext

    def _at_level(self, ciphertext: Ciphertext, level: int) -> Ciphertext:
        out = seal.Ciphertext()
        self._evaluator.mod_switch_to(ciphertext, self._levels[level], out)
        return out

    def add_constant(self, ciphertext: Ciphertext, value: float) -> None:
        """Add ``value`` to every slot, in place."""
        plain = seal.Plaintext()
        self._encoder.encode(value, ciphertext.parms_id(), ciphertext.scale, plain)
        self._evaluator.add_plain_inplace(ciphertext, plain)

    def margin(
        self, scaled_weights: Sequence[Ciphertext], columns: Sequence[Ciphertext]
    ) -> Ciphertext:
        """s = sum_j (k W_j) * X_j over the given columns (all of them, or one worker's share):
        level 1, relinearized."""
        total = self._product(scaled_weights[0], columns[0])
        for weight, column in zip(scaled_weights[1:], columns[1:], strict=True):
            self._evaluator.add_inplace(total, self._product(weight, column))
        return self._settle(total)

    def margins(
        self, scaled_weights: Sequence[Ciphertext], columns: Sequence[Ciphertext], outputs: int
    ) -> list[Ciphertext]:
        """One margin per output from the same columns; ``scaled_weights`` output-major
        (``outputs x len(columns)``)."""
        width = len(columns)
        if len(scaled_weights) != outputs * width:
            raise ValueError(f"{len(scaled_weights)} weights for {outputs} x {width} columns")
        return [
            self.margin(scaled_weights[o * width : (o + 1) * width], columns)
            for o in range(outputs)
        ]

    def _factor(self, s: Ciphertext, form: KernelForm) -> Ciphertext:
        """The part of p(s) that multiplies every column (``odd5``: without s), at level 3
        (s is at 1)."""
        if form.shape == "odd5":
            a, b = form.constants
            inner = self._settle(self._product(s, s))
            self.add_constant(inner, a)
            inner = self._settle(self._product(inner, inner))
            self.add_constant(inner, b)
            return inner
        a, b, c = form.constants  # quartic: s (s + c) ((s + a)^2 + b)
        left = self._settle(self._product(s, self._plus(s, c)))
        square = self._plus(s, a)
        square = self._settle(self._product(square, square))
        self.add_constant(square, b)
        return self._settle(self._product(left, square))

    def _plus(self, ciphertext: Ciphertext, value: float) -> Ciphertext:
        """``ciphertext + value`` in every slot, as a new ciphertext."""
        plain = seal.Plaintext()
        self._encoder.encode(value, ciphertext.parms_id(), ciphertext.scale, plain)
        out = seal.Ciphertext()
        self._evaluator.add_plain(ciphertext, plain, out)
        return out

    def accumulate(
        self,
        totals: list[Ciphertext] | None,
        margins: Sequence[Ciphertext],
        columns: Sequence[Ciphertext],
        form: KernelForm,
    ) -> list[Ciphertext]:
        """Add G_j of one block (given its full margins, one per output) to the running sums
        ``totals`` (None for the first block), output-major; returns the sums (unrescaled, one
        level above the last).

        Each product goes into its running sum as soon as it is formed, so a block holds one
        product at a time rather than all outputs x columns of them (310 ciphertexts, 120 MB,
        for 10 classes of 30 features), and each column is switched down once per block
        rather than once per output.
        """
        width = len(columns)
        if totals is not None and len(totals) != len(margins) * width:
            raise ValueError(f"{len(totals)} running sums for {len(margins)} x {width} columns")
        if form.shape == "linear":
            # Nothing to evaluate: the products are formed where they are cheapest, one
            # level above the last (modulus switching drops primes, not precision).
            level = len(self._levels) - 2
        elif form.shape == "odd5":
            level = 2  # s * X_j is formed at 2 and settled to 3, where ``inner`` is
        else:
            level = 3  # the quartic's factor
        lowered = [self._at_level(column, level) for column in columns]
        out: list[Ciphertext] = [] if totals is None else totals
        for o, s in enumerate(margins):
            for j, gradient in enumerate(self._block_gradients(s, lowered, form, level)):
                if totals is None:
                    out.append(gradient)
                else:
                    self._evaluator.add_inplace(out[o * width + j], gradient)
        return out

    def _block_gradients(
        self, s: Ciphertext, lowered: Sequence[Ciphertext], form: KernelForm, level: int
    ) -> Iterator[Ciphertext]:
        """G_j of one output for every column, one at a time; ``lowered`` are the block's
        columns at ``level``."""
        if form.shape == "linear":
            s_low = self._at_level(s, level)
            for column in lowered:
                yield self._product(s_low, column)
        elif form.shape == "odd5":
            inner = self._factor(s, form)
            s2 = self._at_level(s, level)
            for column in lowered:
                yield self._product(self._settle(self._product(s2, column)), inner)
        else:
            factor = self._factor(s, form)
            for column in lowered:
                yield self._product(factor, column)

    def finish(self, totals: Iterable[Ciphertext]) -> list[Ciphertext]:
        """Relinearize and rescale the summed G_j, once per column and not per block, and bring
        them to the last level (where the refresh expects every model's gradient)."""
        last = len(self._levels) - 1
        finished = []
        for total in totals:
            total = self._settle(total)
            finished.append(total if self._level_of(total) == last else self._at_level(total, last))
        return finished

    def _level_of(self, ciphertext: Ciphertext) -> int:
        return self._levels.index(ciphertext.parms_id())

    def gradient_sums(
        self,
        scaled_weights: Sequence[Ciphertext],
        blocks: Iterable[Sequence[Ciphertext]],
        form: KernelForm,
    ) -> list[Ciphertext]:
        """Slot-wise sum of G_j over ``blocks``; one ciphertext per (output, column),
        output-major, at the last level."""
        totals: list[Ciphertext] | None = None
        for columns in blocks:
            s = self.margins(scaled_weights, columns, form.outputs)
            totals = self.accumulate(totals, s, columns, form)
        if totals is None:
            raise ValueError("no blocks to compute a gradient on")
        return self.finish(totals)
