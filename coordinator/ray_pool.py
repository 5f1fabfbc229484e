"""Ray as a thin layer: connect to a cluster and run :class:`ShardWorker` actors on it.

Shards travel through Ray's object store, so worker nodes need no access to the coordinator's
disk: the coordinator reads one block at a time from the job directory (the durable copy),
puts it in the store and hands it to the workers that hold it, keeping only a few blocks in
flight per worker; a block leaves the store as soon as its workers have it. The public context
is put once per job.

Faults. A worker whose process dies (killed, out of memory, its node gone) is restarted by Ray
from its constructor's arguments, up to :data:`MAX_RESTARTS` times, on any node with room, and
the call it was running is retried on the new process (until the call's deadline). That process holds no shards and says
so (:class:`coordinator.worker.ShardsMissing`); the pool then gives it its blocks again from the
job directory and repeats the call (:class:`coordinator.worker.ShardWorker` is deterministic,
so the repeated call returns what the first would have). Beyond that, or past a call's
deadline, the pool raises :class:`coordinator.training.WorkerFailure` naming the call and the
reason, and the job fails.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import ray

from coordinator import worker
from coordinator.sharding import all_blocks, assign_blocks, balanced_ranges
from coordinator.store import JobStore
from coordinator.training import WorkerFailure, WorkerTimeout
from coordinator.worker import ShardsMissing, read_block
from hefl import sealio
from hefl.codec import PackingLayout
from hefl.errors import HeflError
from hefl.models.base import KernelForm
from hefl.validate import CiphertextRules

log = logging.getLogger("hefl.ray")

# Loading a million rows' shards takes a while; one gradient call far less.
LOAD_TIMEOUT_S = 1800.0
CALL_TIMEOUT_S = 600.0
CONNECT_TIMEOUT_S = 120.0
# How long joining an existing cluster may take to be accepted or refused.
JOIN_CHECK_TIMEOUT_S = 15.0
# How long the health check waits for the cluster to list its nodes.
PROBE_TIMEOUT_S = 3.0
# A worker process may die this many times per job; each time Ray retries the call it ran.
MAX_RESTARTS = 3
# Blocks on their way to each worker at once: one it is loading, one waiting in the store.
BLOCKS_IN_FLIGHT = 2
_connect_lock = threading.Lock()


def connect(address: str | None, *, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` (``auto``, ``host:port``, ``ray://host:10001``) or start
    a local one bound to loopback when ``address`` is None. Safe to call from several threads."""
    with _connect_lock:
        if not ray.is_initialized():
            _init(address, num_cpus)


def _init(address: str | None, num_cpus: int | None) -> None:
    if address:
        log.info("joining Ray cluster at %s", address)
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while True:
            try:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
                return
            except ConnectionError:
                # A cluster that is still starting (see coordinator.local_ray) refuses at first.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    else:
        log.info("starting a local Ray on 127.0.0.1")
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
            _node_ip_address="127.0.0.1",
        )


