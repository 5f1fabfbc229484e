"""Simulate hospitals on one machine: a coordinator and N parties as separate OS processes.

The simulation is the only place that sees every row (it has to deal them out); the processes
it starts see exactly what they would in a real deployment and talk real gRPC on loopback.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from hefl import chunks, messages
from hefl.algorithm import accuracy, add_bias, roc_auc
from hefl.errors import HeflError
from hefl.identity import TlsFiles, channel_credentials
from hefl.models import Model, get_model
from hefl.params import DEFAULT_PARAMETER_SET
from hefl.v1 import hefl_pb2 as pb
from hefl.v1 import hefl_pb2_grpc as pb_grpc
from parties.client import PartyResult
from parties.data import Dataset, infer_model, load_csv_raw, write_csv
from parties.evaluation import evaluate, evaluate_model
from tools.datasets import builtin_dataset, synthetic_dataset
from tools.memory import MemorySampler
from tools.provision import provision, remove_project
from tools.report import (
    EncryptedResult,
    PlaintextResult,
    SimulationReport,
    Timings,
    Traffic,
)
from tools.splits import split_rows

log = logging.getLogger("hefl.simulate")

PROCESS_TIMEOUT_S = 3600.0
REPORT_TIMEOUT_S = 30.0
POLL_S = 0.1
STOP_GRACE_S = 30.0


@dataclass(frozen=True)
class SimulationConfig:
    parties: int = 3
    dataset: str | None = "breast-cancer"
    data: Path | None = None
    label: str = "label"
    synthetic: str | None = None  # "ROWSxCOLS"
    split: str = "iid"
    alpha: float = 0.5
    seed: int = 0
    test_size: float = 0.2
    iterations: int = 0
    learning_rate: float = 0.0
    l2: float = 0.0
    sigmoid_interval: float = 0.0
    reveal_intermediate: bool = False
    # The model ("" infers it from the label, as a party does) and its classes (multiclass).
    model: str = ""
    classes: int = 0
    parameter_set: str = DEFAULT_PARAMETER_SET
    workdir: Path = Path("hefl-work")
    ray_address: str | None = None
    workers: int = 0
    ray_num_cpus: int | None = None
    report: Path | None = None
    # Plaintext gRPC without kits (to measure what TLS and signatures cost); default: a
    # throwaway provisioned project, mutual TLS, signed charter, statistics and models.
    insecure: bool = False
    # "collective": n-of-n keys among the parties, no key holder (needs the kits);
    # "key-holder": the first party holds the secret key.
    trust: str = "collective"

    def __post_init__(self) -> None:
        if self.trust not in ("collective", "key-holder"):
            raise ValueError(f"trust mode {self.trust!r}: collective or key-holder")
        if self.trust == "collective" and self.insecure:
            raise ValueError(
                "collective mode needs the project's kits: --trust key-holder with --insecure"
            )
        if self.trust == "collective" and self.reveal_intermediate:
            raise ValueError("intermediate models are a key-holder option: --trust key-holder")


class SimulationFailed(HeflError):
    """A process of the simulation exited with an error; its log is named."""


@dataclass(frozen=True)
class Role:
    """One process of the simulation, under the name a failure report gives it."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def failure(self, code: int, what: str = "exited") -> SimulationFailed:
        """The error that says this process ended (``code``), with the end of its log."""
        if code < 0:  # Popen's way of saying a signal ended it
            what = f"{what} on {signal.Signals(-code).name}"
        return SimulationFailed(
            f"{self.name} {what} with code {code}; see {self.log}:\n{_tail(self.log)}"
        )


def wait_for_parties(parties: list[Role], coordinator: Role, *, timeout_s: float) -> None:
    """Wait until every party has exited successfully, watching all of them at once.

    Any party that fails, or a coordinator that exits while parties still run, fails the
    simulation at once: the others would otherwise wait for it until their deadlines.

    Raises:
        SimulationFailed: A process failed (named, with its last log lines), or the parties
            did not finish within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    running = list(parties)
    while running:
        for role in running:
            code = role.process.poll()
            if code is not None and code != 0:
                raise role.failure(code)
        running = [role for role in running if role.process.poll() is None]
        code = coordinator.process.poll()
        if running and code is not None:
            raise coordinator.failure(code, "exited before the parties finished")
        if time.monotonic() > deadline:
            names = ", ".join(role.name for role in running)
            raise SimulationFailed(f"{names} did not finish within {timeout_s:.0f} s")
        time.sleep(POLL_S)


@dataclass(frozen=True)
class PartyFiles:
    """Where one simulated party's inputs, log and outputs are."""

    workdir: Path
    name: str

    @property
    def train(self) -> Path:
        return self.workdir / "data" / f"{self.name}.csv"

    @property
    def test(self) -> Path:
        return self.workdir / "data" / f"{self.name}-test.csv"

    @property
    def log(self) -> Path:
        return self.workdir / "logs" / f"{self.name}.log"

    @property
    def model(self) -> Path:
        return self.workdir / f"{self.name}-model.json"

    @property
    def result_path(self) -> Path:
        return self.workdir / f"{self.name}-result.json"

    def result(self) -> PartyResult:
        return PartyResult(**json.loads(self.result_path.read_text()))


