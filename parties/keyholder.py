"""The key holder: the one process that holds the job's secret key.

:class:`SecretKey` performs the secret-key operations the protocols ask for
(:mod:`hefl.protocols.keys`); :class:`KeyHolder` answers the coordinator's tasks by running the
key holder's side of each protocol, converting their messages at this edge. It follows the
protocol it agreed to and nothing else, one stage after the other:

1. ``decrypt_stats``, once: every roster party's share, each signature checked against the
   roster, added up here (:class:`hefl.protocols.stats.StatsProtocol`); only the summary leaves.
   From the summary and its own charter the key holder derives the job's hyperparameters.
2. ``setup``, once: it must carry exactly those hyperparameters, the summary's row count and
   the job's columns.
3. ``refresh`` of iterations 0, 1, ... up to the job's count, in order
   (:class:`hefl.protocols.refresh.RefreshKeyHolder`); ``reveal`` of the latest one only if this
   key holder was started with ``reveal_intermediate``, and then the iterate stays here: it is
   sealed with the model, never answered to the coordinator.
4. ``finalize``, once, after the last refresh: the model (with its own features, mean and std)
   is sealed to every roster party, each to a sealing key that party signed, and each box is
   signed by this key holder.

Anything else is refused with a :class:`~hefl.errors.ProtocolError` naming what was asked and
what the stage allows; the session logs it, answers the error and keeps serving.

Faults and restarts. This state machine never goes back and never takes a step twice: a broken
connection or a restarted coordinator changes nothing here. The key holder's session
(:mod:`parties.session`) keeps only one thing beside it: the latest task's SHA-256 and its
answer, so that a byte-identical repeat of that task (what a coordinator sends when the answer
was lost, or when it restarted with the task in flight) is answered again without reaching this
class. Every other request for a step already taken reaches it and is refused: statistics a
second time, a second setup (with the same or other masks), a refresh of an iteration already
refreshed (whatever its masks), a reveal already made, a second finalization. A coordinator
that restarted without its journal therefore cannot start the training over; the job fails.
The secret key exists only in this process: if the key holder itself stops, no one can resume
its job.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi

from hefl import messages, sealio, signed
from hefl.algorithm import Hyperparameters
from hefl.codec import AggregateStats, Array
from hefl.errors import ProtocolError
from hefl.identity import verify_signature
from hefl.protocols.refresh import (
    FinalizeRequest,
    RefreshKeyHolder,
    RefreshRequest,
    RefreshSetup,
    RevealRequest,
    check_training_setup,
)
from hefl.protocols.stats import StatsProtocol, StatsRequest, StatsShare, summary_to_proto
from hefl.v1 import hefl_pb2 as pb
from hefl.validate import ANY, CiphertextRules, Expected
from parties.identity import SigningKey
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
        self._ciphertexts = CiphertextRules(context)
        self._encoder = sealapi.CKKSEncoder(seal_context)
        self._encryptor = sealapi.Encryptor(seal_context, context.secret_key().data)
        self._scale = context.global_scale
        self.slots: int = self._encoder.slot_count()

    def decrypt(self, ciphertext: bytes, *, what: str, expected: Expected = ANY) -> Array:
        vector = self._ciphertexts.load(ciphertext, expected, what=what)
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
    """Answers the coordinator's tasks for one job, stage by stage (see the module docstring).

    Args:
        context: The private context (secret key inside).
        job_id: The job.
        features: The job's feature names (the key holder's own columns).
        options: The training options the key holder asked for (its charter's).
        signing_key: Signs every sealed model.
        roster: The charter's parties and their signing keys: statistics are accepted and the
            model sealed for exactly these parties, on their signatures. None without a kit
            (``--insecure``): what the coordinator relays is taken as it comes.
    """

    def __init__(
        self,
        *,
        context: ts.Context,
        job_id: str,
        features: Sequence[str],
        options: pb.TrainingOptions,
        signing_key: SigningKey,
        roster: dict[str, bytes] | None = None,
    ) -> None:
        self._key = SecretKey(context)
        self._context = context
        self._job_id = job_id
        self._features = tuple(features)
        self._options = options
        self._signing_key = signing_key
        self._roster = roster
        self._stats = StatsProtocol(features=len(self._features), slots=self._key.slots)
        self._stage = "decrypt_stats"
        self._summary: AggregateStats | None = None
        self._hyper: Hyperparameters | None = None
        self._refresh: RefreshKeyHolder | None = None
        self._intermediate: list[list[float]] = []
        self.model: Array | None = None

    def handle(self, task: pb.KeyHolderTask) -> pb.KeyHolderResult:
        """Answer one task.

        Raises:
            ProtocolError: A task the protocol does not allow now, or a malformed one.
            PermissionDenied: A share or sealing key whose signature does not verify.
            InvalidArgument: A ciphertext that does not decrypt under the job's context.
        """
        kind = task.WhichOneof("task")
        allowed = {
            "decrypt_stats": ("decrypt_stats",),
            "setup": ("setup",),
            "training": ("refresh", "reveal", "finalize"),
            "done": (),
        }[self._stage]
        if kind not in allowed:
            raise ProtocolError(
                f"task {kind!r} refused: the job is at its {self._stage!r} stage, which "
                f"allows {', '.join(allowed) or 'nothing more'}"
            )
        log.debug("key holder task %s", kind)
        if kind == "decrypt_stats":
            summary = self._summarize(StatsRequest.from_proto(task.decrypt_stats))
            return pb.KeyHolderResult(values=summary_to_proto(summary))
        if kind == "setup":
            assert self._hyper is not None  # the statistics came first
            self._refresh = RefreshKeyHolder(
                self._checked_setup(task.setup),
                keys=self._key,
                gradient=CiphertextRules(self._context).gradient(self._hyper.kernel),
            )
            self._stage = "training"
            return pb.KeyHolderResult(values=pb.Values())
        assert self._refresh is not None
        if kind == "refresh":
            response = self._refresh.refresh(RefreshRequest.from_proto(task.refresh))
            return pb.KeyHolderResult(ciphertexts=response.to_proto())
        if kind == "reveal":
            if not self._options.reveal_intermediate:
                raise ProtocolError(
                    "reveal refused: this key holder did not opt in to intermediate models"
                )
            model = self._refresh.reveal(RevealRequest.from_proto(task.reveal))
            self._intermediate.append(model.tolist())
            return pb.KeyHolderResult(values=pb.Values())
        request = FinalizeRequest.from_proto(task.finalize)
        self._check_recipients(request)
        self.model = self._refresh.finalize(request)
        self._stage = "done"
        return pb.KeyHolderResult(sealed=self._seal(self.model, request))

    # ----- stage 1: statistics ---------------------------------------------------------------

    def _summarize(self, request: StatsRequest) -> AggregateStats:
        """Check every share (roster, signature, shape), add them up, decrypt the sum only."""
        if request.features != len(self._features):
            raise ProtocolError(
                f"statistics of {request.features} features refused: the job has "
                f"{len(self._features)}"
            )
        names = [party for party, _ in request.shares]
        expected = sorted(self._roster) if self._roster is not None else sorted(set(names))
        if sorted(names) != expected or not names:
            raise ProtocolError(
                f"statistics of parties {sorted(names)} refused: the job's parties are {expected}"
            )
        for party, share in request.shares:
            self._check_share(party, share, request.job_id)
        shares = [share for _, share in request.shares]
        summary = self._stats.summarize(self._stats.aggregate(self._context, shares), self._key)
        declared = sum(share.rows for share in shares)
        if declared != summary.count:
            raise ProtocolError(
                f"the parties declare {declared} rows but their statistics count {summary.count}"
            )
        self._summary = summary
        options = self._options
        self._hyper = messages.resolve_hyperparameters(
            options, curvature=summary.curvature, rows=summary.count
        )
        self._stage = "setup"
        return summary

    def _check_share(self, party: str, share: StatsShare, job_id: str) -> None:
        if job_id != self._job_id:
            raise ProtocolError(f"statistics of job {job_id!r} refused in job {self._job_id!r}")
        if self._roster is not None:
            verify_signature(
                self._roster[party],
                share.signature,
                signed.STATS,
                signed.stats_parts(self._job_id, party, share.rows, share.pieces),
            )
        self._stats.check_share(self._context, share, party=party)

    # ----- stage 2: setup ----------------------------------------------------------------------

    def _checked_setup(self, message: pb.TrainingSetup) -> RefreshSetup:
        """The setup, if it is exactly the training this key holder's summary calls for."""
        setup = RefreshSetup.from_proto(message)
        assert self._summary is not None and self._hyper is not None
        check_training_setup(
            message, hyper=self._hyper, rows=self._summary.count, features=len(self._features)
        )
        return setup

    # ----- stage 4: finalize -------------------------------------------------------------------

    def _check_recipients(self, request: FinalizeRequest) -> None:
        names = sorted(r.name for r in request.recipients)
        if self._roster is not None and names != sorted(self._roster):
            raise ProtocolError(
                f"finalize for parties {names} refused: the job's roster is {sorted(self._roster)}"
            )
        if len(set(names)) != len(names):
            raise ProtocolError(f"finalize names a party twice: {names}")
        for recipient in request.recipients:
            key = (
                recipient.signing_public_key
                if self._roster is None
                else self._roster[recipient.name]
            )
            verify_signature(
                key,
                recipient.seal_key_signature,
                signed.SEAL_KEY,
                signed.seal_key_parts(self._job_id, recipient.name, recipient.seal_public_key),
            )

    def _seal(self, model: Array, request: FinalizeRequest) -> pb.SealedModels:
        """The model, its standardization and any revealed iterates, sealed to each recipient's
        X25519 key and signed."""
        assert self._summary is not None
        payload = json.dumps(
            {
                "job_id": self._job_id,
                "features": list(self._features),
                "mean": self._summary.mean.tolist(),
                "std": self._summary.std.tolist(),
                "weights": model.tolist(),
                "intermediate": self._intermediate,
            }
        ).encode()
        sealed = []
        for party in request.recipients:
            box = seal(
                party.seal_public_key, payload, associated=associated_data(self._job_id, party.name)
            )
            parts = signed.model_parts(
                self._job_id, party.name, box.ephemeral_public_key, box.nonce, box.ciphertext
            )
            sealed.append(
                pb.SealedModel(
                    party=party.name,
                    ephemeral_public_key=box.ephemeral_public_key,
                    nonce=box.nonce,
                    ciphertext=box.ciphertext,
                    signature=self._signing_key.sign(signed.MODEL, parts),
                )
            )
        return pb.SealedModels(models=sealed)


def associated_data(job_id: str, party: str) -> bytes:
    """Bytes that bind a sealed model to its job and party."""
    return f"{job_id}/{party}".encode()
