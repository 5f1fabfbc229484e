"""The key holder's side of every protocol that needs the secret key.

The coordinator sends tasks; :class:`KeyHolder` answers them. It never sees an unmasked
intermediate model: see :class:`MaskedOptimizer` for the refresh and
:class:`coordinator.refresh.RefreshMasker` for the coordinator's half.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import tenseal as ts

from hefl import wire
from hefl.algorithm import SigmoidPolynomial, nesterov_step
from hefl.errors import ProtocolError
from hefl.v1 import hefl_pb2 as pb
from parties.sealing import seal

log = logging.getLogger("hefl.keyholder")


_worker_context: ts.Context | None = None


def _load_public_context(data: bytes) -> None:
    global _worker_context
    _worker_context = ts.context_from(data)


def _encrypt_replicated(values: list[float], slots: int) -> list[bytes]:
    assert _worker_context is not None
    return wire.encrypt_replicated(_worker_context, values, slots)


class ReplicatedEncryptor:
    """Encrypts one replicated ciphertext per value, in parallel worker processes.

    Fresh encryption and serialization are most of a refresh (about 10 ms per ciphertext on one
    core, and TenSEAL holds the GIL), while the Ray workers wait for the new weights. Encryption
    needs only the public key, so the helper processes get the *public* context: the secret key
    stays in the key holder's own process. They are spawned, not forked, because this process
    already runs gRPC threads.
    """

    def __init__(self, context: ts.Context, *, processes: int | None = None) -> None:
        self._context = context
        count = processes if processes is not None else min(4, os.cpu_count() or 1)
        self._pool: ProcessPoolExecutor | None = None
        if count > 1:
            public = context.serialize(save_secret_key=False, save_relin_keys=False)
            self._pool = ProcessPoolExecutor(
                count,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_load_public_context,
                initargs=(public,),
            )
            self._processes = count
            # Spawning and importing TenSEAL takes a second: do it now, not at the first refresh.
            self._pool.map(_encrypt_replicated, [[0.0]] * count, [8] * count)

    def encrypt(self, values: Sequence[float], slots: int) -> list[bytes]:
        if self._pool is None:
            return wire.encrypt_replicated(self._context, values, slots)
        share = -(-len(values) // self._processes)
        chunks = [list(values[i : i + share]) for i in range(0, len(values), share)]
        return [
            c
            for part in self._pool.map(_encrypt_replicated, chunks, [slots] * len(chunks))
            for c in part
        ]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


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
        self, context: ts.Context, setup: pb.TrainingSetup, encryptor: ReplicatedEncryptor
    ) -> None:
        self._context = context
        self._encryptor = encryptor
        self._setup = setup
        self._slots = setup.slots
        self._columns = setup.columns
        self._l2 = np.asarray(setup.l2, dtype=np.float64)
        polynomial = SigmoidPolynomial(0.0, tuple(setup.sigmoid_coefficients))  # type: ignore[arg-type]
        self._weight_scale = polynomial.encrypted_form()[0]
        label = wire.deserialize(context, setup.masked_label_term, what="masked label term")
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
                    np.sum(wire.deserialize(self._context, data, what="masked gradient").decrypt())
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
        return self._encryptor.encrypt((self._weight_scale * self._weights).tolist(), self._slots)

    def unmask_model(self, mask: np.ndarray) -> np.ndarray:
        """The model (Nesterov's velocity) once the coordinator reveals its final mask."""
        if len(mask) != self._columns:
            raise ProtocolError("model mask does not have one value per column")
        return self._velocity - mask


class KeyHolder:
    """Executes the coordinator's tasks for one job with the private context."""

    def __init__(
        self, *, context: ts.Context, job_id: str, encrypt_processes: int | None = None
    ) -> None:
        if not context.is_private():
            raise ProtocolError("the key holder needs the private context")
        self._context = context
        self._job_id = job_id
        self._encryptor = ReplicatedEncryptor(context, processes=encrypt_processes)
        self._optimizer: MaskedOptimizer | None = None
        self.model: np.ndarray | None = None

    def close(self) -> None:
        self._encryptor.close()

    def handle(self, task: pb.KeyHolderTask) -> pb.KeyHolderResult:
        kind = task.WhichOneof("task")
        log.debug("key holder task %s", kind)
        if kind == "decrypt_stats":
            vector = wire.deserialize(self._context, task.decrypt_stats.ciphertext, what="stats")
            values = vector.decrypt()[: task.decrypt_stats.length]
            return pb.KeyHolderResult(values=pb.Values(values=values))
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
