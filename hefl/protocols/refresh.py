"""Masked refresh-and-step: fresh weights every iteration, the key holder seeing masked values.

TenSEAL has no bootstrapping, so every iteration's weights come back fresh from the key holder.
The coordinator masks everything first, so the key holder sees neither the gradients nor the
intermediate models; the optimizer step (:func:`hefl.algorithm.nesterov_step`) is linear, so
the key holder applies it to the masked values and the coordinator to its masks alone.

Protocol (one setup, one round per training iteration, one finalization):

0. Setup (coordinator -> key holder, :class:`RefreshSetup`): the public optimizer constants (rows,
   learning rate, L2, iteration count, the sigmoid's weight scale k), the summed label term C
   masked slot-wise by c, and the optimizer state w_0 = v_0 = 0 masked by a, b: the masks
   themselves. The key holder decrypts C + c once.
1. Round request (coordinator, :meth:`RefreshCoordinator.request`): it holds per-column
   ciphertexts G_j whose slots sum to S_j, the data part of the gradient. It adds a uniform
   mask vector R_j in [-2^m, 2^m]^slots to each, and sends them with offsets that replace the
   masks a, b of the key holder's state by fresh uniform ones (:class:`RefreshRequest`).
2. Refresh (key holder, :meth:`RefreshKeyHolder.refresh`): each G_j + R_j is decrypted and its
   slots summed: S_j + r_j with r_j = sum(R_j). The state takes the offsets, then one
   :func:`nesterov_step` on the masked values gives the true step plus the step of the masks.
3. Round response (:class:`RefreshResponse`): the new masked weights, pre-scaled by k and
   replicated in every slot, encrypted fresh with the secret key.
4. Unmask (coordinator, :meth:`RefreshCoordinator.weights`): it applies the same step to its
   masks alone; the workers subtract k times the new weights mask from the fresh ciphertexts.
5. Reveal (every iteration, only for jobs that opted in to ``reveal_intermediate``) and finalize
   (:class:`RevealRequest`, :class:`FinalizeRequest`): the coordinator sends the mask of the
   model (Nesterov's velocity) and the key holder subtracts it; at finalization it seals the
   model for every party (:mod:`parties.keyholder`).

Who sees what. The coordinator: ciphertexts and its own masks. The key holder: masked values
(S_j + r_j, every slot of G_j + R_j, C + c, the masked state and its offsets), then the
model it seals at finalization (and every intermediate model if the job opted in).

Resuming after a coordinator restart. The coordinator's whole state between two messages is
its masks (:class:`RefreshMasks`: c, and the current a, b) and the last fresh weights; it can
persist them and rebuild its half with ``RefreshCoordinator(..., masks=...)``
(:mod:`coordinator.training` writes every request ahead of sending it, so that a request it
must send again is byte-identical). The key holder's half never goes back: a repeated
iteration is refused here; only its session may answer a byte-identical repeat of its latest
task from a cache (:mod:`parties.session`), which gives the coordinator nothing it did not
already have. The masks hide values from the key holder only, so persisting them on the
coordinator's own disk changes nothing for the coordinator's trust domain.

Privacy (honest-but-curious coordinator and key holder, no collusion): every value the key
holder sees is a true value plus a fresh uniform mask 2^m wide (m = 25 for the default
parameters, :attr:`hefl.params.CkksParameters.mask_bits`), i.e. statistical hiding with slack
about 2^(m - log2 |value|), roughly 17 bits for per-row contributions and 20 for weights. Not
128-bit; see README "Limits". The masks come from ``os.urandom`` (:mod:`hefl.protocols.masks`).

Precision: a masked value must still decode at the last level, which ``mask_bits`` keeps below
q0 with 4 bits to spare. Decryption there adds about 2^-20 absolute per slot (scale 2^30), so
S_j + r_j is off by about 2^-14 after summing 4096 slots (the float64 sum of the 2^25-wide
masked slots adds at most about 2^-21; both measured), and the step divides that by the row
count; the fresh weights carry another 2^-20 or so. The delivered weights stay within 2.5e-5 of
the float64 replica on breast cancer after 15 iterations (README, "Accuracy").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from hefl import sealio
from hefl.algorithm import Hyperparameters, l2_vector, nesterov_step
from hefl.codec import Array
from hefl.errors import ProtocolError
from hefl.params import CkksParameters
from hefl.protocols.keys import KeyHolderKeys
from hefl.protocols.masks import RandomBytes, uniform_masks
from hefl.v1 import hefl_pb2 as pb
from hefl.validate import Expected

if TYPE_CHECKING:
    import tenseal as ts


def _floats(values: Sequence[float] | Array) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def check_training_setup(
    setup: pb.TrainingSetup, *, hyper: Hyperparameters, rows: int, features: int
) -> None:
    """What a party (the key holder, or every party in collective mode) accepts as the job's
    training constants: exactly those its own decrypted summary and charter call for.

    Raises:
        ProtocolError: Any constant differs; the message names each one.
    """
    columns = hyper.outputs * (features + 1)
    expected = {
        "rows": (setup.rows, rows),
        "columns": (setup.columns, columns),
        "iterations": (setup.iterations, hyper.iterations),
        "learning rate": (setup.learning_rate, hyper.learning_rate),
        "weight scale": (setup.weight_scale, hyper.weight_scale),
    }
    wrong = [f"{k} {got} (expected {want})" for k, (got, want) in expected.items() if got != want]
    if not wrong and list(setup.l2) != l2_vector(columns, hyper.l2, outputs=hyper.outputs).tolist():
        wrong.append(f"l2 {list(setup.l2)}")
    if wrong:
        raise ProtocolError(f"training setup refused: {', '.join(wrong)}")


@dataclass(frozen=True)
class RefreshSetup:
    """What the key holder needs before the first round: public constants, masked state.

    Attributes:
        rows, columns, iterations, learning_rate, l2: The public optimizer constants; ``l2``
            has one strength per column.
        weight_scale: k; the key holder returns k * (masked weights).
        masked_label_term: Serialized CKKS vector of C + c, one slot per column.
        weights, velocity: The masked initial state, w_0 + a = a and v_0 + b = b.
    """

    rows: int
    columns: int
    iterations: int
    learning_rate: float
    l2: tuple[float, ...]
    weight_scale: float
    masked_label_term: bytes
    weights: tuple[float, ...]
    velocity: tuple[float, ...]

    def to_proto(self) -> pb.TrainingSetup:
        return pb.TrainingSetup(
            rows=self.rows,
            columns=self.columns,
            iterations=self.iterations,
            learning_rate=self.learning_rate,
            l2=self.l2,
            weight_scale=self.weight_scale,
            masked_label_term=self.masked_label_term,
            weights=self.weights,
            velocity=self.velocity,
        )

    @classmethod
    def from_proto(cls, setup: pb.TrainingSetup) -> RefreshSetup:
        """Raises: ProtocolError: a constant out of range or a vector of the wrong length."""
        if setup.rows <= 0 or setup.columns <= 0 or setup.iterations <= 0:
            raise ProtocolError(
                f"training setup with {setup.rows} rows, {setup.columns} columns and "
                f"{setup.iterations} iterations"
            )
        if not (setup.learning_rate > 0 and setup.weight_scale > 0):
            raise ProtocolError(
                f"training setup with learning rate {setup.learning_rate} and weight scale "
                f"{setup.weight_scale}; both must be positive"
            )
        lengths = {len(setup.l2), len(setup.weights), len(setup.velocity)}
        if lengths != {setup.columns}:
            raise ProtocolError(
                f"training setup: l2, weights and velocity have {len(setup.l2)}, "
                f"{len(setup.weights)} and {len(setup.velocity)} values for "
                f"{setup.columns} columns"
            )
        return cls(
            rows=setup.rows,
            columns=setup.columns,
            iterations=setup.iterations,
            learning_rate=setup.learning_rate,
            l2=tuple(setup.l2),
            weight_scale=setup.weight_scale,
            masked_label_term=setup.masked_label_term,
            weights=tuple(setup.weights),
            velocity=tuple(setup.velocity),
        )


@dataclass(frozen=True)
class RefreshRequest:
    """One round: the masked gradient sums and the offsets that re-randomise the state masks."""

    iteration: int
    masked_gradients: tuple[bytes, ...]  # serialized CKKS vectors, one per column
    weights_offset: tuple[float, ...]
    velocity_offset: tuple[float, ...]

    def to_proto(self) -> pb.RefreshTask:
        return pb.RefreshTask(
            iteration=self.iteration,
            masked_gradients=self.masked_gradients,
            weights_offset=self.weights_offset,
            velocity_offset=self.velocity_offset,
        )

    @classmethod
    def from_proto(cls, task: pb.RefreshTask) -> RefreshRequest:
        return cls(
            iteration=task.iteration,
            masked_gradients=tuple(task.masked_gradients),
            weights_offset=tuple(task.weights_offset),
            velocity_offset=tuple(task.velocity_offset),
        )


@dataclass(frozen=True)
class RefreshResponse:
    """Fresh ciphertexts of k * (masked weights), one per column, the value in every slot."""

    fresh_weights: tuple[bytes, ...]

    def to_proto(self) -> pb.Ciphertexts:
        return pb.Ciphertexts(ciphertexts=self.fresh_weights)

    @classmethod
    def from_proto(cls, ciphertexts: pb.Ciphertexts) -> RefreshResponse:
        return cls(fresh_weights=tuple(ciphertexts.ciphertexts))


@dataclass(frozen=True)
class RevealRequest:
    """Unmask the model after refresh ``iteration``; the answer is the model in the clear."""

    iteration: int
    model_mask: tuple[float, ...]

    def to_proto(self) -> pb.RevealTask:
        return pb.RevealTask(iteration=self.iteration, model_mask=self.model_mask)

    @classmethod
    def from_proto(cls, task: pb.RevealTask) -> RevealRequest:
        return cls(iteration=task.iteration, model_mask=tuple(task.model_mask))


@dataclass(frozen=True)
class Recipient:
    """A party the final model is sealed for: its X25519 key, signed by the party
    (:func:`hefl.signed.seal_key_parts`) with its long-term Ed25519 key."""

    name: str
    seal_public_key: bytes
    signing_public_key: bytes
    seal_key_signature: bytes

    @classmethod
    def from_hello(cls, hello: pb.PartyHello) -> Recipient:
        return cls(
            name=hello.name,
            seal_public_key=hello.seal_public_key,
            signing_public_key=hello.signing_public_key,
            seal_key_signature=hello.seal_key_signature,
        )

    def to_hello(self) -> pb.PartyHello:
        return pb.PartyHello(
            name=self.name,
            seal_public_key=self.seal_public_key,
            signing_public_key=self.signing_public_key,
            seal_key_signature=self.seal_key_signature,
        )


@dataclass(frozen=True)
class FinalizeRequest:
    """Unmask the final model, for the key holder to seal it for every recipient."""

    model_mask: tuple[float, ...]
    recipients: tuple[Recipient, ...]

    def to_proto(self) -> pb.FinalizeTask:
        return pb.FinalizeTask(
            model_mask=self.model_mask, parties=[r.to_hello() for r in self.recipients]
        )

    @classmethod
    def from_proto(cls, task: pb.FinalizeTask) -> FinalizeRequest:
        return cls(
            model_mask=tuple(task.model_mask),
            recipients=tuple(Recipient.from_hello(p) for p in task.parties),
        )


@dataclass(frozen=True)
class RefreshMasks:
    """The coordinator's secret state between two messages: the label term's mask c and the
    current masks a, b of the key holder's weights and velocity, one value per column."""

    label: tuple[float, ...]
    weights: tuple[float, ...]
    velocity: tuple[float, ...]


