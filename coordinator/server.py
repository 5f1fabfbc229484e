"""The coordinator process: gRPC server, job registry, Ray connection, and what operators
watch it with (the gRPC health service, Prometheus metrics).

The standard ``grpc.health.v1.Health`` service answers on the API's port, under the same mutual
TLS as every RPC. Kubernetes' gRPC probes (and most load balancers' health checks) cannot
present a client certificate, so the same health service can also answer in plaintext on a port
of its own (``health_listen``), which serves nothing else: a probe learns SERVING or
NOT_SERVING and nothing of any job. The server as a whole (``""``, what a liveness probe asks)
is SERVING from the moment it listens until it drains; the Coordinator service (what a readiness
probe asks) only while the coordinator also has its Ray cluster (:class:`HealthReporter`), so
losing Ray takes it out of service without getting it restarted for what a restart cannot fix. Metrics go over plain HTTP on ``metrics_listen``
(:mod:`coordinator.metrics`). Both are off unless an address is given: several coordinators may
share a host, and every port opened is the operator's choice.
"""

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
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coordinator import ray_pool
from coordinator.driver import Deadlines, PoolFactory
from coordinator.limits import Limits
from coordinator.metrics import CoordinatorMetrics, MetricsEndpoint
from coordinator.registry import Registry
from coordinator.servicer import CoordinatorServicer
from hefl.chunks import CHANNEL_OPTIONS
from hefl.codec import PackingLayout
from hefl.errors import InvalidArgument
from hefl.identity import ROLE_COORDINATOR, TlsFiles, server_credentials
from hefl.v1 import hefl_pb2 as pb
from hefl.v1 import hefl_pb2_grpc as pb_grpc

log = logging.getLogger("hefl.coordinator")

GRACE_S = 10.0
# The health service reports the server as a whole ("": it listens; liveness) and this service
# (it can train: readiness).
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Coordinator"].full_name
# The plaintext health port serves probes only: a few threads, a bounded number of calls.
HEALTH_THREADS = 2
HEALTH_MAX_RPCS = 16
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# How often health asks Ray whether the coordinator still has its cluster (a probe never does).
RAY_HEALTH_INTERVAL_S = 5.0


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
    # Plaintext gRPC health service (probes without a client certificate), HOST:PORT; None: the
    # health service answers on `listen` only, under mutual TLS.
    health_listen: str | None = None
    # Prometheus metrics over HTTP, HOST:PORT; None: none served.
    metrics_listen: str | None = None


# Raises when the cluster cannot come up (see LocalRayCluster.wait_until_up).
RayReadyCheck = Callable[[], None]
# Whether the coordinator still has its Ray cluster (see ray_pool.ClusterProbe).
RayAliveCheck = Callable[[], bool]


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
    config: CoordinatorConfig,
    ray_ready: RayReadyCheck | None = None,
    *,
    on_joined: Callable[[], None] = lambda: None,
) -> threading.Thread:
    """Join Ray in the background, before any job needs it, then call ``on_joined``.

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
        on_joined()
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
    address: str,
    registry: Registry,
    *,
    tls: TlsFiles | None,
    health_servicer: health.HealthServicer | None = None,
    metrics: CoordinatorMetrics | None = None,
) -> tuple[grpc.Server, int]:
    """A started-later server bound to ``address`` (port 0 picks a free port), with the
    registry's limits: ``server_threads`` threads, of which streaming calls hold at most
    ``max_streams`` (see :class:`coordinator.limits.StreamGate`); calls beyond twice the
    threads are refused with RESOURCE_EXHAUSTED rather than queued without bound.

    Args:
        tls: The coordinator's certificate, key and the project CA: every connection is then
            mutual TLS and callers are known by their certificates. None serves plaintext to
            anyone (``--insecure``).
        health_servicer: Also serve this ``grpc.health.v1.Health``, under the same TLS.
        metrics: Count every call's status, messages and bytes here.
    """
    limits = registry.limits
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=limits.server_threads, thread_name_prefix="grpc"),
        options=server_options(limits),
        maximum_concurrent_rpcs=2 * limits.server_threads,
        interceptors=[metrics.interceptor()] if metrics is not None else None,
    )
    servicer = CoordinatorServicer(registry, authenticated=tls is not None)
    pb_grpc.add_CoordinatorServicer_to_server(servicer, server)
    if health_servicer is not None:
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
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


def create_health_server(
    address: str, health_servicer: health.HealthServicer
) -> tuple[grpc.Server, int]:
    """A started-later plaintext server of the health service alone, bound to ``address``."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=HEALTH_THREADS, thread_name_prefix="health"),
        maximum_concurrent_rpcs=HEALTH_MAX_RPCS,
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return server, port


