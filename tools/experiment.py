"""`hefl experiment CONFIG.toml`: a grid of simulations, one result row per run, and plots.

Every cell runs through the real ``hefl simulate`` machinery (processes, gRPC, Ray, TenSEAL).
The grid is datasets x parties x split x seeds x hyperparameters; the same config gives the
same splits, hyperparameters and therefore the same table (CKKS noise changes weights in the
fourth decimal, which in our runs never flipped a test prediction).

Config (every list is a grid axis; see ``experiments/example.toml``)::

    [experiment]
    name = "breast-cancer"
    output = "experiments/out"          # relative to the config file
    model = "logistic"                  # or linear, multiclass, poisson; omitted: inferred

    [grid]
    datasets = ["breast-cancer", "synthetic:2000x10", "csv:path/to/file.csv:label_column"]
    parties = [3, 5]
    splits = ["iid", "label-skew"]
    seeds = [0, 1, 2, 3, 4]
    alpha = [0.5]                        # Dirichlet alpha of the skewed splits

    [hyperparameters]                    # omitted or 0: chosen from the data
    iterations = [0]
    learning_rate = [0]
    l2 = [0]
    sigmoid_interval = [0]
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import time
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hefl.algorithm import Hyperparameters
from hefl.errors import InvalidArgument
from tools.report import SimulationReport
from tools.simulate import SimulationConfig, simulate

log = logging.getLogger("hefl.experiment")

HYPERPARAMETERS = ("iterations", "learning_rate", "l2", "sigmoid_interval")


@dataclass(frozen=True)
class Cell:
    dataset: str
    parties: int
    split: str
    seed: int
    alpha: float
    hyper: tuple[tuple[str, float], ...]
    model: str = ""

    @property
    def name(self) -> str:
        hyper = "-".join(f"{k[:2]}{v:g}" for k, v in self.hyper if v)
        parts = [
            _slug(self.dataset),
            f"p{self.parties}",
            self.split,
            f"a{self.alpha:g}",
            f"s{self.seed}",
        ]
        return "_".join(parts + ([hyper] if hyper else []))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in text)[:40]


def load_config(path: Path) -> dict[str, Any]:
    """Read and check an experiment TOML.

    Raises:
        InvalidArgument: Missing sections or values of the wrong type.
    """
    try:
        config = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise InvalidArgument(f"{path}: {err}") from err
    grid = config.get("grid")
    if not isinstance(grid, dict) or not grid.get("datasets"):
        raise InvalidArgument(f"{path}: needs a [grid] section with a datasets list")
    return config


def cells(config: dict[str, Any]) -> list[Cell]:
    grid = config["grid"]
    model = str(config.get("experiment", {}).get("model", ""))
    hyper = config.get("hyperparameters", {})
    axes = [[(name, float(v)) for v in _as_list(hyper.get(name, 0))] for name in HYPERPARAMETERS]
    out = []
    for dataset, parties, split, seed, alpha, *chosen in itertools.product(
        _as_list(grid["datasets"]),
        [int(p) for p in _as_list(grid.get("parties", 3))],
        _as_list(grid.get("splits", "iid")),
        [int(s) for s in _as_list(grid.get("seeds", 0))],
        [float(a) for a in _as_list(grid.get("alpha", 0.5))],
        *axes,
    ):
        out.append(Cell(str(dataset), parties, str(split), seed, alpha, tuple(chosen), model))
    return out


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def simulation_config(cell: Cell, workdir: Path, *, reveal: bool = False) -> SimulationConfig:
    hyper = dict(cell.hyper)
    source: dict[str, Any] = {"dataset": None}
    if cell.dataset.startswith("synthetic:"):
        source["synthetic"] = cell.dataset.split(":", 1)[1]
    elif cell.dataset.startswith("csv:"):
        _, path, label = cell.dataset.split(":", 2)
        source.update(data=Path(path), label=label)
    else:
        source["dataset"] = cell.dataset
    return SimulationConfig(
        parties=cell.parties,
        split=cell.split,
        alpha=cell.alpha,
        seed=cell.seed,
        iterations=int(hyper["iterations"]),
        learning_rate=hyper["learning_rate"],
        l2=hyper["l2"],
        sigmoid_interval=hyper["sigmoid_interval"],
        reveal_intermediate=reveal,
        # Revealed iterates (loss curves) are a key-holder option; otherwise collective mode.
        trust="key-holder" if reveal else "collective",
        workdir=workdir,
        model=cell.model,
        **source,
    )


def row_of(cell: Cell, report: SimulationReport) -> dict[str, Any]:
    enc, plain, timings = report.encrypted, report.plaintext, report.timings
    # The model's headline metric (accuracy, r2, deviance), encrypted and sklearn's.
    metric = next(iter(enc.metrics), "accuracy")
    value = enc.metrics.get(metric, enc.accuracy)
    baseline = plain.metrics.get(metric, plain.accuracy)
    return {
        "model": enc.hyperparameters.model,
        "metric": metric,
        "value": value,
        "plaintext_value": baseline,
        "gap": value - baseline,
        "relative_gap": (value - baseline) / abs(baseline) if baseline else float("nan"),
        "macro_f1": enc.metrics.get("macro_f1", float("nan")),
        "plaintext_macro_f1": plain.metrics.get("macro_f1", float("nan")),
        "min_class_auc": min(
            (v for k, v in enc.metrics.items() if k.startswith("auc_")), default=float("nan")
        ),
        "run": cell.name,
        "dataset": cell.dataset,
        "parties": cell.parties,
        "split": cell.split,
        "alpha": cell.alpha,
        "seed": cell.seed,
        **asdict(enc.hyperparameters),
        "n_train": report.n_train,
        "n_test": report.n_test,
        "accuracy": enc.accuracy,
        "auc": enc.auc,
        "plaintext_accuracy": plain.accuracy,
        "plaintext_auc": plain.auc,
        "accuracy_gap": enc.accuracy - plain.accuracy,
        "auc_gap": _gap(enc.auc, plain.auc),
        "finite": bool(np.all(np.isfinite(enc.weights))),
        "total_s": timings.total,
        "job_s": timings.job,
        "train_s": timings.train,
        "iteration_s": enc.iteration_s,
        "upload_bytes": report.traffic.upload,
        "bytes_per_iteration": report.traffic.per_iteration,
    }


def _gap(encrypted: float | None, plaintext: float | None) -> float:
    """NaN when an AUC is undefined (held-out rows of a single class)."""
    if encrypted is None or plaintext is None:
        return float("nan")
    return encrypted - plaintext


def run_experiment(config_path: Path, *, progress: bool = True) -> list[dict[str, Any]]:
    """Run every cell; write ``results.csv``, ``results.jsonl`` and the plots as it goes."""
    from tqdm import tqdm

    config = load_config(config_path)
    settings = config.get("experiment", {})
    output = (config_path.parent / settings.get("output", "out")).resolve()
    output.mkdir(parents=True, exist_ok=True)
    # The key holder then unmasks every iterate and seals them with the model for the parties.
    reveal = bool(settings.get("reveal_intermediate", False))
    todo = cells(config)
    rows: list[dict[str, Any]] = []
    trained: list[tuple[Cell, Hyperparameters, tuple[tuple[float, ...], ...]]] = []
    jsonl = (output / "results.jsonl").open("w")
    bar = tqdm(todo, desc="experiment", unit="run", disable=not progress)
    for cell in bar:
        bar.set_postfix_str(cell.name)
        tick = time.perf_counter()
        report = simulate(simulation_config(cell, output / "runs" / cell.name, reveal=reveal))
        row = row_of(cell, report)
        rows.append(row)
        trained.append((cell, report.encrypted.hyperparameters, report.encrypted.intermediate))
        jsonl.write(json.dumps(row) + "\n")
        jsonl.flush()
        _write_csv(output / "results.csv", rows)
        log.info(
            "%s: %s %.4f vs %.4f in %.1f s",
            cell.name,
            row["metric"],
            row["value"],
            row["plaintext_value"],
            time.perf_counter() - tick,
        )
    jsonl.close()
    plot_accuracy(rows, output / "accuracy.png")
    plot_losses(trained, output / "loss.png")
    (output / "summary.txt").write_text(summarize(rows) + "\n")
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def summarize(rows: list[dict[str, Any]]) -> str:
    """Per (dataset, parties, split): mean and worst gaps to sklearn over the seeds."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["parties"], row["split"]), []).append(row)
    if all(r.get("model", "logistic") == "logistic" for r in rows):
        header = (
            f"{'dataset':<22}{'parties':>8}  {'split':<11}{'runs':>5}{'enc acc':>9}"
            f"{'plain acc':>10}{'mean gap':>10}{'worst gap':>10}{'AUC gap':>9}{'NaN':>5}"
        )
        lines = [header]
        for (dataset, parties, split), group in groups.items():
            gaps = [r["accuracy_gap"] for r in group]
            lines.append(
                f"{dataset[:21]:<22}{parties:>8}  {split:<11}{len(group):>5}"
                f"{np.mean([r['accuracy'] for r in group]):>9.4f}"
                f"{np.mean([r['plaintext_accuracy'] for r in group]):>10.4f}"
                f"{100 * np.mean(gaps):>+9.2f}p{100 * np.min(gaps):>+9.2f}p"
                f"{np.mean([r['auc_gap'] for r in group]):>+9.4f}"
                f"{sum(not r['finite'] for r in group):>5}"
            )
        return "\n".join(lines)
    header = (
        f"{'dataset':<22}{'model':<11}{'parties':>8}  {'split':<11}{'runs':>5}{'metric':>10}"
        f"{'hefl':>10}{'sklearn':>10}{'mean gap':>10}{'worst gap':>10}{'rel gap':>9}"
        f"{'macro-F1':>9}{'min AUC':>8}{'NaN':>5}"
    )
    lines = [header]
    for (dataset, parties, split), group in groups.items():
        gaps = [r["gap"] for r in group]
        metric = group[0]["metric"]
        # Worst: the lowest for scores (accuracy, r2), the highest for deviance.
        worst = max(gaps) if metric == "deviance" else min(gaps)
        lines.append(
            f"{dataset[:21]:<22}{group[0]['model']:<11}{parties:>8}  {split:<11}{len(group):>5}"
            f"{metric:>10}{np.mean([r['value'] for r in group]):>10.4f}"
            f"{np.mean([r['plaintext_value'] for r in group]):>10.4f}"
            f"{np.mean(gaps):>+10.4f}{worst:>+10.4f}"
            f"{100 * np.mean([r['relative_gap'] for r in group]):>+8.2f}%"
            f"{np.nanmean([r['macro_f1'] for r in group]) if metric == 'accuracy' else float('nan'):>9.4f}"
            f"{np.nanmean([r['min_class_auc'] for r in group]) if metric == 'accuracy' else float('nan'):>8.4f}"
            f"{sum(not r['finite'] for r in group):>5}"
        )
    return "\n".join(lines)


