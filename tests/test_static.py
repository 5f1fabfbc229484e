"""The packages and the tests type-check and lint clean (generated stubs excluded)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["coordinator", "parties", "hefl", "tools", "bench"]


def test_mypy_on_the_packages_and_tests() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", *PACKAGES, "tests"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_lint() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", *PACKAGES, "tests", "proto"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