class HealthReporter:
    """Keeps the health service's status up to date: ``""`` SERVING while the coordinator
    listens, the Coordinator service SERVING while it also has its Ray cluster (``ray_alive``).

    Ray is asked on a thread of its own every ``interval_s`` (and at :meth:`check`), never by a
    probe: probes read the last answer. Without the cluster no job can train (its workers are
    Ray actors), so a coordinator that has not joined Ray yet, or lost it, is not ready: its
    Coordinator service is NOT_SERVING. ``""`` stays SERVING: restarting the coordinator (what
    a failed liveness probe does) would not bring Ray back.

    Args:
        ray_alive: Whether the coordinator has its Ray cluster; None: its workers need no Ray.
    """

    def __init__(
        self,
        servicer: health.HealthServicer,
        *,
        ray_alive: RayAliveCheck | None = None,
        interval_s: float = RAY_HEALTH_INTERVAL_S,
    ) -> None:
        self._servicer = servicer
        self._ray_alive = ray_alive
        self._interval_s = interval_s
        self._serving: bool | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Report the current status, then keep it current."""
        self._servicer.set("", SERVING)
        self.check()
        if self._ray_alive is not None:
            self._thread = threading.Thread(target=self._watch, name="health-ray", daemon=True)
            self._thread.start()

    def check(self) -> None:
        """Ask now, and report the answer if it changed."""
        with self._lock:  # one question at a time: the watch and the join may ask together
            serving = self._ray_alive() if self._ray_alive is not None else True
            if serving == self._serving:
                return
            if self._serving is not None:
                log.log(
                    logging.INFO if serving else logging.WARNING,
                    "health: %s",
                    "SERVING, Ray is back" if serving else "NOT_SERVING, the Ray cluster is lost",
                )
            self._serving = serving
            self._servicer.set(SERVICE_NAME, SERVING if serving else NOT_SERVING)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval_s)

    def _watch(self) -> None:
        while not self._stopped.wait(self._interval_s):
            self.check()


class Coordinator:
    """One coordinator's servers, started: the API and its health service on ``config.listen``,
    and the operator's endpoints (plaintext health, metrics) where the config asks for them.
    Health turns SERVING once everything listens (and, with ``ray_alive``, while the
    coordinator has its Ray cluster: :class:`HealthReporter`); :meth:`stop` turns it
    NOT_SERVING first.

    Args:
        config: Addresses, work directory, limits and deadlines (its Ray settings are the pool
            factory's business).
        pool_factory: Makes a job's workers.
        tls: As for :func:`create_server`.
        ray_alive: Whether the coordinator has its Ray cluster, for health; None when the
            workers need no Ray.
    """

    def __init__(
        self,
        config: CoordinatorConfig,
        pool_factory: PoolFactory,
        *,
        tls: TlsFiles | None,
        ray_alive: RayAliveCheck | None = None,
    ) -> None:
        config.workdir.mkdir(parents=True, exist_ok=True)
        self.metrics = CoordinatorMetrics(lambda: self.registry.jobs())

        def tracked(*args: Any) -> Any:
            pool = pool_factory(*args)
            self.metrics.ray.track(pool)
            return pool

        self.registry = Registry(
            config.workdir,
            tracked,
            limits=config.limits,
            deadlines=config.deadlines,
            iteration_timer=self.metrics.iteration_timer,
        )
        self.health = health.HealthServicer()
        for service in ("", SERVICE_NAME):
            self.health.set(service, NOT_SERVING)
        self.health_reporter = HealthReporter(self.health, ray_alive=ray_alive)
        self.server, self.port = create_server(
            config.listen, self.registry, tls=tls, health_servicer=self.health, metrics=self.metrics
        )
        self.health_server: grpc.Server | None = None
        self.health_port: int | None = None
        if config.health_listen:
            self.health_server, self.health_port = create_health_server(
                config.health_listen, self.health
            )
        self.server.start()
        if self.health_server is not None:
            self.health_server.start()
            log.info("plaintext health service on %s", config.health_listen)
        self.metrics_endpoint = (
            MetricsEndpoint(config.metrics_listen, self.metrics) if config.metrics_listen else None
        )
        self.health_reporter.start()

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_endpoint.port if self.metrics_endpoint is not None else None

    def stop(self, grace_s: float = GRACE_S) -> None:
        """Drain: health says NOT_SERVING (on both ports) while jobs pause and calls in flight
        get ``grace_s`` to finish; then the operator's endpoints close too."""
        self.health.enter_graceful_shutdown()
        self.health_reporter.stop()
        self.registry.shutdown()
        self.server.stop(grace_s).wait()
        if self.health_server is not None:
            self.health_server.stop(0).wait()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.stop()


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
    coordinator = Coordinator(
        config, ray_pool_factory(config, ray_ready), tls=tls, ray_alive=ray_pool.ClusterProbe()
    )
    join_ray_early(config, ray_ready, on_joined=coordinator.health_reporter.check)
    port = coordinator.port
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
    coordinator.stop(GRACE_S)
