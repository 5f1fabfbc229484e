"""A party's whole run: join, encrypt, upload, (key holder: answer tasks), receive the model.

Parties only dial out. The key holder's secret key stays in this process: the coordinator gets
``serialize(save_secret_key=False)`` and nothing else derived from the key but what the
protocols in :mod:`parties.keyholder` return.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tenseal as ts

from hefl import chunks, sealio, signed
from hefl.algorithm import accuracy as accuracy_of
from hefl.algorithm import (
    add_bias,
    check_margins,
    decision_function,
    label_term,
    roc_auc,
    standardize,
    step_warning,
)
from hefl.codec import PackingLayout
from hefl.errors import HeflError, InvalidArgument, ProtocolError
from hefl.identity import channel_credentials
from hefl.params import DEFAULT_PARAMETER_SET, check_public_context, get_parameter_set
from hefl.protocols.stats import StatsProtocol
from hefl.v1 import hefl_pb2 as pb
from hefl.v1 import hefl_pb2_grpc as pb_grpc
from parties.data import Dataset, load_csv
from parties.identity import PartyIdentity
from parties.keyholder import KeyHolder, associated_data
from parties.sealing import SealedBox, SealingKey
from parties.trust import Provisioned, Trust, Unverified

log = logging.getLogger("hefl.party")

# Deadlines for unary calls; streams that wait for other parties have none.
CALL_TIMEOUT_S = 120.0


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
    # Held-out rows to evaluate the model on; without it the party keeps no rows back.
    test: Path | None = None
    model_out: Path | None = None
    # Keep retrying to join while the job does not exist yet (parties started together).
    join_timeout_s: float = 0.0


@dataclass
class PartyResult:
    job_id: str = ""
    name: str = ""
    rows: int = 0
    test_rows: int = 0
    accuracy: float | None = None
    auc: float | None = None
    weights: list[float] = field(default_factory=list)
    # Margins of the delivered model on this party's own training rows (see MarginCheck).
    max_margin: float = 0.0
    margin_outside_fraction: float = 0.0
    timings_s: dict[str, float] = field(default_factory=dict)
    # Wall-clock times (time.time()) of milestones, to line parties up with each other:
    # "keygen" (key holder: key generation starts), "model" (the model is opened here).
    clock: dict[str, float] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class PartyFailed(HeflError):
    """The job failed on the coordinator's side; the message says why."""


