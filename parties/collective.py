"""A roster party's side of a collective (n-of-n) job: its key share and its state machine.

In collective mode no one holds the job's secret key: each roster party holds a share s_i
(:class:`hefl.protocols.collective.secret.SecretKeyShare`, made here, never sent) and answers the
coordinator's tasks by running its side of the collective protocols
(:mod:`hefl.protocols.collective`). :class:`CollectiveMember` accepts each step once, in this
order, and refuses everything else with a :class:`~hefl.errors.ProtocolError` naming what was
asked and what the stage allows (the session logs it and keeps serving):

Every message a party sends during setup is signed with its roster key over (job, step, party,
SHA-256 of the message) (:func:`hefl.signed.collective_parts`), and every party checks all n
signatures before it uses what is relayed: the coordinator can neither forge a party's message
nor, since a party signs one message per step, show two parties different ones.

1. ``seed-commit``: its commitment to a seed share (:class:`SeedAgreementParty`), signed.
2. ``seed-reveal``: given every roster party's signed commitment, its own unchanged, its seed
   share, signed.
3. ``keys``: given every signed reveal, it computes the job's seed itself (bound to the job id
   and roster), makes its public-key share (CKG) and relinearization-key round-1 share and
   answers only a signed commitment to them (their SHA-256 digests).
4. ``keys-reveal``: given every party's signed commitment, its shares: no party chooses its
   shares after seeing another's (a share that cancels an honest party's would make the key
   its own).
5. ``relin-key-2``: given every party's shares, each checked against its party's commitment, it
   adds them up itself and answers its round-2 share, signed.
6. ``context``: given every signed round-2 share and the coordinator's public context, it builds
   the context from the aggregates itself and refuses unless the coordinator's is byte for byte
   that one (same public and relinearization keys, no secret key); it answers its signature over
   the context's digest, and does not use the context yet.
7. ``stats-commit``: given every party's signature over a context, each over the one it built
   (no split view), it takes the context, encrypts its statistics (at the reveal scale) and
   answers its signed commitment to them (row count and the pieces' digests).
8. ``stats-release``: given every party's signed statistics commitment, it lets its statistics
   go out (its client submits them only now): no party's statistics can depend on another's.
9. ``stats``: given every roster party's statistics, each the one its party committed to, it
   adds them up itself and answers a smudged decryption share of each piece of the sum
   (:class:`CollectiveDecryptProtocol`), sealed to every other roster party's signed sealing key
   and signed: the coordinator relays boxes it cannot open.
10. ``stats-open``: given the boxes sealed to it, it decrypts the sum, summarizes it and derives
   the hyperparameters from its own charter; it answers the row count and the curvature (what
   the coordinator needs to plan the step size), nothing else of the statistics.
11. ``label-commit``, ``label-release``: its label term (standardized by the summary),
   committed to (signed digest) and let go only once every party's commitment is in.
12. ``setup``: the coordinator's training constants must be exactly those; given every party's
   label term, each the one its party committed to, it adds them up itself and answers its
   EncToShare share (:class:`EncToShareProtocol`), keeping its share c_i of the label term's mask.
13. ``refresh`` of iterations 0, 1, ... up to the agreed count, in order, each once: the
   gradients, one per column at the last level, the job's scale and parameter id; it answers its
   :class:`MaskedStepProtocol` share, having applied the linear part of Nesterov's step to its
   own masks (w-mask A_i, v-mask B_i, the iteration's gradient-mask share g_i, c_i), and
   re-encrypted -k A'_i: the finalized ciphertexts hold k w' (the true weights). The part of
   that re-encryption which needs no gradient and no mask (-a_j s_i + e'_ij: the CRPs, the
   products by its key share, the noises' transforms) it makes in the background after the
   setup and after each refresh, for the next iteration only, and uses it for that one share.
   Iteration 0 starts from zero weights, where every model's data gradient is exactly zero: it
   carries no gradients (any input is refused), and the party decrypts nothing for it, only
   re-encrypts its step taken at a gradient share of 0 (the zero step of
   :class:`MaskedStepProtocol`).
14. ``model``: after the last iteration, given the masked model v + sum B_i (``columns`` finite
   values), it answers its mask B_i sealed to every other roster party, signed, with the digest
   of the masked model it received (so every party sees whether all got the same one).
15. ``model-open``: given every other party's box, it checks the signatures, that all saw the
   same masked model and that every mask is ``columns`` finite values (naming the sender), and
   unmasks v = (v + sum B) - sum B_i; it answers the model's digest, signed.
16. ``model-confirm``: given every party's signed model digest, it keeps the model only if all
   are its own (a party that sent two parties different masks is found, by name). The
   coordinator never has the model.

Trust: no proofs that shares are well formed: an active party can make the keys or the model
wrong (``model-confirm`` catches parties left with different models, not one wrong model all
share). The commit rounds keep any party, with or without the coordinator, from choosing its key,
statistics or label-term share as a function of another's. The coordinator may be malicious in
setup and statistics: it cannot have a party decrypt anything but the sum of the roster's
committed statistics and label terms. The refresh assumes a semi-honest coordinator: a party
cannot check what a gradient ciphertext holds, and its share of a crafted one leaks about
log2(q0 / 2^(b+1)) + log2 n bits of its key share per column per iteration (README, Trust model).

Coordinator restarts. The key share s_i and the masks (A_i, B_i, c_i) live in this object only
(nothing is written to disk), and the party's session keeps the task stream open across a
coordinator restart (:class:`parties.session.KeyHolderSession`), so a restarted coordinator
talks to the same state machine. It resumes a setup or a training from its journal
(:class:`coordinator.collective.JournaledRelay`, :func:`coordinator.collective.train`) by
sending the step in flight again, byte for byte. What this party answers then:

- the byte-identical repeat of its latest task: the answer it gave, from the session's cache
  (:class:`parties.session.TaskAnswerer`), not computed again. The coordinator learns nothing
  it had not received;
- a step it has not taken yet: computed now, as the first time (it never saw it);
- anything else is refused: a step already taken (each is taken once, in order), and in
  particular a ``refresh`` of an iteration it answered, whether for the same gradients (not as
  its latest task: "it answers only a byte-identical repeat of its latest task") or for others
  ("answered it already for other gradients, and makes one share per iteration").

Why no other answer is safe: a refresh share is s_i c1 + (mask terms) + e with the iteration's
masks and fresh smudging noise e. Two shares of one iteration, for gradients c1 and c1', under
the same masks give s_i (c1 - c1') + (e - e'), a linear equation in s_i; even for the same c1,
a second share with fresh noise gives the coordinator e - e' and averages the smudging down. And
a share under fresh masks would break the bookkeeping that makes sum_i A_i the mask of the
coordinator's state. So a party produces exactly one share per (job, iteration), for the
gradients it first agreed to; the same holds for ``setup`` (EncToShare under c_i) and the
model's steps (one set of sealed boxes), each taken once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import tenseal as ts

from hefl import messages, sealio, signed
from hefl.algorithm import Hyperparameters, nesterov_step
from hefl.codec import AggregateStats, Array
from hefl.errors import InvalidArgument, PermissionDenied, ProtocolError
from hefl.identity import verify_signature
from hefl.params import CkksParameters, check_public_context
from hefl.protocols.collective.crs import (
    SeedAgreementParty,
    SeedAgreementProtocol,
    SeedCommitment,
    SeedReveal,
)
from hefl.protocols.collective.keygen import (
    PublicKeyGenProtocol,
    PublicKeyShare,
    RelinKeyGenProtocol,
    RelinKeyRound1Share,
    RelinKeyRound2Share,
    public_context,
)
from hefl.protocols.collective.keyswitch import (
    CollectiveDecryptProtocol,
    DecryptionShare,
    Smudging,
    ciphertext_of,
    fresh_noise_std,
    sum_noise_std,
)
from hefl.protocols.collective.seal_layout import polys_of_vector_bytes
from hefl.protocols.collective.secret import RelinKeyEphemeral, SecretKeyShare
from hefl.protocols.collective.shares import CollectiveJob
from hefl.protocols.collective.step import (
    LABEL_TERM_SCALE_BITS,
    EncToShareProtocol,
    MaskedStepProtocol,
    PreparedReencryption,
    prepare_reencryption,
    stats_protocol,
    step_id,
)
from hefl.protocols.masks import RandomBytes
from hefl.protocols.refresh import check_training_setup
from hefl.protocols.stats import StatsRequest, StatsShare
from hefl.v1 import hefl_pb2 as pb
from hefl.validate import CiphertextRules, Expected
from parties.identity import SigningKey
from parties.sealing import SealedBox, SealingKey, seal

log = logging.getLogger("hefl.collective")

STEPS = (
    "seed-commit",
    "seed-reveal",
    "keys",
    "keys-reveal",
    "relin-key-2",
    "context",
    "stats-commit",
    "stats-release",
    "stats",
    "stats-open",
    "label-commit",
    "label-release",
    "setup",
    "refresh",
    "model",
    "model-open",
    "model-confirm",
)


@dataclass(frozen=True)
class Roster:
    """The charter's parties in roster order and their signing keys."""

    keys: dict[str, bytes]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self.keys))


