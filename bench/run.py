"""`hefl bench`: one command, one machine, one split, four ways to train.

(a) sklearn ``LogisticRegression()`` in plaintext;
(b) hefl's own algorithm replayed in float64 (:func:`hefl.algorithm.train_replica`): the
    ceiling for accuracy and the floor for time;
(c) the starting-point approach (:mod:`bench.seed_style`): one CKKS vector per sample;
(d) hefl end to end: the ``hefl simulate`` machinery (processes, gRPC, Ray).

Ratios: (c)/(d) per pass over the data (one seed-style epoch vs one hefl iteration, both touch
every training row once) and (d)/(b) per iteration.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from hefl.algorithm import (
    add_bias,
    choose_hyperparameters,
    decision_function,
    roc_auc,
    standardize,
)
from hefl.codec import AggregateStats
from hefl.models.replica import train_model_replica
from tools.simulate import (
    SimulationConfig,
    load_dataset,
    model_of,
    partition,
    plaintext_baseline,
    simulate,
)

log = logging.getLogger("hefl.bench")

# The seed-style approach costs ~0.15 s per row and epoch: beyond this many rows it runs on a
# prefix and the epoch time is extrapolated linearly (reported as such).
SEED_STYLE_MAX_ROWS = 1000


def machine() -> dict[str, Any]:
    import os

    import psutil

    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


def run_bench(
    config: SimulationConfig,
    *,
    skip: set[str],
    seed_style_rows: int = SEED_STYLE_MAX_ROWS,
    tls_cost_runs: int = 0,
    trust: str = "both",
) -> dict[str, Any]:
    """Run (a)-(d) on the same data and split; returns the report (also written if asked).

    Args:
        config: Data, split, parties and Ray settings shared by every way.
        skip: Ways not to run: ``seed_style`` and/or ``hefl``.
        seed_style_rows: Train (c) on at most this many rows and extrapolate its epoch time.
        tls_cost_runs: Also run (d) this many more times with and as often without TLS and
            signatures (``--insecure``), alternating, to measure what they cost.
        trust: "both": (d) in collective mode and (d') in key-holder mode; else (d) in
            ``config.trust`` only.
    """
    dataset = load_dataset(config)
    parts = partition(dataset, config)
    train, test = parts.train_union, parts.test
    report: dict[str, Any] = {
        "machine": machine(),
        "rows": train.rows,
        "features": dataset.features.shape[1],
    }

    family = model_of(config, train)
    if family.outputs > 1 and not config.classes:
        config = replace(config, classes=family.classes)
    report["model"] = family.name
    report["classes"] = family.classes
    report["sklearn"] = plaintext_baseline(train, test, family).to_json()

    stats = AggregateStats.of_rows(train.features)
    x_train = add_bias(standardize(train.features, stats.mean, stats.std))
    x_test = standardize(test.features, stats.mean, stats.std)
    hyper = choose_hyperparameters(
        curvature=stats.curvature,
        iterations=config.iterations,
        learning_rate=config.learning_rate,
        l2=config.l2,
        sigmoid_interval=config.sigmoid_interval,
        model=family.name,
        classes=family.classes,
        rows=train.rows,
    )
    tick = time.perf_counter()
    replica = train_model_replica(
        hyper.family,
        x_train,
        train.labels,
        iterations=hyper.iterations,
        learning_rate=hyper.learning_rate,
        l2=hyper.l2,
    )
    replica_s = time.perf_counter() - tick
    metrics = hyper.family.metrics(replica.weights, add_bias(x_test), test.labels)
    auc = None
    if family.name == "logistic":
        auc = roc_auc(decision_function(replica.weights, x_test), test.labels)
    report["replica"] = {
        "accuracy": metrics.get("accuracy"),
        "auc": auc,
        "metrics": metrics,
        "iteration_s": replica_s / hyper.iterations,
        "iterations": hyper.iterations,
        "max_margin": replica.max_margin,
    }

    if family.name != "logistic":
        skip = skip | {"seed_style"}  # the starting-point approach trains logistic models only
    if "seed_style" not in skip:
        from bench.seed_style import run_seed_style

        rows = min(train.rows, seed_style_rows)
        seed = run_seed_style(
            train.features,
            train.labels,
            test.features,
            test.labels,
            max_rows=rows,
            seed=config.seed,
        )
        report["seed_style"] = {
            "epoch_s": seed.epoch_s * train.rows / rows,
            "measured_rows": rows,
            "extrapolated": rows < train.rows,
            "encrypt_s": seed.encrypt_s,
            "accuracy": seed.accuracy,
            "auc": seed.auc,
        }

    if "hefl" not in skip:
        # (d) in the configured trust mode (collective by default), and (d') in key-holder mode
        # on the same data, split and machine when both are asked for.
        modes = {"hefl": config.trust}
        if trust == "both":
            modes = {"hefl": "collective", "hefl_key_holder": "key-holder"}
        for key, mode in modes.items():
            sim = simulate(replace(config, trust=mode, report=None))
            report[key] = {
                "trust": mode,
                "total_s": sim.timings.total,
                "job_s": sim.timings.job,
                "train_s": sim.timings.train,
                "keygen_s": sim.timings.keygen,
                "iteration_s": sim.encrypted.iteration_s,
                "iterations": sim.encrypted.iterations,
                "accuracy": sim.encrypted.accuracy,
                "auc": sim.encrypted.auc,
                "metrics": sim.encrypted.metrics,
                "timings_s": sim.timings.to_json(),
                "bytes": sim.traffic.to_json(),
                "party_bytes_per_iteration": sim.traffic.key_holder_per_iteration
                // (config.parties if mode == "collective" else 1),
                "peak_rss_mb": sim.peak_memory.to_json(),
                "workers": sim.workers,
                "blocks": sim.blocks,
            }
        if "seed_style" in report:
            report["ratios"] = {
                "seed_style_epoch_over_hefl_iteration": report["seed_style"]["epoch_s"]
                / report["hefl"]["iteration_s"],
            }
        report.setdefault("ratios", {})["hefl_iteration_over_replica_iteration"] = report["hefl"][
            "iteration_s"
        ] / max(report["replica"]["iteration_s"], 1e-9)
    if tls_cost_runs:
        report["tls_cost"] = tls_cost(config, tls_cost_runs)
    if config.report is not None:
        Path(config.report).write_text(json.dumps(report, indent=1))
    return report


def tls_cost(config: SimulationConfig, runs: int) -> dict[str, Any]:
    """(d) with mutual TLS and signatures against (d) ``--insecure``, alternating so that the
    machine's drift hits both alike; key generation to models delivered, and per iteration."""
    measured: dict[str, dict[str, list[float]]] = {
        "secure": {"job_s": [], "iteration_s": []},
        "insecure": {"job_s": [], "iteration_s": []},
    }
    for _ in range(runs):
        for mode in ("secure", "insecure"):
            # --insecure has no kits, hence no collective mode: both runs in key-holder mode.
            sim = simulate(
                replace(config, insecure=mode == "insecure", trust="key-holder", report=None)
            )
            measured[mode]["job_s"].append(sim.timings.job)
            measured[mode]["iteration_s"].append(sim.encrypted.iteration_s)
    mean = {m: {k: sum(v) / len(v) for k, v in d.items()} for m, d in measured.items()}
    return {
        "runs": runs,
        **measured,
        "mean": mean,
        "job_overhead": mean["secure"]["job_s"] / mean["insecure"]["job_s"] - 1.0,
    }


def format_bench(report: dict[str, Any]) -> str:
    """A side-by-side table of the four ways, with the ratios."""

    def row(
        name: str,
        wall: float | None,
        per: str,
        acc: float | None,
        auc: float | None,
        moved: str = "-",
        rss: str = "-",
    ) -> str:
        wall_s = "-" if wall is None else f"{wall:.2f} s"
        acc_s = "-" if acc is None else f"{acc:.4f}"
        auc_s = "-" if auc is None else f"{auc:.4f}"
        return f"{name:<26}{wall_s:>11}  {per:<30}{acc_s:>8}{auc_s:>8}  {moved:<24}{rss}"

    m = report["machine"]
    lines = [
        f"model {report.get('model', 'logistic')}"
        + (f" ({report['classes']} classes)" if report.get("classes") else "")
        + f"; {report['rows']} training rows x {report['features']} features; "
        f"machine: {m['cpus']} CPUs, {m['memory_gb']} GB, {m['processor']}",
        f"{'':<26}{'wall':>11}  {'per iteration/epoch':<30}{'acc':>8}{'AUC':>8}  "
        f"{'bytes moved':<24}peak RSS",
    ]
    sk = report["sklearn"]
    lines.append(row("(a) sklearn plaintext", sk["fit_s"], "-", sk["accuracy"], sk["auc"]))
    rep = report["replica"]
    lines.append(
        row(
            "(b) hefl replica (numpy)",
            rep["iteration_s"] * rep["iterations"],
            f"{rep['iteration_s'] * 1e3:.3f} ms/it",
            rep["accuracy"],
            rep["auc"],
        )
    )
    if "seed_style" in report:
        seed = report["seed_style"]
        note = " (extrapolated)" if seed["extrapolated"] else ""
        lines.append(
            row(
                "(c) seed style (1 epoch)",
                seed["epoch_s"],
                f"{seed['epoch_s']:.1f} s/epoch{note}",
                seed["accuracy"],
                seed["auc"],
            )
        )
    for key, label in (("hefl", "(d)"), ("hefl_key_holder", "(d')")):
        if key not in report:
            continue
        h = report[key]
        moved = (
            f"up {h['bytes']['upload'] / 1e6:.0f} MB, {h['bytes']['per_iteration'] / 1e6:.0f} MB/it"
        )
        rss = "coord {coordinator:.0f} / worker {worker:.0f} / party {party:.0f} / all {total:.0f} MB".format(
            **h["peak_rss_mb"]
        )
        mode = h.get("trust", "key-holder")
        lines.append(
            row(
                f"{label} hefl {mode}",
                h["total_s"],
                f"{h['iteration_s']:.3f} s/it (train {h['train_s']:.1f} s)",
                h["accuracy"],
                h["auc"],
                moved,
                rss,
            )
        )
        per_party = h.get("party_bytes_per_iteration", 0) / 1e6
        lines.append(
            f"{label} {mode}: wall {h['total_s']:.1f} s = data preparation, processes up and "
            f"down, and key generation to models delivered {h['job_s']:.1f} s; key generation "
            f"{h.get('keygen_s', 0.0):.2f} s; "
            + (
                f"{per_party:.1f} MB per party per iteration"
                if mode == "collective"
                else f"key holder {per_party:.1f} MB per iteration"
            )
        )
    if "tls_cost" in report:
        cost = report["tls_cost"]
        secure, insecure = cost["mean"]["secure"], cost["mean"]["insecure"]
        lines.append(
            f"(e) mutual TLS and signatures, {cost['runs']} runs each way: key generation to "
            f"models {secure['job_s']:.2f} s vs {insecure['job_s']:.2f} s --insecure "
            f"({100 * cost['job_overhead']:+.1f} %), per iteration "
            f"{secure['iteration_s']:.3f} vs {insecure['iteration_s']:.3f} s"
        )
    for way in ("sklearn", "replica", "hefl"):
        metrics = report.get(way, {}).get("metrics") or {}
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if not k.startswith("auc_"))
        if shown and report.get("model") != "logistic":
            lines.append(f"{way} metrics: {shown}")
    for name, value in report.get("ratios", {}).items():
        lines.append(f"ratio {name.replace('_', ' ')}: {value:.1f}x")
    return "\n".join(lines)
