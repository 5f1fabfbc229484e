"""What a party can check on its own data, without any network: the delivered model's accuracy
and ROC AUC on its held-out rows, its margins on its training rows (only the parties can see
them), and whether the job's step size is stable for the published statistics."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from hefl.algorithm import (
    MarginCheck,
    add_bias,
    check_margins,
    decision_function,
    roc_auc,
    standardize,
    step_warning,
)
from hefl.algorithm import accuracy as accuracy_of
from hefl.models import Model
from hefl.v1 import hefl_pb2 as pb
from parties.data import Dataset

log = logging.getLogger("hefl.party")


def evaluate_model(model: dict[str, Any], test: Dataset, family: Model) -> dict[str, float]:
    """The family's held-out metrics of a delivered model (:meth:`hefl.models.Model.metrics`)."""
    features = standardize(test.features, np.asarray(model["mean"]), np.asarray(model["std"]))
    return family.metrics(np.asarray(model["weights"]), add_bias(features), test.labels)


def evaluate(model: dict[str, Any], test: Dataset) -> tuple[float, float | None]:
    """Accuracy and ROC AUC (None when the held-out rows have one class) of a delivered model."""
    features = standardize(test.features, np.asarray(model["mean"]), np.asarray(model["std"]))
    scores = decision_function(np.asarray(model["weights"]), features)
    return accuracy_of(scores, test.labels), roc_auc(scores, test.labels)


def warn_about_step(status: pb.JobStatus) -> None:
    """Warn when a logistic job's step exceeds what the aggregate statistics call stable."""
    options = status.options
    if options.model not in ("", "logistic", "multiclass"):
        return
    warning = step_warning(
        options.learning_rate, status.standardization.curvature, options.sigmoid_interval
    )
    if warning:
        log.warning("%s", warning)


def margins_on(model: dict[str, Any], dataset: Dataset, family: Model) -> MarginCheck:
    """The model's margins on this party's rows against its mean function's safe range; warns
    when they leave it (twice the interval for the sigmoid, which keeps rising beyond it)."""
    features = standardize(dataset.features, np.asarray(model["mean"]), np.asarray(model["std"]))
    weights = np.asarray(model["weights"])
    if family.name != "logistic":
        margins = family.margins(weights, add_bias(features)).ravel()
        warning = family.margin_warning(margins)
        if warning:
            log.warning("%s", warning)
        top = np.abs(margins)
        return MarginCheck(
            interval=family.interval,
            max_margin=float(top.max(initial=0.0)),
            outside_fraction=float(np.mean(top > family.interval)) if family.interval else 0.0,
        )
    sigmoid_interval = family.interval
    check = check_margins(weights, features, sigmoid_interval)
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
