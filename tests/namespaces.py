"""Hosts on one machine for the multi-host test: a private network of Linux network namespaces
and Ray worker nodes started inside them, each in a mount namespace of its own.

:class:`PrivateNetwork` makes a bridge holding the "head host" address (in this machine's own
namespace) and one network namespace per node, joined to the bridge by a veth pair, on a /24 of
10.231.0.0/16 that no route of this machine uses yet. A node there reaches the head, and the
head it, only over that bridge; it has no other interface than its loopback. Everything is
created here and removed by :meth:`PrivateNetwork.close`.

:class:`RayNode` runs ``ray start --block`` in one of those namespaces and in a fresh mount
namespace where the given directories are covered by an empty tmpfs: it cannot see the
coordinator's job directory. It runs in a session of its own, so killing its process group
kills the whole node, as a machine's power cut would.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

# A generous bound for a hung step, never a measured duration.
WAIT_S = 180.0


def namespaces_refused() -> str | None:
    """Why this machine cannot run the test (not root, no ``ip``/``unshare``, namespaces
    refused), or None."""
    if os.geteuid() != 0:
        return "creating network and mount namespaces needs root"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    probe = f"hmhprobe{secrets.token_hex(2)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` refused: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    mount = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         "mount -t tmpfs tmpfs /mnt"],
        capture_output=True, text=True,
    )  # fmt: skip
    if mount.returncode != 0:
        return f"`unshare --mount` refused: {mount.stderr.strip()}"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _free_subnet() -> str:
    """``10.231.X`` for an X no address or route of this machine uses."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    addresses = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    for _ in range(100):
        prefix = f"10.231.{secrets.randbelow(254) + 1}"
        if f"{prefix}." not in routes + addresses:
            return prefix
    raise RuntimeError("no free /24 in 10.231.0.0/16")


class PrivateNetwork:
    """The head's address on a bridge, and ``nodes`` network namespaces on it."""

    def __init__(self, nodes: int) -> None:
        tag = secrets.token_hex(2)
        prefix = _free_subnet()
        self.head_ip = f"{prefix}.1"
        self.node_ips = [f"{prefix}.{11 + k}" for k in range(nodes)]
        self.namespaces = [f"hefl-mh-{tag}-{k}" for k in range(nodes)]
        self._bridge = f"hmh{tag}b"
        self._made: list[tuple[str, ...]] = []
        try:
            _ip("link", "add", self._bridge, "type", "bridge")
            self._made.append(("link", "del", self._bridge))
            _ip("addr", "add", f"{self.head_ip}/24", "dev", self._bridge)
            _ip("link", "set", self._bridge, "up")
            for k, (namespace, address) in enumerate(
                zip(self.namespaces, self.node_ips, strict=True)
            ):
                _ip("netns", "add", namespace)
                self._made.append(("netns", "del", namespace))  # removes its veth pair too
                veth = f"hmh{tag}v{k}"
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
                _ip("link", "set", veth, "master", self._bridge)
                _ip("link", "set", veth, "up")
                _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
                _ip("-n", namespace, "link", "set", "eth0", "up")
                _ip("-n", namespace, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for command in reversed(self._made):
            subprocess.run(["ip", *command], capture_output=True)
        self._made = []


class RayNode:
    """``ray start --address HEAD --block`` inside ``namespace``, with ``hidden`` directories
    covered by an empty tmpfs in its own mount namespace.

    Args:
        env: The node's environment (Ray's token settings included).
        temp: Ray's temp directory for this node (outside ``hidden``; short, for Ray's sockets).
    """

    def __init__(
        self,
        *,
        namespace: str,
        address: str,
        head: str,
        hidden: list[Path],
        temp: Path,
        log: Path,
        env: dict[str, str],
        num_cpus: int = 1,
    ) -> None:
        self.namespace = namespace
        self.address = address
        self.log = log
        ray_start = [sys.executable, "-m", "ray.scripts.scripts", "start", "--address", head,
                     "--node-ip-address", address, "--num-cpus", str(num_cpus), "--block",
                     "--disable-usage-stats", "--temp-dir", str(temp)]  # fmt: skip
        cover = " && ".join(f"mount -t tmpfs hefl-hidden {shlex.quote(str(d))}" for d in hidden)
        script = f"{cover} && exec {shlex.join(ray_start)}"
        command = ["ip", "netns", "exec", namespace,
                   "unshare", "--mount", "--propagation", "private", "sh", "-c", script]  # fmt: skip
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def wait_until_up(self) -> None:
        deadline = time.monotonic() + WAIT_S
        while "Ray runtime started." not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Ray node {self.address} did not start:\n{self.tail()}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the whole node (its raylet, object store and workers)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class RayHead:
    """``ray start --head --block`` on ``address`` (this machine's namespace), without CPUs,
    so that every actor runs on a worker node."""

    def __init__(self, *, address: str, port: int, temp: Path, env: dict[str, str]) -> None:
        self.address = f"{address}:{port}"
        self.log = temp / "head.log"
        command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                   "--node-ip-address", address, "--port", str(port), "--num-cpus", "0",
                   "--include-dashboard", "false", "--disable-usage-stats",
                   "--temp-dir", str(temp / "head")]  # fmt: skip
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def wait_until_up(self) -> None:
        deadline = time.monotonic() + WAIT_S
        while "Ray runtime started." not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the Ray head did not start:\n{self.log.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=60)
