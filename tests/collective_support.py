"""Shared set-up of the collective-protocol tests."""

from __future__ import annotations

import hashlib
from typing import Any

PARTIES = ("hospital-a", "hospital-b", "hospital-c")


def seeded_bytes(label: str) -> Any:
    """A deterministic byte source for tests (SHAKE-256 of a counter): never outside tests."""
    counter = 0

    def random_bytes(count: int) -> bytes:
        nonlocal counter
        counter += 1
        return hashlib.shake_256(f"{label}/{counter}".encode()).digest(count)

    return random_bytes