def _lower_priority() -> None:
    """Run this thread (the next share's preparation) at the lowest CPU priority, where the OS
    allows a thread its own: on a host the party shares (a simulation, a test), the work that is
    on the iteration's critical path (the coordinator's workers) goes first."""
    if sys.platform == "linux":
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError as err:
            log.debug("the preparing thread keeps its priority: %s", err)


def _named(outputs: Sequence[tuple[str, bytes]]) -> pb.KeyHolderResult:
    return pb.KeyHolderResult(
        collective=pb.CollectiveResult(outputs=[pb.NamedBytes(name=n, data=d) for n, d in outputs])
    )


def box_bytes(box: SealedBox, signature: bytes) -> bytes:
    return b"".join(
        len(part).to_bytes(4, "little") + part
        for part in (box.ephemeral_public_key, box.nonce, box.ciphertext, signature)
    )


def parse_box(data: bytes) -> tuple[SealedBox, bytes]:
    """Raises: ProtocolError: not a signed sealed box."""
    parts: list[bytes] = []
    offset = 0
    while offset < len(data) and len(parts) < 4:
        length = int.from_bytes(data[offset : offset + 4], "little")
        parts.append(data[offset + 4 : offset + 4 + length])
        offset += 4 + length
    if len(parts) != 4 or offset != len(data):
        raise ProtocolError("a relayed box is not a signed sealed box")
    return SealedBox(parts[0], parts[1], parts[2]), parts[3]


