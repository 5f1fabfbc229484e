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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hefl.algorithm import accuracy, roc_auc
from hefl.errors import HeflError
from hefl.params import DEFAULT_PARAMETER_SET
from parties.data import Dataset, load_csv, write_csv
from tools.datasets import builtin_dataset, synthetic_dataset
from tools.memory import MemorySampler
from tools.splits import split_rows

log = logging.getLogger("hefl.simulate")

PROCESS_TIMEOUT_S = 3600.0


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
    parameter_set: str = DEFAULT_PARAMETER_SET
    workdir: Path = Path("hefl-work")
    ray_address: str | None = None
    workers: int = 0
    ray_num_cpus: int | None = None
    report: Path | None = None


class SimulationFailed(HeflError):
    """A process of the simulation exited with an error; its log is named."""


def load_dataset(config: SimulationConfig) -> Dataset:
    if config.data is not None:
        return load_csv(config.data, label=config.label)
    if config.synthetic:
        rows, cols = (int(v) for v in config.synthetic.lower().split("x"))
        return synthetic_dataset(rows, cols, seed=config.seed)
    return builtin_dataset(config.dataset or "breast-cancer")


@dataclass(frozen=True)
class Partition:
    train: list[Dataset]
    test: Dataset
    train_union: Dataset


def partition(dataset: Dataset, config: SimulationConfig) -> Partition:
    """Stratified train/test split (fixed by the seed), then training rows dealt to parties."""
    from sklearn.model_selection import train_test_split

    index = np.arange(dataset.rows)
    train_idx, test_idx = train_test_split(
        index, test_size=config.test_size, stratify=dataset.labels, random_state=config.seed
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


def plaintext_baseline(train: Dataset, test: Dataset) -> dict[str, float | None]:
    """sklearn ``LogisticRegression()`` on standardized features (default C=1, lbfgs)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    tick = time.perf_counter()
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(train.features, train.labels)
    fit_s = time.perf_counter() - tick
    scores = model.decision_function(test.features)
    return {
        "accuracy": accuracy(scores, test.labels),
        "auc": roc_auc(scores, test.labels),
        "fit_s": fit_s,
    }


def write_party_data(
    config: SimulationConfig, data_dir: Path, names: list[str]
) -> tuple[Partition, str]:
    """Split the dataset and write each party's training and held-out CSVs; returns the
    partition and the label column's name."""
    dataset = load_dataset(config)
    parts = partition(dataset, config)
    test_shares = split_rows(
        parts.test.labels, parties=config.parties, kind="iid", seed=config.seed, min_rows=1
    )
    for i, name in enumerate(names):
        write_csv(data_dir / f"{name}.csv", parts.train[i])
        held_out = parts.test
        write_csv(
            data_dir / f"{name}-test.csv",
            Dataset(
                held_out.features[test_shares[i]],
                held_out.labels[test_shares[i]],
                held_out.feature_names,
                held_out.label_name,
            ),
        )
    return parts, dataset.label_name


def _hefl_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tools.cli", *args]


def simulate(config: SimulationConfig) -> dict[str, Any]:
    """Run the whole simulation; returns the report (also written to ``config.report``)."""
    workdir = config.workdir.resolve()
    data_dir = workdir / "data"
    logs = workdir / "logs"
    for folder in (data_dir, logs):
        folder.mkdir(parents=True, exist_ok=True)
    names = [f"hospital-{i}" for i in range(config.parties)]
    job_id = f"sim-{os.getpid()}-{int(time.time())}"

    started = time.perf_counter()
    ready = workdir / "coordinator.addr"
    ready.unlink(missing_ok=True)
    coordinator_args = [
        "coordinator",
        "--listen",
        "127.0.0.1:0",
        "--workdir",
        str(workdir),
        "--ready-file",
        str(ready),
    ]
    if config.ray_address:
        coordinator_args += ["--ray-address", config.ray_address]
    if config.workers:
        coordinator_args += ["--workers", str(config.workers)]
    if config.ray_num_cpus:
        coordinator_args += ["--ray-num-cpus", str(config.ray_num_cpus)]
    processes: list[tuple[str, subprocess.Popen[bytes]]] = []
    coordinator = _spawn(_hefl_command(*coordinator_args), logs / "coordinator.log")
    memory = MemorySampler()
    memory.add("coordinator", coordinator.pid)
    memory.start()
    try:
        # The coordinator's Ray takes seconds to start: prepare the parties' data meanwhile.
        parts, label_name = write_party_data(config, data_dir, names)
        baseline = plaintext_baseline(parts.train_union, parts.test)
        address = _wait_for_file(ready, coordinator, logs / "coordinator.log")
        for i, name in enumerate(names):
            args = [
                "party",
                "--coordinator",
                address,
                "--name",
                name,
                "--job",
                job_id,
                "--data",
                str(data_dir / f"{name}.csv"),
                "--label",
                label_name,
                "--test",
                str(data_dir / f"{name}-test.csv"),
                "--model-out",
                str(workdir / f"{name}-model.json"),
                "--result-out",
                str(workdir / f"{name}-result.json"),
            ]
            if i == 0:
                args += [
                    "--key-holder",
                    "--parties",
                    str(config.parties),
                    "--parameter-set",
                    config.parameter_set,
                ]
                args += _option_args(config)
            else:
                args += ["--join-timeout", "120"]
            processes.append((name, _spawn(_hefl_command(*args), logs / f"{name}.log")))
            memory.add("party", processes[-1][1].pid)
        for name, process in processes:
            code = process.wait(timeout=PROCESS_TIMEOUT_S)
            if code != 0:
                raise SimulationFailed(
                    f"{name} exited with code {code}; see {logs / f'{name}.log'}:\n"
                    + _tail(logs / f"{name}.log")
                )
        total_s = time.perf_counter() - started
    finally:
        memory.stop()
        for _, process in processes:
            if process.poll() is None:
                process.kill()
        _stop(coordinator)

    results = [json.loads((workdir / f"{name}-result.json").read_text()) for name in names]
    job_report = json.loads((workdir / "jobs" / job_id / "report.json").read_text())
    model = json.loads((workdir / f"{names[0]}-model.json").read_text())
    report = build_report(config, parts, baseline, results, job_report, model, total_s)
    report["peak_rss_mb"] = {
        **memory.peak_mb,
        # Workers of an external cluster are not our descendants: they report their own peak.
        "worker": memory.peak_mb["worker"] or report["peak_rss_mb"]["worker"],
    }
    if config.report is not None:
        config.report.write_text(json.dumps(report, indent=1))
    return report


def _option_args(config: SimulationConfig) -> list[str]:
    args = []
    for flag, value in (
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


def build_report(
    config: SimulationConfig,
    parts: Partition,
    baseline: dict[str, float | None],
    results: list[dict[str, Any]],
    job_report: dict[str, Any],
    model: dict[str, Any],
    total_s: float,
) -> dict[str, Any]:
    from parties.client import evaluate

    accuracy, auc = evaluate(model, parts.test)
    key_holder = results[0]
    timings = {
        "total": total_s,
        # The job proper, as the parties see it: key generation to the last model delivered
        # (the rest of "total" starts and stops processes and prepares the data).
        "job": max(r["clock"]["model"] for r in results) - key_holder["clock"]["keygen"],
        "keygen": key_holder["timings_s"].get("keygen", 0.0),
        "encrypt": max(r["timings_s"].get("encrypt", 0.0) for r in results),
        "upload": max(r["timings_s"].get("upload", 0.0) for r in results),
        "load": job_report["load_s"],
        "train": job_report["train_s"],
        "gradient": job_report["gradient_s"],
        "refresh": job_report["refresh_s"],
    }
    iterations = job_report["iterations"]
    return {
        "parties": config.parties,
        "split": config.split,
        "seed": config.seed,
        "n_train": parts.train_union.rows,
        "n_test": parts.test.rows,
        "n_features": len(parts.test.feature_names),
        "party_rows": [r["rows"] for r in results],
        "plaintext": baseline,
        "encrypted": {
            "accuracy": accuracy,
            "auc": auc,
            "iterations": iterations,
            "iteration_s": job_report["train_s"] / max(iterations, 1),
            "party_accuracy": [r["accuracy"] for r in results],
            "max_margin": max(r["max_margin"] for r in results),
            "margin_outside_fraction": max(r["margin_outside_fraction"] for r in results),
            "hyperparameters": job_report["hyperparameters"],
            "curvature": job_report["curvature"],
            "weights": model["weights"],
        },
        "timings_s": timings,
        "bytes": {
            "upload": job_report["upload_bytes"],
            "per_iteration": job_report["refresh_bytes_per_iteration"]
            + job_report["worker_bytes_per_iteration"],
            "key_holder_per_iteration": job_report["refresh_bytes_per_iteration"],
            "workers_per_iteration": job_report["worker_bytes_per_iteration"],
            "context": key_holder["bytes"].get("context", 0),
        },
        "peak_rss_mb": {"worker": max(job_report.get("worker_peak_rss_mb") or [0.0])},
        "workers": job_report["workers"],
        "blocks": job_report["blocks"],
        "intermediate_models": job_report.get("intermediate_models", []),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
    }


def format_report(report: dict[str, Any]) -> str:
    enc, plain, t = report["encrypted"], report["plaintext"], report["timings_s"]
    rows = [
        ("parties", f"{report['parties']} ({report['split']}), rows {report['party_rows']}"),
        (
            "train / test rows",
            f"{report['n_train']} / {report['n_test']}, {report['n_features']} features",
        ),
        ("accuracy  encrypted | plaintext", f"{enc['accuracy']:.4f} | {plain['accuracy']:.4f}"),
        ("ROC AUC   encrypted | plaintext", f"{enc['auc']:.4f} | {plain['auc']:.4f}"),
        (
            "iterations",
            f"{enc['iterations']} ({enc['iteration_s']:.2f} s each, {report['workers']} Ray workers, {report['blocks']} blocks)",
        ),
        ("time total", f"{t['total']:.1f} s"),
        ("  key generation to models delivered", f"{t['job']:.1f} s"),
        (
            "  keygen / encrypt / upload",
            f"{t['keygen']:.2f} / {t['encrypt']:.2f} / {t['upload']:.2f} s",
        ),
        (
            "  train (gradients + refresh)",
            f"{t['train']:.2f} s ({t['gradient']:.2f} + {t['refresh']:.2f})",
        ),
        ("bytes uploaded", _mb(report["bytes"]["upload"])),
        (
            "bytes per iteration",
            f"{_mb(report['bytes']['per_iteration'])} (key holder {_mb(report['bytes']['key_holder_per_iteration'])})",
        ),
        (
            "peak RSS coordinator / worker / party",
            "{coordinator:.0f} / {worker:.0f} / {party:.0f} MB".format(**report["peak_rss_mb"]),
        ),
        ("peak memory of the whole run", f"{report['peak_rss_mb'].get('total', 0.0):.0f} MB"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


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


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
