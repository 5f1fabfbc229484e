"""Restoring a job from its directory after a coordinator restart, every file it relies on
verified.

The job writes itself (:meth:`coordinator.jobs.Job._changed` keeps ``job.json``, the requests
it accepts write their ciphertexts with :func:`coordinator.store.atomic_write`); this module
reads it back. What a restored job relies on is checked before it serves a request: ``job.json``
parses field by field; the charter parses, is signed by its key holder and names the context;
the context is within its parameter set's size, loads and passes
:func:`hefl.params.check_public_context` (and in a collective job every roster party signed it,
as ``collective/keys.json`` records); every statistics piece, column and label term the job
counts as received has a plausible size and loads as one fresh ciphertext of the job's
parameters and shape; a finished job's sealed models and report parse.

A collective job restarted during its setup (keys, statistics, label terms) resumes it from
the setup's journal (:class:`coordinator.checkpoint.SetupFileJournal`): until the roster's keys
are recorded (``collective/keys.json``) it is restored without a context, which the replayed
setup makes again; from then on with the context, checked as the roster signed it.

A job whose directory fails any check is restored FAILED with the reason naming the file, and
holds nothing; its files are left as found (an operator can repair them and restart). It never
stops the restore of the other jobs.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path

import tenseal as ts

from coordinator.checkpoint import CollectiveFileJournal
from coordinator.collective import KeyGeneration
from coordinator.jobs import TERMINAL, Job, PartyState
from coordinator.limits import Limits, ciphertext_bytes_cap, context_bytes_cap
from coordinator.report import JobReport
from coordinator.store import JobRecord, JobStore, check_name, remove_temporaries
from hefl import sealio, signed
from hefl.charter import context_digest, verify_charter
from hefl.codec import PackingLayout
from hefl.errors import HeflError
from hefl.identity import same_bytes, verify_signature
from hefl.params import (
    DEFAULT_PARAMETER_SET,
    CkksParameters,
    check_public_context,
    get_parameter_set,
)
from hefl.protocols.collective.step import LABEL_TERM_SCALE_BITS
from hefl.v1 import hefl_pb2 as pb
from hefl.validate import ANY

log = logging.getLogger("hefl.persistence")


class Unrestorable(Exception):
    """A file of the job directory does not verify; the message names it."""


def restore_job(root: Path, *, limits: Limits) -> Job:
    """The job kept in ``root``, verified; FAILED with the reason if it does not verify.

    Accepted statistics and ciphertexts are all on disk; a job that was training restarts its
    training from the uploaded data when the key holder reconnects. Never raises.
    """
    store = JobStore(root)
    stale = remove_temporaries(root)
    if stale:
        log.info("job directory %s: removed %d interrupted writes", root, len(stale))
    restoring = _Restoring(store, limits)
    try:
        return restoring.run()
    except Exception as err:
        reason = str(err) if isinstance(err, Unrestorable) else f"{type(err).__name__}: {err}"
        log.error("job directory %s does not verify: %s", root, reason)
        return restoring.failed(reason)


class _Restoring:
    """The restore of one job directory, keeping what it has read for the FAILED job."""

    def __init__(self, store: JobStore, limits: Limits) -> None:
        self.store = store
        self.limits = limits
        self.record: JobRecord | None = None
        self.spec: pb.JobSpec | None = None

    def run(self) -> Job:
        record = self.record = self._read_record()
        params = self._params(record)
        self.spec = self._read_charter(record)
        over = record.phase in TERMINAL
        collective = self.spec is not None and self.spec.charter.trust == pb.COLLECTIVE
        # A collective job whose roster has not made its keys yet has no context to check: the
        # resumed setup makes it (coordinator.collective.JournaledRelay).
        keyless = (
            collective
            and record.phase in (pb.WAITING_FOR_PARTIES, pb.COLLECTING_STATS)
            and not CollectiveFileJournal(self.store.collective_path()).has_keys()
        )
        context_bytes = None if over or keyless else self._read_context(params)
        job = Job(
            job_id=record.job_id,
            store=self.store,
            params=params,
            context_bytes=context_bytes,
            features=list(record.features),
            expected_parties=record.expected_parties,
            options=record.options,
            key_holder=record.key_holder,
            limits=self.limits,
            charter=self.spec.charter if self.spec else None,
            charter_signature=self.spec.charter_signature if self.spec else b"",
        )
        job.phase = record.phase
        job.message = record.message
        if collective and context_bytes is not None:
            job.collective_keys = self._read_collective_keys(job, context_bytes)
        for entry in record.parties:
            if entry.hello.name != entry.name:
                raise Unrestorable(
                    f"job.json: party {entry.name!r} holds {entry.hello.name!r}'s hello"
                )
            if job.roster is not None and entry.name not in job.roster:
                raise Unrestorable(f"job.json: party {entry.name!r} is not on the charter's roster")
            job.parties[entry.name] = PartyState(
                name=entry.name,
                hello=entry.hello,
                stats=entry.stats,
                rows=entry.rows,
                upload_complete=entry.upload_complete,
            )
        if record.phase == pb.DONE:
            self._check_finished(job)
            return job
        if over:
            return job
        self._check_rows(job)
        for party in job.parties.values():
            if party.stats and keyless:
                raise Unrestorable(
                    f"job.json: {party.name!r} sent statistics, but collective/keys.json "
                    f"records no keys"
                )
            if party.stats:
                self._check_stats(job, party)
        uploading = record.phase in (pb.UPLOADING, pb.TRAINING)
        if (record.standardization is not None) != uploading or (
            record.layout_slots is not None
        ) != uploading:
            raise Unrestorable(
                f"job.json: phase {pb.Phase.Name(record.phase)} with"
                f"{'' if record.standardization else 'out'} a standardization and layout"
            )
        if record.standardization is not None and record.layout_slots is not None:
            job.standardization = record.standardization
            job.layout = PackingLayout.assign(
                slots=record.layout_slots,
                party_rows=[(p.name, p.rows) for p in job.parties.values()],
            )
            for party in job.parties.values():
                self._rescan_upload(job, party)
        if job.phase == pb.TRAINING:
            job.iteration = 0
        return job

    def failed(self, reason: str) -> Job:
        """The job as far as it could be read, FAILED with ``reason`` and holding nothing."""
        record = self.record
        job = Job(
            job_id=record.job_id if record else _directory_job_id(self.store.root),
            store=self.store,
            params=self._params_or_default(record),
            context_bytes=None,
            features=list(record.features) if record else [],
            expected_parties=record.expected_parties if record else 0,
            options=record.options if record else pb.TrainingOptions(),
            key_holder=record.key_holder if record else "",
            limits=self.limits,
            charter=self.spec.charter if self.spec else None,
            charter_signature=self.spec.charter_signature if self.spec else b"",
        )
        for entry in record.parties if record else ():
            job.parties[entry.name] = PartyState(name=entry.name, hello=entry.hello)
        job.phase = pb.FAILED
        job.message = f"the coordinator could not restore this job: {reason}"
        return job

    # ----- the files -----------------------------------------------------------------------

    def _read_record(self) -> JobRecord:
        try:
            record = self.store.read_record()
        except (OSError, HeflError) as err:
            raise Unrestorable(f"job.json does not parse: {err}") from err
        if record.job_id != self.store.root.name:
            raise Unrestorable(
                f"job.json names job {record.job_id!r} but lies in {self.store.root.name!r}"
            )
        return record

    @staticmethod
    def _params(record: JobRecord) -> CkksParameters:
        try:
            return get_parameter_set(record.parameter_set)
        except HeflError as err:
            raise Unrestorable(f"job.json: {err}") from err

    @staticmethod
    def _params_or_default(record: JobRecord | None) -> CkksParameters:
        try:
            return get_parameter_set(record.parameter_set if record else DEFAULT_PARAMETER_SET)
        except HeflError:
            return get_parameter_set(DEFAULT_PARAMETER_SET)

    def _read_charter(self, record: JobRecord) -> pb.JobSpec | None:
        path = self.store.charter_path()
        chartered = path.is_file() if record.chartered is None else record.chartered
        if not chartered:
            return None
        data = self._read(path)
        try:
            spec = pb.JobSpec.FromString(data)
            verify_charter(spec.charter, spec.charter_signature)
        except Exception as err:  # protobuf's DecodeError, or the signature's ProtocolError
            raise Unrestorable(f"charter.pb does not verify: {err}") from err
        charter = spec.charter
        if charter.job_id != record.job_id or len(charter.roster) != record.expected_parties:
            raise Unrestorable(
                f"charter.pb is job {charter.job_id!r} of {len(charter.roster)} parties, "
                f"job.json job {record.job_id!r} of {record.expected_parties}"
            )
        return spec

    def _read_context(self, params: CkksParameters) -> bytes:
        path = self.store.context_path()
        data = self._read(path, cap=context_bytes_cap(params))
        try:
            context = ts.context_from(data)
        except Exception as err:  # TenSEAL raises bare C++ errors
            raise Unrestorable(f"context.bin does not load as a TenSEAL context: {err}") from err
        try:
            check_public_context(context, params.name)
        except HeflError as err:
            raise Unrestorable(f"context.bin: {err}") from err
        collective = self.spec is not None and self.spec.charter.trust == pb.COLLECTIVE
        if (
            self.spec is not None
            and not collective
            and not same_bytes(context_digest(data), self.spec.charter.context_sha256)
        ):
            raise Unrestorable("context.bin is not the context the charter names")
        return data

    def _read_collective_keys(self, job: Job, context_bytes: bytes) -> KeyGeneration:
        """The collective setup's record, for the context every roster party signed (its
        charter names no context: the roster made it)."""
        assert job.roster is not None
        try:
            keys = CollectiveFileJournal(self.store.collective_path()).load_keys(
                params=job.params, job_id=job.job_id, context_bytes=context_bytes
            )
        except HeflError as err:
            raise Unrestorable(f"collective/keys.json: {err}") from err
        if keys.job.parties != tuple(sorted(job.roster)) or set(keys.context_signatures) != set(
            job.roster
        ):
            raise Unrestorable("collective/keys.json is not of the charter's roster")
        for party, entry in job.roster.items():
            try:
                verify_signature(
                    entry.signing_public_key,
                    keys.context_signatures[party],
                    signed.COLLECTIVE_SETUP,
                    signed.collective_parts(job.job_id, "context", party, context_bytes),
                )
            except HeflError as err:
                raise Unrestorable(
                    f"context.bin is not the context {party!r} signed: {err}"
                ) from err
        return keys

    def _read(self, path: Path, *, cap: int | None = None) -> bytes:
        name = self.store.relative(path)
        try:
            size = path.stat().st_size
            if cap is not None and size > cap:
                raise Unrestorable(f"{name} has {size:,} bytes, more than the {cap:,} it may")
            return path.read_bytes()
        except FileNotFoundError:
            raise Unrestorable(f"{name} is missing") from None
        except OSError as err:
            raise Unrestorable(f"{name} cannot be read: {err}") from err

    def _ciphertext(
        self, job: Job, path: Path, *, size: int, scale_bits: int | None = None
    ) -> bytes:
        """Check one stored ciphertext: within the size a fresh ciphertext can take, one CKKS
        ciphertext of two polynomials at the top level of the job's parameters, ``size``
        values, at scale 2^``scale_bits`` (default: the job's)."""
        params = job.params
        name = self.store.relative(path)
        scale = 2.0 ** (params.scale_bits if scale_bits is None else scale_bits)
        data = self._read(path, cap=ciphertext_bytes_cap(params))
        try:
            vector = sealio.deserialize(
                job.context, data, what=name, expected=replace(ANY, scale=scale)
            )
        except HeflError as err:
            raise Unrestorable(f"{name} does not load: {err}") from err
        parts = vector.ciphertext()
        top_level = len(params.coeff_mod_bit_sizes) - 1
        if (
            len(parts) != 1
            or parts[0].size() != 2
            or parts[0].poly_modulus_degree() != params.poly_modulus_degree
            or parts[0].coeff_modulus_size() != top_level
            or parts[0].scale != scale
            or vector.size() != size
        ):
            raise Unrestorable(
                f"{name} is not one fresh ciphertext of {size} values under {params.name}"
            )
        return data

    def _check_stats(self, job: Job, party: PartyState) -> None:
        """Every piece passes the same checks as when it arrived, and over TLS the party's
        signature covers exactly these pieces."""
        digests = []
        for index in range(len(job.inputs.stats.piece_sizes)):
            path = job.store.stats_path(party.name, index)
            name = self.store.relative(path)
            data = self._read(path, cap=ciphertext_bytes_cap(job.params))
            try:
                checked = job.inputs.stats_piece(data, index=index, party=party.name)
            except HeflError as err:
                raise Unrestorable(f"{name} does not load: {err}") from err
            if checked != data:
                raise Unrestorable(f"{name} is not the coordinator's own serialization")
            digests.append(hashlib.sha256(data).digest())
        signature = self._read(job.store.stats_signature_path(party.name), cap=1024)
        if job.roster is not None:
            try:
                verify_signature(
                    job.roster[party.name].signing_public_key,
                    signature,
                    signed.STATS,
                    signed.stats_digest_parts(job.job_id, party.name, party.rows, digests),
                )
            except HeflError as err:
                raise Unrestorable(
                    f"statistics of {party.name!r} (stats/{party.name}/): {err}"
                ) from err

    def _check_rows(self, job: Job) -> None:
        """The declared rows within today's limits, before anything is planned from them."""
        limits = self.limits
        for party in job.parties.values():
            if party.rows > limits.max_rows_per_party:
                raise Unrestorable(
                    f"job.json: party {party.name!r} declares {party.rows:,} rows, over "
                    f"this coordinator's max_rows_per_party ({limits.max_rows_per_party:,})"
                )
        total = sum(p.rows for p in job.parties.values())
        if total > limits.max_rows_per_job:
            raise Unrestorable(
                f"job.json: {total:,} rows, over this coordinator's max_rows_per_job "
                f"({limits.max_rows_per_job:,})"
            )

    def _rescan_upload(self, job: Job, party: PartyState) -> None:
        """Count the party's stored ciphertexts, each verified; a complete upload must have all."""
        assert job.layout is not None
        for block in job.layout.blocks_of(party.name):
            for column in range(job.columns):
                path = job.store.column_path(party.name, block, column)
                if path.is_file() or party.upload_complete:
                    data = self._ciphertext(job, path, size=job.params.slots)
                    party.received.add((block, column))
                    party.upload_bytes += len(data)
        path = job.store.label_term_path(party.name)
        if path.is_file() or party.upload_complete:
            scale_bits = LABEL_TERM_SCALE_BITS if job.collective else None
            stored = self._ciphertext(
                job, path, size=job.outputs * job.columns, scale_bits=scale_bits
            )
            party.upload_bytes += len(stored)
            party.label_term = True

    def _check_finished(self, job: Job) -> None:
        """The sealed models there are (the key holder may have sealed fewer than the parties:
        GetModel says so) and the report."""
        for name in job.parties:
            path = job.store.model_path(name)
            if not path.is_file():
                continue
            try:
                model = pb.SealedModel.FromString(self._read(path))
            except Unrestorable:
                raise
            except Exception as err:  # protobuf's DecodeError
                raise Unrestorable(f"{self.store.relative(path)} does not parse: {err}") from err
            if model.party != name:
                raise Unrestorable(f"{self.store.relative(path)} is {model.party!r}'s model")
        path = job.store.report_path()
        try:
            job.report = JobReport.from_json(self._read(path).decode())
        except Unrestorable:
            raise
        except Exception as err:
            raise Unrestorable(f"report.json does not parse: {err}") from err


def _directory_job_id(root: Path) -> str:
    try:
        return check_name("job", root.name)
    except HeflError:
        return root.name
