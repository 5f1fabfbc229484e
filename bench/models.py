"""``python -m bench.models``: the encrypted kernel's cost per block for every model, measured
back to back in one process on the same encrypted block (real TenSEAL, the coordinator's
:class:`coordinator.gradient.GradientKernel`), so that machine load hits every model alike.

It prints, per model, the time of one block's gradient sums (margins, polynomial, products,
and the per-column finish to the last level) and its ratio to binary logistic regression. The
refresh's cost is per refreshed column (one decryption and one fresh encryption each), so a
k-class model's refresh is k times the binary one's by construction; ``hefl bench --model``
measures whole iterations end to end.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import tenseal as ts

from coordinator.gradient import GradientKernel
from hefl.models import get_model
from hefl.params import DEFAULT_PARAMETER_SET, PARAMETER_SETS


def block_seconds(
    context: ts.Context,
    columns: list[object],
    name: str,
    classes: int,
    repeats: int,
    blocks: int,
) -> float:
    """Median seconds per block of the gradient sums over ``blocks`` copies of one block (the
    per-column finish amortized over them, as in a job) for the model ``name``."""
    model = get_model(name, classes=classes)
    form = model.kernel()
    slots = PARAMETER_SETS[DEFAULT_PARAMETER_SET].slots
    rng = np.random.default_rng(0)
    weights = rng.normal(size=model.outputs * len(columns)) * 0.1
    scaled = [
        GradientKernel.open(ts.ckks_vector(context, np.full(slots, form.weight_scale * w)))
        for w in weights
    ]
    kernel = GradientKernel(context)
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        kernel.gradient_sums(scaled, [columns] * blocks, form)
        times.append((time.perf_counter() - tick) / blocks)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    params = PARAMETER_SETS[DEFAULT_PARAMETER_SET]
    context = params.make_context()
    rng = np.random.default_rng(1)
    data = np.hstack([rng.normal(size=(params.slots, args.features)), np.ones((params.slots, 1))])
    columns = [
        GradientKernel.open(ts.ckks_vector(context, data[:, j])) for j in range(data.shape[1])
    ]
    cases = [("logistic", 0), ("linear", 0), ("poisson", 0), ("multiclass", 3), ("multiclass", 10)]
    # Interleaved rounds, so that drifting load hits every model alike.
    measured: dict[tuple[str, int], list[float]] = {case: [] for case in cases}
    for _ in range(args.rounds):
        for name, classes in cases:
            measured[(name, classes)].append(
                block_seconds(context, columns, name, classes, args.repeats, args.blocks)
            )
    base = statistics.median(measured[("logistic", 0)])
    print(
        f"{args.blocks} blocks of {params.slots} rows x {args.features} features + bias, "
        f"N={params.poly_modulus_degree}, median of {args.rounds} interleaved rounds"
    )
    print(f"{'model':<16}{'s per block':>12}{'x logistic':>12}{'refreshed columns':>19}")
    for (name, classes), values in measured.items():
        label = f"{name} k={classes}" if classes else name
        seconds = statistics.median(values)
        outputs = classes or 1
        print(
            f"{label:<16}{seconds:>12.3f}{seconds / base:>12.2f}{outputs * (args.features + 1):>19}"
        )


if __name__ == "__main__":
    main()
