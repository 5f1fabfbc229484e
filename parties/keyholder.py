"""The key holder's side of every protocol that needs the secret key.

The coordinator sends tasks; :class:`KeyHolder` answers them. It never sees an unmasked
intermediate model: see :class:`MaskedOptimizer` for the refresh and
:class:`coordinator.refresh.RefreshMasker` for the coordinator's half.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi

from hefl import sealio
from hefl.algorithm import SigmoidPolynomial, nesterov_step
from hefl.errors import ProtocolError
from hefl.protocols.stats import EncryptedStats, StatsProtocol, summary_to_proto
from hefl.v1 import hefl_pb2 as pb
from parties.sealing import seal

log = logging.getLogger("hefl.keyholder")


class SecretKey:
    """Decryption with the job's secret key (:class:`hefl.protocols.keys.Decryptor`)."""

    def __init__(self, context: ts.Context) -> None:
        if not context.is_private():
            raise ProtocolError("the key holder needs the private context")
        self._context = context
        self.slots = (
            context.seal_context().data.key_context_data().parms().poly_modulus_degree() // 2
        )

    def decrypt(self, ciphertext: bytes, *, what: str) -> np.ndarray:
        vector = sealio.deserialize(self._context, ciphertext, what=what)
        return np.asarray(vector.decrypt(), dtype=np.float64)


class WeightEncryptor:
    """Fresh ciphertexts of the weights, each value replicated in every slot.

    Encrypted with the secret key, in this process: symmetric (secret-key) encryption is RLWE
    encryption like public-key encryption, at less than half the work (2.1 vs 4.8 ms at N=8192),
    and SEAL stores the uniformly random half of such a ciphertext as the seed it was drawn from,
    so each one is half the bytes to serialize and send (214 vs 427 KB). Whoever loads it expands
    the seed; nothing else changes. Encryption is most of a refresh, while the workers wait.
    """

    def __init__(self, context: ts.Context) -> None:
        seal_context = context.seal_context().data
        self._encoder = sealapi.CKKSEncoder(seal_context)
        self._encryptor = sealapi.Encryptor(seal_context, context.secret_key().data)
        self._scale = context.global_scale
        self._slots = self._encoder.slot_count()

    def encrypt(self, values: Sequence[float]) -> list[bytes]:
        ciphertexts = []
        for value in values:
            plain = sealapi.Plaintext()
            self._encoder.encode(float(value), self._scale, plain)
            ciphertexts.append(
                sealio.vector_bytes(
                    self._encryptor.encrypt_symmetric(plain), size=self._slots, scale=self._scale
                )
            )
        return ciphertexts


class MaskedOptimizer:
    """Key-holder half of the masked refresh-and-step protocol.

    Protocol (one round per training iteration; TenSEAL has no bootstrapping, so every
    iteration's weights come back fresh from here):

    1. The coordinator holds per-column ciphertexts G_j whose slots sum to S_j, the data part
       of the gradient. It adds a uniform mask vector R_j in [-2^m, 2^m]^slots and sends them.
    2. Here each is decrypted and its slots summed: S_j + r_j with r_j = sum(R_j).
    3. The optimizer state is held masked: w + a, v + b. The coordinator sends offsets that
       replace a, b by fresh uniform masks, then this side applies :func:`nesterov_step` to the
       masked values. The step is linear, so the result is the true step plus the step of the
       masks, which the coordinator computes on its own.
    4. The new masked weights are encrypted, pre-scaled by the sigmoid's weight scale k and
       replicated in every slot; the coordinator subtracts k times its mask.

    Privacy (honest-but-curious coordinator and key holder, no collusion): every value the key
    holder sees is a true value plus a fresh uniform mask 2^m wide (m = 25 for the default
    parameters), i.e. statistical hiding with slack about 2^(m - log2 |value|), roughly 17 bits
    for per-row contributions and 20 for weights. Not 128-bit; see README "Limits".

    Precision: decryption at the last level adds about 2^-20 absolute per slot; summing 4096
    masked slots in float64 costs about 2^-15 absolute on S_j, divided by the row count.
    """

    def __init__(
        self, context: ts.Context, setup: pb.TrainingSetup, encryptor: WeightEncryptor
    ) -> None:
        self._context = context
        self._encryptor = encryptor
        self._setup = setup
        self._columns = setup.columns
        self._l2 = np.asarray(setup.l2, dtype=np.float64)
        polynomial = SigmoidPolynomial(0.0, tuple(setup.sigmoid_coefficients))  # type: ignore[arg-type]
        self._weight_scale = polynomial.encrypted_form()[0]
        label = sealio.deserialize(context, setup.masked_label_term, what="masked label term")
        self._label_term = np.asarray(label.decrypt()[: self._columns], dtype=np.float64)
        self._weights = np.asarray(setup.weights, dtype=np.float64)
        self._velocity = np.asarray(setup.velocity, dtype=np.float64)
        if len(self._weights) != self._columns or len(self._velocity) != self._columns:
            raise ProtocolError("setup state does not have one value per column")

    def refresh(self, task: pb.RefreshTask) -> list[bytes]:
        if len(task.masked_gradients) != self._columns:
            raise ProtocolError(
                f"refresh {task.iteration}: {len(task.masked_gradients)} gradients "
                f"for {self._columns} columns"
            )
        sums = np.array(
            [
                float(
                    np.sum(
                        sealio.deserialize(self._context, data, what="masked gradient").decrypt()
                    )
                )
                for data in task.masked_gradients
            ]
        )
        self._weights = self._weights + np.asarray(task.weights_offset)
        self._velocity = self._velocity + np.asarray(task.velocity_offset)
        self._weights, self._velocity = nesterov_step(
            weights=self._weights,
            velocity=self._velocity,
            gradient_sums=sums,
            label_term=self._label_term,
            rows=self._setup.rows,
            learning_rate=self._setup.learning_rate,
            l2=self._l2,
            iteration=task.iteration,
        )
        return self._encryptor.encrypt((self._weight_scale * self._weights).tolist())

    def unmask_model(self, mask: np.ndarray) -> np.ndarray:
        """The model (Nesterov's velocity) once the coordinator reveals its final mask."""
        if len(mask) != self._columns:
            raise ProtocolError("model mask does not have one value per column")
        return self._velocity - mask