@dataclass(frozen=True)
class MaskedWeights:
    """What the workers compute the next gradient from: the key holder's fresh ciphertexts of
    k * (w_j + a_j) and the k * a_j to subtract from them."""

    ciphertexts: tuple[bytes, ...]
    unmask: tuple[float, ...]


class RefreshCoordinator:
    """The coordinator's half: draws every mask, masks the gradient sums, keeps the masks of the
    key holder's state in lock-step with it, unmasks the fresh weights. Public context only;
    the masks never leave this object except as the offsets and masked values the protocol
    sends.

    Args:
        context: The job's public context.
        params: Its parameter set (slots per ciphertext, mask width).
        hyper: The job's resolved hyperparameters.
        rows: Rows over all parties.
        columns: Weights of the model: outputs x (features + bias).
        random_bytes: Source of the masks' randomness; a seeded one only in tests.
        masks: Resume with these masks (:attr:`masks` of the half that sent the last message)
            instead of drawing new ones.

    Raises:
        ProtocolError: ``masks`` do not have one value per column.
    """

    def __init__(
        self,
        *,
        context: ts.Context,
        params: CkksParameters,
        hyper: Hyperparameters,
        rows: int,
        columns: int,
        random_bytes: RandomBytes = os.urandom,
        masks: RefreshMasks | None = None,
    ) -> None:
        import tenseal.sealapi as sealapi

        seal_context = context.seal_context().data
        self._encoder = sealapi.CKKSEncoder(seal_context)
        self._evaluator = sealapi.Evaluator(seal_context)
        self._context = context
        self._slots = params.slots
        self._mask_bits = params.mask_bits
        self._random_bytes = random_bytes
        self._hyper = hyper
        self._rows = rows
        self._columns = columns
        self._l2 = l2_vector(columns, hyper.l2, outputs=hyper.outputs)
        self._weight_scale = hyper.weight_scale
        if masks is None:
            masks = RefreshMasks(
                label=_floats(self._uniform(columns)),
                weights=_floats(self._uniform(columns)),
                velocity=_floats(self._uniform(columns)),
            )
        lengths = {len(masks.label), len(masks.weights), len(masks.velocity)}
        if lengths != {columns}:
            raise ProtocolError(f"masks of lengths {sorted(lengths)} for {columns} columns")
        self._label_mask = np.asarray(masks.label)
        self._weights_mask = np.asarray(masks.weights)
        self._velocity_mask = np.asarray(masks.velocity)

    @property
    def masks(self) -> RefreshMasks:
        """The masks as they stand after the last message this half produced."""
        return RefreshMasks(
            label=_floats(self._label_mask),
            weights=_floats(self._weights_mask),
            velocity=_floats(self._velocity_mask),
        )

    def _uniform(self, *shape: int) -> Array:
        return uniform_masks(self._mask_bits, shape, random_bytes=self._random_bytes)

    def setup(self, label_term: ts.CKKSVector) -> RefreshSetup:
        """The setup message, with the summed label term masked slot-wise."""
        masked_label = label_term + self._label_mask.tolist()
        return RefreshSetup(
            rows=self._rows,
            columns=self._columns,
            iterations=self._hyper.iterations,
            learning_rate=self._hyper.learning_rate,
            l2=_floats(self._l2),
            weight_scale=self._weight_scale,
            masked_label_term=sealio.serialize(masked_label),
            weights=_floats(self._weights_mask),
            velocity=_floats(self._velocity_mask),
        )

    def initial_weights(self) -> MaskedWeights:
        """w_0 = 0, which the coordinator encrypts with the public key itself."""
        zeros = [0.0] * self._columns
        ciphertexts = sealio.encrypt_replicated(self._context, zeros, self._slots)
        return MaskedWeights(ciphertexts=tuple(ciphertexts), unmask=tuple(zeros))

    def request(self, gradients: Sequence[ts.CKKSVector], *, iteration: int) -> RefreshRequest:
        """Mask this iteration's gradient sums and re-randomise the key holder's state masks."""
        if len(gradients) != self._columns:
            raise ProtocolError(f"{len(gradients)} gradients for {self._columns} columns")
        slot_masks = self._uniform(self._columns, self._slots)
        masked = [self._masked(g, m) for g, m in zip(gradients, slot_masks, strict=True)]
        fresh_weights_mask = self._uniform(self._columns)
        fresh_velocity_mask = self._uniform(self._columns)
        weights_offset = fresh_weights_mask - self._weights_mask
        velocity_offset = fresh_velocity_mask - self._velocity_mask
        self._weights_mask, self._velocity_mask = nesterov_step(
            weights=fresh_weights_mask,
            velocity=fresh_velocity_mask,
            gradient_sums=slot_masks.sum(axis=1),
            label_term=self._label_mask,
            rows=self._rows,
            learning_rate=self._hyper.learning_rate,
            l2=self._l2,
            iteration=iteration,
        )
        return RefreshRequest(
            iteration=iteration,
            masked_gradients=tuple(masked),
            weights_offset=_floats(weights_offset),
            velocity_offset=_floats(velocity_offset),
        )

    def _masked(self, gradient: ts.CKKSVector, mask: Array) -> bytes:
        """``gradient + mask`` slot-wise, serialized; on SEAL's objects, which is half the time
        of TenSEAL's vector addition and serialization (25 vs 53 ms for 31 columns)."""
        import tenseal.sealapi as sealapi

        ciphertext = gradient.ciphertext()[0]
        plain = sealapi.Plaintext()
        self._encoder.encode(mask.tolist(), ciphertext.parms_id(), ciphertext.scale, plain)
        out = sealapi.Ciphertext()
        self._evaluator.add_plain(ciphertext, plain, out)
        return sealio.vector_bytes(out, size=gradient.size(), scale=out.scale)

    def weights(self, response: RefreshResponse) -> MaskedWeights:
        """The key holder's fresh k * (w + a) with the k * a the workers subtract.

        Raises:
            ProtocolError: Not one ciphertext per column.
        """
        if len(response.fresh_weights) != self._columns:
            raise ProtocolError(
                f"key holder returned {len(response.fresh_weights)} weights, "
                f"expected {self._columns}"
            )
        return MaskedWeights(
            ciphertexts=response.fresh_weights,
            unmask=_floats(self._weight_scale * self._weights_mask),
        )

    def reveal(self, *, iteration: int) -> RevealRequest:
        """Have the key holder unmask the model of ``iteration`` (jobs that opted in)."""
        return RevealRequest(iteration=iteration, model_mask=_floats(self._velocity_mask))

    def finalize(self, *, recipients: Sequence[Recipient]) -> FinalizeRequest:
        """Reveal the final model's mask, for the key holder to seal the model."""
        return FinalizeRequest(
            model_mask=_floats(self._velocity_mask), recipients=tuple(recipients)
        )


