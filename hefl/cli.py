"""The ``hefl`` command line: simulate, coordinator, party, bench, experiment.

Every option can also come from the environment as ``HEFL_<COMMAND>_<OPTION>``
(e.g. ``HEFL_COORDINATOR_LISTEN=0.0.0.0:50051``).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from hefl.errors import HeflError
from hefl.params import DEFAULT_PARAMETER_SET, PARAMETER_SETS
from hefl.splits import SPLITS


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _training_options(function):  # type: ignore[no-untyped-def]
    for option in reversed(
        [
            click.option("--iterations", type=int, default=0, help="0: chosen from the data"),
            click.option(
                "--learning-rate", type=float, default=0.0, help="0: chosen from the data"
            ),
            click.option("--l2", type=float, default=0.0, help="0: chosen from the data"),
            click.option(
                "--sigmoid-interval", type=float, default=0.0, help="0: chosen from the data"
            ),
            click.option(
                "--reveal-intermediate",
                is_flag=True,
                help="decrypt every iterate for loss curves (the key holder then sees them)",
            ),
            click.option(
                "--parameter-set",
                type=click.Choice(sorted(PARAMETER_SETS)),
                default=DEFAULT_PARAMETER_SET,
                show_default=True,
            ),
        ]
    ):
        function = option(function)
    return function


def _dataset_options(function):  # type: ignore[no-untyped-def]
    """Where the rows come from (simulate and bench)."""
    for option in reversed(
        [
            click.option(
                "--dataset",
                type=click.Choice(["breast-cancer", "wine", "digits", "iris"]),
                default="breast-cancer",
            ),
            click.option(
                "--data",
                type=click.Path(exists=True, dir_okay=False, path_type=Path),
                help="a CSV instead of a built-in dataset",
            ),
            click.option("--label", default="label", help="label column of --data"),
            click.option(
                "--synthetic", metavar="ROWSxCOLS", help="sklearn make_classification, fixed seed"
            ),
        ]
    ):
        function = option(function)
    return function


@click.group(context_settings={"auto_envvar_prefix": "HEFL", "show_default": True})
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def main(verbose: bool) -> None:
    """Federated logistic regression on CKKS-encrypted data."""
    _logging(verbose)


@main.command()
@click.option("--parties", type=int, default=3, help="simulated hospitals")
@_dataset_options
@click.option("--split", type=click.Choice(SPLITS), default="iid")
@click.option("--alpha", type=float, default=0.5, help="Dirichlet alpha of skewed splits")
@click.option("--seed", type=int, default=0)
@_training_options
@click.option(
    "--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("hefl-work")
)
@click.option("--ray-address", default=None, help="join this Ray cluster instead of a local one")
@click.option("--workers", type=int, default=0, help="Ray actors (0: one per CPU)")
@click.option(
    "--report", type=click.Path(dir_okay=False, path_type=Path), help="write the report JSON here"
)
def simulate(**kwargs: object) -> None:
    """Simulate N hospitals on this machine: coordinator and parties as separate processes."""
    from hefl.simulate import SimulationConfig, format_report
    from hefl.simulate import simulate as run

    if kwargs["data"] is not None or kwargs["synthetic"]:
        kwargs["dataset"] = None
    config = SimulationConfig(**kwargs)  # type: ignore[arg-type]
    try:
        report = run(config)
    except HeflError as err:
        raise click.ClickException(str(err)) from err
    click.echo(format_report(report))
    if config.report:
        click.echo(f"report written to {config.report}")


@main.command()
@click.option("--listen", default="127.0.0.1:50051", help="HOST:PORT (port 0: any free port)")
@click.option(
    "--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("hefl-work")
)
@click.option(
    "--ray-address", default=None, help="e.g. auto or ray://host:10001; default: local Ray"
)
@click.option("--workers", type=int, default=0, help="Ray actors per job (0: one per CPU)")
@click.option(
    "--ray-num-cpus",
    type=click.IntRange(min=1),
    default=None,
    help="CPUs of a locally started Ray",
)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write HOST:PORT here once listening",
)
def coordinator(
    listen: str,
    workdir: Path,
    ray_address: str | None,
    workers: int,
    ray_num_cpus: int | None,
    ready_file: Path | None,
) -> None:
    """Run the (untrusted) coordinator until SIGTERM."""
    from coordinator.local_ray import LocalRayCluster

    # Without a cluster, start a private one first (before `import ray`, see LocalRayCluster):
    # it comes up in the background while parties register, encrypt and upload.
    local_ray = None if ray_address else LocalRayCluster(num_cpus=ray_num_cpus)
    from coordinator.server import CoordinatorConfig, serve

    config = CoordinatorConfig(
        listen=listen,
        workdir=workdir,
        ray_address=local_ray.address if local_ray else ray_address,
        workers=workers,
        ray_num_cpus=ray_num_cpus,
    )
    try:
        serve(
            config,
            ready_file=ready_file,
            ray_ready=local_ray.wait_until_up if local_ray is not None else None,
        )
    finally:
        if local_ray is not None:
            local_ray.stop()


@main.command()
@click.option("--coordinator", "coordinator_address", required=True, help="HOST:PORT")
@click.option("--name", required=True, help="this party's name in the job")
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--label", required=True, help="label column")
@click.option("--key-holder", is_flag=True, help="generate the keys and create the job")
@click.option("--job", default="", help="job id (key holder: choose it; others: join it)")
@click.option("--parties", type=int, default=1, help="key holder: parties the job waits for")
@_training_options
@click.option(
    "--test",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="held-out CSV to evaluate the delivered model on",
)
@click.option("--model-out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--result-out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--join-timeout", type=float, default=0.0, help="retry joining this long (s)")
def party(
    coordinator_address: str, result_out: Path | None, join_timeout: float, **kwargs: object
) -> None:
    """Run one data-owner party."""
    from parties.client import PartyConfig, run_party

    config = PartyConfig(coordinator=coordinator_address, join_timeout_s=join_timeout, **kwargs)  # type: ignore[arg-type]
    try:
        result = run_party(config)
    except HeflError as err:
        raise click.ClickException(str(err)) from err
    if result_out is not None:
        result_out.write_text(json.dumps(result.to_json(), indent=1))
    summary = f"party {result.name}: job {result.job_id} done"
    if result.accuracy is not None:
        summary += f", held-out accuracy {result.accuracy:.4f} on {result.test_rows} rows"
    click.echo(summary)


@main.command()
@_dataset_options
@click.option("--parties", type=int, default=3)
@click.option("--workers", type=int, default=0, help="Ray actors (0: one per CPU)")
@click.option("--seed", type=int, default=0)
@click.option("--iterations", type=int, default=0, help="0: chosen from the data")
@click.option("--skip", type=click.Choice(["seed_style", "hefl"]), multiple=True)
@click.option(
    "--seed-style-rows",
    type=int,
    default=1000,
    help="train the seed approach on at most this many rows, extrapolate the rest",
)
@click.option(
    "--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("hefl-bench")
)
@click.option("--ray-address", default=None)
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path))
def bench(
    dataset: str,
    data: Path | None,
    label: str,
    synthetic: str | None,
    parties: int,
    workers: int,
    seed: int,
    iterations: int,
    skip: tuple[str, ...],
    seed_style_rows: int,
    workdir: Path,
    ray_address: str | None,
    report: Path | None,
) -> None:
    """Benchmark sklearn, hefl's plaintext replica, the seed approach and hefl end to end."""
    from bench.run import format_bench, run_bench
    from hefl.simulate import SimulationConfig

    config = SimulationConfig(
        parties=parties,
        dataset=None if (data or synthetic) else dataset,
        data=data,
        label=label,
        synthetic=synthetic,
        seed=seed,
        iterations=iterations,
        workdir=workdir,
        ray_address=ray_address,
        workers=workers,
        report=report,
    )
    try:
        result = run_bench(config, skip=set(skip), seed_style_rows=seed_style_rows)
    except HeflError as err:
        raise click.ClickException(str(err)) from err
    click.echo(format_bench(result))


@main.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--no-progress", is_flag=True, help="no progress bar")
def experiment(config: Path, no_progress: bool) -> None:
    """Run a grid of simulations from CONFIG.toml; write results and plots."""
    from hefl.experiment import run_experiment, summarize

    try:
        rows = run_experiment(config, progress=not no_progress)
    except HeflError as err:
        raise click.ClickException(str(err)) from err
    click.echo(summarize(rows))


if __name__ == "__main__":
    main()