def load_dataset(config: SimulationConfig) -> Dataset:
    if config.data is not None:
        raw = load_csv_raw(config.data, label=config.label)
        return raw.for_model(model_of(config, raw))
    if config.synthetic:
        rows, cols = (int(v) for v in config.synthetic.lower().split("x"))
        return synthetic_dataset(rows, cols, seed=config.seed, model=config.model)
    return builtin_dataset(config.dataset or "breast-cancer", model=config.model)


def model_of(config: SimulationConfig, dataset: Dataset) -> Model:
    """The simulation's model: ``config.model`` or the one the labels call for (logged)."""
    raw = dataset.raw_labels or tuple(repr(float(v)).removesuffix(".0") for v in dataset.labels)
    if not config.model:
        return infer_model(raw, column=dataset.label_name)
    if config.model == "multiclass" and not config.classes:
        return get_model("multiclass", classes=int(max(float(v) for v in raw)) + 1)
    return get_model(config.model, classes=config.classes)


@dataclass(frozen=True)
class Partition:
    train: list[Dataset]
    test: Dataset
    train_union: Dataset


def partition(dataset: Dataset, config: SimulationConfig) -> Partition:
    """Stratified train/test split (fixed by the seed), then training rows dealt to parties."""
    from sklearn.model_selection import train_test_split

    index = np.arange(dataset.rows)
    classified = model_of(config, dataset).name in ("logistic", "multiclass")
    train_idx, test_idx = train_test_split(
        index,
        test_size=config.test_size,
        stratify=dataset.labels if classified else None,
        random_state=config.seed,
    )
    train_idx = np.sort(train_idx)
    shares = split_rows(
        dataset.labels[train_idx],
        parties=config.parties,
        kind=config.split,
        seed=config.seed,
        alpha=config.alpha,
    )

    def subset(rows: np.ndarray) -> Dataset:
        return Dataset(
            dataset.features[rows], dataset.labels[rows], dataset.feature_names, dataset.label_name
        )

    return Partition(
        train=[subset(train_idx[s]) for s in shares],
        test=subset(np.sort(test_idx)),
        train_union=subset(train_idx),
    )


def plaintext_baseline(
    train: Dataset, test: Dataset, model: Model | None = None
) -> PlaintextResult:
    """sklearn on standardized features, judged by the model's own metrics: for logistic and
    multiclass ``LogisticRegression()`` (C=1, lbfgs; multinomial for classes), for linear
    ``Ridge()`` (alpha=1), for Poisson ``PoissonRegressor(alpha=0)`` (hefl's default has no
    penalty either; sklearn's default alpha=1 shrinks standardized coefficients noticeably)."""
    from sklearn.linear_model import LogisticRegression, PoissonRegressor, Ridge
    from sklearn.preprocessing import StandardScaler

    family = model or get_model("logistic")
    estimator: Any = {
        "linear": Ridge(),
        "poisson": PoissonRegressor(alpha=0.0, max_iter=1000),
    }.get(family.name, LogisticRegression())
    tick = time.perf_counter()
    scaler = StandardScaler().fit(train.features)
    estimator.fit(scaler.transform(train.features), train.labels)
    fit_s = time.perf_counter() - tick
    coef = np.atleast_2d(estimator.coef_)
    intercept = np.atleast_1d(estimator.intercept_)
    weights = np.hstack([coef, intercept[:, None]]).ravel()
    metrics = family.metrics(weights, add_bias(scaler.transform(test.features)), test.labels)
    if family.name == "logistic":
        scores = scaler.transform(test.features) @ coef[0] + intercept[0]
        return PlaintextResult(
            accuracy=accuracy(scores, test.labels),
            auc=roc_auc(scores, test.labels),
            fit_s=fit_s,
            metrics=metrics,
        )
    return PlaintextResult(
        accuracy=metrics.get("accuracy", float("nan")), auc=None, fit_s=fit_s, metrics=metrics
    )


def write_party_data(config: SimulationConfig, parties: list[PartyFiles]) -> tuple[Partition, str]:
    """Split the dataset and write each party's training and held-out CSVs; returns the
    partition and the label column's name."""
    dataset = load_dataset(config)
    parts = partition(dataset, config)
    test_shares = split_rows(
        parts.test.labels, parties=config.parties, kind="iid", seed=config.seed, min_rows=1
    )
    held_out = parts.test
    for files, train, test_rows in zip(parties, parts.train, test_shares, strict=True):
        write_csv(files.train, train)
        write_csv(
            files.test,
            Dataset(
                held_out.features[test_rows],
                held_out.labels[test_rows],
                held_out.feature_names,
                held_out.label_name,
            ),
        )
    return parts, dataset.label_name


