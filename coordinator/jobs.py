"""Jobs: their state machine and their durable state.

Phases: WAITING_FOR_PARTIES -> COLLECTING_STATS -> UPLOADING -> TRAINING -> DONE (or FAILED).

- Parties join until ``expected_parties`` have; each streams its encrypted statistics, each
  piece checked and written to the job directory as it arrives.
- The driver (:mod:`coordinator.driver`) sums the statistics, has the key holder decrypt the
  *aggregate* only and answer with its summary (count, mean, std, curvature), publishes that
  and the packing layout, and opens uploads.
- Parties upload their packed columns; every ciphertext is checked
  (:mod:`coordinator.validation`) and its re-serialized form written to the job directory
  before it is acknowledged.
- With every upload complete and the key holder connected, the driver trains, then asks the
  key holder to seal the model for each party.

Every domain error names the job, party, block or column at fault. The job enforces the limits
that depend on its state (:class:`coordinator.limits.Limits`: rows, bytes, deadlines); how it is
kept on disk and restored is :mod:`coordinator.persistence`'s.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import tenseal as ts

from coordinator.keyholder_link import KeyHolderLink
from coordinator.limits import Limits, approximate_bytes, format_quantity
from coordinator.report import JobReport
from coordinator.store import JobRecord, JobStore, PartyRecord, atomic_write, check_name
from coordinator.validation import LABEL_TERM, JobInputs
from hefl import sealio, signed
from hefl.codec import PackingLayout
from hefl.errors import (
    AlreadyExists,
    Busy,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from hefl.identity import same_bytes, verify_signature
from hefl.models import get_model
from hefl.params import CkksParameters, check_public_context
from hefl.protocols.collective.keyswitch import REVEAL_SCALE_BITS
from hefl.protocols.collective.step import LABEL_TERM_SCALE_BITS
from hefl.v1 import hefl_pb2 as pb

if TYPE_CHECKING:
    from coordinator.collective import KeyGeneration

log = logging.getLogger("hefl.jobs")


class ShuttingDown(FailedPrecondition):
    """The coordinator stops; the job stays as it is on disk and resumes after a restart."""


@dataclass
class PartyState:
    name: str
    # As the party sent it: sealing key, signing key and the signature binding them.
    hello: pb.PartyHello
    stats: bool = False
    # A SubmitStats stream of this party is being received: a second one is refused.
    stats_arriving: bool = False
    rows: int = 0
    received: set[tuple[int, int]] = field(default_factory=set)
    label_term: bool = False
    upload_complete: bool = False
    upload_bytes: int = 0


TERMINAL = (pb.DONE, pb.FAILED)


class Job:
    """One training job. All mutable state is guarded by ``_cond``.

    Args:
        context_bytes: The public context, checked here; None for a job restored as DONE or
            FAILED, which holds none (:attr:`context` then raises).
        limits: The coordinator's limits this job enforces.
    """

    def __init__(
        self,
        *,
        job_id: str,
        store: JobStore,
        params: CkksParameters,
        context_bytes: bytes | None,
        features: list[str],
        expected_parties: int,
        options: pb.TrainingOptions,
        key_holder: str,
        charter: pb.Charter | None = None,
        charter_signature: bytes = b"",
        limits: Limits | None = None,
    ) -> None:
        self.job_id = job_id
        self.store = store
        self.params = params
        self.limits = limits or Limits()
        self.context_bytes = b""
        self._context: ts.Context | None = None
        self._inputs: JobInputs | None = None
        # The model's outputs: a k-class model refreshes k x columns weights.
        self.outputs = model_outputs(options, columns=len(features) + 1, slots=params.slots)
        # Collective (n-of-n) mode, as the signed charter says: every roster party runs a task
        # session (coordinator.collective); the context exists once they made the keys.
        self.collective = charter is not None and charter.trust == pb.COLLECTIVE
        self.features = features
        if context_bytes is not None:
            self._load_context(context_bytes)
        self.expected_parties = expected_parties
        self.options = options
        self.key_holder = key_holder
        # With a charter (every job over TLS) only its roster's sites may take part.
        self.charter = charter
        self.charter_signature = charter_signature
        self.roster = {e.name: e for e in charter.roster} if charter is not None else None
        self.parties: dict[str, PartyState] = {}
        # Deadlines count from the job's creation or restore (joining), from the phase's start
        # (uploading) and from its last change (idle); see Limits.
        self._created = self._phase_started = self._last_change = time.monotonic()
        self.phase = pb.WAITING_FOR_PARTIES
        self.message = ""
        self.iteration = 0
        self.standardization: pb.Standardization | None = None
        self.layout: PackingLayout | None = None
        self.link = KeyHolderLink()
        self.links: dict[str, KeyHolderLink] = (
            {name: KeyHolderLink() for name in self.roster or ()} if self.collective else {}
        )
        self.report: JobReport | None = None
        # Collective mode: the roster's keys, once made (restored with the job, collective/).
        self.collective_keys: KeyGeneration | None = None
        self._cond = threading.Condition()
        self._version = 0
        self._ciphertext_bytes: int | None = None

    def _load_context(self, context_bytes: bytes) -> None:
        """Check and keep the public context.

        Raises:
            InvalidArgument: It does not deserialize, or is not of the job's parameters.
            PermissionDenied: It carries a secret key.
        """
        try:
            context = ts.context_from(context_bytes)
        except Exception as err:  # TenSEAL raises bare C++ errors
            raise InvalidArgument(
                f"the job context does not deserialize as TenSEAL ({err})"
            ) from err
        check_public_context(context, self.params.name)
        self._context = context
        self._inputs = JobInputs(
            job_id=self.job_id,
            context=context,
            params=self.params,
            features=len(self.features),
            outputs=self.outputs,
            stats_scale=2.0**REVEAL_SCALE_BITS if self.collective else None,
            label_scale=2.0**LABEL_TERM_SCALE_BITS if self.collective else None,
        )
        self.context_bytes = context_bytes

    def set_context(self, context_bytes: bytes) -> None:
        """Collective mode: the context the parties' keys make, checked public, then stored.
        The same context again changes nothing (a setup resumed after a restart makes it
        again from the recorded shares).

        Raises:
            FailedPrecondition: The job has another context already.
        """
        with self._cond:
            if self._context is not None:
                if same_bytes(context_bytes, self.context_bytes):
                    return
                raise FailedPrecondition(
                    f"job {self.job_id} has its context already, and this one differs from it"
                )
            self._load_context(context_bytes)
            atomic_write(self.store.context_path(), context_bytes)
            self._changed()

    def link_for(self, party: str) -> KeyHolderLink:
        """The task link of ``party``: the key holder's, or in collective mode each roster
        party's own.

        Raises:
            PermissionDenied: ``party`` has no task stream in this job.
        """
        if self.collective:
            if party not in self.links:
                raise PermissionDenied(f"{party!r} is not on the roster of job {self.job_id}")
            return self.links[party]
        if party != self.key_holder:
            raise PermissionDenied(f"{party!r} is not the key holder of job {self.job_id}")
        return self.link

    @property
    def context(self) -> ts.Context:
        """The job's public context.

        Raises:
            FailedPrecondition: The job was restored DONE or FAILED and holds no context.
        """
        if self._context is None:
            raise FailedPrecondition(
                f"job {self.job_id} is {pb.Phase.Name(self.phase)}: it holds no context"
            )
        return self._context

    @property
    def inputs(self) -> JobInputs:
        """The checks of everything parties send this job (coordinator.validation).

        Raises:
            FailedPrecondition: The job was restored DONE or FAILED and holds no context.
        """
        if self._inputs is None:
            raise FailedPrecondition(
                f"job {self.job_id} is {pb.Phase.Name(self.phase)}: it takes no more input"
            )
        return self._inputs

    @property
    def phase(self) -> pb.Phase:
        return self._phase

    @phase.setter
    def phase(self, phase: pb.Phase) -> None:
        self._phase = phase
        self._phase_started = time.monotonic()

    @property
    def columns(self) -> int:
        return len(self.features) + 1

    @property
    def is_over(self) -> bool:
        with self._cond:
            return self.phase in TERMINAL

    # ----- status -----------------------------------------------------------------------

    def _changed(self) -> None:
        """Persist and wake watchers; call with ``_cond`` held."""
        self._version += 1
        self._last_change = time.monotonic()
        self.store.write_record(self._record())
        self._cond.notify_all()

    def _record(self) -> JobRecord:
        return JobRecord(
            job_id=self.job_id,
            parameter_set=self.params.name,
            features=tuple(self.features),
            expected_parties=self.expected_parties,
            key_holder=self.key_holder,
            options=self.options,
            phase=self.phase,
            message=self.message,
            parties=tuple(
                PartyRecord(
                    name=p.name,
                    hello=p.hello,
                    stats=p.stats,
                    rows=p.rows,
                    upload_complete=p.upload_complete,
                )
                for p in self.parties.values()
            ),
            standardization=self.standardization,
            layout_slots=None if self.layout is None else self.layout.slots,
            chartered=self.charter is not None,
        )

    def status(self) -> pb.JobStatus:
        with self._cond:
            return self._status()

    def _status(self) -> pb.JobStatus:
        status = pb.JobStatus(
            job_id=self.job_id,
            phase=self.phase,
            parties=list(self.parties),
            expected_parties=self.expected_parties,
            iteration=self.iteration,
            iterations=self.options.iterations,
            message=self.message,
            options=self.options,
        )
        if self.standardization is not None:
            status.standardization.CopyFrom(self.standardization)
        if self.layout is not None:
            status.layout.slots = self.layout.slots
            for placed in self.layout.parties:
                status.layout.parties.add(party=placed.name, rows=placed.rows, offset=placed.offset)
        return status

    def watch(self, is_active: Callable[[], bool]) -> Iterator[pb.JobStatus]:
        """The current status, then every change, until the job ends or the caller leaves."""
        seen = -1
        while is_active():
            with self._cond:
                if self._version == seen:
                    self._cond.wait(0.5)
                    continue
                seen = self._version
                status = self._status()
            yield status
            if status.phase in (pb.DONE, pb.FAILED):
                return

    def wait_for(self, predicate: Callable[[], bool], stop: threading.Event) -> None:
        """Block until ``predicate()`` holds.

        Raises:
            ShuttingDown: ``stop`` is set.
            DeadlineExceeded: The job's join or upload deadline passed, or nothing happened in
                it for the idle timeout (:class:`coordinator.limits.Limits`); the message says
                what the job waited for.
        """
        with self._cond:
            while not predicate():
                if stop.is_set():
                    raise ShuttingDown(f"job {self.job_id}: coordinator shutting down")
                expired = self._expired()
                if expired:
                    raise DeadlineExceeded(f"job {self.job_id} expired: {expired}")
                self._cond.wait(0.5)

    def _expired(self) -> str:
        """Why the job's wait is over, or ""; call with ``_cond`` held."""
        now, limits = time.monotonic(), self.limits
        if self.phase in (pb.WAITING_FOR_PARTIES, pb.COLLECTING_STATS):
            if now - self._created > limits.join_timeout_s:
                return (
                    f"the parties did not all join and send statistics within "
                    f"{_duration(limits.join_timeout_s)} (join_timeout_s): {self._awaited()}"
                )
        elif self.phase == pb.UPLOADING and now - self._phase_started > limits.upload_timeout_s:
            return (
                f"the uploads did not complete within {_duration(limits.upload_timeout_s)} "
                f"(upload_timeout_s): {self._awaited()}; its workers are released"
            )
        if now - self._last_change > limits.idle_timeout_s:
            return (
                f"nothing happened in it for {_duration(limits.idle_timeout_s)} "
                f"(idle_timeout_s): {self._awaited()}"
            )
        return ""

    def _awaited(self) -> str:
        """Whom the job waits for, by name; call with ``_cond`` held."""
        if self.phase in (pb.WAITING_FOR_PARTIES, pb.COLLECTING_STATS):
            waiting = [f"{p.name} to send statistics" for p in self.parties.values() if not p.stats]
            if self.roster is not None:
                waiting += [f"{name} to join" for name in self.roster if name not in self.parties]
            elif len(self.parties) < self.expected_parties:
                more = self.expected_parties - len(self.parties)
                waiting.append(f"{more} more {'party' if more == 1 else 'parties'} to join")
            return "waiting for " + ", ".join(waiting)
        if self.phase == pb.UPLOADING:
            return "waiting for " + ", ".join(
                f"{p.name}'s upload ({self._missing(p)} missing)"
                for p in self.parties.values()
                if not p.upload_complete
            )
        return f"waiting for the key holder {self.key_holder!r} to connect"

    # ----- party requests ----------------------------------------------------------------

    def _party(self, name: str) -> PartyState:
        try:
            return self.parties[name]
        except KeyError:
            raise NotFound(f"party {name!r} has not joined job {self.job_id}") from None

    def is_invited(self, name: str, fingerprint: str | None) -> bool:
        """Whether ``name`` (with this certificate fingerprint, over TLS) may take part."""
        if self.roster is None:
            return True
        entry = self.roster.get(name)
        return entry is not None and fingerprint is not None and entry.fingerprint == fingerprint

    def is_member(self, name: str) -> bool:
        with self._cond:
            return name in self.parties

    def join(self, hello: pb.PartyHello) -> None:
        """Admit a party (the caller's authorization is the servicer's, see ``is_invited``).

        Raises:
            InvalidArgument: Bad name, key sizes or columns.
            PermissionDenied: With a charter: a signing key other than the roster's, or a
                sealing key whose signature does not verify.
            AlreadyExists, FailedPrecondition: The name is taken; the job is full.
        """
        name = check_name("party", hello.name)
        features = list(hello.features)
        if len(hello.seal_public_key) != 32:
            raise InvalidArgument(f"party {name!r}: seal_public_key must be 32 bytes (X25519)")
        if self.roster is not None:
            entry = self.roster[name]
            if not same_bytes(hello.signing_public_key, entry.signing_public_key):
                raise PermissionDenied(
                    f"party {name!r}: its signing key is not its roster entry's in {self.job_id}"
                )
            verify_signature(
                entry.signing_public_key,
                hello.seal_key_signature,
                signed.SEAL_KEY,
                signed.seal_key_parts(self.job_id, name, hello.seal_public_key),
            )
        with self._cond:
            if name in self.parties:
                if self.parties[name].hello == hello:
                    # The same join again: a party retrying after a broken connection (its
                    # first call got in), across a coordinator restart too. Nothing changes.
                    return
                raise AlreadyExists(f"party name {name!r} is already taken in job {self.job_id}")
            if self.phase != pb.WAITING_FOR_PARTIES:
                raise FailedPrecondition(
                    f"job {self.job_id} already has its {self.expected_parties} parties"
                )
            if features != self.features:
                raise InvalidArgument(_column_mismatch(name, features, self.features, self.job_id))
            self.parties[name] = PartyState(name=name, hello=hello)
            if len(self.parties) == self.expected_parties:
                self.phase = pb.COLLECTING_STATS
            self._changed()

    def submit_stats(
        self, party: str, *, rows: int, signature: bytes, pieces: Iterable[bytes]
    ) -> None:
        """Check and persist ``party``'s statistics share as its pieces stream in.

        Each piece is checked and written (re-serialized) before the next is read; the share
        counts once every piece is in and, with a charter, the party's signature over them
        verifies. A refused share leaves none of its pieces behind.

        Raises:
            InvalidArgument: No rows, a piece that is not what the statistics protocol expects
                there, or too few or too many pieces.
            PermissionDenied: With a charter: the party's signature does not verify.
            FailedPrecondition, AlreadyExists: Past collecting statistics; the party already
                sent them.
            Busy: The party is sending them on another stream (UNAVAILABLE: a party retries).
        """
        with self._cond:
            state = self._party(party)
            if self.phase not in (pb.WAITING_FOR_PARTIES, pb.COLLECTING_STATS):
                raise FailedPrecondition(
                    f"job {self.job_id} is past collecting statistics ({pb.Phase.Name(self.phase)})"
                )
            if state.stats:
                raise AlreadyExists(
                    f"party {party!r} already submitted statistics to {self.job_id}"
                )
            if state.stats_arriving:  # e.g. a retry after a broken connection: it may not get in
                raise Busy(
                    f"party {party!r} is still sending statistics to {self.job_id} on another "
                    "stream; retry once it ends"
                )
            self._admit_rows(party, rows)
            state.stats_arriving = True
        written = 0
        try:
            self.inputs.stats.check_rows(rows, party=party)
            digests = []
            for index, piece in enumerate(pieces):
                checked = self.inputs.stats_piece(piece, index=index, party=party)
                digests.append(hashlib.sha256(checked).digest())
                atomic_write(self.store.stats_path(party, index), checked)
                written = index + 1
            self.inputs.stats.check_pieces(len(digests), party=party)
            if self.roster is not None:
                verify_signature(
                    self.roster[party].signing_public_key,
                    signature,
                    signed.STATS,
                    signed.stats_digest_parts(self.job_id, party, rows, digests),
                )
            atomic_write(self.store.stats_signature_path(party), signature)
        except BaseException:
            for index in range(written):
                self.store.stats_path(party, index).unlink(missing_ok=True)
            with self._cond:
                state.stats_arriving = False
            raise
        with self._cond:
            state.stats_arriving = False
            # Again under the lock: another party's statistics may have arrived meanwhile.
            self._admit_rows(party, rows)
            state.stats = True
            state.rows = rows
            self._changed()

    def accept_upload(self, chunk: pb.UploadChunk, expected_seq: int) -> int:
        """Check and persist one upload chunk; returns the bytes accepted (as stored)."""
        with self._cond:
            state = self._party(chunk.party)
            if self.phase != pb.UPLOADING:
                raise FailedPrecondition(
                    f"job {self.job_id} does not accept uploads now ({pb.Phase.Name(self.phase)})"
                )
            if state.upload_complete:
                raise FailedPrecondition(f"party {chunk.party!r} already completed its upload")
            layout = self.layout
            assert layout is not None
        if chunk.seq != expected_seq:
            raise InvalidArgument(
                f"upload chunk {chunk.seq} from party {chunk.party!r} is out of order; "
                f"expected chunk {expected_seq}"
            )
        checked = self.inputs.upload(chunk, blocks=layout.blocks_of(chunk.party))
        if self.collective and chunk.label_term:
            # Checked at the edge: parties EncToShare only the sum of signed label terms.
            assert self.roster is not None
            (stored,) = [item.data for item in checked if item.key == LABEL_TERM]
            verify_signature(
                self.roster[chunk.party].signing_public_key,
                chunk.label_term_signature,
                signed.LABEL_TERM,
                signed.label_term_parts(self.job_id, chunk.party, stored),
            )
            atomic_write(
                self.store.label_term_signature_path(chunk.party), chunk.label_term_signature
            )
        # Only a fully valid chunk is written: a rejected chunk leaves no trace. A ciphertext
        # sent again (a party uploading again after a broken stream) replaces the stored one,
        # and counts against the job's bytes again: the budget bounds what a party may send,
        # so that the same column sent again and again cannot go on forever.
        accepted = 0
        for item in checked:
            if item.key == LABEL_TERM:
                path = self.store.label_term_path(chunk.party)
            else:
                path = self.store.column_path(chunk.party, *item.key)
            atomic_write(path, item.data)
            accepted += len(item.data)
        with self._cond:
            for item in checked:
                if item.key == LABEL_TERM:
                    state.label_term = True
                else:
                    state.received.add(item.key)
            state.upload_bytes += accepted
            if chunk.last:
                missing = self._missing(state)
                if missing:
                    raise FailedPrecondition(
                        f"party {chunk.party!r} ended its upload with {missing} missing"
                    )
                state.upload_complete = True
                log.info(
                    "job %s: party %s uploaded %d bytes",
                    self.job_id,
                    state.name,
                    state.upload_bytes,
                )
            self._changed()
        return accepted

    def _admit_rows(self, party: str, rows: int) -> None:
        """Refuse a declared row count over the limits before the job plans anything for it; call
        with ``_cond`` held.

        Raises:
            ResourceExhausted: Too many rows for one party or for the job, or more uploads than
                the job may store; the message names the limit.
        """
        limits = self.limits
        if rows > limits.max_rows_per_party:
            raise ResourceExhausted(
                f"party {party!r} declares {rows:,} rows; this coordinator takes at most "
                f"{limits.max_rows_per_party:,} per party (max_rows_per_party)"
            )
        others = [p for p in self.parties.values() if p.stats and p.name != party]
        total = rows + sum(p.rows for p in others)
        if total > limits.max_rows_per_job:
            raise ResourceExhausted(
                f"party {party!r}'s {rows:,} rows bring job {self.job_id} to {total:,} rows; "
                f"this coordinator takes at most {limits.max_rows_per_job:,} (max_rows_per_job)"
            )
        # Every party uploads one ciphertext per column for each block its rows touch (a block
        # two parties share is uploaded by both) and a label term.
        parties = len(others) + 1
        ciphertexts = (-(-total // self.params.slots) + parties - 1) * self.columns + parties
        needed = len(self.context_bytes) + ciphertexts * self._fresh_ciphertext_bytes()
        if needed > limits.max_job_bytes:
            raise ResourceExhausted(
                f"party {party!r}'s {rows:,} rows bring job {self.job_id} to {total:,} rows, "
                f"about {approximate_bytes(needed)} with its context and uploads; this coordinator "
                f"stores at most {format_quantity(limits.max_job_bytes, 'bytes')} per job "
                f"(max_job_bytes)"
            )

    def _fresh_ciphertext_bytes(self) -> int:
        """What one uploaded ciphertext takes, measured once on a fresh encryption of zeros."""
        if self._ciphertext_bytes is None:
            zeros = ts.ckks_vector(self.context, np.zeros(self.params.slots))
            self._ciphertext_bytes = len(sealio.serialize(zeros))
        return self._ciphertext_bytes

    def check_upload_room(self, party: str, size: int) -> None:
        """Refuse ``size`` more uploaded bytes beyond what the job may store.

        Raises:
            ResourceExhausted: The job would store more than ``max_job_bytes``.
        """
        with self._cond:
            stored = len(self.context_bytes) + sum(p.upload_bytes for p in self.parties.values())
        if stored + size > self.limits.max_job_bytes:
            raise ResourceExhausted(
                f"job {self.job_id} stores {stored:,} bytes; {size:,} more from party {party!r} "
                f"exceed its {format_quantity(self.limits.max_job_bytes, 'bytes')} "
                f"(max_job_bytes)"
            )

    def served_context(self) -> bytes:
        """The public context, for parties about to join or encrypt.

        Raises:
            FailedPrecondition: The job is over; its context is no longer served.
        """
        with self._cond:
            if self.phase in TERMINAL or not self.context_bytes:
                raise FailedPrecondition(
                    f"job {self.job_id} is {pb.Phase.Name(self.phase)}: "
                    f"its context is served only while it runs"
                )
            return self.context_bytes

    def _missing(self, state: PartyState) -> str:
        assert self.layout is not None
        expected = {(b, j) for b in self.layout.blocks_of(state.name) for j in range(self.columns)}
        parts = []
        absent = expected - state.received
        if absent:
            parts.append(f"{len(absent)} of {len(expected)} column ciphertexts")
        if not state.label_term:
            parts.append("the label term")
        return " and ".join(parts)

    def sealed_model(self, party: str) -> pb.SealedModel:
        """Raises: FailedPrecondition: not done yet, or a collective job (the parties made the
        model from each other's sealed mask shares; this coordinator has none)."""
        with self._cond:
            self._party(party)
            if self.collective:
                raise FailedPrecondition(
                    f"job {self.job_id} is collective: its parties hold the model, the "
                    f"coordinator has none"
                )
            if self.phase != pb.DONE:
                raise FailedPrecondition(
                    f"job {self.job_id} has no model yet ({pb.Phase.Name(self.phase)})"
                )
        model = pb.SealedModel()
        model.ParseFromString(self.store.model_path(party).read_bytes())
        return model

    # ----- transitions (made by coordinator.driver) --------------------------------------

    def all_stats_in(self) -> bool:
        return len(self.parties) == self.expected_parties and all(
            p.stats for p in self.parties.values()
        )

    def all_uploads_in(self) -> bool:
        return all(p.upload_complete for p in self.parties.values())

    def publish(
        self,
        *,
        standardization: pb.Standardization,
        options: pb.TrainingOptions,
        layout: PackingLayout,
    ) -> None:
        """Publish the aggregate statistics, the resolved options and the layout; open uploads."""
        with self._cond:
            self.standardization = standardization
            self.options = options
            self.layout = layout
            for placed in layout.parties:
                self.parties[placed.name].rows = placed.rows
            self.phase = pb.UPLOADING
            self._changed()

    def set_phase(self, phase: pb.Phase, message: str = "") -> None:
        with self._cond:
            self.phase = phase
            self.message = message
            self._changed()

    def set_iteration(self, done: int) -> None:
        with self._cond:
            self.iteration = done
            self._changed()

    def finish(self, sealed_models: list[pb.SealedModel], report: JobReport) -> None:
        """Store the sealed models and the run's report; the job is done."""
        for sealed in sealed_models:
            atomic_write(self.store.model_path(sealed.party), sealed.SerializeToString())
        atomic_write(self.store.report_path(), report.to_json().encode())
        with self._cond:
            self.report = report
            self.phase = pb.DONE
            self._changed()

    def finished_report(self) -> JobReport:
        """The report of the training run, read back from disk after a restart.

        Raises:
            FailedPrecondition: The job is not done (yet, or it failed).
        """
        with self._cond:
            if self.phase != pb.DONE:
                raise FailedPrecondition(
                    f"job {self.job_id} has no report: it is not done ({pb.Phase.Name(self.phase)})"
                )
            if self.report is None:
                self.report = JobReport.from_json(self.store.report_path().read_text())
            return self.report


def _column_mismatch(party: str, got: list[str], expected: list[str], job_id: str) -> str:
    missing = [c for c in expected if c not in got]
    extra = [c for c in got if c not in expected]
    if not missing and not extra:
        return f"party {party!r}: columns of job {job_id} are in a different order; expected {expected}"
    return (
        f"party {party!r}: columns differ from job {job_id}: "
        f"missing {missing or 'none'}, unexpected {extra or 'none'}"
    )


def _duration(seconds: float) -> str:
    return format_quantity(seconds, "seconds")


def model_outputs(options: pb.TrainingOptions, *, columns: int, slots: int) -> int:
    """The job's model outputs (its label term holds outputs x columns values).

    Raises:
        InvalidArgument: An unknown model, a multiclass model without classes, or more weights
            than one ciphertext's slots.
    """
    model = get_model(options.model, classes=options.classes)
    model.kernel()  # refuses a model that cannot be trained (e.g. one class)
    if model.outputs * columns > slots:
        raise InvalidArgument(
            f"a {model.name} model of {model.outputs} x {columns} weights does not fit the "
            f"{slots} slots of one ciphertext"
        )
    return model.outputs