def plot_accuracy(rows: list[dict[str, Any]], path: Path) -> None:
    """Encrypted vs plaintext accuracy, one point per run, coloured by dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    datasets = sorted({r["dataset"] for r in rows})
    markers = {"iid": "o", "label-skew": "^", "size-skew": "s"}
    for i, dataset in enumerate(datasets):
        for split, marker in markers.items():
            picked = [r for r in rows if r["dataset"] == dataset and r["split"] == split]
            if picked:
                ax.scatter(
                    [r.get("plaintext_value", r["plaintext_accuracy"]) for r in picked],
                    [r.get("value", r["accuracy"]) for r in picked],
                    marker=marker,
                    color=f"C{i}",
                    alpha=0.7,
                    label=f"{dataset} {split}",
                )
    values = [
        v
        for r in rows
        for v in (r.get("value", r["accuracy"]), r.get("plaintext_value", r["plaintext_accuracy"]))
    ]
    low, high = min(values) - 0.01, max(values) + 0.01
    ax.plot([low, high], [low, high], "k--", linewidth=1, label="encrypted = plaintext")
    metric = rows[0].get("metric", "accuracy")
    ax.set_xlabel(f"plaintext {metric} (sklearn)")
    ax.set_ylabel(f"encrypted {metric} (hefl)")
    ax.set_title("hefl vs plaintext, one point per run")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_losses(
    trained: list[tuple[Cell, Hyperparameters, tuple[tuple[float, ...], ...]]], path: Path
) -> None:
    """Training loss per iteration of hefl's algorithm, from its plaintext replica, for every
    dataset and seed with the hyperparameters the job chose, and of the encrypted run's own
    iterates when the key holder revealed them to the parties."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hefl.algorithm import add_bias, standardize
    from hefl.codec import AggregateStats
    from hefl.models.replica import train_model_replica
    from tools.simulate import load_dataset, partition

    fig, ax = plt.subplots(figsize=(6, 4))
    seen: set[tuple[str, int]] = set()
    for cell, hyper, iterates in trained:
        config = simulation_config(cell, Path("."))
        train = partition(load_dataset(config), config).train_union
        stats = AggregateStats.of_rows(train.features)
        x = add_bias(standardize(train.features, stats.mean, stats.std))
        if iterates:
            ax.plot(
                range(1, len(iterates) + 1),
                [hyper.family.loss(np.asarray(w), x, train.labels) for w in iterates],
                color="C1",
                alpha=0.4,
                label="encrypted (revealed iterates)" if not seen else None,
            )
        if (cell.dataset, cell.seed) in seen:
            continue
        seen.add((cell.dataset, cell.seed))
        losses = train_model_replica(
            hyper.family,
            x,
            train.labels,
            iterations=hyper.iterations,
            learning_rate=hyper.learning_rate,
            l2=hyper.l2,
        ).losses
        ax.plot(
            range(1, len(losses) + 1),
            losses,
            color="C0",
            alpha=0.4,
            label="replica" if len(seen) == 1 else None,
        )
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"training loss ({trained[0][1].model})" if trained else "training loss")
    ax.set_yscale("symlog" if trained and trained[0][1].model == "poisson" else "log")
    ax.set_title("loss per iteration")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
