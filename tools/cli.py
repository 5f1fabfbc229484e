"""The ``hefl`` command: each role's command (``coordinator``, ``party``) and the tools
(``simulate``, ``bench``, ``experiment``).

Every option can also come from the environment as ``HEFL_<COMMAND>_<OPTION>``
(e.g. ``HEFL_COORDINATOR_LISTEN=0.0.0.0:50051``).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import click

from coordinator.cli import coordinator
from hefl.errors import HeflError
from hefl.models import model_names
from parties.cli import party, training_options
from tools.splits import SPLITS


def require_extra(extra: str) -> None:
    """Say which extra to install when a command's packages are missing (a party-only install
    has no Ray, scikit-learn or matplotlib)."""
    modules = {"coordinator": ["ray"], "tools": ["ray", "sklearn", "matplotlib", "psutil", "tqdm"]}
    missing = [m for m in modules[extra] if importlib.util.find_spec(m) is None]
    if missing:
        raise click.ClickException(
            f"this command needs {', '.join(missing)}: pip install 'hefl[{extra}]'"
        )


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _dataset_options(function):  # type: ignore[no-untyped-def]
    """Where the rows come from (simulate and bench)."""
    for option in reversed(
        [
            click.option(
                "--dataset",
                type=click.Choice(["breast-cancer", "wine", "digits", "iris", "diabetes"]),
                default="breast-cancer",
                help="wine, digits and iris keep their classes with --model multiclass; "
                "diabetes has a numeric target (--model linear)",
            ),
            click.option(
                "--data",
                type=click.Path(exists=True, dir_okay=False, path_type=Path),
                help="a CSV instead of a built-in dataset",
            ),
            click.option("--label", default="label", help="label column of --data"),
            click.option(
                "--synthetic",
                metavar="ROWSxCOLS",
                help="generated, fixed seed: make_classification (logistic, multiclass), "
                "a linear target (linear), log-linear counts (poisson)",
            ),
        ]
    ):
        function = option(function)
    return function


@click.group(context_settings={"auto_envvar_prefix": "HEFL", "show_default": True})
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def main(verbose: bool) -> None:
    """Federated generalized linear models (logistic, linear, multiclass, Poisson) on
    CKKS-encrypted data."""
    _logging(verbose)


@main.command()
@click.option("--parties", type=int, default=3, help="simulated hospitals")
@_dataset_options
@click.option("--split", type=click.Choice(SPLITS), default="iid")
@click.option("--alpha", type=float, default=0.5, help="Dirichlet alpha of skewed splits")
@click.option("--seed", type=int, default=0)
@training_options
@click.option(
    "--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("hefl-work")
)
@click.option("--ray-address", default=None, help="join this Ray cluster instead of a local one")
@click.option("--workers", type=int, default=0, help="Ray actors (0: one per CPU)")
@click.option(
    "--report", type=click.Path(dir_okay=False, path_type=Path), help="write the report JSON here"
)
@click.option(
    "--insecure",
    is_flag=True,
    help="plaintext gRPC, no identities or signatures (default: a throwaway project over TLS)",
)
@click.option(
    "--trust",
    type=click.Choice(["collective", "key-holder"]),
    default="collective",
    help="collective: n-of-n keys among the parties, nobody can decrypt alone; key-holder: "
    "the first party holds the secret key",
)
def simulate(**kwargs: object) -> None:
    """Simulate N hospitals on this machine: coordinator and parties as separate processes."""
    require_extra("tools")
    from tools.report import format_report
    from tools.simulate import SimulationConfig
    from tools.simulate import simulate as run

    if kwargs["data"] is not None or kwargs["synthetic"]:
        kwargs["dataset"] = None
    try:
        config = SimulationConfig(**kwargs)  # type: ignore[arg-type]
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    try:
        report = run(config)
    except HeflError as err:
        raise click.ClickException(str(err)) from err
    click.echo(format_report(report))
    if config.report:
        click.echo(f"report written to {config.report}")


@main.command()
@_dataset_options
@click.option("--parties", type=int, default=3)
@click.option("--workers", type=int, default=0, help="Ray actors (0: one per CPU)")
@click.option("--seed", type=int, default=0)
@click.option("--iterations", type=int, default=0, help="0: chosen from the data")
@click.option("--model", type=click.Choice(["", *model_names()]), default="", help="inferred: ''")
@click.option("--classes", type=int, default=0, help="multiclass: classes (0: from the labels)")
@click.option(
    "--tls-cost",
    type=int,
    default=0,
    help="also run hefl N times with and N times without TLS and signatures, alternating",
)
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
@click.option(
    "--trust",
    type=click.Choice(["both", "collective", "key-holder"]),
    default="both",
    help="hefl end to end in collective mode, key-holder mode, or both (same data and split)",
)
def bench(
    dataset: str,
    data: Path | None,
    label: str,
    synthetic: str | None,
    parties: int,
    workers: int,
    seed: int,
    iterations: int,
    model: str,
    classes: int,
    skip: tuple[str, ...],
    seed_style_rows: int,
    tls_cost: int,
    workdir: Path,
    ray_address: str | None,
    report: Path | None,
    trust: str,
) -> None:
    """Benchmark sklearn, hefl's plaintext replica, the seed approach and hefl end to end."""
    require_extra("tools")
    from bench.run import format_bench, run_bench
    from tools.simulate import SimulationConfig

    config = SimulationConfig(
        parties=parties,
        dataset=None if (data or synthetic) else dataset,
        data=data,
        label=label,
        synthetic=synthetic,
        seed=seed,
        iterations=iterations,
        model=model,
        classes=classes,
        workdir=workdir,
        ray_address=ray_address,
        workers=workers,
        report=report,
        trust="key-holder" if trust == "key-holder" else "collective",
    )
    try:
        result = run_bench(
            config,
            skip=set(skip),
            seed_style_rows=seed_style_rows,
            tls_cost_runs=tls_cost,
            trust=trust,
        )
    except HeflError as err:
        raise click.ClickException(str(err)) from err
    click.echo(format_bench(result))