class CollectiveMember:
    """One roster party's state machine for one collective job (module docstring).

    Args:
        job_id: The job.
        name: This party.
        params: The charter's parameter set.
        roster: The charter's parties and their signing keys.
        features: The job's feature names.
        options: The charter's training options.
        signing_key: This party's long-term key: signs every box it seals.
        sealing_key: This party's per-job sealing key (its signed key in its hello).
        random_bytes: The CSPRNG (``os.urandom``; seeded only in tests).
    """

    def __init__(
        self,
        *,
        job_id: str,
        name: str,
        params: CkksParameters,
        roster: Roster,
        features: Sequence[str],
        options: pb.TrainingOptions,
        signing_key: SigningKey,
        sealing_key: SealingKey,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        if name not in roster.keys:
            raise InvalidArgument(f"{name!r} is not on the roster of job {job_id}")
        self.job_id = job_id
        self.name = name
        self.params = params
        self.roster = roster
        self.features = tuple(features)
        self.options = options
        self._signing_key = signing_key
        self._sealing_key = sealing_key
        self._random_bytes = random_bytes
        self._secret = SecretKeyShare.generate(params, random_bytes=random_bytes)
        self._seed = SeedAgreementParty(
            SeedAgreementProtocol(job_id, roster.names), name, random_bytes=random_bytes
        )
        self._stage = 0  # index into STEPS of the next step
        self._commitments: list[SeedCommitment] = []
        self._job: CollectiveJob | None = None
        self._sent: dict[str, bytes] = {}  # what this party answered, to find it relayed intact
        self._ephemeral: RelinKeyEphemeral | None = None
        self._round1: RelinKeyRound1Share | None = None
        self._public_key: PublicKeyShare | None = None
        self.context: ts.Context | None = None
        self._rules: CiphertextRules | None = None
        self._stats_protocols: list[CollectiveDecryptProtocol] = []
        self._stats_shares: list[DecryptionShare] = []
        self._declared_rows = 0
        self.summary: AggregateStats | None = None
        self.hyper: Hyperparameters | None = None
        self._setup: pb.TrainingSetup | None = None
        self._masks: tuple[Array, Array, Array] | None = None  # (A_i, B_i, c_i)
        self._refreshed = 0
        self._refreshed_gradients: list[bytes] = []  # per iteration answered: its gradients' digest
        # The next refresh's -a s_i + e' (MaskedStepProtocol's re-encryption share without the
        # mask), made in the background between refreshes and used by that refresh only.
        self._preparing: ThreadPoolExecutor | None = None
        self._prepared: Future[PreparedReencryption] | None = None
        self._masked_model: Array | None = None
        self.model: dict[str, object] | None = None
        self._key_commitments: dict[str, bytes] = {}  # party -> sha256(CKG) + sha256(RKG-1)
        self._built_context: bytes | None = None  # built from the shares, not yet confirmed
        self._pending_context: ts.Context | None = None
        self._stats_commitments: dict[str, tuple[int, list[bytes]]] = {}
        self._label_commitments: dict[str, bytes] = {}
        self._candidate: list[float] | None = None  # the model, before every party confirms it
        # Set by the party's client: its statistics share and its label term, each encrypted
        # under the confirmed context and released only once every party has committed to its own.
        self.make_stats: Callable[[ts.Context], StatsShare] | None = None
        self.make_label_term: Callable[[ts.Context, AggregateStats], bytes] | None = None
        self.stats_share: StatsShare | None = None
        self.label_term: bytes | None = None
        self.stats_released = threading.Event()
        self.label_released = threading.Event()
        self.on_context: Callable[[ts.Context], None] = lambda _: None
        self.keygen_started: float | None = None  # wall clock of the first setup step

    # ----- the state machine -------------------------------------------------------------

    @property
    def stage(self) -> str:
        return STEPS[self._stage] if self._stage < len(STEPS) else "done"

    def handle(self, message: pb.KeyHolderTask) -> pb.KeyHolderResult:
        """Answer one step (a ``collective`` task; a key holder's task is refused).

        Raises:
            ProtocolError: A step the protocol does not allow now, or inputs that are not what
                the step agreed to (the message says which).
            PermissionDenied: A share, box or key whose signature does not verify.
            InvalidArgument: A malformed share or ciphertext.
        """
        if message.WhichOneof("task") != "collective":
            raise ProtocolError(
                f"task {message.WhichOneof('task')!r} refused: job {self.job_id} is collective "
                f"and has no key holder"
            )
        task = message.collective
        step = task.step
        allowed = self.stage
        if (
            step == "refresh"
            and self._setup is not None
            and self._refreshed >= self._setup.iterations
        ):
            raise ProtocolError(
                f"refresh of iteration {task.iteration} refused: the job's "
                f"{self._setup.iterations} iterations are done"
            )
        if step != allowed:
            raise ProtocolError(
                f"step {step!r} refused: party {self.name!r} of job {self.job_id} is at "
                f"{allowed!r}, and takes each step once, in order"
            )
        handler = getattr(self, "_step_" + step.replace("-", "_"))
        result: pb.KeyHolderResult = handler(task)
        if step != "refresh" or self._setup is None or self._refreshed == self._setup.iterations:
            self._stage += 1
        log.debug("party %s: step %s done", self.name, step)
        return result

    def _inputs(
        self, task: pb.CollectiveTask, prefix: str, names: Sequence[str]
    ) -> dict[str, bytes]:
        """The inputs named ``prefix/<party>`` for exactly ``names``.

        Raises:
            ProtocolError: One is missing, extra or twice.
        """
        found: dict[str, bytes] = {}
        for item in task.inputs:
            kind, _, party = item.name.partition("/")
            if kind != prefix:
                continue
            if party in found or party not in names:
                raise ProtocolError(f"{task.step}: input {item.name!r} is extra or repeated")
            found[party] = item.data
        missing = [n for n in names if n not in found]
        if missing:
            raise ProtocolError(f"{task.step}: no {prefix} of {missing}")
        return found

    def _own(self, what: str, relayed: bytes) -> None:
        if not hmac.compare_digest(self._sent[what], relayed):
            raise ProtocolError(f"the {what} relayed as this party's is not the one it sent")

    def _sign(self, step: str, data: bytes) -> bytes:
        return self._signing_key.sign(
            signed.COLLECTIVE_SETUP, signed.collective_parts(self.job_id, step, self.name, data)
        )

    def _check_signed(
        self, step: str, kind: str, party: str, data: bytes, signature: bytes
    ) -> None:
        """Raises PermissionDenied, naming the step and the party, unless ``party`` signed
        ``data`` at ``step``."""
        try:
            verify_signature(
                self.roster.keys[party],
                signature,
                signed.COLLECTIVE_SETUP,
                signed.collective_parts(self.job_id, step, party, data),
            )
        except PermissionDenied as err:
            raise PermissionDenied(
                f"{self.stage}: the {kind} relayed as {party!r}'s is not signed by {party!r} "
                f"(step {step!r})"
            ) from err

    def _signed_inputs(self, task: pb.CollectiveTask, kind: str, step: str) -> dict[str, bytes]:
        """Every roster party's ``kind``, each checked against its signature of ``step``.

        Raises:
            ProtocolError: One is missing, extra or twice.
            PermissionDenied: One is not signed by its party.
        """
        names = self.roster.names
        data = self._inputs(task, kind, names)
        signatures = self._inputs(task, kind + "-signature", names)
        for party in names:
            self._check_signed(step, kind, party, data[party], signatures[party])
        return data

    @property
    def job(self) -> CollectiveJob:
        assert self._job is not None
        return self._job

    # ----- setup: seed, keys, context ----------------------------------------------------------

    def _step_seed_commit(self, task: pb.CollectiveTask) -> pb.KeyHolderResult:
        self.keygen_started = time.time()
        commitment = self._seed.commitment().to_bytes()
        return _named(
            [
                ("commitment", commitment),
                ("commitment-signature", self._sign("seed-commit", commitment)),
            ]
        )

    def _step_seed_reveal(self, task: pb.CollectiveTask) -> pb.KeyHolderResult:
        relayed = self._signed_inputs(task, "commitment", "seed-commit")
        commitments = [SeedCommitment.from_bytes(relayed[p]) for p in self.roster.names]
        for party, commitment in zip(self.roster.names, commitments, strict=True):
            if commitment.party != party:
                raise ProtocolError(
                    f"the commitment relayed as {party!r}'s names {commitment.party!r}"
                )
        reveal = self._seed.reveal(commitments).to_bytes()
        self._commitments = commitments
        return _named([("reveal", reveal), ("reveal-signature", self._sign("seed-reveal", reveal))])

    def _step_keys(self, task: pb.CollectiveTask) -> pb.KeyHolderResult:
        """The CKG and RKG round-1 shares, made now and committed to; revealed only once every
        party has committed (``keys-reveal``): no party can choose its share after seeing
        another's (a share that cancels an honest party's would put the key in its hands)."""
        relayed = self._signed_inputs(task, "reveal", "seed-reveal")
        reveals = [SeedReveal.from_bytes(relayed[p]) for p in self.roster.names]
        crs = SeedAgreementProtocol(self.job_id, self.roster.names).agree(
            self._commitments, reveals
        )
        self._job = CollectiveJob(self.params, self.job_id, self.roster.names, crs)
        public = PublicKeyGenProtocol(self.job).gen_share(
            self._secret, random_bytes=self._random_bytes
        )
        round1, self._ephemeral = RelinKeyGenProtocol(self.job).gen_round1(
            self._secret, random_bytes=self._random_bytes
        )
        self._sent["public-key"] = public.to_bytes()
        self._sent["relin-key-1"] = round1.to_bytes()
        commitment = _key_commitment(self._sent["public-key"], self._sent["relin-key-1"])
        self._sent["commitment"] = commitment
        return _named(
            [("commitment", commitment), ("commitment-signature", self._sign("keys", commitment))]
        )

    def _step_keys_reveal(self, task: pb.CollectiveTask) -> pb.KeyHolderResult:
        """Every party's signed commitment in hand, this party reveals its shares."""
        commitments = self._signed_inputs(task, "commitment", "keys")
        self._own("commitment", commitments[self.name])
        self._key_commitments = commitments
        return _named(
            [("public-key", self._sent["public-key"]), ("relin-key-1", self._sent["relin-key-1"])]
        )

    def _step_relin_key_2(self, task: pb.CollectiveTask) -> pb.KeyHolderResult:
        names = self.roster.names
        public = self._inputs(task, "public-key", names)
        round1 = self._inputs(task, "relin-key-1", names)
        for party in names:
            if not hmac.compare_digest(
                _key_commitment(public[party], round1[party]), self._key_commitments[party]
            ):
                raise ProtocolError(
                    f"relin-key-2: the key shares relayed as {party!r}'s differ from its "
                    f"signed commitment"
                )
        ckg, rkg = PublicKeyGenProtocol(self.job), RelinKeyGenProtocol(self.job)
        self._public_key = ckg.aggregate_shares(
            {p: PublicKeyShare.from_bytes(public[p], self.job) for p in names}
        )
        self._round1 = rkg.aggregate_round1(
            {p: RelinKeyRound1Share.from_bytes(round1[p], self.job) for p in names}
        )
        assert self._ephemeral is not None
        share = rkg.gen_round2(
            self._secret, self._ephemeral, self._round1, random_bytes=self._random_bytes
        )
        self._sent["relin-key-2"] = share.to_bytes()
        return _named(
            [
                ("relin-key-2", self._sent["relin-key-2"]),
                ("relin-key-2-signature", self._sign("relin-key-2", self._sent["relin-key-2"])),
            ]
        )

    def _step_context(self, task: pb.CollectiveTask) -> pb.KeyHolderResult:
        """Build the context from the signed shares; answer its digest, signed. The party uses
        it only once every party has signed the same digest (``stats-commit``)."""
        names = self.roster.names
        round2 = self._signed_inputs(task, "relin-key-2", "relin-key-2")
        self._own("relin-key-2", round2[self.name])
        (given,) = self._inputs(task, "context", [""]).values()
        ckg, rkg = PublicKeyGenProtocol(self.job), RelinKeyGenProtocol(self.job)
        assert self._round1 is not None and self._public_key is not None
        aggregate = rkg.aggregate_round2(
            self._round1, {p: RelinKeyRound2Share.from_bytes(round2[p], self.job) for p in names}
        )
        context = public_context(
            self.job, ckg.public_key(self._public_key), rkg.relin_key(self._round1, aggregate)
        )
        expected = context.serialize(save_secret_key=False, save_galois_keys=False)
        if not hmac.compare_digest(
            hashlib.sha256(expected).digest(), hashlib.sha256(given).digest()
        ):
            raise ProtocolError(
                "the coordinator's context refused: its keys are not the aggregate of the "
                "roster's relayed shares"
            )
        check_public_context(context, self.params.name)
        self._built_context, self._pending_context = expected, context
        return _named(
            [
                ("context-sha256", hashlib.sha256(expected).digest()),
                ("context-signature", self._sign("context", expected)),
            ]
        )

    def _step_stats_commit(self, task: pb.CollectiveTask) -> pb.KeyHolderResult:
        """Given every party's signature over the context it built, all over this party's
        (so no two parties were shown different keys), take the context, encrypt this party's
        statistics under it and answer the signed commitment to them (their digests)."""
        assert self._built_context is not None
        signatures = self._inputs(task, "context-signature", self.roster.names)
        for party in self.roster.names:
            self._check_signed("context", "context", party, self._built_context, signatures[party])
        context = self._pending_context
        assert context is not None
        self.context = context
        self._rules = CiphertextRules(context)
        self.on_context(context)
        if self.make_stats is None:
            raise ProtocolError(f"party {self.name!r} has no statistics to commit to")
        share = self.make_stats(context)
        digests = [hashlib.sha256(piece).digest() for piece in share.pieces]
        signature = self._signing_key.sign(
            signed.STATS, signed.stats_digest_parts(self.job_id, self.name, share.rows, digests)
        )
        self.stats_share = StatsShare(pieces=share.pieces, rows=share.rows, signature=signature)
        commitment = _stats_commitment(share.rows, digests)
        self._sent["stats-commitment"] = commitment
        return _named([("stats-commitment", commitment), ("stats-commitment-signature", signature)])

    def _step_stats_release(self, task: pb.CollectiveTask) -> pb.KeyHolderResult:
        """Every party's signed commitment in hand, this party's statistics may go out."""
        pieces = len(stats_protocol(len(self.features), self.params).piece_sizes)
        names = self.roster.names
        commitments = self._inputs(task, "stats-commitment", names)
        signatures = self._inputs(task, "stats-commitment-signature", names)
        self._own("stats-commitment", commitments[self.name])
        for party in names:
            rows, digests = _parse_stats_commitment(commitments[party], pieces, party=party)
            try:
                verify_signature(
                    self.roster.keys[party],
                    signatures[party],
                    signed.STATS,
                    signed.stats_digest_parts(self.job_id, party, rows, digests),
                )
            except PermissionDenied as err:
                raise PermissionDenied(
                    f"stats-release: the statistics commitment relayed as {party!r}'s is not "
                    f"signed by {party!r}"
                ) from err
            self._stats_commitments[party] = (rows, digests)
        self.stats_released.set()
        return _named([])

    # ----- statistics ----------------------------------------------------------------------

    def _recipients(self, task: pb.CollectiveTask) -> dict[str, bytes]:
        """Every other roster party's sealing key, each signed by its roster key."""
        keys: dict[str, bytes] = {}
        for hello in task.parties:
            if hello.name not in self.roster.keys or hello.name in keys:
                raise ProtocolError(
                    f"{task.step}: recipient {hello.name!r} is off the roster or twice"
                )
            verify_signature(
                self.roster.keys[hello.name],
                hello.seal_key_signature,
                signed.SEAL_KEY,
                signed.seal_key_parts(self.job_id, hello.name, hello.seal_public_key),
            )
            keys[hello.name] = hello.seal_public_key
        if sorted(keys) != sorted(self.roster.names):
            raise ProtocolError(f"{task.step}: recipients {sorted(keys)} are not the roster")
        return keys

    def _seal_to_others(
        self, task: pb.CollectiveTask, step: str, payload: bytes
    ) -> pb.KeyHolderResult:
        outputs = []
        for party, key in self._recipients(task).items():
            if party == self.name:
                continue
            box = seal(
                key, payload, associated=f"{self.job_id}/{step}/{self.name}/{party}".encode()
            )
            signature = self._signing_key.sign(
                signed.COLLECTIVE_BOX,
                signed.collective_box_parts(
                    self.job_id,
                    step,
                    self.name,
                    party,
                    box.ephemeral_public_key,
                    box.nonce,
                    box.ciphertext,
                ),
            )
            outputs.append((f"box/{party}", box_bytes(box, signature)))
        return _named(outputs)

    def _open_boxes(self, task: pb.CollectiveTask, step: str) -> dict[str, bytes]:
        """The payload every other roster party sealed to this one for ``step``.

        Raises:
            ProtocolError: A box is missing, extra, or does not open.
            PermissionDenied: A box's signature is not its sender's.
        """
        others = [p for p in self.roster.names if p != self.name]
        boxes = self._inputs(task, "box", others)
        opened = {}
        for sender, data in boxes.items():
            box, signature = parse_box(data)
            verify_signature(
                self.roster.keys[sender],
                signature,
                signed.COLLECTIVE_BOX,
                signed.collective_box_parts(
                    self.job_id,
                    step,
                    sender,
                    self.name,
                    box.ephemeral_public_key,
                    box.nonce,
                    box.ciphertext,
                ),
            )
            opened[sender] = self._sealing_key.open(
                box, associated=f"{self.job_id}/{step}/{sender}/{self.name}".encode()
            )
        return opened

    def _step_stats(self, task: pb.CollectiveTask) -> pb.KeyHolderResult:
        assert self.context is not None
        protocol = stats_protocol(len(self.features), self.params)
        request = StatsRequest.from_proto(
            pb.DecryptStatsTask(features=protocol.features, shares=task.stats)
        )
        names = sorted(party for party, _ in request.shares)
        if names != sorted(self.roster.names) or len(set(names)) != len(names):
            raise ProtocolError(
                f"statistics of parties {names} refused: the job's parties are {list(self.roster.names)}"
            )
        if request.job_id != self.job_id:
            raise ProtocolError(
                f"statistics of job {request.job_id!r} refused in job {self.job_id!r}"
            )
        shares: list[StatsShare] = []
        for party, share in request.shares:
            verify_signature(
                self.roster.keys[party],
                share.signature,
                signed.STATS,
                signed.stats_parts(self.job_id, party, share.rows, share.pieces),
            )
            rows, digests = self._stats_commitments[party]
            if share.rows != rows or not all(
                hmac.compare_digest(hashlib.sha256(piece).digest(), digest)
                for piece, digest in zip(share.pieces, digests, strict=True)
            ):
                raise ProtocolError(
                    f"stats: the statistics relayed as {party!r}'s differ from its signed "
                    f"commitment; no decryption share"
                )
            protocol.check_share(self.context, share, party=party)
            shares.append(share)
        self._declared_rows = sum(share.rows for share in shares)
        # The sum of the roster's signed shares, added up here: nothing else gets a share.
        total = protocol.aggregate(self.context, shares)
        noise = sum_noise_std(fresh_noise_std(self.params, self.job.size), self.job.size)
        self._stats_protocols, own = [], []
        for index, piece in enumerate(total):
            vector = sealio.deserialize(
                self.context, piece, what="summed statistics", expected=protocol.expected(index)
            )
            decrypt = CollectiveDecryptProtocol(
                self.job,
                ciphertext_of(vector),
                purpose=f"statistics/{index}",
                noise_std=noise,
                smudging=Smudging(),
            )
            self._stats_protocols.append(decrypt)
            own.append(decrypt.gen_share(self._secret, random_bytes=self._random_bytes))
        self._stats_shares = own
        payload = b"".join(len(b).to_bytes(4, "little") + b for b in (s.to_bytes() for s in own))
        return self._seal_to_others(task, "stats", payload)

    def _step_stats_open(self, task: pb.CollectiveTask) -> pb.KeyHolderResult:
        opened = self._open_boxes(task, "stats")
        pieces = []
        for index, protocol in enumerate(self._stats_protocols):
            shares = {self.name: self._stats_shares[index]}
            for sender, payload in opened.items():
                parts = _split(payload, len(self._stats_protocols))
                shares[sender] = DecryptionShare.from_bytes(
                    parts[index], self.job, rows=protocol.ciphertext.rows
                )
            pieces.append(protocol.decrypt(protocol.aggregate_shares(shares)))
        features = len(self.features)
        sizes = stats_protocol(features, self.params).piece_sizes
        sums = np.concatenate([p[:size] for p, size in zip(pieces, sizes, strict=True)])
        summary = AggregateStats.from_sums(sums, features)
        if summary.count != self._declared_rows:
            raise ProtocolError(
                f"the parties declare {self._declared_rows} rows but their statistics count {summary.count}"
            )
        self.summary = summary
        options = self.options
        self.hyper = messages.resolve_hyperparameters(
            options, curvature=summary.curvature, rows=summary.count
        )
        return pb.KeyHolderResult(
            collective=pb.CollectiveResult(values=[float(summary.count), summary.curvature])
        )

    def _step_label_commit(self, task: pb.CollectiveTask) -> pb.KeyHolderResult:
        """Encrypt this party's label term (standardized by the statistics just decrypted) and
        answer its signed digest; the term itself goes out at ``label-release``."""
        assert self.context is not None and self.summary is not None
        if self.make_label_term is None:
            raise ProtocolError(f"party {self.name!r} has no label term to commit to")
        term = self.make_label_term(self.context, self.summary)
        digest = hashlib.sha256(term).digest()
        signature = self._signing_key.sign(
            signed.LABEL_TERM, signed.label_term_parts(self.job_id, self.name, term)
        )
        self.label_term = term
        self._sent["label-term-sha256"] = digest
        return _named([("label-term-sha256", digest), ("label-term-signature", signature)])

    def _step_label_release(self, task: pb.CollectiveTask) -> pb.KeyHolderResult:
        """Every party's signed label-term digest in hand, this party's term may go out."""
        names = self.roster.names
        digests = self._inputs(task, "label-term-sha256", names)
        signatures = self._inputs(task, "label-term-signature", names)
        self._own("label-term-sha256", digests[self.name])
        for party in names:
            try:
                verify_signature(
                    self.roster.keys[party],
                    signatures[party],
                    signed.LABEL_TERM,
                    signed.label_term_digest_parts(self.job_id, party, digests[party]),
                )
            except PermissionDenied as err:
                raise PermissionDenied(
                    f"label-release: the label-term commitment relayed as {party!r}'s is not "
                    f"signed by {party!r}"
                ) from err
        self._label_commitments = digests
        self.label_released.set()
        return _named([])

    # ----- training --------------------------------------------------------------------------

    def _check_setup(self, setup: pb.TrainingSetup) -> None:
        assert self.summary is not None and self.hyper is not None
        check_training_setup(
            setup, hyper=self.hyper, rows=self.summary.count, features=len(self.features)
        )

    def _step_setup(self, task: pb.CollectiveTask) -> pb.KeyHolderResult:
        """Check the constants, EncToShare the summed label term."""
        if not task.HasField("setup"):
            raise ProtocolError("setup without the training constants")
        self._check_setup(task.setup)
        protocol = self._label_terms(task)
        share, kept = protocol.gen_share(self._secret, random_bytes=self._random_bytes)
        columns = task.setup.columns
        self._setup = task.setup
        self._masks = (np.zeros(columns), np.zeros(columns), kept[:columns])
        self._prepare(0)
        return _named([("label-term", share.to_bytes())])

    def _prepare(self, iteration: int) -> None:
        """Start making the re-encryption part of refresh ``iteration``'s share, which depends
        on no gradient and no mask, while the coordinator's workers compute the gradients."""
        assert self._setup is not None
        if iteration >= self._setup.iterations:
            if self._preparing is not None:
                self._preparing.shutdown(wait=False)
            self._preparing = self._prepared = None
            return
        try:
            if self._preparing is None:
                self._preparing = ThreadPoolExecutor(
                    1, thread_name_prefix=f"prepare-{self.name}", initializer=_lower_priority
                )
            self._prepared = self._preparing.submit(
                prepare_reencryption,
                self.job,
                self._secret,
                iteration=iteration,
                columns=self._setup.columns,
                random_bytes=self._random_bytes,
            )
        except RuntimeError as err:  # no thread to be had: the refresh makes its own part
            log.warning("party %s: cannot prepare refresh %d ahead (%s)", self.name, iteration, err)
            self._prepared = None

    def _made(self, prepared: Future[PreparedReencryption] | None) -> PreparedReencryption | None:
        """What the background made, or None (the share then makes its own) if it failed:
        a failure there must not cost the iteration, which the party answers only once."""
        if prepared is None:
            return None
        try:
            return prepared.result()
        except Exception as err:  # noqa: BLE001 - any failure: make the part inline instead
            log.warning("party %s: the refresh's prepared part failed (%r)", self.name, err)
            return None

    def _label_terms(self, task: pb.CollectiveTask) -> EncToShareProtocol:
        assert self.context is not None
        terms = self._inputs(task, "label-term", self.roster.names)
        signatures = self._inputs(task, "label-term-signature", self.roster.names)
        for party in self.roster.names:  # the sum of the roster's committed label terms only
            if not hmac.compare_digest(
                hashlib.sha256(terms[party]).digest(), self._label_commitments[party]
            ):
                raise ProtocolError(
                    f"setup: the label term relayed as {party!r}'s differs from its signed "
                    f"commitment; no EncToShare share"
                )
            verify_signature(
                self.roster.keys[party],
                signatures[party],
                signed.LABEL_TERM,
                signed.label_term_parts(self.job_id, party, terms[party]),
            )
        assert self.hyper is not None
        columns = self.hyper.outputs * (len(self.features) + 1)  # output-major
        total = sealio.add_vectors(
            self.context,
            (terms[p] for p in self.roster.names),
            what="label term",
            expected=Expected(values=columns, scale=2.0**LABEL_TERM_SCALE_BITS),
        )
        return EncToShareProtocol(self.job, ciphertext_of(total), purpose="label-term")

    def _step_refresh(self, task: pb.CollectiveTask) -> pb.KeyHolderResult:
        setup, rules = self._setup, self._rules
        assert setup is not None and rules is not None and self._masks is not None
        iteration = task.iteration
        gradients = [item.data for item in task.inputs if item.name == "gradient"]
        if iteration < self._refreshed:  # answered: a second share would leak (module docstring)
            same = hmac.compare_digest(
                _gradients_digest(gradients), self._refreshed_gradients[iteration]
            )
            raise ProtocolError(
                f"refresh of iteration {iteration} refused: party {self.name!r} answered it "
                + (
                    "already; it answers only a byte-identical repeat of its latest task, "
                    "from its cache"
                    if same
                    else "already for other gradients, and makes one share per iteration"
                )
            )
        if iteration != self._refreshed:
            raise ProtocolError(
                f"refresh of iteration {iteration} refused: the next iteration is {self._refreshed}"
            )
        # Iteration 0 starts from zero weights, where every model's data gradient is exactly
        # zero: it carries no gradients, and this party decrypts nothing for it.
        expected = setup.columns if iteration else 0
        if len(gradients) != expected or len(task.inputs) != expected:
            raise ProtocolError(
                f"refresh {iteration}: {len(task.inputs)} inputs for {expected} column gradients"
                + ("" if iteration else " (the first step, from zero weights, has none)")
            )
        assert self.hyper is not None
        kernel_output = rules.gradient(self.hyper.kernel)  # every slot, last level, exact scale
        for j, gradient in enumerate(gradients):  # the gate, before a byte is used
            rules.load(
                gradient, kernel_output, what=f"gradient of column {j} (iteration {iteration})"
            )
        ciphertexts = [polys_of_vector_bytes(g) for g in gradients]

        protocol = MaskedStepProtocol(
            self.job,
            ciphertexts,
            iteration=iteration,
            step_id=step_id(setup),
            output_scale_bits=self.params.scale_bits,
            zero_columns=0 if iteration else setup.columns,
        )
        weights_mask, velocity_mask, label_mask = self._masks
        stepped: list[tuple[Array, Array]] = []

        def output(gradient_mask: Array) -> Array:
            # The linear part of the coordinator's step, on this party's masks alone.
            stepped.append(
                nesterov_step(
                    weights=weights_mask,
                    velocity=velocity_mask,
                    gradient_sums=gradient_mask,
                    label_term=label_mask,
                    rows=setup.rows,
                    learning_rate=setup.learning_rate,
                    l2=np.asarray(setup.l2),
                    iteration=iteration,
                )
            )
            return setup.weight_scale * stepped[0][0]

        # Taken once: a retried refresh makes its own, so no noise serves two shares.
        prepared, self._prepared = self._prepared, None
        share = protocol.gen_share(
            self._secret,
            output=output,
            prepared=self._made(prepared),
            random_bytes=self._random_bytes,
        )
        self._masks = (stepped[0][0], stepped[0][1], label_mask)
        self._refreshed += 1
        self._refreshed_gradients.append(_gradients_digest(gradients))
        self._prepare(self._refreshed)
        return _named([("masked-step", share.to_bytes())])

    def _step_model(self, task: pb.CollectiveTask) -> pb.KeyHolderResult:
        assert self._setup is not None and self._masks is not None
        masked = np.asarray(task.values, dtype=np.float64)
        if masked.shape != (self._setup.columns,) or not np.all(np.isfinite(masked)):
            raise ProtocolError(
                f"model: a masked model of {masked.size} values (finite: "
                f"{bool(np.all(np.isfinite(masked)))}) for {self._setup.columns} columns"
            )
        self._masked_model = masked
        payload = json.dumps(
            {"masked_model_sha256": _digest(masked), "velocity_mask": self._masks[1].tolist()}
        ).encode()
        return self._seal_to_others(task, "model", payload)

    def _step_model_open(self, task: pb.CollectiveTask) -> pb.KeyHolderResult:
        """Unmask the model with every party's mask share (each checked: ``columns`` finite
        values, the same masked model); answer the model's digest, signed, for every party to
        compare (``model-confirm``)."""
        assert (
            self._masked_model is not None and self._masks is not None and self._setup is not None
        )
        columns = self._setup.columns
        opened = self._open_boxes(task, "model")
        masks = {self.name: self._masks[1]}
        for sender, payload in opened.items():
            try:
                content = json.loads(payload)
                digest = content["masked_model_sha256"]
                mask = np.asarray(content["velocity_mask"], dtype=np.float64)
            except (ValueError, TypeError, KeyError) as err:
                raise ProtocolError(f"model-open: {sender!r}'s mask share is malformed") from err
            if digest != _digest(self._masked_model):
                raise ProtocolError(f"{sender!r} was sent another masked model than this party")
            if mask.shape != (columns,) or not np.all(np.isfinite(mask)):
                raise ProtocolError(
                    f"model-open: {sender!r}'s mask share is not {columns} finite values"
                )
            masks[sender] = mask
        weights = self._masked_model.copy()
        for party in self.roster.names:  # in roster order: every party gets the same bits
            weights -= masks[party]
        self._candidate = weights.tolist()
        digest_bytes = bytes.fromhex(_digest(weights))
        return _named(
            [
                ("model-sha256", digest_bytes),
                ("model-sha256-signature", self._sign("model-open", digest_bytes)),
            ]
        )

    def _step_model_confirm(self, task: pb.CollectiveTask) -> pb.KeyHolderResult:
        """Keep the model only if every party signed the digest of the same one: a party that
        sent others another mask share (or a wrong one) is found here, by name."""
        assert self._candidate is not None and self.summary is not None
        digests = self._signed_inputs(task, "model-sha256", "model-open")
        own = bytes.fromhex(_digest(np.asarray(self._candidate)))
        differ = [p for p in self.roster.names if not hmac.compare_digest(digests[p], own)]
        if differ:
            raise ProtocolError(
                f"model-confirm: parties {differ} unmasked another model than {self.name!r}; "
                f"no model"
            )
        self.model = {
            "job_id": self.job_id,
            "features": list(self.features),
            "mean": self.summary.mean.tolist(),
            "std": self.summary.std.tolist(),
            "weights": self._candidate,
            "intermediate": [],
        }
        return _named([])


def _key_commitment(public_key_share: bytes, relin_key_round1: bytes) -> bytes:
    return hashlib.sha256(public_key_share).digest() + hashlib.sha256(relin_key_round1).digest()


def _stats_commitment(rows: int, digests: Sequence[bytes]) -> bytes:
    return rows.to_bytes(8, "little") + b"".join(digests)


def _parse_stats_commitment(data: bytes, pieces: int, *, party: str) -> tuple[int, list[bytes]]:
    """Raises: ProtocolError: not a commitment to ``pieces`` statistics ciphertexts."""
    if len(data) != 8 + 32 * pieces:
        raise ProtocolError(f"stats-release: {party!r}'s statistics commitment is malformed")
    return int.from_bytes(data[:8], "little"), [
        data[8 + 32 * i : 8 + 32 * (i + 1)] for i in range(pieces)
    ]


def _gradients_digest(gradients: Sequence[bytes]) -> bytes:
    return hashlib.sha256(b"".join(hashlib.sha256(g).digest() for g in gradients)).digest()


def _digest(values: Array) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, dtype="<f8").tobytes()).hexdigest()


def _split(payload: bytes, count: int) -> list[bytes]:
    parts, offset = [], 0
    while offset < len(payload):
        length = int.from_bytes(payload[offset : offset + 4], "little")
        parts.append(payload[offset + 4 : offset + 4 + length])
        offset += 4 + length
    if len(parts) != count or offset != len(payload):
        raise ProtocolError(f"a box of {len(parts)} decryption shares, expected {count}")
    return parts
