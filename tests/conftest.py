"""Shared fixtures: real TenSEAL contexts, a real gRPC coordinator on loopback port 0 whose
workers run in its own process, and one real local Ray (2 CPUs, loopback only) for the tests
that exercise Ray."""

from __future__ import annotations

import os

# Must precede any `import ray`: keep the local Ray's node address on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import tenseal as ts

from coordinator.driver import Deadlines, PoolFactory
from coordinator.inprocess_pool import in_process_pool_factory
from coordinator.limits import Limits
from coordinator.registry import Registry
from coordinator.server import create_server
from hefl import chunks
from hefl.params import DEFAULT_PARAMETER_SET, PARAMETER_SETS
from hefl.v1 import hefl_pb2_grpc as pb_grpc


@pytest.fixture(scope="session")
def private_context() -> ts.Context:
    return PARAMETER_SETS[DEFAULT_PARAMETER_SET].make_context()


@pytest.fixture(scope="session")
def public_context_bytes(private_context: ts.Context) -> bytes:
    return private_context.serialize(save_secret_key=False)


@pytest.fixture(scope="session")
def public_context(public_context_bytes: bytes) -> ts.Context:
    return ts.context_from(public_context_bytes)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    import ray

    from coordinator import ray_pool

    ray_pool.connect(None, num_cpus=2)
    yield
    ray.shutdown()


class RunningCoordinator:
    """A coordinator serving ``workdir`` on a loopback port, with a client stub.

    Its jobs' workers come from ``pool_factory``; a workdir that already holds jobs is
    restored, as after a coordinator restart. ``limits``: the defaults when None.
    """

    def __init__(
        self,
        workdir: Path,
        pool_factory: PoolFactory,
        *,
        limits: Limits | None = None,
        deadlines: Deadlines | None = None,
    ) -> None:
        self.workdir = workdir
        self.registry = Registry(workdir, pool_factory, limits=limits, deadlines=deadlines)
        self.server, self.port = create_server("127.0.0.1:0", self.registry, tls=None)
        self.server.start()
        self.address = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.address, options=chunks.CHANNEL_OPTIONS)
        self.stub = pb_grpc.CoordinatorStub(self.channel)

    def stop(self) -> None:
        self.channel.close()
        self.registry.shutdown()
        self.server.stop(1).wait()


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[RunningCoordinator]:
    """A coordinator whose workers run in its own process: no Ray."""
    running = RunningCoordinator(tmp_path / "coordinator", in_process_pool_factory(workers=2))
    yield running
    running.stop()
