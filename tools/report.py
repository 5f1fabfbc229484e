"""What ``hefl simulate`` measured: a typed report, its ``--report`` JSON and its table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hefl.algorithm import Hyperparameters

if TYPE_CHECKING:
    from tools.simulate import SimulationConfig


@dataclass(frozen=True)
class PlaintextResult:
    """sklearn's ``LogisticRegression()`` on the union of the training rows."""

    accuracy: float
    auc: float | None
    fit_s: float
    # The model's own metrics (hefl.models.Model.metrics), the headline first.
    metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EncryptedResult:
    """The delivered model on the held-out rows, and how the job trained it."""

    accuracy: float
    auc: float | None
    iterations: int
    iteration_s: float  # the mean over iterations
    party_accuracy: tuple[float | None, ...]  # each party on its own held-out rows
    # Margins of the model on the parties' training rows, the worst party's.
    max_margin: float
    margin_outside_fraction: float
    hyperparameters: Hyperparameters
    curvature: float
    weights: tuple[float, ...]
    # The model after every iteration, when the key holder opted in to reveal them: sealed to
    # the parties with the model (the coordinator never sees them).
    intermediate: tuple[tuple[float, ...], ...] = ()
    # The model's own metrics on the held-out rows (hefl.models.Model.metrics).
    metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "party_accuracy": list(self.party_accuracy),
            "weights": list(self.weights),
            "intermediate": [list(w) for w in self.intermediate],
        }


@dataclass(frozen=True)
class Timings:
    """Seconds. ``total`` is the whole run; ``job`` key generation to the last model delivered
    (the rest prepares the data and starts and stops processes). ``keygen``, ``encrypt`` and
    ``upload`` are the slowest party's, the others the coordinator's."""

    total: float
    job: float
    keygen: float
    encrypt: float
    upload: float
    load: float
    train: float
    gradient: float
    refresh: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Traffic:
    """Bytes: all uploads, one training iteration's, and the key holder's public context."""

    upload: int
    key_holder_per_iteration: int
    workers_per_iteration: int
    context: int

    @property
    def per_iteration(self) -> int:
        return self.key_holder_per_iteration + self.workers_per_iteration

    def to_json(self) -> dict[str, Any]:
        return {
            "upload": self.upload,
            "per_iteration": self.per_iteration,
            "key_holder_per_iteration": self.key_holder_per_iteration,
            "workers_per_iteration": self.workers_per_iteration,
            "context": self.context,
        }


@dataclass(frozen=True)
class PeakMemory:
    """Peak resident memory in MB: the coordinator process, the largest Ray worker, the largest
    party, and every process of the run at once."""

    coordinator: float
    worker: float
    party: float
    total: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SimulationReport:
    """Everything one ``hefl simulate`` run measured, from every process's point of view."""

    config: SimulationConfig
    n_train: int
    n_test: int
    n_features: int
    party_rows: tuple[int, ...]
    plaintext: PlaintextResult
    encrypted: EncryptedResult
    timings: Timings
    traffic: Traffic
    peak_memory: PeakMemory
    workers: int
    blocks: int

    def to_json(self) -> dict[str, Any]:
        """The ``--report`` file: the keys the README documents under ``hefl simulate``."""
        return {
            "parties": self.config.parties,
            "split": self.config.split,
            "seed": self.config.seed,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "n_features": self.n_features,
            "party_rows": list(self.party_rows),
            "plaintext": self.plaintext.to_json(),
            "encrypted": self.encrypted.to_json(),
            "timings_s": self.timings.to_json(),
            "bytes": self.traffic.to_json(),
            "peak_rss_mb": self.peak_memory.to_json(),
            "workers": self.workers,
            "blocks": self.blocks,
            "config": {
                k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.config).items()
            },
        }


def format_report(report: SimulationReport) -> str:
    enc, plain, t = report.encrypted, report.plaintext, report.timings
    moved, peak = report.traffic, report.peak_memory
    collective = report.config.trust == "collective"
    rows = [
        ("trust mode", "collective (n-of-n, no key holder)" if collective else "key holder"),
        (
            "parties",
            f"{report.config.parties} ({report.config.split}), rows {list(report.party_rows)}",
        ),
        ("train / test rows", f"{report.n_train} / {report.n_test}, {report.n_features} features"),
        *_metric_rows(enc, plain),
        (
            "iterations",
            f"{enc.iterations} ({enc.iteration_s:.2f} s each, {report.workers} Ray workers, {report.blocks} blocks)",
        ),
        ("time total", f"{t.total:.1f} s"),
        ("  key generation to models delivered", f"{t.job:.1f} s"),
        ("  keygen / encrypt / upload", f"{t.keygen:.2f} / {t.encrypt:.2f} / {t.upload:.2f} s"),
        ("  train (gradients + refresh)", f"{t.train:.2f} s ({t.gradient:.2f} + {t.refresh:.2f})"),
        ("bytes uploaded", _mb(moved.upload)),
        (
            "bytes per iteration",
            f"{_mb(moved.per_iteration)} ("
            + (
                f"parties {_mb(moved.key_holder_per_iteration)}, "
                f"{_mb(moved.key_holder_per_iteration // max(report.config.parties, 1))} each"
                if collective
                else f"key holder {_mb(moved.key_holder_per_iteration)}"
            )
            + ")",
        ),
        (
            "peak RSS coordinator / worker / party",
            f"{peak.coordinator:.0f} / {peak.worker:.0f} / {peak.party:.0f} MB",
        ),
        ("peak memory of the whole run", f"{peak.total:.0f} MB"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _metric_rows(enc: EncryptedResult, plain: PlaintextResult) -> list[tuple[str, str]]:
    model = enc.hyperparameters.model
    if model == "logistic":
        return [
            ("accuracy  encrypted | plaintext", f"{enc.accuracy:.4f} | {plain.accuracy:.4f}"),
            ("ROC AUC   encrypted | plaintext", f"{enc.auc:.4f} | {plain.auc:.4f}"),
        ]
    rows = [
        (
            "model",
            model
            + (f" ({enc.hyperparameters.classes} classes)" if enc.hyperparameters.classes else ""),
        )
    ]
    for name, value in enc.metrics.items():
        if name.startswith("auc_"):
            continue
        rows.append(
            (
                f"{name:<9} encrypted | plaintext",
                f"{value:.4f} | {plain.metrics.get(name, float('nan')):.4f}",
            )
        )
    aucs = [k for k in enc.metrics if k.startswith("auc_")]
    if aucs:
        shown = " ".join(f"{enc.metrics[k]:.3f}" for k in aucs)
        rows.append(("per-class AUC encrypted", shown))
    return rows


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
