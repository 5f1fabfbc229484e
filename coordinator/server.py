"""The coordinator process: gRPC server, job registry, Ray connection."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from coordinator import ray_pool
from coordinator.driver import Deadlines, PoolFactory
from coordinator.limits import Limits
from coordinator.registry import Registry
from coordinator.servicer import CoordinatorServicer
from hefl.chunks import CHANNEL_OPTIONS
from hefl.codec import PackingLayout
from hefl.errors import InvalidArgument
from hefl.identity import ROLE_COORDINATOR, TlsFiles, server_credentials
from hefl.v1 import hefl_pb2_grpc as pb_grpc

log = logging.getLogger("hefl.coordinator")

GRACE_S = 10.0


@dataclass(frozen=True)
class CoordinatorConfig:
    listen: str = "127.0.0.1:50051"
    workdir: Path = Path("hefl-work")
    # The coordinator's startup kit (`hefl provision`); None only with `insecure`.
    kit: Path | None = None
    # Plaintext gRPC, no identities: every caller is whoever its requests say it is.
    insecure: bool = False
    ray_address: str | None = None
    # Ray actors per job; 0 = one per CPU of the cluster.
    workers: int = 0
    # CPUs of a Ray started locally (ignored when joining a cluster); None = all.
    ray_num_cpus: int | None = None
    limits: Limits = field(default_factory=Limits)
    # How long a job waits for its key holder and for its uploads before it fails.
    deadlines: Deadlines = Deadlines()


# Raises when the cluster cannot come up (see LocalRayCluster.wait_until_up).
RayReadyCheck = Callable[[], None]


def ray_pool_factory(
    config: CoordinatorConfig, ray_ready: RayReadyCheck | None = None
) -> PoolFactory:
    """Makes a job's workers, joining Ray first if :func:`join_ray_early` has not yet."""

    def make(
        context_bytes: bytes, parameter_set: str, job_root: str, layout: PackingLayout, columns: int
    ) -> ray_pool.WorkerPool:
        if ray_ready is not None:
            ray_ready()
        ray_pool.connect(config.ray_address, num_cpus=config.ray_num_cpus)
        workers = config.workers or ray_pool.cluster_cpus()
        return ray_pool.WorkerPool(
            context_bytes=context_bytes,
            parameter_set=parameter_set,
            job_root=job_root,
            layout=layout,
            columns=columns,
            workers=workers,
        )

    return make


def join_ray_early(
    config: CoordinatorConfig, ray_ready: RayReadyCheck | None = None
) -> threading.Thread:
    """Join Ray in the background, before any job needs it.

    Joining takes seconds (a local cluster may still be starting), and Ray prestarts worker
    processes once a driver has joined, so the first job's actors start on warm processes instead
    of making the parties wait. A failure here is only logged: the first job joins again and
    reports it.
    """

    def join() -> None:
        started = time.perf_counter()
        try:
            if ray_ready is not None:
                ray_ready()
            ray_pool.connect(config.ray_address, num_cpus=config.ray_num_cpus)
        except Exception:
            log.warning("could not join Ray yet; retrying when a job needs it", exc_info=True)
            return
        log.info("joined Ray in %.1f s", time.perf_counter() - started)

    thread = threading.Thread(target=join, name="ray-join", daemon=True)
    thread.start()
    return thread


def server_options(limits: Limits) -> list[tuple[str, Any]]:
    """gRPC's channel arguments for the server: message limits, and keepalive so that a peer
    that vanished without closing its connection (a crashed machine, a cut network) is noticed
    and its streams end instead of holding their threads."""
    options: list[tuple[str, Any]] = [
        *CHANNEL_OPTIONS,
        ("grpc.keepalive_time_ms", int(limits.keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(limits.keepalive_timeout_s * 1000)),
        # Keep pinging a connection whose only call is an idle stream (a party watching its
        # job), and connections between calls.
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if limits.max_connection_age_s:
        options += [
            ("grpc.max_connection_age_ms", int(limits.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", 600_000),
        ]
    return options


def create_server(
    address: str, registry: Registry, *, tls: TlsFiles | None
) -> tuple[grpc.Server, int]:
    """A started-later server bound to ``address`` (port 0 picks a free port), with the
    registry's limits: ``server_threads`` threads, of which streaming calls hold at most
    ``max_streams`` (see :class:`coordinator.limits.StreamGate`); calls beyond twice the
    threads are refused with RESOURCE_EXHAUSTED rather than queued without bound.

    Args:
        tls: The coordinator's certificate, key and the project CA: every connection is then
            mutual TLS and callers are known by their certificates. None serves plaintext to
            anyone (``--insecure``).
    """
    limits = registry.limits
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=limits.server_threads, thread_name_prefix="grpc"),
        options=server_options(limits),
        maximum_concurrent_rpcs=2 * limits.server_threads,
    )
    servicer = CoordinatorServicer(registry, authenticated=tls is not None)
    pb_grpc.add_CoordinatorServicer_to_server(servicer, server)
    if tls is None:
        log.warning(
            "serving plaintext gRPC without identities (--insecure): anyone who reaches %s can "
            "join jobs and act as any party",
            address,
        )
        port = server.add_insecure_port(address)
    else:
        identity = tls.identity
        if identity.role != ROLE_COORDINATOR:
            raise InvalidArgument(
                f"the startup kit is {identity.name!r}'s, a {identity.role}, not a coordinator's"
            )
        port = server.add_secure_port(address, server_credentials(tls))
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return server, port


def tls_of(config: CoordinatorConfig) -> TlsFiles | None:
    """The coordinator's TLS files, or None when it was told to run ``--insecure``.

    Raises:
        InvalidArgument: Neither a kit nor ``--insecure``, or an unusable kit.
    """
    if config.kit is not None:
        return TlsFiles.load(config.kit)
    if config.insecure:
        return None
    raise InvalidArgument(
        "give the coordinator's startup kit (--kit, made by `hefl provision`) or --insecure"
    )


def serve(
    config: CoordinatorConfig,
    *,
    ready_file: Path | None = None,
    ray_ready: RayReadyCheck | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, then stop with a grace period.

    Args:
        config: Where to listen, the work directory, the Ray cluster to join (None: start Ray
            inside this process, which `hefl coordinator` avoids, see
            :class:`coordinator.local_ray.LocalRayCluster`).
        ready_file: Gets ``HOST:PORT`` once the server listens.
        ray_ready: Called before joining Ray; raises if the cluster cannot come up, which then
            fails the jobs that need it with the reason instead of leaving them waiting.
    """
    tls = tls_of(config)
    config.workdir.mkdir(parents=True, exist_ok=True)
    join_ray_early(config, ray_ready)
    factory = ray_pool_factory(config, ray_ready)
    registry = Registry(config.workdir, factory, limits=config.limits, deadlines=config.deadlines)
    server, port = create_server(config.listen, registry, tls=tls)
    server.start()
    host = config.listen.rsplit(":", 1)[0]
    log.info("coordinator listening on %s:%d, work directory %s", host, port, config.workdir)
    if ready_file is not None:
        ready_file.write_text(f"{host}:{port}\n")
    stopped = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping with %.0f s grace", signum, GRACE_S)
        stopped.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    stopped.wait()
    registry.shutdown()
    server.stop(GRACE_S).wait()