class RefreshKeyHolder:
    """The key holder's half, an explicit state machine.

    After the setup it accepts the refreshes of iterations 0, 1, ... up to the setup's
    iteration count, each once and in order; a reveal of the iteration it refreshed last, once;
    the finalization after the last iteration, and no refresh after that. It refuses everything
    else with a :class:`~hefl.errors.ProtocolError` that names the iteration asked for and the
    one it expects. It uses the secret key only through ``keys`` (implemented in
    :mod:`parties`), and decrypts a masked gradient only if it is what the job's kernel sends
    (``gradient``: :meth:`hefl.validate.CiphertextRules.gradient` of the job's model).

    Raises:
        ProtocolError: The masked label term does not have one value per column.
        InvalidArgument: It does not decrypt under the key holder's context.
    """

    def __init__(self, setup: RefreshSetup, *, keys: KeyHolderKeys, gradient: Expected) -> None:
        self._setup = setup
        self._keys = keys
        self._gradient = gradient
        self._l2 = np.asarray(setup.l2)
        label = keys.decrypt(setup.masked_label_term, what="masked label term")
        if len(label) != setup.columns:
            raise ProtocolError(
                f"masked label term has {len(label)} values for {setup.columns} columns"
            )
        self._label_term = label
        self._weights = np.asarray(setup.weights)
        self._velocity = np.asarray(setup.velocity)
        self._refreshed = 0  # iterations done; the next refresh must be this one
        self._revealed = 0  # iterations revealed; only the last refreshed one may be next

    @property
    def refreshed(self) -> int:
        """How many iterations have been refreshed."""
        return self._refreshed

    def refresh(self, request: RefreshRequest) -> RefreshResponse:
        """Decrypt the masked sums, step the masked state, return fresh encrypted weights.

        Raises:
            ProtocolError: Not the next iteration, beyond the iteration count, or not one value
                per column.
            InvalidArgument: A masked gradient is not what the kernel sends (level, slots,
                scale) or not a ciphertext of the job.
        """
        iterations = self._setup.iterations
        if request.iteration != self._refreshed:
            raise ProtocolError(
                f"refresh of iteration {request.iteration} refused: the next iteration is "
                f"{self._refreshed}"
            )
        if request.iteration >= iterations:
            raise ProtocolError(
                f"refresh of iteration {request.iteration} refused: the job has {iterations} "
                f"iterations (0 to {iterations - 1})"
            )
        columns = self._setup.columns
        sizes = {
            len(request.masked_gradients),
            len(request.weights_offset),
            len(request.velocity_offset),
        }
        if sizes != {columns}:
            raise ProtocolError(
                f"refresh {request.iteration}: {len(request.masked_gradients)} gradients, "
                f"{len(request.weights_offset)} and {len(request.velocity_offset)} offsets "
                f"for {columns} columns"
            )
        sums = np.array(
            [
                self._keys.decrypt(data, what="masked gradient", expected=self._gradient).sum()
                for data in request.masked_gradients
            ]
        )
        weights = self._weights + np.asarray(request.weights_offset)
        velocity = self._velocity + np.asarray(request.velocity_offset)
        self._weights, self._velocity = nesterov_step(
            weights=weights,
            velocity=velocity,
            gradient_sums=sums,
            label_term=self._label_term,
            rows=self._setup.rows,
            learning_rate=self._setup.learning_rate,
            l2=self._l2,
            iteration=request.iteration,
        )
        self._refreshed += 1
        fresh = self._keys.encrypt_replicated((self._setup.weight_scale * self._weights).tolist())
        return RefreshResponse(fresh_weights=tuple(fresh))

    def reveal(self, request: RevealRequest) -> Array:
        """The model after the last refresh, unmasked.

        Raises:
            ProtocolError: Not the iteration refreshed last, already revealed, or not one value
                per column.
        """
        if request.iteration + 1 != self._refreshed:
            raise ProtocolError(
                f"reveal of iteration {request.iteration} refused: the last refreshed "
                f"iteration is {self._refreshed - 1}"
            )
        if self._revealed == self._refreshed:
            raise ProtocolError(
                f"reveal of iteration {request.iteration} refused: it was revealed already"
            )
        model = self._unmask(request.model_mask)
        self._revealed = self._refreshed
        return model

    def finalize(self, request: FinalizeRequest) -> Array:
        """The final model, unmasked, once every iteration is refreshed.

        Raises:
            ProtocolError: Iterations are missing, or the model mask has the wrong length.
        """
        if self._refreshed != self._setup.iterations:
            raise ProtocolError(
                f"finalization refused after {self._refreshed} of "
                f"{self._setup.iterations} iterations"
            )
        return self._unmask(request.model_mask)

    def _unmask(self, mask: Sequence[float]) -> Array:
        if len(mask) != self._setup.columns:
            raise ProtocolError(
                f"model mask has {len(mask)} values for {self._setup.columns} columns"
            )
        return self._velocity - np.asarray(mask)
