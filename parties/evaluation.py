"""What a party can check on its own data, without any network: the delivered model's accuracy
and ROC AUC on its held-out rows, its margins on its training rows (only the parties can see
them), and whether the job's step size is stable for the published statistics."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from hefl.algorithm import (
    MarginCheck,
    check_margins,
    decision_function,
    roc_auc,
    standardize,
    step_warning,
)
from hefl.algorithm import accuracy as accuracy_of
from hefl.v1 import hefl_pb2 as pb
from parties.data import Dataset

log = logging.getLogger("hefl.party")


def evaluate(model: dict[str, Any], test: Dataset) -> tuple[float, float | None]:
    """Accuracy and ROC AUC (None when the held-out rows have one class) of a delivered model."""
    features = standardize(test.features, np.asarray(model["mean"]), np.asarray(model["std"]))
    scores = decision_function(np.asarray(model["weights"]), features)
    return accuracy_of(scores, test.labels), roc_auc(scores, test.labels)


def warn_about_step(status: pb.JobStatus) -> None:
    """Warn when the job's step exceeds what the aggregate statistics call stable."""
    options = status.options
    warning = step_warning(
        options.learning_rate, status.standardization.curvature, options.sigmoid_interval
    )
    if warning:
        log.warning("%s", warning)


def margins_on(model: dict[str, Any], dataset: Dataset, sigmoid_interval: float) -> MarginCheck:
    """The model's margins on this party's rows against the sigmoid's safe range; warns when
    they leave twice the interval."""
    features = standardize(dataset.features, np.asarray(model["mean"]), np.asarray(model["std"]))
    check = check_margins(np.asarray(model["weights"]), features, sigmoid_interval)
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
    return check