def simulate(config: SimulationConfig) -> SimulationReport:
    """Run the whole simulation; returns the report (also written to ``config.report``).

    Raises:
        SimulationFailed: A process exited with an error, or the coordinator did not report.
    """
    workdir = config.workdir.resolve()
    for folder in (workdir / "data", workdir / "logs"):
        folder.mkdir(parents=True, exist_ok=True)
    coordinator_log = workdir / "logs" / "coordinator.log"
    parties = [PartyFiles(workdir, f"hospital-{i}") for i in range(config.parties)]
    job_id = f"sim-{os.getpid()}-{int(time.time())}"

    started = time.perf_counter()
    ready = workdir / "coordinator.addr"
    ready.unlink(missing_ok=True)
    # A throwaway project, so that the simulation runs the secure path: mutual TLS, signed
    # charter, statistics and models.
    project = workdir / "project"
    remove_project(project)
    if not config.insecure:
        provision(project, parties=[p.name for p in parties], coordinator_hosts=("127.0.0.1",))
    coordinator = Role(
        "coordinator",
        _spawn(_coordinator_args(config, project, workdir, ready), coordinator_log),
        coordinator_log,
    )
    roles: list[Role] = []
    memory = MemorySampler()
    memory.add("coordinator", coordinator.process.pid)
    memory.start()
    try:
        # The coordinator's Ray takes seconds to start: prepare the parties' data meanwhile.
        parts, label_name = write_party_data(config, parties)
        family = model_of(config, parts.train_union)
        family.check_labels(parts.train_union.labels, where="training rows", column=label_name)
        if family.outputs > 1 and not config.classes:
            # The key holder's rows may lack a class (label skew): it is told how many.
            config = replace(config, classes=family.classes)
        baseline = plaintext_baseline(parts.train_union, parts.test, family)
        address = _wait_for_file(ready, coordinator.process, coordinator_log)
        for i, files in enumerate(parties):
            key_holder = i == 0 and config.trust == "key-holder"
            args = _party_args(
                config, project, parties, files, address, job_id, label_name, key_holder=i == 0
            )
            name = f"{files.name} (key holder)" if key_holder else files.name
            roles.append(Role(name, _spawn(args, files.log), files.log))
            memory.add("party", roles[-1].process.pid)
        wait_for_parties(roles, coordinator, timeout_s=PROCESS_TIMEOUT_S)
        total_s = time.perf_counter() - started
        kit = None if config.insecure else project / parties[0].name
        job = fetch_job_report(address, job_id, kit=kit)
    finally:
        memory.stop()
        # The parties first: a party left running would reconnect to a stopping coordinator.
        _stop([role.process for role in roles])
        _stop([coordinator.process])

    results = [files.result() for files in parties]
    model = json.loads(parties[0].model.read_text())
    peaks = memory.peaks()
    # Workers of an external cluster are not our descendants: they report their own peak.
    peaks = replace(peaks, worker=peaks.worker or max(job.worker_peak_rss_mb, default=0.0))
    report = SimulationReport(
        config=config,
        n_train=parts.train_union.rows,
        n_test=parts.test.rows,
        n_features=len(parts.test.feature_names),
        party_rows=tuple(r.rows for r in results),
        plaintext=baseline,
        encrypted=_encrypted_result(job, results, model, parts.test),
        timings=_timings(job, results, total_s),
        traffic=Traffic(
            upload=job.upload_bytes,
            key_holder_per_iteration=job.key_holder_bytes_per_iteration,
            workers_per_iteration=job.worker_bytes_per_iteration,
            context=results[0].bytes.get("context", 0),
        ),
        peak_memory=peaks,
        workers=job.workers,
        blocks=job.blocks,
    )
    if config.report is not None:
        config.report.write_text(json.dumps(report.to_json(), indent=1))
    return report


def fetch_job_report(address: str, job_id: str, *, kit: Path | None) -> pb.JobReport:
    """The coordinator's report of the finished job, asked over its API by one of the job's
    parties (``kit``), as any party could.

    Raises:
        SimulationFailed: The coordinator did not answer with the report.
    """
    if kit is None:
        channel = grpc.insecure_channel(address, options=chunks.CHANNEL_OPTIONS)
    else:
        credentials = channel_credentials(TlsFiles.load(kit))
        channel = grpc.secure_channel(address, credentials, options=chunks.CHANNEL_OPTIONS)
    with channel:
        stub = pb_grpc.CoordinatorStub(channel)
        try:
            return stub.GetReport(pb.GetReportRequest(job_id=job_id), timeout=REPORT_TIMEOUT_S)
        except grpc.RpcError as err:
            status = f"{err.code().name}: {err.details()}"  # type: ignore[attr-defined]
            raise SimulationFailed(
                f"the coordinator did not report job {job_id}: {status}"
            ) from err


