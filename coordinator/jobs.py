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

Every domain error names the job, party, block or column at fault.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tenseal as ts

from coordinator.keyholder_link import KeyHolderLink
from coordinator.report import JobReport
from coordinator.store import JobStore, atomic_write, check_name
from coordinator.validation import LABEL_TERM, JobInputs
from hefl import signed
from hefl.codec import PackingLayout
from hefl.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from hefl.identity import same_bytes, verify_signature
from hefl.params import CkksParameters, check_public_context, get_parameter_set
from hefl.v1 import hefl_pb2 as pb

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


class Job:
    """One training job. All mutable state is guarded by ``_cond``."""

    def __init__(
        self,
        *,
        job_id: str,
        store: JobStore,
        params: CkksParameters,
        context_bytes: bytes,
        features: list[str],
        expected_parties: int,
        options: pb.TrainingOptions,
        key_holder: str,
        charter: pb.Charter | None = None,
        charter_signature: bytes = b"",
    ) -> None:
        self.job_id = job_id
        self.store = store
        self.params = params
        self.context_bytes = context_bytes
        try:
            self.context = ts.context_from(context_bytes)
        except Exception as err:  # TenSEAL raises bare C++ errors
            raise InvalidArgument(
                f"the job context does not deserialize as TenSEAL ({err})"
            ) from err
        check_public_context(self.context, params.name)
        self.inputs = JobInputs(
            job_id=job_id, context=self.context, params=params, features=len(features)
        )
        self.features = features
        self.expected_parties = expected_parties
        self.options = options
        self.key_holder = key_holder
        # With a charter (every job over TLS) only its roster's sites may take part.
        self.charter = charter
        self.charter_signature = charter_signature
        self.roster = {e.name: e for e in charter.roster} if charter is not None else None
        self.parties: dict[str, PartyState] = {}
        self.phase = pb.WAITING_FOR_PARTIES
        self.message = ""
        self.iteration = 0
        self.standardization: pb.Standardization | None = None
        self.layout: PackingLayout | None = None
        self.link = KeyHolderLink()
        self.report: JobReport | None = None
        self._cond = threading.Condition()
        self._version = 0

    @property
    def columns(self) -> int:
        return len(self.features) + 1

    # ----- status -----------------------------------------------------------------------

    def _changed(self) -> None:
        """Persist and wake watchers; call with ``_cond`` held."""
        self._version += 1
        self.store.write_state(self._state_dict())
        self._cond.notify_all()

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
        with self._cond:
            while not predicate():
                if stop.is_set():
                    raise ShuttingDown(f"job {self.job_id}: coordinator shutting down")
                self._cond.wait(0.5)

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
                sent them, or is sending them on another stream.
        """
        with self._cond:
            state = self._party(party)
            if self.phase not in (pb.WAITING_FOR_PARTIES, pb.COLLECTING_STATS):
                raise FailedPrecondition(
                    f"job {self.job_id} is past collecting statistics ({pb.Phase.Name(self.phase)})"
                )
            if state.stats or state.stats_arriving:
                raise AlreadyExists(
                    f"party {party!r} already submitted statistics to {self.job_id}"
                )
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
        # Only a fully valid chunk is written: a rejected chunk leaves no trace.
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
        with self._cond:
            self._party(party)
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

    # ----- durability --------------------------------------------------------------------

    def _state_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "parameter_set": self.params.name,
            "features": self.features,
            "expected_parties": self.expected_parties,
            "key_holder": self.key_holder,
            "options": {
                "iterations": self.options.iterations,
                "learning_rate": self.options.learning_rate,
                "l2": self.options.l2,
                "sigmoid_interval": self.options.sigmoid_interval,
                "reveal_intermediate": self.options.reveal_intermediate,
            },
            "phase": pb.Phase.Name(self.phase),
            "message": self.message,
            "parties": [
                {
                    "name": p.name,
                    "hello": p.hello.SerializeToString().hex(),
                    "stats": p.stats,
                    "rows": p.rows,
                    "upload_complete": p.upload_complete,
                }
                for p in self.parties.values()
            ],
            "standardization": None
            if self.standardization is None
            else {
                "count": self.standardization.count,
                "mean": list(self.standardization.mean),
                "std": list(self.standardization.std),
                "curvature": self.standardization.curvature,
            },
            "layout_slots": None if self.layout is None else self.layout.slots,
        }

    @classmethod
    def restore(cls, root: Path) -> Job:
        """Rebuild a job from its directory after a coordinator restart.

        Accepted statistics and ciphertexts are all on disk; a job that was training restarts
        its training from the uploaded data when the key holder reconnects.
        """
        store = JobStore(root)
        state = store.read_state()
        job = cls(
            job_id=state["job_id"],
            store=store,
            params=get_parameter_set(state["parameter_set"]),
            context_bytes=store.context_path().read_bytes(),
            features=list(state["features"]),
            expected_parties=int(state["expected_parties"]),
            options=pb.TrainingOptions(**state["options"]),
            key_holder=state["key_holder"],
            **_read_charter(store),
        )
        job.phase = pb.Phase.Value(state["phase"])
        job.message = state["message"]
        for entry in state["parties"]:
            party = PartyState(
                name=entry["name"],
                hello=pb.PartyHello.FromString(bytes.fromhex(entry["hello"])),
                stats=entry["stats"],
                rows=entry["rows"],
                upload_complete=entry["upload_complete"],
            )
            job.parties[party.name] = party
        if state["standardization"] is not None:
            job.standardization = pb.Standardization(**state["standardization"])
            job.layout = PackingLayout.assign(
                slots=state["layout_slots"],
                party_rows=[(p.name, p.rows) for p in job.parties.values()],
            )
            for party in job.parties.values():
                _rescan_upload(job, party)
        if job.phase == pb.TRAINING:
            job.iteration = 0
        return job


def _read_charter(store: JobStore) -> dict[str, Any]:
    path = store.charter_path()
    if not path.is_file():
        return {}
    spec = pb.JobSpec.FromString(path.read_bytes())
    return {"charter": spec.charter, "charter_signature": spec.charter_signature}


def _rescan_upload(job: Job, party: PartyState) -> None:
    assert job.layout is not None
    for block in job.layout.blocks_of(party.name):
        for column in range(job.columns):
            if job.store.column_path(party.name, block, column).is_file():
                party.received.add((block, column))
    party.label_term = job.store.label_term_path(party.name).is_file()


def _column_mismatch(party: str, got: list[str], expected: list[str], job_id: str) -> str:
    missing = [c for c in expected if c not in got]
    extra = [c for c in got if c not in expected]
    if not missing and not extra:
        return f"party {party!r}: columns of job {job_id} are in a different order; expected {expected}"
    return (
        f"party {party!r}: columns differ from job {job_id}: "
        f"missing {missing or 'none'}, unexpected {extra or 'none'}"
    )
