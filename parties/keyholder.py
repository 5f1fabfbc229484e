"""The key holder: the one process that holds the job's secret key.

:class:`SecretKey` performs the secret-key operations the protocols ask for
(:mod:`hefl.protocols.keys`); :class:`KeyHolder` answers the coordinator's tasks by running the
key holder's side of each protocol, converting their messages at this edge:

- ``decrypt_stats``: :meth:`hefl.protocols.stats.StatsProtocol.summarize`, only the summary
  leaves;
- ``setup``, ``refresh``, ``reveal``, ``finalize``:
  :class:`hefl.protocols.refresh.RefreshKeyHolder`, which sees masked values only until the
  finalization, when the model is sealed here for every party.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi

from hefl import sealio
from hefl.codec import Array
from hefl.errors import ProtocolError
from hefl.protocols.refresh import (
    FinalizeRequest,
    RefreshKeyHolder,
    RefreshRequest,
    RefreshSetup,
    RevealRequest,
)
from hefl.protocols.stats import EncryptedStats, StatsProtocol, summary_to_proto
from hefl.v1 import hefl_pb2 as pb
from parties.sealing import seal

log = logging.getLogger("hefl.keyholder")


class SecretKey:
    """Decryption and fresh encryption with the job's secret key
    (:class:`hefl.protocols.keys.KeyHolderKeys`).

    Fresh weights are encrypted with the secret key, in this process: symmetric (secret-key)
    encryption is RLWE encryption like public-key encryption, at less than half the work (2.1 vs
    4.8 ms at N=8192), and SEAL stores the uniformly random half of such a ciphertext as the seed
    it was drawn from, so each one is half the bytes to serialize and send (214 vs 427 KB).
    Whoever loads it expands the seed; nothing else changes. Encryption is most of a refresh,
    while the workers wait.

    Raises:
        ProtocolError: ``context`` holds no secret key.
    """

    def __init__(self, context: ts.Context) -> None:
        if not context.is_private():
            raise ProtocolError("the key holder needs the private context")
        seal_context = context.seal_context().data
        self._context = context
        self._encoder = sealapi.CKKSEncoder(seal_context)
        self._encryptor = sealapi.Encryptor(seal_context, context.secret_key().data)
        self._scale = context.global_scale
        self.slots: int = self._encoder.slot_count()

    def decrypt(self, ciphertext: bytes, *, what: str) -> Array:
        vector = sealio.deserialize(self._context, ciphertext, what=what)
        return np.asarray(vector.decrypt(), dtype=np.float64)

    def encrypt_replicated(self, values: Sequence[float]) -> list[bytes]:
        ciphertexts = []
        for value in values:
            plain = sealapi.Plaintext()
            self._encoder.encode(float(value), self._scale, plain)
            ciphertexts.append(
                sealio.vector_bytes(
                    self._encryptor.encrypt_symmetric(plain), size=self.slots, scale=self._scale
                )
            )
        return ciphertexts


class KeyHolder:
    """Executes the coordinator's tasks for one job with the private context."""

    def __init__(self, *, context: ts.Context, job_id: str) -> None:
        self._key = SecretKey(context)
        self._job_id = job_id
        self._refresh: RefreshKeyHolder | None = None
        self.model: Array | None = None

    def handle(self, task: pb.KeyHolderTask) -> pb.KeyHolderResult:
        """Answer one task.

        Raises:
            ProtocolError: A task the protocols do not allow now, or a malformed one.
            InvalidArgument: A ciphertext that does not decrypt under the job's context.
        """
        kind = task.WhichOneof("task")
        log.debug("key holder task %s", kind)
        if kind == "decrypt_stats":
            aggregate = EncryptedStats.from_proto(task.decrypt_stats)
            protocol = StatsProtocol(features=aggregate.features, slots=self._key.slots)
            summary = protocol.summarize(aggregate, self._key)
            return pb.KeyHolderResult(values=summary_to_proto(summary))
        if kind == "setup":
            # A new setup starts training over (a coordinator restart restarts the training).
            self._refresh = RefreshKeyHolder(RefreshSetup.from_proto(task.setup), keys=self._key)
            return pb.KeyHolderResult(values=pb.Values())
        refresh = self._require_setup(kind)
        if kind == "refresh":
            response = refresh.refresh(RefreshRequest.from_proto(task.refresh))
            return pb.KeyHolderResult(ciphertexts=response.to_proto())
        if kind == "reveal":
            model = refresh.reveal(RevealRequest.from_proto(task.reveal))
            return pb.KeyHolderResult(values=pb.Values(values=model.tolist()))
        if kind == "finalize":
            request = FinalizeRequest.from_proto(task.finalize)
            self.model = refresh.finalize(request)
            return pb.KeyHolderResult(sealed=self._seal(self.model, request))
        raise ProtocolError(f"unknown key holder task {kind!r}")

    def _require_setup(self, kind: str | None) -> RefreshKeyHolder:
        if self._refresh is None:
            raise ProtocolError(f"task {kind!r} before training setup")
        return self._refresh

    def _seal(self, model: Array, request: FinalizeRequest) -> pb.SealedModels:
        """The model and its standardization, sealed to each recipient's X25519 key."""
        payload = json.dumps(
            {
                "job_id": self._job_id,
                "features": list(request.features),
                "mean": list(request.mean),
                "std": list(request.std),
                "weights": model.tolist(),
            }
        ).encode()
        sealed = []
        for party in request.recipients:
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
