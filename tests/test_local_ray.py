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
