"""A job of 300 features trains end to end: its statistics (12 ciphertexts, over 4 MiB per
party) no longer have to fit one message. `hefl simulate` as a user runs it: separate
processes, mutual TLS, real Ray, real TenSEAL (about 50 s on 2 cores)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from hefl.algorithm import add_bias, choose_hyperparameters, standardize, train_replica
from hefl.codec import AggregateStats, piece_sizes, stats_length
from tests.helpers import COLLECTIVE_BOUND
from tools.simulate import SimulationConfig, load_dataset, partition

pytestmark = pytest.mark.slow


def test_300_features_train_to_the_float64_replica(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    command = [sys.executable, "-m", "tools.cli", "simulate", "--synthetic", "2000x300",
               "--parties", "2", "--iterations", "2", "--workdir", str(tmp_path / "work"),
               "--report", str(report_path)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())

    assert len(piece_sizes(stats_length(300), 4096)) == 12
    assert report["n_features"] == 300 and report["encrypted"]["iterations"] == 2
    config = SimulationConfig(parties=2, dataset=None, synthetic="2000x300", iterations=2)
    train = partition(load_dataset(config), config).train_union
    stats = AggregateStats.of_rows(train.features)
    hyper = choose_hyperparameters(curvature=stats.curvature, iterations=2)
    assert report["encrypted"]["curvature"] == pytest.approx(stats.curvature, rel=1e-4)
    got, want = dict(report["encrypted"]["hyperparameters"]), asdict(hyper)
    assert (got.pop("model"), got.pop("classes")) == (want.pop("model"), want.pop("classes"))
    assert want == pytest.approx(got, rel=1e-4)
    features = add_bias(standardize(train.features, stats.mean, stats.std))
    replica = train_replica(features, train.labels, hyper)
    np.testing.assert_allclose(
        report["encrypted"]["weights"], replica.weights, atol=COLLECTIVE_BOUND
    )
