"""A party's whole run, in order: join (the key holder: generate the keys and create the job),
send its signed statistics, encrypt and upload its rows, (the key holder: answer the
coordinator's tasks), receive the model.

This module is only that orchestration. Each concern it calls on is a module of its own,
tested without a network: what a party encrypts and opens (:mod:`parties.encryption`), the key
holder's protocol (:mod:`parties.keyholder`) and its session with the coordinator
(:mod:`parties.session`), what a party checks on its own data (:mod:`parties.evaluation`), and
how it rides out a lost coordinator (:mod:`parties.reconnect`).

Parties only dial out. The key holder's secret key stays in this process: the coordinator gets
``serialize(save_secret_key=False)`` and nothing else derived from the key but what the
protocols in :mod:`parties.keyholder` return.

Faults. While the job trains, a party watches it. When the coordinator goes away (a restart, a
broken connection) the party reconnects with backoff for up to ``reconnect_s`` without an
answer, the key holder's task stream too, and carries on from wherever the job is then. A job
that FAILED ends the party with the coordinator's reason (:class:`PartyFailed`; ``hefl party``
exits non-zero with it), and so does a coordinator that stays away longer.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import tenseal as ts

from hefl import chunks, signed
from hefl.algorithm import add_bias, standardize
from hefl.codec import AggregateStats
from hefl.errors import DataError, HeflError, InvalidArgument
from hefl.identity import channel_credentials
from hefl.models import Model, get_model
from hefl.params import DEFAULT_PARAMETER_SET, check_public_context, get_parameter_set
from hefl.protocols.collective.step import label_term_bytes, stats_protocol
from hefl.protocols.stats import StatsProtocol
from hefl.v1 import hefl_pb2 as pb
from hefl.v1 import hefl_pb2_grpc as pb_grpc
from parties.collective import CollectiveMember, Roster
from parties.data import Dataset, infer_model, load_csv_raw
from parties.encryption import Upload, layout_of, open_model
from parties.evaluation import evaluate, evaluate_model, margins_on, warn_about_step
from parties.identity import PartyIdentity
from parties.keyholder import KeyHolder
from parties.reconnect import FINISHED, Outage, Reconnect, is_transient, watch
from parties.sealing import SealingKey
from parties.session import KeyHolderSession
from parties.trust import Provisioned, Trust, Unverified

log = logging.getLogger("hefl.party")

# Deadlines for unary calls; streams that wait for other parties have none.
CALL_TIMEOUT_S = 120.0
STATUS_TIMEOUT_S = 10.0
# gRPC waits up to 2 minutes between its own attempts to reconnect a channel; a party whose
# coordinator restarts should be back within seconds of it.
CHANNEL_OPTIONS = [*chunks.CHANNEL_OPTIONS, ("grpc.max_reconnect_backoff_ms", 5000)]


@dataclass(frozen=True)
class PartyConfig:
    coordinator: str
    data: Path
    label: str
    # This party's startup kit (`hefl provision`): its name, certificate and signing key.
    kit: Path | None = None
    # Plaintext gRPC with a self-chosen name; nobody can check anything (see parties.trust).
    insecure: bool = False
    name: str = ""
    # Every party of the job (with a kit): the key holder invites them, the others check them.
    roster: tuple[str, ...] = ()
    # The project's sites.json; default: the kit's copy.
    sites: Path | None = None
    key_holder: bool = False
    job: str = ""
    # Key holder only: how many parties the job waits for, parameters and options.
    parties: int = 1
    parameter_set: str = DEFAULT_PARAMETER_SET
    iterations: int = 0
    learning_rate: float = 0.0
    l2: float = 0.0
    sigmoid_interval: float = 0.0
    reveal_intermediate: bool = False
    # The model (a name of hefl.models; "" infers it from the label) and its classes
    # (multiclass; 0 infers them). A joining party trains the job's model and refuses a job
    # whose model differs from the one it was told.
    model: str = ""
    classes: int = 0
    # "collective" (n-of-n keys among the roster, no key holder) or "key-holder". Creating a
    # job: its mode; joining: the only mode this party accepts (no downgrade by a charter).
    trust: str = "collective"
    # Held-out rows to evaluate the model on; without it the party keeps no rows back.
    test: Path | None = None
    model_out: Path | None = None
    # Keep retrying to join while the job does not exist yet (parties started together).
    join_timeout_s: float = 0.0
    # Keep reconnecting this long without an answer when the coordinator goes away.
    reconnect_s: float = 300.0


@dataclass
class PartyResult:
    job_id: str = ""
    name: str = ""
    rows: int = 0
    test_rows: int = 0
    accuracy: float | None = None
    auc: float | None = None
    # The model's own held-out metrics (hefl.models.Model.metrics): r2/rmse, deviance, ...
    metrics: dict[str, float] = field(default_factory=dict)
    weights: list[float] = field(default_factory=list)
    # Margins of the delivered model on this party's own training rows (see MarginCheck).
    max_margin: float = 0.0
    margin_outside_fraction: float = 0.0
    timings_s: dict[str, float] = field(default_factory=dict)
    # Wall-clock times (time.time()) of milestones, to line parties up with each other:
    # "keygen" (key holder: key generation starts), "model" (the model is opened here).
    clock: dict[str, float] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    # Times the coordinator went away and came back (the watch, and the key holder's stream).
    reconnects: int = 0
    # Key holder: the tasks its protocol handled, by kind, and the repeats answered from cache.
    key_holder_tasks: dict[str, int] = field(default_factory=dict)
    key_holder_repeats: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class PartyFailed(HeflError):
    """The job failed on the coordinator's side; the message says why."""


