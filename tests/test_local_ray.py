"""The coordinator's private Ray: a failed start is reported at once, with Ray's own words."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_ray_start_that_dies_is_reported_with_its_log_not_waited_for():
    # In a fresh interpreter: LocalRayCluster must be created before `import ray`, and this
    # test process has imported it. A negative CPU count makes `ray start` itself fail.
    script = textwrap.dedent(
        """
        from coordinator.local_ray import LocalRayCluster

        cluster = LocalRayCluster(num_cpus=-1)
        try:
            cluster.wait_until_up(timeout_s=60)
        finally:
            cluster.stop()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "local Ray exited with code" in done.stderr
    assert "Resource quantities must be nonnegative" in done.stderr


def test_the_private_ray_runs_no_ray_client_server():
    """The coordinator joins its private Ray as a driver: no Ray Client server process, no
    port 10001 (coordinator/ray_head.py). The cluster's own GCS is found the same way, so the
    scan does see this cluster's processes."""
    script = textwrap.dedent(
        """
        from pathlib import Path

        from coordinator.local_ray import LocalRayCluster

        def processes(*words):
            found = 0
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    args = cmdline.read_bytes().replace(b"\\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                found += all(word in args for word in words)
            return found

        cluster = LocalRayCluster(num_cpus=1)
        port = cluster.address.rsplit(":", 1)[1]
        try:
            cluster.wait_until_up(timeout_s=120)
            print("gcs", processes("gcs_server", f"--gcs_server_port={port}"))
            print("client", processes("ray.util.client.server", f"--address={cluster.address}"))
        finally:
            cluster.stop()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["gcs", "1", "client", "0"]