class ClusterProbe:
    """Whether this process still has its Ray cluster: it has joined, and the cluster's control
    store (GCS) lists at least one live node within ``timeout_s``. What the coordinator's health
    service reports; it works alike for a cluster joined directly and through Ray Client.

    One question at a time, on a daemon thread: while the GCS is gone, Ray's call keeps retrying
    for about a minute; the probes meanwhile answer no after ``timeout_s`` and wait on that same
    call instead of piling up new ones, and the process can exit without waiting for it.
    """

    def __init__(self, *, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self._timeout_s = timeout_s
        self._asking: futures.Future[list[dict[str, Any]]] | None = None

    def __call__(self) -> bool:
        if not ray.is_initialized():
            return False
        if self._asking is None or self._asking.done():
            self._asking = _in_background(ray.nodes)
        try:
            nodes = self._asking.result(timeout=self._timeout_s)
        except futures.TimeoutError:
            log.warning("the Ray cluster did not list its nodes within %.0f s", self._timeout_s)
            return False
        except Exception:
            log.warning("the Ray cluster did not list its nodes", exc_info=True)
            return False
        return any(node.get("Alive") for node in nodes)


def _in_background(call: Callable[[], Any]) -> futures.Future[Any]:
    """``call()`` on a daemon thread of its own; its result (or error) in the future."""
    answer: futures.Future[Any] = futures.Future()

    def run() -> None:
        try:
            answer.set_result(call())
        except BaseException as err:  # handed to whoever waits on the answer
            answer.set_exception(err)

    threading.Thread(target=run, name="ray-probe", daemon=True).start()
    return answer


class RayJoinRefused(HeflError):
    """The Ray cluster at the given address cannot be joined; the message gives Ray's reason
    and what to set."""


def check_join(address: str, *, timeout_s: float = JOIN_CHECK_TIMEOUT_S) -> None:
    """Ask the cluster at ``address`` (``auto`` or ``host:port``) whether it accepts this
    process, within ``timeout_s``, before anything waits on it.

    ``ray.init`` retries a refusal for minutes (an ``InvalidAuthToken`` line every second when
    the cluster wants a token this process does not send), so the coordinator first makes the
    call Ray makes first, with the credentials Ray would send: the cluster id from its GCS, over
    the channel Ray would open (TLS with Ray's certificates under ``RAY_USE_TLS``, see
    :func:`gcs_channel`). A ``ray://`` address (Ray Client) is left to ``ray.init``.

    Raises:
        RayJoinRefused: No cluster there, it refused this process's token (or the lack of
            one), it speaks TLS and this process does not (or the reverse), or it did not answer
            in time; the message says which and what to set.
    """
    if address.startswith("ray://"):
        return
    from ray._private.authentication.authentication_token_setup import (
        ensure_token_if_auth_enabled,
    )
    from ray._private.authentication.grpc_authentication_client_interceptor import (
        _get_authentication_metadata_tuple,
    )
    from ray._private.services import canonicalize_bootstrap_address
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    try:
        bootstrap = canonicalize_bootstrap_address(address)
        ensure_token_if_auth_enabled(create_token_if_missing=False)
    except (ValueError, ray.exceptions.AuthenticationError) as err:
        raise RayJoinRefused(f"cannot join Ray at {address}: {err}") from err
    if bootstrap is None:
        raise RayJoinRefused(
            f"no running Ray cluster found for --ray-address {address}: give the head's "
            "HOST:PORT, or start one there with `ray start --head`"
        )
    metadata = _get_authentication_metadata_tuple()
    deadline = time.monotonic() + timeout_s
    with gcs_channel(bootstrap) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        while True:
            try:
                stub.GetClusterId(
                    gcs_service_pb2.GetClusterIdRequest(),  # type: ignore[attr-defined]
                    metadata=metadata,
                    timeout=max(0.1, min(5.0, deadline - time.monotonic())),
                )
                return
            except grpc.RpcError as err:
                code, details = err.code(), err.details()
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    advice = _token_advice(bootstrap, details, sent=bool(metadata))
                    raise RayJoinRefused(advice) from err
                if code == grpc.StatusCode.UNAVAILABLE and (mismatch := _tls_mismatch(bootstrap)):
                    raise RayJoinRefused(mismatch) from err
                if time.monotonic() > deadline:
                    raise RayJoinRefused(
                        f"the Ray cluster at {bootstrap} did not answer within {timeout_s:.0f} s "
                        f"({code.name}: {details})"
                    ) from err
                time.sleep(0.5)


def ray_uses_tls() -> bool:
    """Whether this process speaks TLS to Ray, as Ray itself decides it (``RAY_USE_TLS``)."""
    return os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")


def gcs_channel(address: str) -> grpc.Channel:
    """A channel to Ray's GCS at ``address`` as Ray's own clients open one
    (``ray._private.grpc_utils.init_grpc_channel``): under ``RAY_USE_TLS``, TLS with the
    certificate, key and CA named by ``RAY_TLS_SERVER_CERT``, ``RAY_TLS_SERVER_KEY`` and
    ``RAY_TLS_CA_CERT`` (Ray's nodes verify each other's certificates against that CA);
    plaintext otherwise.

    Raises:
        RayJoinRefused: ``RAY_USE_TLS`` is set but those files are not all named or readable.
    """
    if not ray_uses_tls():
        return grpc.insecure_channel(address)
    from ray._common.tls_utils import load_certs_from_env

    try:
        certificate_chain, private_key, ca_certificate = load_certs_from_env()
    except (RuntimeError, OSError) as err:
        raise RayJoinRefused(f"cannot join Ray at {address} over TLS: {err}") from err
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_certificate,
        private_key=private_key,
        certificate_chain=certificate_chain,
    )
    return grpc.secure_channel(address, credentials)


