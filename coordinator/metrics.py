"""What an operator can scrape: the coordinator's RPCs, jobs and Ray workers in Prometheus's text
format (the format Ray's own metrics use), served over HTTP on an address the operator chooses.

The RPC series follow go-grpc-prometheus's names (``grpc_server_started_total``,
``grpc_server_handled_total``, ``grpc_server_msg_received_total``...), so that dashboards made
for gRPC servers read them as they are; the rest are ``hefl_``.

Nothing here carries a key, a ciphertext, a party's rows or statistics, and no label names a job
or a party: TLS keeps those names from the network, and a metrics endpoint is often read by
more people than the jobs' parties. Labels are the RPC's method and status code, and the jobs'
phases.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import Any, Protocol

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from coordinator.jobs import Job
from hefl.v1 import hefl_pb2 as pb

log = logging.getLogger("hefl.metrics")

# An iteration takes under a second for a few thousand rows and minutes for millions.
ITERATION_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# A scrape does not wait longer than this for Ray's control store to list the nodes.
RAY_QUERY_TIMEOUT_S = 2.0


class SizedPool(Protocol):
    @property
    def size(self) -> int: ...


class CoordinatorMetrics:
    """Every metric of one coordinator process, in a registry of its own.

    Args:
        jobs: The coordinator's jobs, read at each scrape (their phases).
    """

    def __init__(self, jobs: Callable[[], Iterable[Job]]) -> None:
        self.registry = CollectorRegistry()
        self.rpcs = RpcMetrics(self.registry)
        self.iteration_seconds = Histogram(
            "hefl_iteration_seconds",
            "Wall time of one training iteration (gradients on the Ray workers and the key "
            "holder's refresh)",
            buckets=ITERATION_BUCKETS_S,
            registry=self.registry,
        )
        self.ray = RayCollector()
        self.registry.register(JobsCollector(jobs))
        self.registry.register(self.ray)

    def interceptor(self) -> grpc.ServerInterceptor:
        return self.rpcs.interceptor()

    def iteration_timer(self) -> IterationTimer:
        """Times one job's iterations into :attr:`iteration_seconds`."""
        return IterationTimer(self.iteration_seconds.observe)


class IterationTimer:
    """Called with each completed iteration's number (the training's ``on_iteration``); reports
    the time since the previous one. A call that is not the next iteration (a resumed job
    announcing where it resumes) only restarts the clock."""

    def __init__(self, observe: Callable[[float], None]) -> None:
        self._observe = observe
        self._done = 0
        self._since = time.perf_counter()

    def __call__(self, done: int) -> None:
        now = time.perf_counter()
        if done == self._done + 1:
            self._observe(now - self._since)
        self._done, self._since = done, now


class JobsCollector(Collector):
    """``hefl_jobs{phase}``: how many jobs are in each phase, every phase listed."""

    def __init__(self, jobs: Callable[[], Iterable[Job]]) -> None:
        self._jobs = jobs

    def collect(self) -> Iterator[Metric]:
        counts = dict.fromkeys(pb.Phase.keys(), 0)
        for job in self._jobs():
            counts[pb.Phase.Name(job.phase)] += 1
        family = GaugeMetricFamily(
            "hefl_jobs", "Jobs on this coordinator by phase", labels=["phase"]
        )
        for phase, count in counts.items():
            family.add_metric([phase], count)
        yield family


class RayCollector(Collector):
    """The workers this coordinator's running jobs hold (``hefl_workers``: Ray actors, or the
    in-process workers of a coordinator without Ray), and the Ray cluster's nodes by state
    (``hefl_ray_nodes``) once this process has joined Ray."""

    def __init__(self) -> None:
        self._pools: weakref.WeakSet[Any] = weakref.WeakSet()
        self._query = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-ray")
        self._lock = threading.Lock()

    def track(self, pool: SizedPool) -> None:
        """Count ``pool``'s actors until it is shut down (its size then drops to 0)."""
        with self._lock:
            self._pools.add(pool)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            actors = sum(pool.size for pool in self._pools)
        yield GaugeMetricFamily(
            "hefl_workers",
            "Workers (Ray actors) holding encrypted shards of this coordinator's running jobs",
            value=actors,
        )
        nodes = self._nodes()
        if nodes is not None:
            family = GaugeMetricFamily(
                "hefl_ray_nodes", "Nodes of the Ray cluster by state", labels=["state"]
            )
            for state, count in nodes.items():
                family.add_metric([state], count)
            yield family

    def _nodes(self) -> dict[str, int] | None:
        """Alive and dead nodes, or None before this process joined Ray or when Ray does not
        answer within :data:`RAY_QUERY_TIMEOUT_S` (a scrape must not hang on it)."""
        ray = sys.modules.get("ray")  # never import Ray here: see coordinator.local_ray
        if ray is None or not ray.is_initialized():
            return None
        try:
            nodes = self._query.submit(ray.nodes).result(timeout=RAY_QUERY_TIMEOUT_S)
        except Exception:
            log.warning("Ray did not list its nodes for a scrape", exc_info=True)
            return None
        alive = sum(1 for node in nodes if node.get("Alive"))
        return {"alive": alive, "dead": len(nodes) - alive}


