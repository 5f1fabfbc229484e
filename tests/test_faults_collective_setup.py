"""The coordinator killed during a collective job's setup or its uploads, on real processes: ``hefl
coordinator`` (its own local Ray) and three ``hefl party`` processes over mutual TLS on
loopback, training breast cancer. The coordinator is killed (SIGKILL) with a setup step in
flight (the roster's key shares, before the keys are made; or the statistics' decryption, after
the keys and the statistics) and restarted on the same work directory and address: it restores
the job (without a context before the keys, with the context the roster signed after), replays
the steps the parties answered from its setup journal, sends the one in flight again, and every
party ends with the float64 replica's model, each setup step taken once. Killed while a party
uploads, it restores the ciphertexts that party sent; the party uploads again, replacing them,
and the job ends the same way."""

from __future__ import annotations

import json
import time

import pytest

from tests.deployment import (
    JOB,
    ROSTER,
    WAIT_S,
    Deployment,
    assert_the_roster_resumed,
    prepare,
)
from tests.helpers import COLLECTIVE_BOUND as BOUND

pytestmark = pytest.mark.slow
ITERATIONS = 3


@pytest.mark.parametrize(
    ("kill_at", "keys_made"),
    [(4, False), (10, True)],  # keys-reveal; stats-open (after context, stats commit and stats)
    ids=["keys", "statistics"],
)
def test_the_coordinator_killed_during_the_collective_setup_resumes_it(
    tmp_path, kill_at: int, keys_made: bool
):
    project, label = prepare(tmp_path)
    deployment = Deployment(tmp_path, project, label)
    journal = deployment.workdir / "jobs" / JOB / "collective" / "setup" / "journal.json"
    try:
        deployment.start_parties(iterations=ITERATIONS, trust="collective")
        deadline = time.monotonic() + WAIT_S
        while not _in_flight(journal, kill_at):
            assert time.monotonic() < deadline, f"never saw setup step {kill_at} in flight"
            time.sleep(0.005)
        deployment.kill_coordinator()
        steps = json.loads(journal.read_text())["steps"]
        had_keys = (journal.parent.parent / "keys.json").is_file()
        deployment.start_coordinator()
        codes = deployment.wait_for_parties()

        assert codes == dict.fromkeys(ROSTER, 0), deployment.log_tail()
        in_flight = steps[-1]["step"]
        assert steps[-1]["answers"] is None and had_keys == keys_made, steps
        log = deployment.coordinator_log.read_text()
        assert "resuming the collective setup after a restart" in log
        assert f"sending the collective setup's step {in_flight!r} again" in log
        assert_the_roster_resumed(deployment, ITERATIONS, BOUND)
        assert not journal.exists()  # uploads opened: the setup journal is gone
    finally:
        deployment.stop()


def _in_flight(journal, count: int) -> bool:
    """Whether the setup journal has ``count`` steps or more and its last is unanswered."""
    try:
        steps = json.loads(journal.read_text())["steps"]
    except (OSError, ValueError):  # not written yet
        return False
    return len(steps) >= count and steps[-1]["answers"] is None


def test_the_coordinator_killed_during_an_upload_takes_it_again(tmp_path):
    project, label = prepare(tmp_path)
    deployment = Deployment(tmp_path, project, label)
    columns = deployment.workdir / "jobs" / JOB / "columns"
    try:
        deployment.start_parties(iterations=ITERATIONS, trust="collective")
        deadline = time.monotonic() + WAIT_S
        while not _mid_upload(columns):
            assert time.monotonic() < deadline, "never saw an upload under way"
            time.sleep(0.002)
        deployment.kill_coordinator()
        deployment.start_coordinator()
        codes = deployment.wait_for_parties()

        assert codes == dict.fromkeys(ROSTER, 0), deployment.log_tail()
        logs = "".join(deployment.party_log(name) for name in ROSTER)
        assert "uploading to job" in logs and "lost the coordinator" in logs
        assert_the_roster_resumed(deployment, ITERATIONS, BOUND)
    finally:
        deployment.stop()


def _mid_upload(columns) -> bool:
    """Whether some party has sent some of its column ciphertexts but not all (breast cancer:
    30 features and the bias)."""
    try:
        counts = [len(list(party.glob("*.bin"))) for party in columns.iterdir()]
    except OSError:  # not created yet
        return False
    return any(0 < count < 31 for count in counts)