def _call_error(
    err: grpc.RpcError, stub: pb_grpc.CoordinatorStub, job_id: str, party: str
) -> HeflError:
    """The error a refused call ends the party with: the job's own reason if it FAILED (a call
    refused because of that says less), else the call's status."""
    try:
        request = pb.WatchJobRequest(job_id=job_id, party=party)
        status = next(iter(stub.WatchJob(request, timeout=STATUS_TIMEOUT_S)), None)
    except grpc.RpcError:
        status = None
    if status is not None and status.phase == pb.FAILED:
        return PartyFailed(f"job {job_id} failed: {status.message}")
    return PartyFailed(f"{err.code().name}: {err.details()}")  # type: ignore[attr-defined]


def run_party(config: PartyConfig) -> PartyResult:
    """Run one party to the end of its job and return what it measured.

    Raises:
        DataError: The CSV is unusable (nothing was sent).
        PartyFailed: The coordinator rejected a request or the job failed.
    """
    started = time.perf_counter()
    if not config.key_holder and not config.job:
        raise InvalidArgument("name the job to join with --job")
    dataset = load_csv_raw(config.data, label=config.label)
    test = load_csv_raw(config.test, label=config.label) if config.test else None
    model = chosen_model(config, dataset, test)
    dataset = dataset.for_model(model)
    if test is not None:
        test = test.for_model(model)
    try:
        model.check_labels(dataset.labels, where=str(config.data), column=config.label)
    except DataError as gap:
        # Other parties may hold the class (a label-skewed partition): only the union counts,
        # which no party sees, so this is a warning here; tools that hold all rows refuse it.
        log.warning("%s", gap)
    trust: Trust
    if config.kit is not None:
        identity = PartyIdentity.load(config.kit)
        if config.name and config.name != identity.name:
            raise InvalidArgument(
                f"--name {config.name!r} differs from the kit's site {identity.name!r}"
            )
        trust = Provisioned(identity, roster=config.roster, sites=config.sites, kit=config.kit)
        name = identity.name
        channel = grpc.secure_channel(
            config.coordinator,
            channel_credentials(identity.tls),
            options=CHANNEL_OPTIONS,
        )
    elif config.insecure:
        if not config.name:
            raise InvalidArgument("without a kit, name this party with --name")
        trust, name = Unverified(), config.name
        channel = grpc.insecure_channel(config.coordinator, options=CHANNEL_OPTIONS)
    else:
        raise InvalidArgument("give this party's startup kit (--kit) or --insecure")
    result = PartyResult(name=name, rows=dataset.rows, test_rows=test.rows if test else 0)
    stub = pb_grpc.CoordinatorStub(channel)
    party = Party(config, name, trust, dataset, test, stub, result, model)
    try:
        party.run()
    except grpc.RpcError as err:
        raise _call_error(err, stub, party.job_id, name) from err
    finally:
        channel.close()
    result.timings_s["total"] = time.perf_counter() - started
    return result


