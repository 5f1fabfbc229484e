"""Conversions between hefl's dataclasses and their protobuf messages, done once at the edge.

The protocols' messages (:mod:`hefl.protocols`) carry their own ``to_proto``/``from_proto``.
"""

from __future__ import annotations

from hefl.algorithm import Hyperparameters, choose_hyperparameters
from hefl.v1 import hefl_pb2 as pb


def hyperparameters_of(options: pb.TrainingOptions) -> Hyperparameters:
    """The optimizer settings carried by resolved (non-zero) training options."""
    return Hyperparameters(
        iterations=options.iterations,
        learning_rate=options.learning_rate,
        l2=options.l2,
        sigmoid_interval=options.sigmoid_interval,
        model=options.model or "logistic",
        classes=options.classes,
    )


def resolve_hyperparameters(
    options: pb.TrainingOptions, *, curvature: float, rows: int
) -> Hyperparameters:
    """A job's hyperparameters: what its options set, the rest chosen from the data's summary
    (:func:`hefl.algorithm.choose_hyperparameters`). The coordinator and every party that checks
    it derive them with this one function."""
    return choose_hyperparameters(
        curvature=curvature,
        iterations=options.iterations,
        learning_rate=options.learning_rate,
        l2=options.l2,
        sigmoid_interval=options.sigmoid_interval,
        model=options.model,
        classes=options.classes,
        rows=rows,
    )


def training_options(hyper: Hyperparameters, *, reveal_intermediate: bool) -> pb.TrainingOptions:
    return pb.TrainingOptions(
        iterations=hyper.iterations,
        learning_rate=hyper.learning_rate,
        l2=hyper.l2,
        sigmoid_interval=hyper.sigmoid_interval,
        reveal_intermediate=reveal_intermediate,
        model=hyper.model,
        classes=hyper.classes,
    )
