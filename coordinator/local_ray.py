"""A private single-node Ray cluster for a coordinator that was not given ``--ray-address``.

It runs as ``ray start --head --block`` (through :mod:`coordinator.ray_head`, which leaves
out Ray Client's server) in its own process group, started before anything else
so that it comes up (4-5 s) while parties register, encrypt and upload; the coordinator then
joins it like any cluster. It listens on 127.0.0.1 only, requires a random token that only this
coordinator knows, and dies with the coordinator (the whole process group is killed).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("hefl.ray")

# What `ray start` prints once the node is up (every Ray since 1.0).
READY_MARKER = "Ray runtime started."


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalRayCluster:
    def __init__(self, *, num_cpus: int | None = None) -> None:
        self.address = f"127.0.0.1:{_free_port()}"
        # Ray's unix sockets live below the temp dir; keep its path short (108-byte limit).
        self._temp = Path(tempfile.mkdtemp(prefix="hefl-ray-", dir="/tmp"))
        # `ray start` and the workers it spawns inherit these, and this process joins with them,
        # which is why it must be created before `ray` is imported here (Ray reads both at
        # import). The cluster switch off makes Ray keep 127.0.0.1 as the node address instead
        # of replacing it by the machine's routable one.
        if "ray" in sys.modules:
            raise RuntimeError("create LocalRayCluster before importing ray")
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        command = [
            sys.executable,
            "-m",
            "coordinator.ray_head",  # `ray start` without Ray Client's server
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            self.address.rsplit(":", 1)[1],
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
            # A private fixed-size node needs no autoscaler and no log forwarding (the
            # coordinator joins with log_to_driver=False); each is a Python process that would
            # compete with the parties for the CPU while Ray starts.
            "--no-monitor",
            "--include-log-monitor",
            "false",
            "--temp-dir",
            str(self._temp),
        ]
        if num_cpus:
            command += ["--num-cpus", str(num_cpus)]
        self._log_path = self._temp / "ray-start.log"
        self._log = self._log_path.open("wb")
        self._process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.info("starting a local Ray at %s (logs in %s)", self.address, self._temp)

    def check(self) -> None:
        """Raise if ``ray start`` has already exited."""
        if self._process.poll() is not None:
            text = self._log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"local Ray exited with code {self._process.returncode}:\n{text}")

    def wait_until_up(self, timeout_s: float = 120.0) -> None:
        """Block until ``ray start`` reports the node up, so that joining cannot hang on a
        cluster that died while starting (Ray's own client then retries for minutes).

        Raises:
            RuntimeError: ``ray start`` exited; the message ends with its log.
            TimeoutError: Not up within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            self.check()
            if READY_MARKER in self._log_path.read_text(errors="replace"):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"local Ray at {self.address} not up after {timeout_s:.0f} s "
                    f"(see {self._log_path})"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=30)
        self._log.close()
        shutil.rmtree(self._temp, ignore_errors=True)