def _tls_mismatch(address: str) -> str | None:
    """What to set when the GCS at ``address`` speaks TLS and this process does not, or the
    reverse; None when they agree or nothing answers there (yet)."""
    speaks = _speaks_tls(address)
    if speaks is None or speaks == ray_uses_tls():
        return None
    setting = os.environ.get("RAY_USE_TLS")
    if speaks:
        return (
            f"the Ray cluster at {address} uses Ray's TLS and this process does not "
            f"(RAY_USE_TLS is {'unset' if setting is None else repr(setting)}): set "
            "RAY_USE_TLS=1, and RAY_TLS_SERVER_CERT, RAY_TLS_SERVER_KEY and RAY_TLS_CA_CERT to "
            "this machine's certificate and key, signed by the cluster's CA, and that CA's "
            "certificate"
        )
    return (
        f"the Ray cluster at {address} does not use TLS but this process does "
        f"(RAY_USE_TLS={setting}): unset RAY_USE_TLS, or start the cluster's nodes with Ray's TLS"
    )


def _speaks_tls(address: str, timeout_s: float = 2.0) -> bool | None:
    """Whether the server at ``address`` answers a TLS ClientHello with a TLS handshake record;
    None when nothing accepts a connection there. Nothing is verified: this only tells which
    language the server speaks."""
    hello = ssl.MemoryBIO()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    client = context.wrap_bio(ssl.MemoryBIO(), hello)
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:  # the ClientHello is written, the answer awaited
        pass
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as sock:
            sock.sendall(hello.read())
            answer = sock.recv(1)
    except OSError:
        return None
    return answer == b"\x16"  # TLS's handshake record type; HTTP/2 answers otherwise or closes


def _token_advice(bootstrap: str, details: str, *, sent: bool) -> str:
    refused = f"the Ray cluster at {bootstrap} refused this coordinator ({details})"
    where = (
        "the cluster's token in RAY_AUTH_TOKEN, or in a file named by RAY_AUTH_TOKEN_PATH, or "
        "in ~/.ray/auth_token (`ray get-auth-token` on the head node prints it)"
    )
    if sent:
        return f"{refused}: the token this process sends is not the cluster's; put {where}"
    from ray._raylet import AuthenticationTokenLoader  # type: ignore[attr-defined]

    mode = os.environ.get("RAY_AUTH_MODE")
    found = AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True)
    return (
        f"{refused}: the cluster requires token authentication and this process sends no "
        f"token (RAY_AUTH_MODE is {'unset' if mode is None else repr(mode)}"
        f"{'; a token is there, but Ray sends it only with RAY_AUTH_MODE=token' if found else ''}"
        f"); set RAY_AUTH_MODE=token and put {where}"
    )


def cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


class ShardWorker(worker.ShardWorker):
    """:class:`coordinator.worker.ShardWorker` as Ray runs it, which can also say where. Same
    name, so that its processes keep Ray's title ``ray::ShardWorker`` for operators' tools."""

    def node(self) -> tuple[str, str]:
        """This worker's Ray node: its id and its address."""
        return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()


