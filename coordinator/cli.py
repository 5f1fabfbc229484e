"""``hefl coordinator``: run the untrusted server until SIGTERM."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import click

from coordinator.limits import Limits
from hefl.errors import HeflError

_UNITS = {"bytes": "BYTES", "seconds": "SECONDS", "count": "N"}
# The ports deploy/ gives the API (the default), the plaintext health service and the metrics.
API_PORT = 50051
HEALTH_PORT = 50052
METRICS_PORT = 50053


def limit_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """One option per field of :class:`Limits` (``--max-features``, ``--join-timeout-s``...),
    each also read from the environment (``HEFL_COORDINATOR_MAX_FEATURES``...), and ``--limits``,
    a TOML file of the same names; an option given wins over the file."""
    defaults = {name: value for name, value, _ in Limits().describe()}
    for f in reversed(fields(Limits)):
        kind = f.metadata["kind"]
        units = {"bytes": " (or 512MiB, 64GiB)", "seconds": " (or 30min, 6h)"}.get(kind, "")
        function = click.option(
            f"--{f.name.replace('_', '-')}",
            f.name,
            default=None,
            metavar=_UNITS[kind],
            help=f"limit: {f.metadata['doc']}{units} [default: {defaults[f.name]}]",
        )(function)
    return click.option(
        "--limits",
        "limits_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help='a TOML file of limits (max_features = 300, join_timeout_s = "2h", ...)',
    )(function)


def load_limits(limits_file: Path | None, given: dict[str, Any]) -> Limits:
    """The limits from ``--limits`` and the limit options given (flags or environment).

    Raises:
        click.BadParameter: An unknown limit or an unusable value.
    """
    try:
        return Limits.load(file=limits_file, overrides=given)
    except HeflError as err:
        raise click.BadParameter(str(err), param_hint="limits") from err


@click.command()
@click.option("--listen", default=f"127.0.0.1:{API_PORT}", help="HOST:PORT (port 0: any free port)")
@click.option(
    "--kit",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="this coordinator's startup kit (hefl provision): mutual TLS with every party",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="plaintext gRPC without identities: anyone who can connect can act as any party",
)
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
    "--key-holder-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=600.0,
    help="seconds a job waits for each answer of its key holder (and for its return after a "
    "restart) before it fails",
)
@click.option(
    "--health-listen",
    default=None,
    metavar="HOST:PORT",
    help="also answer the gRPC health service in plaintext here, and nothing else (for probes "
    f"that cannot present a client certificate), e.g. 127.0.0.1:{HEALTH_PORT}; it is always "
    "on --listen, under TLS",
)
@click.option(
    "--metrics-listen",
    default=None,
    metavar="HOST:PORT",
    help=f"serve Prometheus metrics over HTTP here (/metrics), e.g. 127.0.0.1:{METRICS_PORT}: "
    "RPCs, jobs by phase, iteration times, workers; no job or party names",
)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write HOST:PORT here once listening",
)
@limit_options
def coordinator(
    listen: str,
    kit: Path | None,
    insecure: bool,
    workdir: Path,
    ray_address: str | None,
    workers: int,
    ray_num_cpus: int | None,
    key_holder_timeout: float,
    health_listen: str | None,
    metrics_listen: str | None,
    ready_file: Path | None,
    limits_file: Path | None,
    **given_limits: str | None,
) -> None:
    """Run the (untrusted) coordinator until SIGTERM."""
    if (kit is None) == (not insecure):
        raise click.UsageError("give either --kit (see `hefl provision`) or --insecure")
    if importlib.util.find_spec("ray") is None:
        raise click.ClickException("the coordinator needs Ray: pip install 'hefl[coordinator]'")
    limits = load_limits(limits_file, given_limits)
    from coordinator.local_ray import LocalRayCluster

    # Without a cluster, start a private one first (before `import ray`, see LocalRayCluster):
    # it comes up in the background while parties register, encrypt and upload.
    local_ray = None if ray_address else LocalRayCluster(num_cpus=ray_num_cpus)
    # Ray reads this when imported (below), after the local cluster took its environment: once
    # joined, its driver would otherwise put a fatal-signal handler (absl's) over the
    # coordinator's SIGTERM handler and abort the process instead of letting it drain.
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    if ray_address:
        check_ray_address(ray_address)
    from coordinator.driver import Deadlines
    from coordinator.server import CoordinatorConfig, serve

    config = CoordinatorConfig(
        listen=listen,
        kit=kit,
        insecure=insecure,
        workdir=workdir,
        ray_address=local_ray.address if local_ray else ray_address,
        workers=workers,
        ray_num_cpus=ray_num_cpus,
        limits=limits,
        deadlines=Deadlines(key_holder_s=key_holder_timeout),
        health_listen=health_listen or None,
        metrics_listen=metrics_listen or None,
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


def check_ray_address(address: str) -> None:
    """Fail now, with Ray's reason and what to set, if the cluster refuses this process.

    Raises:
        click.ClickException: The cluster cannot be joined.
    """
    from coordinator.ray_pool import RayJoinRefused, check_join

    try:
        check_join(address)
    except RayJoinRefused as err:
        raise click.ClickException(str(err)) from err
