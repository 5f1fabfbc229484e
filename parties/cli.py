"""``hefl party``: run one data owner. Imports nothing of Ray or the tools."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from hefl.errors import HeflError
from hefl.models import model_names
from hefl.params import DEFAULT_PARAMETER_SET, PARAMETER_SETS


def training_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The job's training options, which the key holder sets (and ``hefl simulate`` passes on)."""
    for option in reversed(
        [
            click.option(
                "--model",
                type=click.Choice(["", *model_names()]),
                default="",
                help="the model to train (default: inferred from the label column, logged): "
                "logistic (two values), multiclass (integers 0..k-1), poisson (other counts), "
                "linear (other numbers)",
            ),
            click.option(
                "--classes", type=int, default=0, help="multiclass: classes (0: from the labels)"
            ),
            click.option(
                "--iterations",
                type=int,
                default=0,
                help="0: chosen from the data (logistic 15, multiclass 25, linear and Poisson "
                "from the curvature)",
            ),
            click.option(
                "--learning-rate",
                type=float,
                default=0.0,
                help="0: chosen from the data (1.0, smaller for strongly correlated features)",
            ),
            click.option("--l2", type=float, default=0.0, help="L2 penalty (0: none)"),
            click.option(
                "--sigmoid-interval",
                type=float,
                default=0.0,
                help="half-width of the mean function's fitted range (0: the model's: sigmoid "
                "16, multiclass 8, Poisson's exponential 3)",
            ),
            click.option(
                "--reveal-intermediate",
                is_flag=True,
                help="key holder: unmask every iterate for loss curves; it sees them and seals "
                "them with the model to every party (the coordinator never sees them)",
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


@click.command()
@click.option("--coordinator", "coordinator_address", required=True, help="HOST:PORT")
@click.option(
    "--kit",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="this party's startup kit (hefl provision): its name, certificate and signing key",
)
@click.option(
    "--roster",
    default="",
    help="with --kit: every party of the job, comma-separated (the key holder invites them, "
    "the others refuse a job whose roster differs)",
)
@click.option(
    "--sites",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="the project's sites.json (default: the kit's copy)",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="plaintext gRPC, no kit: the coordinator can impersonate anyone and forge the model",
)
@click.option("--name", default="", help="this party's name (only with --insecure; a kit names it)")
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--label", required=True, help="label column")
@click.option(
    "--key-holder",
    is_flag=True,
    help="create the job (key-holder mode: and hold its secret key)",
)
@click.option(
    "--trust",
    type=click.Choice(["key-holder", "collective"]),
    default="collective",
    help="collective = n-of-n keys among the roster, no key holder; key-holder = one party "
    "holds the secret key. Creating a job: its mode; joining: the only mode this party accepts "
    "(a charter of the other mode is refused)",
)
@click.option("--job", default="", help="job id (key holder: choose it; others: join it)")
@click.option("--parties", type=int, default=1, help="key holder: parties the job waits for")
@training_options
@click.option(
    "--test",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="held-out CSV to evaluate the delivered model on",
)
@click.option("--model-out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--result-out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--join-timeout", type=float, default=0.0, help="retry joining this long (s)")
@click.option(
    "--reconnect-timeout",
    type=click.FloatRange(min=0),
    default=300.0,
    help="when the coordinator goes away, keep reconnecting this long (s) before giving up",
)
def party(
    coordinator_address: str,
    roster: str,
    result_out: Path | None,
    join_timeout: float,
    reconnect_timeout: float,
    **kwargs: Any,
) -> None:
    """Run one data-owner party."""
    from parties.client import PartyConfig, run_party

    if (kwargs["kit"] is None) == (not kwargs["insecure"]):
        raise click.UsageError("give either --kit (see `hefl provision`) or --insecure")
    config = PartyConfig(
        coordinator=coordinator_address,
        roster=tuple(name.strip() for name in roster.split(",") if name.strip()),
        join_timeout_s=join_timeout,
        reconnect_s=reconnect_timeout,
        **kwargs,
    )
    try:
        result = run_party(config)
    except HeflError as err:
        raise click.ClickException(str(err)) from err
    if result_out is not None:
        result_out.write_text(json.dumps(result.to_json(), indent=1))
    summary = f"party {result.name}: job {result.job_id} done"
    if result.metrics:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if "auc_" not in k)
        summary += f", held-out {shown} on {result.test_rows} rows"
    elif result.accuracy is not None:
        summary += f", held-out accuracy {result.accuracy:.4f} on {result.test_rows} rows"
    click.echo(summary)