class WorkerPool:
    """The job's Ray actors.

    With at least as many blocks as workers, each worker holds a run of blocks and computes
    their gradient in one call (block sharding). With fewer blocks (small jobs: breast cancer is
    one block), every worker holds all blocks and a range of columns, and an iteration takes two
    calls: partial margins over each worker's columns, summed here, then each worker's columns'
    gradients from the full margins (column sharding). Either way all workers are busy.

    Args:
        context_bytes: The job's public context.
        job_root: The job directory, read here only: workers get their blocks from this pool.
    """

    def __init__(
        self,
        *,
        context_bytes: bytes,
        parameter_set: str,
        job_root: str,
        layout: PackingLayout,
        columns: int,
        workers: int,
    ) -> None:
        import tenseal as ts

        self._context = ts.context_from(context_bytes)
        self._rules = CiphertextRules(self._context)
        self._store = JobStore(Path(job_root))
        self._columns = columns
        remote = ray.remote(ShardWorker).options(  # type: ignore[attr-defined]
            num_cpus=1,
            max_restarts=MAX_RESTARTS,
            # Retry a call while its worker is being restarted (Ray counts every failed attempt
            # to reach a worker whose node is not yet declared dead); the call's deadline
            # bounds it, and a worker past its restarts fails the call.
            max_task_retries=-1,
        )
        self._column_ranges: list[tuple[int, int]] | None = None
        if layout.n_blocks >= workers:
            self._runs = assign_blocks(layout, workers)
        else:
            self._column_ranges = balanced_ranges(columns, workers)
            self._runs = [all_blocks(layout)] * len(self._column_ranges)
        self._sources = {source.block: source for run in self._runs for source in run}
        # Kept for the pool's lifetime: Ray restarts a worker from its constructor's arguments.
        self._context_ref = ray.put(context_bytes)
        # Ray's actor handles are dynamically typed.
        self._actors: list[Any] = [
            remote.remote(
                parameter_set=parameter_set,
                context=self._context_ref,
                blocks=run,
                columns=columns,
            )
            for run in self._runs
        ]

    def load(self) -> None:
        """Give every worker its blocks (all uploads must be complete)."""
        started = time.perf_counter()
        self._deliver(range(len(self._actors)))
        mode = "column" if self._column_ranges else "block"
        log.info(
            "%d workers hold %d blocks (%s sharding), delivered through Ray in %.1f s; nodes: %s",
            len(self._actors),
            len(self._sources),
            mode,
            time.perf_counter() - started,
            ", ".join(f"{ip} ({n})" for ip, n in sorted(Counter(self.nodes()).items())),
        )

    @property
    def size(self) -> int:
        return len(self._actors)

    def nodes(self) -> list[str]:
        """The address of the Ray node each worker runs on, in worker order."""
        placed = _get(
            [a.node.remote() for a in self._actors], timeout_s=CALL_TIMEOUT_S, what="placement"
        )
        return [ip for _, ip in placed]

    def _deliver(self, indexes: Sequence[int]) -> None:
        """Give the workers ``indexes`` the blocks they miss, read one at a time from the job
        directory, until none misses any (a worker restarted meanwhile is caught up too).

        Raises:
            WorkerFailure: A worker still misses blocks after :data:`MAX_RESTARTS` rounds, or
                failed a call.
            WorkerTimeout: The delivery overran :data:`LOAD_TIMEOUT_S`.
        """
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        for _ in range(MAX_RESTARTS + 1):
            missing = _get(
                [self._actors[i].missing.remote() for i in indexes],
                timeout_s=CALL_TIMEOUT_S,
                what="listing their blocks",
            )
            wanted = {i: blocks for i, blocks in zip(indexes, missing, strict=True) if blocks}
            if not wanted:
                return
            self._send(wanted, deadline)
        raise WorkerFailure(
            f"the Ray workers lost their blocks {MAX_RESTARTS + 1} times while receiving them"
        )

    def _send(self, wanted: dict[int, list[int]], deadline: float) -> None:
        """Put each wanted block in Ray's store once and hand it to every worker that wants it.

        Blocks go in turn to each worker (so all load at once), at most
        :data:`BLOCKS_IN_FLIGHT` per worker at a time; each put is dropped here once handed
        over, so the store frees a block as soon as its last worker has loaded it.
        """
        takers: dict[int, list[int]] = {}
        for position in range(max(map(len, wanted.values()))):
            for i, blocks in wanted.items():
                if position < len(blocks):
                    takers.setdefault(blocks[position], []).append(i)
        in_flight: set[Any] = set()
        window = BLOCKS_IN_FLIGHT * len(wanted)
        for block, workers in takers.items():
            data = ray.put(read_block(self._store, self._sources[block], self._columns))
            in_flight |= {self._actors[i].hold.remote(block, data) for i in workers}
            del data  # the calls hold it now
            while len(in_flight) >= window:
                in_flight -= _settle(in_flight, deadline)
        while in_flight:
            in_flight -= _settle(in_flight, deadline)

    def _call(self, what: str, call: Callable[[Any, int], Any]) -> list[Any]:
        """``call(actor, index)`` on every worker, and their results in worker order. Workers
        that lost their shards (restarted by Ray) get them again and are called again."""
        results: dict[int, Any] = {}
        indexes = list(range(len(self._actors)))
        for _ in range(MAX_RESTARTS + 1):
            refs = {i: call(self._actors[i], i) for i in indexes}
            deadline = time.monotonic() + CALL_TIMEOUT_S
            lost = []
            for i, ref in refs.items():
                try:
                    (results[i],) = _get(
                        [ref], timeout_s=max(0.0, deadline - time.monotonic()), what=what
                    )
                except _ShardsLost:
                    lost.append(i)
            if not lost:
                return [results[i] for i in range(len(self._actors))]
            log.warning(
                "%d of %d workers restarted by Ray hold no shards; giving them their blocks "
                "again from the job directory",
                len(lost),
                len(self._actors),
            )
            self._deliver(lost)
            indexes = lost
        raise WorkerFailure(
            f"the Ray workers failed {what}: they lost their blocks {MAX_RESTARTS + 1} times"
        )

    def gradient(
        self, masked_weights: Sequence[bytes], unmask: Sequence[float], *, form: KernelForm
    ) -> list[list[bytes]]:
        """Per-(output, column) gradient sums, output-major, as one list per worker to be added
        up (block sharding) or a single list (column sharding)."""
        weights_ref = ray.put(list(masked_weights))
        unmask = list(unmask)
        ranges = self._column_ranges
        if ranges is None:
            return self._call(
                "the gradient", lambda actor, _: actor.gradient.remote(weights_ref, unmask, form)
            )
        partial = self._call(
            "the margins",
            lambda actor, i: actor.margins.remote(weights_ref, unmask, ranges[i], form.outputs),
        )
        margins = sealio.add_up(
            self._context, partial, what="margin", expected=self._rules.margin(form)
        )
        margins_ref = ray.put([sealio.serialize(m) for m in margins])
        parts = self._call(
            "the gradient",
            lambda actor, i: actor.gradient_from_margins.remote(margins_ref, ranges[i], form),
        )
        # Each worker answers its columns output by output; the refresh wants output-major.
        widths = [hi - lo for lo, hi in ranges]
        return [
            [
                g
                for o in range(form.outputs)
                for part, width in zip(parts, widths, strict=True)
                for g in part[o * width : (o + 1) * width]
            ]
        ]

    def peak_rss_mb(self) -> list[float]:
        return _get(
            [a.peak_rss_mb.remote() for a in self._actors],
            timeout_s=CALL_TIMEOUT_S,
            what="their memory figures",
        )

    def shutdown(self) -> None:
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []


