"""Joining an existing Ray cluster is a checked step: `hefl coordinator --ray-address` against a
real `ray start --head` with token authentication fails at start-up, within seconds, with Ray's
reason and what to set, when its token is missing or wrong, and joins when it is right."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deployment import ray_head, ray_joining_coordinator, stopped_once_joined

pytestmark = pytest.mark.slow
# A generous bound for a hung test, never a measured duration.
WAIT_S = 120.0
# What the coordinator must stay under to refuse: seconds, not Ray's minutes of retries.
REFUSE_WITHIN_S = 30.0


def _clean_environment(home: Path) -> dict[str, str]:
    """This test's environment without any Ray token or mode, and a home without a token."""
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(home)
    return env


@pytest.fixture(scope="module")
def token_cluster() -> Iterator[tuple[str, str]]:
    """A one-node Ray cluster (`ray start --head`) on loopback requiring a token; yields its
    address and token."""
    temp = Path(tempfile.mkdtemp(prefix="hefl-rj-", dir="/tmp"))  # Ray's socket paths are short
    home = temp / "home"
    token = secrets.token_hex(32)
    env = _clean_environment(home) | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    try:
        with ray_head(temp, env) as address:
            yield address, token
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.parametrize(
    ("extra_env", "expected"),
    [
        pytest.param(
            {},
            "the cluster requires token authentication and this process sends no token "
            "(RAY_AUTH_MODE is unset); set RAY_AUTH_MODE=token and put the cluster's token in "
            "RAY_AUTH_TOKEN",
            id="no-token",
        ),
        pytest.param(
            {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64},
            "the token this process sends is not the cluster's; put the cluster's token in "
            "RAY_AUTH_TOKEN",
            id="wrong-token",
        ),
    ],
)
def test_a_coordinator_the_cluster_refuses_exits_at_once_with_rays_reason(
    token_cluster: tuple[str, str], tmp_path: Path, extra_env: dict[str, str], expected: str
) -> None:
    address, _ = token_cluster
    started = time.monotonic()
    process, log = ray_joining_coordinator(
        tmp_path, address, _clean_environment(tmp_path / "home") | extra_env
    )
    try:
        code = process.wait(timeout=WAIT_S)
    finally:
        if process.poll() is None:
            process.kill()
    elapsed = time.monotonic() - started
    output = log.read_text(errors="replace")

    assert code == 1, output
    assert elapsed < REFUSE_WITHIN_S, output
    assert "refused this coordinator (InvalidAuthToken" in output
    assert expected in output
    assert output.count("InvalidAuthToken") == 1  # not Ray's retry loop


def test_a_coordinator_with_the_clusters_token_joins_it(
    token_cluster: tuple[str, str], tmp_path: Path
) -> None:
    address, token = token_cluster
    process, log = ray_joining_coordinator(
        tmp_path,
        address,
        _clean_environment(tmp_path / "home") | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token},
    )
    output = stopped_once_joined(process, log, wait_s=WAIT_S)
    assert "InvalidAuthToken" not in output
