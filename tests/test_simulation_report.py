"""The simulation's report: the ``--report`` JSON keeps the README's keys, the table its rows."""

from __future__ import annotations

import dataclasses
import json

from hefl.algorithm import Hyperparameters
from tools.report import (
    EncryptedResult,
    PeakMemory,
    PlaintextResult,
    SimulationReport,
    Timings,
    Traffic,
    format_report,
)
from tools.simulate import SimulationConfig

REPORT = SimulationReport(
    config=SimulationConfig(parties=3, trust="key-holder"),
    n_train=455,
    n_test=114,
    n_features=30,
    party_rows=(152, 152, 151),
    plaintext=PlaintextResult(accuracy=0.9825, auc=0.9957, fit_s=0.05),
    encrypted=EncryptedResult(
        accuracy=0.9737,
        auc=0.9950,
        iterations=15,
        iteration_s=0.40,
        party_accuracy=(0.97, 1.0, None),
        max_margin=17.9,
        margin_outside_fraction=0.013,
        hyperparameters=Hyperparameters(
            iterations=15, learning_rate=0.96, l2=0.0, sigmoid_interval=16.0
        ),
        curvature=13.3,
        weights=(0.1,) * 31,
    ),
    timings=Timings(
        total=12.8,
        job=8.9,
        keygen=0.07,
        encrypt=0.60,
        upload=0.08,
        load=0.3,
        train=6.02,
        gradient=2.79,
        refresh=2.90,
    ),
    traffic=Traffic(
        upload=40_900_000,
        key_holder_per_iteration=10_700_000,
        workers_per_iteration=17_300_000,
        context=3_228_139,
    ),
    peak_memory=PeakMemory(coordinator=368.0, worker=222.0, party=240.0, total=1726.0),
    workers=2,
    blocks=1,
)

# README, section "`hefl simulate`".
DOCUMENTED = {
    "parties": None,
    "n_train": None,
    "n_test": None,
    "n_features": None,
    "plaintext": {"accuracy", "auc"},
    "encrypted": {
        "accuracy",
        "auc",
        "iterations",
        "iteration_s",
        "party_accuracy",
        "hyperparameters",
        "curvature",
        "weights",
    },
    "timings_s": {
        "total",
        "job",
        "keygen",
        "encrypt",
        "upload",
        "load",
        "train",
        "gradient",
        "refresh",
    },
    "bytes": {
        "upload",
        "per_iteration",
        "key_holder_per_iteration",
        "workers_per_iteration",
        "context",
    },
    "peak_rss_mb": {"coordinator", "worker", "party"},
    "workers": None,
    "blocks": None,
}


def test_the_json_has_every_documented_key():
    written = json.loads(json.dumps(REPORT.to_json()))

    for key, nested in DOCUMENTED.items():
        assert key in written
        if nested is not None:
            assert nested <= set(written[key]), key
    assert written["bytes"]["per_iteration"] == 28_000_000
    assert written["encrypted"]["hyperparameters"]["learning_rate"] == 0.96
    assert written["config"]["workdir"] == "hefl-work"


def test_the_table_reads_as_the_quick_start_shows():
    table = format_report(REPORT).splitlines()

    assert table == [
        "trust mode                             key holder",
        "parties                                3 (iid), rows [152, 152, 151]",
        "train / test rows                      455 / 114, 30 features",
        "accuracy  encrypted | plaintext        0.9737 | 0.9825",
        "ROC AUC   encrypted | plaintext        0.9950 | 0.9957",
        "iterations                             15 (0.40 s each, 2 Ray workers, 1 blocks)",
        "time total                             12.8 s",
        "  key generation to models delivered   8.9 s",
        "  keygen / encrypt / upload            0.07 / 0.60 / 0.08 s",
        "  train (gradients + refresh)          6.02 s (2.79 + 2.90)",
        "bytes uploaded                         40.9 MB",
        "bytes per iteration                    28.0 MB (key holder 10.7 MB)",
        "peak RSS coordinator / worker / party  368 / 222 / 240 MB",
        "peak memory of the whole run           1726 MB",
    ]


def test_a_collective_run_names_its_mode_and_each_party_s_traffic():
    collective = dataclasses.replace(REPORT, config=SimulationConfig(parties=3))
    table = format_report(collective).splitlines()

    assert table[0] == "trust mode                             collective (n-of-n, no key holder)"
    assert table[-3] == (
        "bytes per iteration                    28.0 MB (parties 10.7 MB, 3.6 MB each)"
    )