class RpcMetrics:
    """Per RPC method: calls started and handled (by status code), messages and protobuf bytes
    received and sent."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter(
            "grpc_server_started", "RPCs started on the server", labels, registry=registry
        )
        self.handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by status code",
            [*labels, "grpc_code"],
            registry=registry,
        )
        self.received = Counter(
            "grpc_server_msg_received",
            "Request messages received",
            labels,
            registry=registry,
        )
        self.sent = Counter(
            "grpc_server_msg_sent", "Response messages sent", labels, registry=registry
        )
        self.received_bytes = Counter(
            "grpc_server_received_bytes",
            "Bytes of request messages received (serialized protobuf, before TLS and HTTP/2 "
            "framing)",
            labels,
            registry=registry,
        )
        self.sent_bytes = Counter(
            "grpc_server_sent_bytes",
            "Bytes of response messages sent (serialized protobuf, before TLS and HTTP/2 framing)",
            labels,
            registry=registry,
        )

    def interceptor(self) -> grpc.ServerInterceptor:
        return _RpcInterceptor(self)


_TYPES = {
    (False, False): "unary",
    (True, False): "client_stream",
    (False, True): "server_stream",
    (True, True): "bidi_stream",
}


class _RpcInterceptor(grpc.ServerInterceptor):
    """Wraps each method's handler: its (de)serializers count messages and bytes, its behaviour
    counts the call and its status code."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")  # type: ignore[attr-defined]
        kind = _TYPES[(handler.request_streaming, handler.response_streaming)]
        m, labels = self._metrics, (kind, service, method)

        def deserialize(data: bytes) -> Any:
            m.received.labels(*labels).inc()
            m.received_bytes.labels(*labels).inc(len(data))
            return handler.request_deserializer(data) if handler.request_deserializer else data

        def serialize(message: Any) -> bytes:
            data = handler.response_serializer(message) if handler.response_serializer else message
            m.sent.labels(*labels).inc()
            m.sent_bytes.labels(*labels).inc(len(data))
            return data  # type: ignore[no-any-return]

        def handled(context: grpc.ServicerContext, default: grpc.StatusCode) -> None:
            code = context.code() or default  # type: ignore[attr-defined]
            m.handled.labels(*labels, code.name).inc()

        def unary_response(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                m.started.labels(*labels).inc()
                try:
                    response = behavior(request, context)
                except Exception:
                    handled(context, grpc.StatusCode.UNKNOWN)
                    raise
                handled(context, grpc.StatusCode.OK)
                return response

            return call

        def streamed_response(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                m.started.labels(*labels).inc()
                try:
                    yield from behavior(request, context)
                except GeneratorExit:
                    # The stream closed under the server: the client went away or cancelled.
                    handled(context, grpc.StatusCode.CANCELLED)
                    raise
                except Exception:
                    handled(context, grpc.StatusCode.UNKNOWN)
                    raise
                handled(context, grpc.StatusCode.OK)

            return call

        behaviors: dict[str, Any] = {}
        for name in ("unary_unary", "stream_unary"):
            if getattr(handler, name) is not None:
                behaviors[name] = unary_response(getattr(handler, name))
        for name in ("unary_stream", "stream_stream"):
            if getattr(handler, name) is not None:
                behaviors[name] = streamed_response(getattr(handler, name))
        return handler._replace(  # type: ignore[attr-defined, no-any-return]
            request_deserializer=deserialize, response_serializer=serialize, **behaviors
        )


class MetricsEndpoint:
    """The metrics over plain HTTP at ``address`` (``HOST:PORT``, port 0: any free port), on a
    thread of its own; any path answers the exposition (Prometheus scrapes ``/metrics``)."""

    def __init__(self, address: str, metrics: CoordinatorMetrics) -> None:
        host, port = address.rsplit(":", 1)
        self._server, self._thread = start_http_server(
            int(port), addr=host.strip("[]"), registry=metrics.registry
        )
        self.port: int = self._server.server_port
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