def _hefl_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tools.cli", *args]


def _coordinator_args(
    config: SimulationConfig, project: Path, workdir: Path, ready: Path
) -> list[str]:
    identity = ["--insecure"] if config.insecure else ["--kit", str(project / "coordinator")]
    args = ["coordinator", *identity, "--listen", "127.0.0.1:0"]
    args += ["--workdir", str(workdir)]
    args += ["--ready-file", str(ready)]
    if config.ray_address:
        args += ["--ray-address", config.ray_address]
    if config.workers:
        args += ["--workers", str(config.workers)]
    if config.ray_num_cpus:
        args += ["--ray-num-cpus", str(config.ray_num_cpus)]
    return _hefl_command(*args)


def _party_args(
    config: SimulationConfig,
    project: Path,
    parties: list[PartyFiles],
    files: PartyFiles,
    address: str,
    job_id: str,
    label_name: str,
    *,
    key_holder: bool,
) -> list[str]:
    args = ["party", "--coordinator", address, "--job", job_id]
    if config.insecure:
        args += ["--insecure", "--name", files.name]
    else:
        args += ["--kit", str(project / files.name), "--roster", ",".join(p.name for p in parties)]
    args += ["--data", str(files.train), "--label", label_name, "--test", str(files.test)]
    args += ["--model-out", str(files.model), "--result-out", str(files.result_path)]
    if config.model:
        args += ["--model", config.model]
    args += ["--trust", config.trust]  # every party: a joiner refuses a charter of another mode
    if key_holder:
        args += ["--key-holder", "--parameter-set", config.parameter_set, *_option_args(config)]
        if config.insecure:  # without a charter, the job only knows how many to wait for
            args += ["--parties", str(config.parties)]
    else:
        args += ["--join-timeout", "120"]
    return _hefl_command(*args)


def _option_args(config: SimulationConfig) -> list[str]:
    args = []
    for flag, value in (
        ("--classes", config.classes),
        ("--iterations", config.iterations),
        ("--learning-rate", config.learning_rate),
        ("--l2", config.l2),
        ("--sigmoid-interval", config.sigmoid_interval),
    ):
        if value:
            args += [flag, str(value)]
    if config.reveal_intermediate:
        args.append("--reveal-intermediate")
    return args


def _encrypted_result(
    job: pb.JobReport, results: list[PartyResult], model: dict[str, Any], test: Dataset
) -> EncryptedResult:
    hyper = messages.hyperparameters_of(job.options)
    metrics = evaluate_model(model, test, hyper.family)
    if hyper.model == "logistic":
        accuracy, auc = evaluate(model, test)
    else:
        accuracy, auc = metrics.get("accuracy", float("nan")), None
    return EncryptedResult(
        accuracy=accuracy,
        auc=auc,
        metrics=metrics,
        iterations=job.iterations,
        iteration_s=job.train_s / max(job.iterations, 1),
        party_accuracy=tuple(r.accuracy for r in results),
        max_margin=max(r.max_margin for r in results),
        margin_outside_fraction=max(r.margin_outside_fraction for r in results),
        hyperparameters=messages.hyperparameters_of(job.options),
        curvature=job.curvature,
        weights=tuple(model["weights"]),
        intermediate=tuple(tuple(w) for w in model.get("intermediate", [])),
    )


def _timings(job: pb.JobReport, results: list[PartyResult], total_s: float) -> Timings:
    key_holder = results[0]
    collective = job.trust == "collective"
    return Timings(
        total=total_s,
        job=max(r.clock["model"] for r in results)
        - min(r.clock["keygen"] for r in results if "keygen" in r.clock),
        keygen=job.keygen_s if collective else key_holder.timings_s.get("keygen", 0.0),
        encrypt=max(r.timings_s.get("encrypt", 0.0) for r in results),
        upload=max(r.timings_s.get("upload", 0.0) for r in results),
        load=job.load_s,
        train=job.train_s,
        gradient=job.gradient_s,
        refresh=job.refresh_s,
    )


def _spawn(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    handle = log_path.open("wb")
    try:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
    finally:
        handle.close()


def _wait_for_file(path: Path, process: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
        if process.poll() is not None:
            raise SimulationFailed(f"the coordinator exited early:\n{_tail(log_path)}")
        time.sleep(0.05)
    raise SimulationFailed(f"the coordinator did not start within 120 s:\n{_tail(log_path)}")


def _stop(processes: list[subprocess.Popen[bytes]], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to those still running, then SIGKILL to any still running after ``grace_s``."""
    running = [p for p in processes if p.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in running:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