@main.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--no-progress", is_flag=True, help="no progress bar")
def experiment(config: Path, no_progress: bool) -> None:
    """Run a grid of simulations from CONFIG.toml; write results and plots."""
    require_extra("tools")
    from tools.experiment import run_experiment, summarize

    try:
        rows = run_experiment(config, progress=not no_progress)
    except HeflError as err:
        raise click.ClickException(str(err)) from err
    click.echo(summarize(rows))


@main.command()
@click.argument("project", type=click.Path(file_okay=False, path_type=Path))
@click.option("--party", "parties", multiple=True, help="a party site to provision (repeatable)")
@click.option(
    "--coordinator-host",
    "hosts",
    multiple=True,
    default=("localhost", "127.0.0.1"),
    help="a DNS name or IP address parties dial the coordinator at (repeatable)",
)
@click.option("--renew", multiple=True, help="re-issue this site's certificate and keys")
@click.option("--name", "project_name", default="hefl", help="the project's name in certificates")
def provision(
    project: Path,
    parties: tuple[str, ...],
    hosts: tuple[str, ...],
    renew: tuple[str, ...],
    project_name: str,
) -> None:
    """Create or extend PROJECT: a root CA and one startup kit per site."""
    from tools.provision import provision as run

    try:
        sites = run(
            project,
            parties=parties,
            coordinator_hosts=hosts,
            renew=renew,
            project_name=project_name,
        )
    except HeflError as err:
        raise click.ClickException(str(err)) from err
    for site in sites:
        state = "new" if site.created else "kept"
        click.echo(
            f"{site.role:<12} {site.name:<24} {state:<5} sha256:{site.fingerprint[:16]}  {site.kit}"
        )
    click.echo(f"give each site its folder only; keep {project / 'ca'} offline")


main.add_command(coordinator)
main.add_command(party)

if __name__ == "__main__":
    main()