class _ShardsLost(Exception):
    """A worker answered :class:`ShardsMissing`: Ray restarted it."""


def _settle(in_flight: set[Any], deadline: float) -> set[Any]:
    """Wait for at least one of the calls ``in_flight``; the finished ones (checked).

    Raises:
        WorkerTimeout, WorkerFailure: As :func:`_get`.
    """
    remaining = deadline - time.monotonic()
    done, _ = ray.wait(list(in_flight), num_returns=1, timeout=max(0.0, remaining))
    if not done:
        raise WorkerTimeout(
            f"the Ray workers did not receive their blocks within {LOAD_TIMEOUT_S:.0f} s"
        )
    _get(done, timeout_s=CALL_TIMEOUT_S, what="receiving their blocks")
    return set(done)


def _get(refs: list[Any], *, timeout_s: float, what: str) -> list[Any]:
    """``ray.get`` with a deadline, Ray's errors turned into the training's.

    Raises:
        WorkerTimeout: Not every worker answered within ``timeout_s``.
        WorkerFailure: A worker died beyond its restarts or raised.
        _ShardsLost: A worker restarted by Ray holds no shards.
    """
    try:
        return ray.get(refs, timeout=timeout_s)  # type: ignore[no-any-return]
    except ray.exceptions.GetTimeoutError as err:
        # The driver shuts the pool down (killing the actors) when the job fails.
        raise WorkerTimeout(
            f"the Ray workers did not finish {what} within {timeout_s:.0f} s"
        ) from err
    except ray.exceptions.RayError as err:
        cause = getattr(err, "cause", None) or err
        if isinstance(cause, ShardsMissing):
            raise _ShardsLost(str(cause)) from err
        reason = (str(cause).strip().splitlines() or [""])[-1]
        raise WorkerFailure(
            f"the Ray workers failed {what}: {type(cause).__name__}: {reason}"
        ) from err