class KeyHolder:
    """Executes the coordinator's tasks for one job with the private context."""

    def __init__(self, *, context: ts.Context, job_id: str) -> None:
        if not context.is_private():
            raise ProtocolError("the key holder needs the private context")
        self._context = context
        self._job_id = job_id
        self._key = SecretKey(context)
        self._encryptor = WeightEncryptor(context)
        self._optimizer: MaskedOptimizer | None = None
        self.model: np.ndarray | None = None

    def handle(self, task: pb.KeyHolderTask) -> pb.KeyHolderResult:
        kind = task.WhichOneof("task")
        log.debug("key holder task %s", kind)
        if kind == "decrypt_stats":
            return pb.KeyHolderResult(values=self._summarize(task.decrypt_stats))
        if kind == "setup":
            self._optimizer = MaskedOptimizer(self._context, task.setup, self._encryptor)
            return pb.KeyHolderResult(values=pb.Values())
        optimizer = self._require_optimizer(kind)
        if kind == "refresh":
            return pb.KeyHolderResult(
                ciphertexts=pb.Ciphertexts(ciphertexts=optimizer.refresh(task.refresh))
            )
        if kind == "reveal":
            weights = optimizer.unmask_model(np.asarray(task.reveal.weights_mask))
            return pb.KeyHolderResult(values=pb.Values(values=weights.tolist()))
        if kind == "finalize":
            return pb.KeyHolderResult(sealed=self._finalize(optimizer, task.finalize))
        raise ProtocolError(f"unknown key holder task {kind!r}")

    def _summarize(self, task: pb.DecryptStatsTask) -> pb.Values:
        """The key holder's part of :mod:`hefl.protocols.stats`: only the summary leaves."""
        aggregate = EncryptedStats.from_proto(task)
        protocol = StatsProtocol(features=aggregate.features, slots=self._key.slots)
        return summary_to_proto(protocol.summarize(aggregate, self._key))

    def _require_optimizer(self, kind: str | None) -> MaskedOptimizer:
        if self._optimizer is None:
            raise ProtocolError(f"task {kind!r} before training setup")
        return self._optimizer

    def _finalize(self, optimizer: MaskedOptimizer, task: pb.FinalizeTask) -> pb.SealedModels:
        weights = optimizer.unmask_model(np.asarray(task.model_mask))
        self.model = weights
        payload = json.dumps(
            {
                "job_id": self._job_id,
                "features": list(task.features),
                "mean": list(task.standardization.mean),
                "std": list(task.standardization.std),
                "weights": weights.tolist(),
            }
        ).encode()
        sealed = []
        for party in task.parties:
            box = seal(
                party.seal_public_key, payload, associated=associated_data(self._job_id, party.name)
            )
            sealed.append(
                pb.SealedModel(
                    party=party.name,
                    ephemeral_public_key=box.ephemeral_public_key,
                    nonce=box.nonce,
                    ciphertext=box.ciphertext,
                )
            )
        return pb.SealedModels(models=sealed)


def associated_data(job_id: str, party: str) -> bytes:
    """Bytes that bind a sealed model to its job and party."""
    return f"{job_id}/{party}".encode()
