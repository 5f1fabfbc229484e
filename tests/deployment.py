"""A whole deployment on loopback for the fault tests: a provisioned project, the coordinator as
its own process (``hefl coordinator``, with its local Ray), each party as its own process
(``hefl party``), and a TCP proxy to cut one party's connection.

Faults are injected the way they happen: ``kill -9`` of a process, a connection closed under a
party. The test watches the job over the real API, as one of its parties (its kit), through the
same reconnecting watch the parties use. Every process started here is stopped by its own id.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil

from hefl.algorithm import add_bias, choose_hyperparameters, standardize, train_replica
from hefl.codec import AggregateStats
from hefl.identity import TlsFiles, channel_credentials
from hefl.v1 import hefl_pb2 as pb
from hefl.v1 import hefl_pb2_grpc as pb_grpc
from parties.client import CHANNEL_OPTIONS
from parties.collective import STEPS
from parties.reconnect import Reconnect, watch
from tools.provision import provision
from tools.simulate import (
    PartyFiles,
    SimulationConfig,
    load_dataset,
    partition,
    write_party_data,
)

ROSTER = ("hospital-0", "hospital-1", "hospital-2")
KEY_HOLDER = ROSTER[0]
WATCHER = ROSTER[1]
JOB = "faults-1"
# A generous bound for a hung test, never a measured duration.
WAIT_S = 600.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def ray_head(temp: Path, env: dict[str, str], *, wait_s: float = 120.0) -> Iterator[str]:
    """A one-node Ray cluster (`ray start --head`) on loopback, its files under ``temp`` (keep
    it short: Ray's socket paths are), started with ``env``; yields its GCS address and kills
    its process group after. Skips the test on a machine that cannot start Ray."""
    import pytest

    address = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
               "--node-ip-address", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
               "--num-cpus", "1", "--include-dashboard", "false", "--disable-usage-stats",
               "--temp-dir", str(temp / "ray")]  # fmt: skip
    log = temp / "ray-start.log"
    with log.open("wb") as out:
        head = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + wait_s
        while "Ray runtime started." not in log.read_text(errors="replace"):
            if head.poll() is not None:
                pytest.skip(f"this machine cannot run `ray start --head`:\n{log.read_text()}")
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield address
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=60)


def replica_weights(iterations: int) -> np.ndarray:
    """The float64 replica's weights for the job these deployments run (the simulation's
    breast-cancer split of :data:`ROSTER`, seed 0), at ``iterations``."""
    config = SimulationConfig(parties=len(ROSTER), seed=0)
    train = partition(load_dataset(config), config).train_union
    stats = AggregateStats.of_rows(train.features)
    hyper = choose_hyperparameters(curvature=stats.curvature, iterations=iterations)
    features = add_bias(standardize(train.features, stats.mean, stats.std))
    return train_replica(features, train.labels, hyper).weights


def assert_the_roster_resumed(deployment: Deployment, iterations: int, bound: float) -> None:
    """After a coordinator restart in a collective job: every roster party holds the float64
    replica's model (within ``bound``, all the same), rode the restart out, and took every step
    once (the step in flight, if it had answered it, came again from its cache; nothing was
    refused)."""
    weights = deployment.weights(ROSTER[0])
    np.testing.assert_allclose(weights, replica_weights(iterations), atol=bound)
    for name in ROSTER:
        np.testing.assert_array_equal(deployment.weights(name), weights, err_msg=name)
        result = deployment.result(name)
        assert result["reconnects"] >= 1, name
        assert result["key_holder_tasks"] == {**dict.fromkeys(STEPS, 1), "refresh": iterations}
        assert result["key_holder_repeats"] <= 1, name


def ray_joining_coordinator(
    tmp_path: Path, address: str, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], Path]:
    """``hefl coordinator --insecure`` (no parties: only its Ray join matters) told to join the
    Ray cluster at ``address``, started with ``env``; (its process, its log)."""
    log = tmp_path / "coordinator.log"
    command = [sys.executable, "-m", "tools.cli", "coordinator", "--insecure",
               "--listen", "127.0.0.1:0", "--workdir", str(tmp_path / "work"),
               "--ray-address", address]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    return process, log


def stopped_once_joined(
    process: subprocess.Popen[bytes], log: Path, *, wait_s: float = 120.0
) -> str:
    """Wait until the coordinator logs that it joined Ray (failing if it exits first or takes
    over ``wait_s``), stop it with SIGTERM, and return its log."""
    try:
        deadline = time.monotonic() + wait_s
        while "joined Ray in" not in (output := log.read_text(errors="replace")):
            assert process.poll() is None, output
            assert time.monotonic() < deadline, output
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=60)
    return log.read_text(errors="replace")


def prepare(root: Path) -> tuple[Path, str]:
    """A throwaway project and breast-cancer data dealt to the roster (``hefl simulate``'s
    split, seed 0); returns the project and the label column."""
    project = root / "project"
    provision(project, parties=list(ROSTER), coordinator_hosts=("127.0.0.1",))
    files = [PartyFiles(root, name) for name in ROSTER]
    for folder in (root / "data", root / "logs"):
        folder.mkdir(parents=True, exist_ok=True)
    _, label = write_party_data(SimulationConfig(parties=len(ROSTER), seed=0), files)
    return project, label


class Proxy:
    """A TCP proxy on loopback whose connections can be cut (and new ones refused) at will."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.restore()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def restore(self) -> None:
        """Accept connections again."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Close every proxied connection and refuse new ones until :meth:`restore`."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread on Linux
            listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


class Deployment:
    """The coordinator and the roster's parties as processes, around one job.

    Args:
        root: Where the project, data, work directory and logs are.
        project: The provisioned project (:func:`prepare`).
        label: The data's label column.
        coordinator_flags: Extra ``hefl coordinator`` flags.
        proxied: The party whose connection goes through a :class:`Proxy`.
    """

    def __init__(
        self,
        root: Path,
        project: Path,
        label: str,
        *,
        coordinator_flags: tuple[str, ...] = (),
        proxied: str | None = None,
    ) -> None:
        self.root = root
        self.project = project
        self.label = label
        self.workdir = root / "work"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.address = f"127.0.0.1:{free_port()}"
        self._coordinator_flags = coordinator_flags
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.coordinators = 0
        self.parties: dict[str, subprocess.Popen[bytes]] = {}
        self._orphans: list[psutil.Process] = []
        self.proxy = None
        self.coordinator_log = self.logs / "coordinator-0.log"
        self.start_coordinator()
        self.proxy = Proxy(self.address) if proxied else None
        self._proxied = proxied

    # ----- processes -----------------------------------------------------------------------

    def start_coordinator(self) -> None:
        """Start ``hefl coordinator`` on the deployment's address and wait until it listens."""
        ready = self.root / "coordinator.addr"
        ready.unlink(missing_ok=True)
        self.coordinator_log = self.logs / f"coordinator-{self.coordinators}.log"
        self.coordinators += 1
        command = [sys.executable, "-m", "tools.cli", "coordinator",
                   "--kit", str(self.project / "coordinator"), "--listen", self.address,
                   "--workdir", str(self.workdir), "--ready-file", str(ready),
                   "--ray-num-cpus", "2", *self._coordinator_flags]  # fmt: skip
        self.coordinator = _spawn(command, self.coordinator_log)
        deadline = time.monotonic() + WAIT_S
        while not (ready.is_file() and ready.read_text().strip()):
            if self.coordinator.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the coordinator did not start:\n{self.log_tail()}")
            time.sleep(0.05)

    def kill_coordinator(self) -> None:
        """``kill -9`` the coordinator. Its local Ray lives in a process group of its own, which
        nobody is left to stop: it is killed too, as an operator's restart would."""
        assert self.coordinator is not None
        descendants = psutil.Process(self.coordinator.pid).children(recursive=True)
        self.coordinator.kill()
        self.coordinator.wait(timeout=60)
        _kill_all(descendants)

    def start_parties(
        self, *, iterations: int = 15, reconnect_s: float = 120.0, trust: str = "key-holder"
    ) -> None:
        """Every roster party; ``KEY_HOLDER`` creates the job (in collective ``trust``, it is
        the initiator and holds a key share like the others)."""
        roster = ",".join(ROSTER)
        for name in ROSTER:
            files = PartyFiles(self.root, name)
            address = self.proxy.address if self.proxy and name == self._proxied else self.address
            command = [sys.executable, "-m", "tools.cli", "party", "--coordinator", address,
                       "--kit", str(self.project / name), "--job", JOB, "--roster", roster,
                       "--data", str(files.train), "--label", self.label,
                       "--model-out", str(files.model), "--result-out", str(files.result_path),
                       "--reconnect-timeout", str(reconnect_s), "--trust", trust]  # fmt: skip
            if name == KEY_HOLDER:
                command += ["--key-holder", "--iterations", str(iterations)]
            else:
                command += ["--join-timeout", "120"]
            self.parties[name] = _spawn(command, self.logs / f"{name}.log")

    def kill_party(self, name: str) -> None:
        self.parties[name].kill()
        self.parties[name].wait(timeout=60)

    def workers(self) -> list[psutil.Process]:
        """The coordinator's Ray worker processes that hold shards."""
        assert self.coordinator is not None
        found = []
        for process in psutil.Process(self.coordinator.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if " ".join(process.cmdline()).startswith("ray::ShardWorker"):
                    found.append(process)
        return found

    def wait_for_parties(self) -> dict[str, int]:
        """Every party's exit code, once each has ended."""
        return {name: p.wait(timeout=WAIT_S) for name, p in self.parties.items()}

    def stop(self) -> None:
        for process in self.parties.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=60)
        if self.proxy is not None:
            self.proxy.cut()
        if self.coordinator is not None and self.coordinator.poll() is None:
            descendants = psutil.Process(self.coordinator.pid).children(recursive=True)
            self.coordinator.send_signal(signal.SIGTERM)
            try:
                self.coordinator.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.coordinator.kill()
                self.coordinator.wait(timeout=60)
            _kill_all(descendants)

    # ----- what the parties see --------------------------------------------------------------

    def watch(self) -> Iterator[pb.JobStatus]:
        """The job's statuses as one of its parties sees them, across coordinator restarts."""
        tls = TlsFiles.load(self.project / WATCHER)
        channel = grpc.secure_channel(
            self.address, channel_credentials(tls), options=CHANNEL_OPTIONS
        )
        with channel:
            stub = pb_grpc.CoordinatorStub(channel)
            request = pb.WatchJobRequest(job_id=JOB, party=WATCHER)
            deadline = time.monotonic() + WAIT_S
            not_yet = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED)
            while True:  # until the job exists and the watching party has joined it
                try:
                    yield from watch(stub, request, Reconnect(give_up_s=WAIT_S))
                    return
                except grpc.RpcError as err:
                    if err.code() not in not_yet or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)

    def wait_until(self, predicate: Callable[[pb.JobStatus], bool]) -> pb.JobStatus:
        """The first status for which ``predicate`` holds.

        Raises:
            AssertionError: The job ended without it.
        """
        status = None
        for status in self.watch():
            if predicate(status):
                return status
        raise AssertionError(f"the job ended first: {status}\n{self.log_tail()}")

    def result(self, name: str) -> dict[str, Any]:
        return dict(json.loads(PartyFiles(self.root, name).result_path.read_text()))

    def weights(self, name: str) -> np.ndarray:
        return np.asarray(self.result(name)["weights"])

    def journal(self, *, collective: bool = False) -> dict[str, Any] | None:
        """The coordinator's training journal as it stands (``coordinator.checkpoint``): the
        key holder's, or the ``collective`` one."""
        folder = "collective" if collective else "training"
        path = self.workdir / "jobs" / JOB / folder / "journal.json"
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return None

    def party_log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        text = (
            self.coordinator_log.read_text(errors="replace")
            if self.coordinator_log.exists()
            else ""
        )
        return "\n".join(text.splitlines()[-lines:])


def _spawn(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)


def _kill_all(processes: list[psutil.Process]) -> None:
    """SIGKILL each of these processes (descendants this test started) still running."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(processes, timeout=30)
