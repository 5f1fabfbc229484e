"""`hefl simulate` when one of its processes fails: the simulation notices whichever process
fails, stops the others and names the failed role with the end of its log, instead of waiting
for the key holder until its deadline. Real processes: a coordinator with its own local Ray and
parties over gRPC on loopback."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tools import simulate as simulation
from tools.simulate import SimulationConfig, SimulationFailed

pytestmark = pytest.mark.slow
GUARD_S = 300.0  # a hang guard on the whole simulation, not a timing


@pytest.mark.timeout(GUARD_S)
def test_a_party_with_a_bad_label_fails_the_simulation_naming_it_and_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hospital-1 (not the first party, on which the simulation used to wait) gets a training
    CSV with a label that is not 0 or 1, refuses it and exits; its peers would wait for it."""
    write_party_data = simulation.write_party_data

    def with_a_bad_label(config: SimulationConfig, parties: list[simulation.PartyFiles]):  # type: ignore[no-untyped-def]
        written = write_party_data(config, parties)
        train = parties[1].train
        header, first, *rest = train.read_text().splitlines()
        first = first.rsplit(",", 1)[0] + ",maybe"
        train.write_text("\n".join([header, first, *rest]) + "\n")
        return written

    monkeypatch.setattr(simulation, "write_party_data", with_a_bad_label)
    config = SimulationConfig(parties=3, iterations=3, workers=1, workdir=tmp_path)

    with pytest.raises(SimulationFailed) as failed:
        simulation.simulate(config)

    message = str(failed.value)
    assert message.startswith("hospital-1 exited with code 1; see ")
    assert "maybe" in message  # the party's own error, from the end of its log
    for process in psutil.process_iter(["cmdline"]):  # nothing of the simulation is left
        assert str(tmp_path) not in " ".join(process.info["cmdline"] or ())


def test_a_killed_party_fails_hefl_simulate_with_its_name_and_a_non_zero_exit(
    tmp_path: Path,
) -> None:
    """The key holder's peer dies on SIGKILL mid-job; the command exits 1 naming it."""
    command = [
        sys.executable, "-m", "tools.cli", "simulate", "--trust", "key-holder", "--insecure",
        "--parties", "3", "--iterations", "30", "--workers", "1", "--workdir", str(tmp_path),
    ]  # fmt: skip
    simulate = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim = _wait_for_party(simulate.pid, "hospital-2")
        victim.kill()
        stdout, stderr = simulate.communicate(timeout=GUARD_S)
    finally:
        if simulate.poll() is None:  # the guard fired: stop the simulation and what it started
            for process in [*psutil.Process(simulate.pid).children(recursive=True), simulate]:
                process.kill()
            simulate.wait()

    assert simulate.returncode == 1, stdout + stderr
    assert "Error: hospital-2 exited on SIGKILL with code -9; see " in stderr
    assert str(tmp_path / "logs" / "hospital-2.log") in stderr


def _wait_for_party(simulate_pid: int, name: str) -> psutil.Process:
    """The party process named ``name`` among the simulation's children, once started."""
    deadline = time.monotonic() + GUARD_S
    while time.monotonic() < deadline:
        for child in psutil.Process(simulate_pid).children():
            try:
                cmdline = child.cmdline()
            except psutil.NoSuchProcess:
                continue
            if "party" in cmdline and any(arg.endswith(f"{name}.csv") for arg in cmdline):
                return child
        time.sleep(0.05)
    raise AssertionError(f"{name} never started")