def _call_error(err: grpc.RpcError) -> HeflError:
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
    dataset = load_csv(config.data, label=config.label)
    test = load_csv(config.test, label=config.label) if config.test else None
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
            options=chunks.CHANNEL_OPTIONS,
        )
    elif config.insecure:
        if not config.name:
            raise InvalidArgument("without a kit, name this party with --name")
        trust, name = Unverified(), config.name
        channel = grpc.insecure_channel(config.coordinator, options=chunks.CHANNEL_OPTIONS)
    else:
        raise InvalidArgument("give this party's startup kit (--kit) or --insecure")
    result = PartyResult(name=name, rows=dataset.rows, test_rows=test.rows if test else 0)
    try:
        Party(config, name, trust, dataset, test, pb_grpc.CoordinatorStub(channel), result).run()
    except grpc.RpcError as err:
        raise _call_error(err) from err
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
    ) -> None:
        self.config = config
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
            )
            tasks.start()
        else:
            info = self._join()
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

    def _create_job(self, private: ts.Context) -> pb.JobInfo:
        public = private.serialize(save_secret_key=False, save_galois_keys=False)
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
            context_bytes=public,
        )
        if made is not None:
            spec.charter.CopyFrom(made[0])
            spec.charter_signature = made[1]

        def requests() -> Iterator[pb.CreateJobRequest]:
            yield pb.CreateJobRequest(spec=spec)
            for piece in chunks.split_bytes(public):
                yield pb.CreateJobRequest(context_chunk=piece)

        self.result.bytes["context"] = len(public)
        return self.stub.CreateJob(requests(), timeout=CALL_TIMEOUT_S)

    def _options(self) -> pb.TrainingOptions:
        """The training options this key holder asks for (zero: chosen from the data)."""
        return pb.TrainingOptions(
            iterations=self.config.iterations,
            learning_rate=self.config.learning_rate,
            l2=self.config.l2,
            sigmoid_interval=self.config.sigmoid_interval,
            reveal_intermediate=self.config.reveal_intermediate,
        )

    def _join(self) -> pb.JobInfo:
        request = pb.JoinJobRequest(job_id=self.job_id, party=self.hello)
        deadline = time.monotonic() + self.config.join_timeout_s
        while True:
            try:
                info = self.stub.JoinJob(request, timeout=CALL_TIMEOUT_S)
                self.trust.check_offer(info, job_id=self.job_id)
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

    def _submit_stats(self, info: pb.JobInfo, context: ts.Context) -> None:
        protocol = StatsProtocol(
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
        self.stub.SubmitStats(
            share.to_chunks(job_id=info.job_id, party=self.name), timeout=CALL_TIMEOUT_S
        )

    def _wait(self, job_id: str, phases: set[int]) -> pb.JobStatus:
        request = pb.WatchJobRequest(job_id=job_id, party=self.name)
        for status in self.stub.WatchJob(request):
            if status.phase == pb.FAILED:
                raise PartyFailed(f"job {job_id} failed: {status.message}")
            if status.phase in phases:
                return status
        raise PartyFailed(f"job {job_id}: the coordinator closed the status stream")

    def _upload(self, job_id: str, context: ts.Context, status: pb.JobStatus) -> None:
        layout = PackingLayout.assign(
            slots=status.layout.slots,
            party_rows=[(p.party, p.rows) for p in status.layout.parties],
        )
        mean = np.asarray(status.standardization.mean)
        std = np.asarray(status.standardization.std)
        self.sigmoid_interval = status.options.sigmoid_interval
        self._check_step(status)
        columns = add_bias(standardize(self.dataset.features, mean, std))
        label = ts.ckks_vector(context, label_term(columns, self.dataset.labels))
        encrypt_s = 0.0

        def upload_chunks() -> Iterator[pb.UploadChunk]:
            nonlocal encrypt_s
            seq, size = 0, 0
            pending: list[pb.EncryptedColumn] = []
            for block, column, vector in layout.pack(self.name, columns):
                tick = time.perf_counter()
                data = sealio.serialize(ts.ckks_vector(context, vector))
                encrypt_s += time.perf_counter() - tick
                if pending and size + len(data) > chunks.UPLOAD_CHUNK_BYTES:
                    yield pb.UploadChunk(job_id=job_id, party=self.name, seq=seq, columns=pending)
                    seq, pending, size = seq + 1, [], 0
                pending.append(pb.EncryptedColumn(block=block, feature=column, ciphertext=data))
                size += len(data)
            yield pb.UploadChunk(
                job_id=job_id,
                party=self.name,
                seq=seq,
                columns=pending,
                label_term=sealio.serialize(label),
                last=True,
            )

        tick = time.perf_counter()
        summary = self.stub.Upload(upload_chunks())
        total = time.perf_counter() - tick
        self.result.timings_s["encrypt"] = encrypt_s
        self.result.timings_s["upload"] = total - encrypt_s
        self.result.bytes["upload"] = summary.bytes_accepted

    def _receive_model(self, job_id: str) -> None:
        sealed = self.stub.GetModel(
            pb.GetModelRequest(job_id=job_id, party=self.name), timeout=CALL_TIMEOUT_S
        )
        if sealed.party != self.name:
            raise ProtocolError(f"the coordinator sent {sealed.party!r}'s model instead")
        self.trust.check_model(sealed)
        box = SealedBox(sealed.ephemeral_public_key, sealed.nonce, sealed.ciphertext)
        model = json.loads(
            self.sealing_key.open(box, associated=associated_data(job_id, self.name))
        )
        if model["features"] != list(self.dataset.feature_names):
            raise ProtocolError("the delivered model is for other features")
        self.result.clock["model"] = time.time()
        self.result.weights = model["weights"]
        self._check_margins(model)
        if self.config.model_out is not None:
            self.config.model_out.write_text(json.dumps(model, indent=1))
        if self.test is not None:
            self.result.accuracy, self.result.auc = evaluate(model, self.test)

    def _check_step(self, status: pb.JobStatus) -> None:
        """Warn when the job's step exceeds what the aggregate statistics call stable."""
        options = status.options
        warning = step_warning(
            options.learning_rate, status.standardization.curvature, options.sigmoid_interval
        )
        if warning:
            log.warning("%s", warning)

    def _check_margins(self, model: dict[str, Any]) -> None:
        """Warn when the model's margins on this party's rows left the sigmoid's safe range:
        only the parties can see that, on their own data."""
        features = standardize(
            self.dataset.features, np.asarray(model["mean"]), np.asarray(model["std"])
        )
        check = check_margins(np.asarray(model["weights"]), features, self.sigmoid_interval)
        self.result.max_margin = check.max_margin
        self.result.margin_outside_fraction = check.outside_fraction
        if check.risky:
            log.warning(
                "the model's margin reaches %.1f on this party's rows, more than twice the "
                "sigmoid interval %.0f (%.1f%% of rows outside it): retrain with a wider "
                "--sigmoid-interval or a smaller --learning-rate",
                check.max_margin,
                check.interval,
                100 * check.outside_fraction,
            )
        elif check.outside_fraction > 0:
            log.info(
                "%.1f%% of this party's rows have margins beyond the sigmoid interval %.0f "
                "(max %.1f): expected and safe, the fit keeps rising there",
                100 * check.outside_fraction,
                check.interval,
                check.max_margin,
            )


def evaluate(model: dict[str, Any], test: Dataset) -> tuple[float, float | None]:
    """Accuracy and ROC AUC (None when the held-out rows have one class) of a delivered model."""
    features = standardize(test.features, np.asarray(model["mean"]), np.asarray(model["std"]))
    scores = decision_function(np.asarray(model["weights"]), features)
    return accuracy_of(scores, test.labels), roc_auc(scores, test.labels)


class KeyHolderSession:
    """The key holder's task loop on its own thread: open the stream, answer, reconnect."""

    def __init__(
        self, stub: pb_grpc.CoordinatorStub, keyholder: KeyHolder, *, job_id: str, party: str
    ) -> None:
        self._stub = stub
        self._keyholder = keyholder
        self._party = party
        self.job_id = job_id
        self._stopped = threading.Event()
        self._call: Any = None
        # The latest task and its answer, by (task id, SHA-256 of the task): a task re-sent after
        # a broken stream is answered again without being applied twice, while a new task that
        # reuses an id (a restarted coordinator counts from 1 again) is a new task.
        self._answers: dict[tuple[int, bytes], bytes] = {}
        self._thread = threading.Thread(target=self._loop, name="key-holder", daemon=True)
        self.refresh_s = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._call is not None:
            self._call.cancel()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stopped.is_set():
            try:
                self._call = self._stub.KeyHolderTasks(
                    pb.KeyHolderTasksRequest(job_id=self.job_id, party=self._party)
                )
                self._serve(self._call)
            except grpc.RpcError as err:
                if self._stopped.is_set():
                    return
                log.warning("key holder stream broke (%s); reconnecting", err.code())  # type: ignore[attr-defined]
                time.sleep(0.5)

    def _serve(self, call: Iterator[pb.TaskChunk]) -> None:
        received: list[pb.TaskChunk] = []
        for chunk in call:
            received.append(chunk)
            if len(received) < chunk.count:
                continue
            header, payload = chunks.join_task_chunks(received)
            received = []
            key = (header.task_id, hashlib.sha256(payload).digest())
            answer = self._answers.get(key)
            if answer is None:
                answer = self._answer(payload)
                self._answers = {key: answer}  # only the latest can be re-asked
            self._stub.CompleteTask(
                chunks.task_chunks(
                    job_id=self.job_id, party=self._party, task_id=header.task_id, payload=answer
                ),
                timeout=CALL_TIMEOUT_S,
            )

    def _answer(self, payload: bytes) -> bytes:
        """The key holder's answer to one task; a refusal is answered too, and logged."""
        tick = time.perf_counter()
        task = pb.KeyHolderTask()
        try:
            task.ParseFromString(payload)
            result = self._keyholder.handle(task)
        except HeflError as err:
            log.error("key holder refused task %r: %s", task.WhichOneof("task"), err)
            result = pb.KeyHolderResult(error=str(err))
        except Exception as err:  # a malformed task must not end the session
            log.exception("key holder task %r failed", task.WhichOneof("task"))
            result = pb.KeyHolderResult(error=f"{type(err).__name__}: {err}")
        if task.WhichOneof("task") == "refresh":
            self.refresh_s += time.perf_counter() - tick
        return result.SerializeToString()
