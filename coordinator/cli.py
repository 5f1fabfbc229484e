"""``hefl coordinator``: run the untrusted server until SIGTERM."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--listen", default="127.0.0.1:50051", help="HOST:PORT (port 0: any free port)")
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
    "--upload-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=3600.0,
    help="seconds a job waits for every party's upload before it fails",
)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write HOST:PORT here once listening",
)
def coordinator(
    listen: str,
    kit: Path | None,
    insecure: bool,
    workdir: Path,
    ray_address: str | None,
    workers: int,
    ray_num_cpus: int | None,
    key_holder_timeout: float,
    upload_timeout: float,
    ready_file: Path | None,
) -> None:
    """Run the (untrusted) coordinator until SIGTERM."""
    if (kit is None) == (not insecure):
        raise click.UsageError("give either --kit (see `hefl provision`) or --insecure")
    from coordinator.local_ray import LocalRayCluster

    # Without a cluster, start a private one first (before `import ray`, see LocalRayCluster):
    # it comes up in the background while parties register, encrypt and upload.
    local_ray = None if ray_address else LocalRayCluster(num_cpus=ray_num_cpus)
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
        deadlines=Deadlines(key_holder_s=key_holder_timeout, uploads_s=upload_timeout),
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