class Party:
    def __init__(
        self,
        config: PartyConfig,
        name: str,
        trust: Trust,
        dataset: Dataset,
        test: Dataset | None,
        stub: pb_grpc.CoordinatorStub,
        result: PartyResult,
        model: Model,
    ) -> None:
        self.config = config
        self.model = model
        self.name = name
        self.trust = trust
        # Chosen here, not by the coordinator: it is part of what the key holder signs.
        self.job_id = config.job or f"job-{secrets.token_hex(4)}"
        self.dataset = dataset
        self.test = test
        self.stub = stub
        self.result = result
        self.sealing_key = SealingKey()
        self.sigmoid_interval = 16.0
        self.reconnect = Reconnect(give_up_s=config.reconnect_s)
        signing_key = trust.signing_key
        self.hello = pb.PartyHello(
            name=name,
            features=list(dataset.feature_names),
            seal_public_key=self.sealing_key.public_bytes,
            signing_public_key=signing_key.public_bytes,
            seal_key_signature=signing_key.sign(
                signed.SEAL_KEY,
                signed.seal_key_parts(self.job_id, name, self.sealing_key.public_bytes),
            ),
        )

    # ----- steps -------------------------------------------------------------------------

    def run(self) -> None:
        timings = self.result.timings_s
        if self.config.key_holder and self.config.trust == "collective":
            self._run_collective(self._create_job(None))
            return
        if not self.config.key_holder:
            info = self._join()
            self._adopt_model(info.charter.options if info.HasField("charter") else info.options)
            if info.charter.trust == pb.COLLECTIVE:
                self._run_collective(info)
                return
        if self.config.key_holder:
            self.result.clock["keygen"] = time.time()
            tick = time.perf_counter()
            private = get_parameter_set(self.config.parameter_set).make_context()
            timings["keygen"] = time.perf_counter() - tick
            info = self._create_job(private)
            context = private
            tasks = KeyHolderSession(
                self.stub,
                KeyHolder(
                    context=private,
                    job_id=info.job_id,
                    features=self.dataset.feature_names,
                    options=self._options(),
                    signing_key=self.trust.signing_key,
                    roster=self.trust.roster_keys(),
                ),
                job_id=info.job_id,
                party=self.name,
                reconnect=self.reconnect,
            )
            tasks.start()
        else:
            context = self._download_context(info)
            tasks = None
        self.result.job_id = info.job_id
        log.info("party %s in job %s", self.name, info.job_id)
        try:
            self._submit_stats(info, context)
            status = self._wait(info.job_id, {pb.UPLOADING})
            self._upload(info.job_id, context, status)
            tick = time.perf_counter()
            self._wait(info.job_id, {pb.DONE})
            timings["wait_for_training"] = time.perf_counter() - tick
            self._receive_model(info.job_id)
        finally:
            if tasks is not None:
                tasks.stop()
                timings["refresh"] = tasks.refresh_s
                self.result.reconnects += tasks.reconnects
                self.result.key_holder_tasks = dict(tasks.answerer.handled)
                self.result.key_holder_repeats = tasks.answerer.repeats

    def _create_job(self, private: ts.Context | None) -> pb.JobInfo:
        """Create the job: with the key holder's public context, or (``private`` None) a
        collective job, whose keys the roster makes once every party has joined."""
        public = (
            b""
            if private is None
            else private.serialize(save_secret_key=False, save_galois_keys=False)
        )
        options = self._options()
        spec = pb.JobSpec(
            job_id=self.job_id,
            key_holder=self.hello,
            expected_parties=self.config.parties,
            parameter_set=self.config.parameter_set,
            options=options,
        )
        made = self.trust.charter(
            job_id=self.job_id,
            parameter_set=self.config.parameter_set,
            options=options,
            context_bytes=public if private is not None else None,
        )
        if made is not None:
            spec.charter.CopyFrom(made[0])
            spec.charter_signature = made[1]

        def requests() -> Iterator[pb.CreateJobRequest]:
            yield pb.CreateJobRequest(spec=spec)
            for piece in chunks.split_bytes(public):
                yield pb.CreateJobRequest(context_chunk=piece)

        self.result.bytes["context"] = len(public)
        if private is None and made is None:
            raise InvalidArgument("a collective job needs the roster's kits (--kit, --roster)")
        return self.stub.CreateJob(requests(), timeout=CALL_TIMEOUT_S)

    def _options(self) -> pb.TrainingOptions:
        """The training options this key holder asks for (zero: chosen from the data)."""
        return pb.TrainingOptions(
            iterations=self.config.iterations,
            learning_rate=self.config.learning_rate,
            l2=self.config.l2,
            sigmoid_interval=self.config.sigmoid_interval,
            reveal_intermediate=self.config.reveal_intermediate,
            model=self.model.name,
            classes=self.model.classes if self.model.outputs > 1 else 0,
        )

    def _adopt_model(self, options: pb.TrainingOptions) -> None:
        """A joining party trains the job's model: its labels are parsed again for it, and a
        model this party was told (``--model``) that differs is refused.

        Raises:
            InvalidArgument: The job's model is not the one this party was started with.
            DataError: This party's labels do not fit the job's model.
        """
        job_model = get_model(options.model, classes=options.classes)
        told = self.config.model
        if told and (told != job_model.name or self.config.classes not in (0, job_model.classes)):
            raise InvalidArgument(
                f"job {self.job_id} trains a {job_model.name} model "
                f"({job_model.classes or 'no'} classes); this party was started with "
                f"--model {told}"
            )
        if (job_model.name, job_model.classes) != (self.model.name, self.model.classes):
            log.info(
                "job %s trains a %s model; reading the labels for it", self.job_id, job_model.name
            )
            self.model = job_model
            self.dataset = self.dataset.for_model(job_model)
            if self.test is not None:
                self.test = self.test.for_model(job_model)

    @property
    def _trust_mode(self) -> pb.TrustMode:
        return pb.COLLECTIVE if self.config.trust == "collective" else pb.KEY_HOLDER

    def _join(self) -> pb.JobInfo:
        request = pb.JoinJobRequest(job_id=self.job_id, party=self.hello)
        deadline = time.monotonic() + self.config.join_timeout_s
        while True:
            try:
                info = self.stub.JoinJob(request, timeout=CALL_TIMEOUT_S)
                self.trust.check_offer(info, job_id=self.job_id, trust=self._trust_mode)
                return info
            except grpc.RpcError as err:
                retry = err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE)  # type: ignore[attr-defined]
                if not retry or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _download_context(self, info: pb.JobInfo) -> ts.Context:
        data = b"".join(
            blob.data
            for blob in self.stub.GetContext(
                pb.GetContextRequest(job_id=info.job_id), timeout=CALL_TIMEOUT_S
            )
        )
        self.trust.check_context(data)
        context = ts.context_from(data)
        # Refuse to encrypt under anything but an allowed 128-bit parameter set.
        check_public_context(context, info.parameter_set)
        self.result.bytes["context"] = len(data)
        return context

    # ----- collective (n-of-n) mode -------------------------------------------------------

    def _run_collective(self, info: pb.JobInfo) -> None:
        """This party's run in a collective job: its task session runs its side of every
        collective protocol (:mod:`parties.collective`) while it sends statistics and uploads;
        it gets the model from the other parties' mask shares, never from the coordinator."""
        timings = self.result.timings_s
        roster = self.trust.roster_keys()
        if roster is None:
            raise InvalidArgument("a collective job needs the roster's kits (--kit, --roster)")
        self.result.job_id = info.job_id
        params = get_parameter_set(info.parameter_set)
        member = CollectiveMember(
            job_id=info.job_id,
            name=self.name,
            params=params,
            roster=Roster(roster),
            features=self.dataset.feature_names,
            options=info.charter.options,
            signing_key=self.trust.signing_key,
            sealing_key=self.sealing_key,
        )
        protocol = stats_protocol(len(self.dataset.feature_names), params)
        member.make_stats = lambda context: protocol.gen_share(context, self.dataset.features)
        member.make_label_term = self._label_term
        tasks = KeyHolderSession(
            self.stub, member, job_id=info.job_id, party=self.name, reconnect=self.reconnect
        )
        log.info("party %s in collective job %s", self.name, info.job_id)
        tasks.start()
        try:
            tick = time.perf_counter()
            # Statistics and label term go out only once every party committed to its own.
            self._wait_until(info.job_id, member.stats_released)
            timings["keygen"] = time.perf_counter() - tick
            if member.keygen_started is not None:
                self.result.clock["keygen"] = member.keygen_started
            assert member.context is not None and member.stats_share is not None
            share = member.stats_share
            self._send_stats(
                info.job_id, lambda: share.to_chunks(job_id=info.job_id, party=self.name)
            )
            status = self._wait(info.job_id, {pb.UPLOADING})
            self._wait_until(info.job_id, member.label_released)
            assert member.summary is not None
            summary = member.summary
            status.standardization.CopyFrom(
                pb.Standardization(
                    count=summary.count,
                    mean=summary.mean.tolist(),
                    std=summary.std.tolist(),
                    curvature=summary.curvature,
                )
            )
            self._upload(info.job_id, member.context, status, label_term=member.label_term)
            tick = time.perf_counter()
            self._wait(info.job_id, {pb.DONE})
            timings["wait_for_training"] = time.perf_counter() - tick
            if member.model is None:
                raise PartyFailed(f"job {info.job_id} is done but this party has no model")
            self._use_model(member.model)
        finally:
            tasks.stop()
            timings["refresh"] = tasks.refresh_s
            self.result.reconnects += tasks.reconnects
            self.result.key_holder_tasks = dict(tasks.answerer.handled)
            self.result.key_holder_repeats = tasks.answerer.repeats

    def _wait_until(self, job_id: str, ready: threading.Event) -> None:
        """Wait for ``ready`` (set by the task session), watching the job for a failure.

        Raises:
            PartyFailed: The job FAILED or ended first.
            CoordinatorLost: The coordinator stayed away longer than ``reconnect_s``.
        """
        request = pb.WatchJobRequest(job_id=job_id, party=self.name)
        outage = Outage(self.reconnect, f"waiting for the keys of job {job_id}")
        while not ready.wait(1.0):
            try:
                status = next(iter(self.stub.WatchJob(request, timeout=STATUS_TIMEOUT_S)))
            except grpc.RpcError as err:
                if not is_transient(err):
                    raise
                outage.failed(err.code().name)  # type: ignore[attr-defined]
                continue
            outage.ok()
            if status.phase == pb.FAILED:
                raise PartyFailed(f"job {job_id} failed: {status.message}")
            if status.phase == pb.DONE:
                raise PartyFailed(f"job {job_id} ended before this party's keys were made")

    def _submit_stats(
        self, info: pb.JobInfo, context: ts.Context, protocol: StatsProtocol | None = None
    ) -> None:
        protocol = protocol or StatsProtocol(
            features=len(self.dataset.feature_names),
            slots=get_parameter_set(info.parameter_set).slots,
        )
        share = protocol.gen_share(context, self.dataset.features)
        share = replace(
            share,
            signature=self.trust.signing_key.sign(
                signed.STATS,
                signed.stats_parts(info.job_id, self.name, share.rows, share.pieces),
            ),
        )
        self._send_stats(info.job_id, lambda: share.to_chunks(job_id=info.job_id, party=self.name))

    def _send_stats(self, job_id: str, chunks: Callable[[], Iterator[pb.StatsChunk]]) -> None:
        """Send this party's statistics, again while the coordinator is away (restarting) or
        still reading a broken attempt (UNAVAILABLE).

        After a broken attempt, ALREADY_EXISTS means that attempt got in (the coordinator keeps
        a share once all of it is in), and FAILED_PRECONDITION that the job is past collecting
        statistics, which it leaves only with every party's or FAILED: the watch that follows
        tells which.

        Raises:
            CoordinatorLost: The coordinator stayed away longer than ``reconnect_s``.
        """
        _, outages = until_in(
            self.reconnect,
            f"sending the statistics of job {job_id}",
            lambda: self.stub.SubmitStats(chunks(), timeout=CALL_TIMEOUT_S),
            landed={grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION},
        )
        self.result.reconnects += outages

    def _wait(self, job_id: str, phases: set[int]) -> pb.JobStatus:
        """Watch the job (across coordinator restarts) until it reaches one of ``phases``.

        Raises:
            PartyFailed: The job FAILED; the message is the coordinator's reason.
            CoordinatorLost: The coordinator stayed away longer than ``reconnect_s``.
        """
        request = pb.WatchJobRequest(job_id=job_id, party=self.name)
        before = self.result.reconnects

        def outages(count: int) -> None:
            self.result.reconnects = before + count

        for status in watch(self.stub, request, self.reconnect, outages=outages):
            if status.phase == pb.FAILED:
                raise PartyFailed(f"job {job_id} failed: {status.message}")
            if status.phase in phases:
                return status
            if status.phase in FINISHED:
                break
        raise PartyFailed(f"job {job_id} ended before reaching the phase this party waits for")

    def _label_term(self, context: ts.Context, summary: AggregateStats) -> bytes:
        """Collective mode: this party's label term, standardized by the decrypted summary."""
        columns = add_bias(standardize(self.dataset.features, summary.mean, summary.std))
        return label_term_bytes(context, self.model.label_term(columns, self.dataset.labels))

    def _upload(
        self,
        job_id: str,
        context: ts.Context,
        status: pb.JobStatus,
        *,
        label_term: bytes | None = None,
    ) -> None:
        self.sigmoid_interval = status.options.sigmoid_interval
        warn_about_step(status)
        upload = Upload(
            job_id=job_id,
            party=self.name,
            context=context,
            layout=layout_of(status),
            dataset=self.dataset,
            standardization=status.standardization,
            model=self.model,
            signing_key=self.trust.signing_key,
            label_term=label_term,
        )
        tick = time.perf_counter()
        summary = self._send_upload(job_id, upload)
        total = time.perf_counter() - tick
        self.result.timings_s["encrypt"] = upload.encrypt_s
        self.result.timings_s["upload"] = total - upload.encrypt_s
        self.result.bytes["upload"] = summary.bytes_accepted

    def _send_upload(self, job_id: str, upload: Upload) -> pb.UploadSummary:
        """Upload, and upload again from the start while the coordinator is away (restarting):
        what a broken stream left is replaced ciphertext by ciphertext (the label term is the
        same bytes as committed; the columns are encrypted afresh).

        After a broken attempt, FAILED_PRECONDITION means the upload got in whole (the job has
        it complete, or is past uploads, which it leaves only with every party's or FAILED: the
        watch that follows tells which).

        Raises:
            CoordinatorLost: The coordinator stayed away longer than ``reconnect_s``.
        """
        summary, outages = until_in(
            self.reconnect,
            f"uploading to job {job_id}",
            lambda: self.stub.Upload(upload.chunks()),
            landed={grpc.StatusCode.FAILED_PRECONDITION},
        )
        self.result.reconnects += outages
        return summary or pb.UploadSummary(complete=True)

    def _receive_model(self, job_id: str) -> None:
        model = open_model(
            self._get_model(job_id),
            job_id=job_id,
            party=self.name,
            features=self.dataset.feature_names,
            trust=self.trust,
            sealing_key=self.sealing_key,
        )
        self._use_model(model)

    def _use_model(self, model: dict[str, Any]) -> None:
        self.result.clock["model"] = time.time()
        self.result.weights = model["weights"]
        family = get_model(
            self.model.name, interval=self.sigmoid_interval, classes=self.model.classes
        )
        check = margins_on(model, self.dataset, family)
        self.result.max_margin = check.max_margin
        self.result.margin_outside_fraction = check.outside_fraction
        if self.config.model_out is not None:
            self.config.model_out.write_text(json.dumps(model, indent=1))
        if self.test is not None:
            self.result.metrics = evaluate_model(model, self.test, family)
            if family.name == "logistic":
                self.result.accuracy, self.result.auc = evaluate(model, self.test)
            else:
                self.result.accuracy = self.result.metrics.get("accuracy")

    def _get_model(self, job_id: str) -> pb.SealedModel:
        """The sealed model, asked again while the coordinator is away (it keeps it on disk)."""
        outage = Outage(self.reconnect, f"fetching the model of job {job_id}")
        request = pb.GetModelRequest(job_id=job_id, party=self.name)
        while True:
            try:
                return self.stub.GetModel(request, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as err:
                if not is_transient(err):
                    raise
                outage.failed(err.code().name)  # type: ignore[attr-defined]


def until_in(
    reconnect: Reconnect, what: str, call: Callable[[], Any], *, landed: set[grpc.StatusCode]
) -> tuple[Any, int]:
    """(``call()``'s answer, outages), calling again while the coordinator is away; the answer
    is None when, after a broken attempt, the coordinator answers one of ``landed``: that
    attempt got in.

    Raises:
        CoordinatorLost: The coordinator stayed away longer than ``reconnect.give_up_s``.
    """
    outage = Outage(reconnect, what)
    while True:
        try:
            return call(), outage.count
        except grpc.RpcError as err:
            code = err.code()  # type: ignore[attr-defined]
            if outage.count and code in landed:
                log.info("%s: what was sent before the outage is in (%s)", what, code.name)
                return None, outage.count
            if not is_transient(err):
                raise
            outage.failed(code.name)


def chosen_model(config: PartyConfig, dataset: Dataset, test: Dataset | None = None) -> Model:
    """The model ``--model`` names, or the one the label column calls for (training and
    held-out rows, logged).

    A multiclass model without ``--classes``: the key holder counts the classes in its rows
    (training and held-out, the largest index plus one); a joining party leaves the count open
    (any class index is read) until it learns the job's (:meth:`Party._adopt_model`).

    Raises:
        InvalidArgument: An unknown model name.
    """
    cells = [*dataset.raw_labels, *(test.raw_labels if test is not None else ())]
    if not config.model:
        return infer_model(cells, column=config.label)
    if config.model == "multiclass" and not config.classes and config.key_holder:
        indices = get_model("multiclass").parse_labels(
            cells, where=str(config.data), column=config.label
        )
        return get_model("multiclass", classes=int(indices.max(initial=0)) + 1)
    return get_model(config.model, classes=config.classes)
