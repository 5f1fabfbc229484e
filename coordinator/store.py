"""The job directory: every accepted byte is on disk before the party hears "accepted".

Layout under ``<workdir>/jobs/<job_id>/``::

    job.json                      job state (phase, parties, options, standardization, layout)
    context.bin                   the public context
    charter.pb                    the charter and its key holder's signature (jobs over TLS)
    stats/<party>/<piece>.bin     encrypted statistics (and signature.sig, the party's)
    columns/<party>/<b>-<j>.bin   encrypted column j of block b, this party's rows only
    label_terms/<party>.bin       encrypted label term
    models/<party>.bin            the sealed model (a serialized SealedModel)
    report.json                   timings and traffic of the training run

Writes are atomic (temporary file, then rename), so a crash never leaves half a ciphertext.
Ray workers read the columns from here, which is what lets a restarted worker rebuild its
shards; on a multi-node cluster the work directory must be on storage every node mounts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hefl.identity import check_name

__all__ = ["JobStore", "atomic_write", "check_name", "job_roots"]


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class JobStore:
    """Files of one job."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write_state(self, state: dict[str, Any]) -> None:
        atomic_write(self.root / "job.json", json.dumps(state, indent=1).encode())

    def read_state(self) -> dict[str, Any]:
        return json.loads((self.root / "job.json").read_text())

    def context_path(self) -> Path:
        return self.root / "context.bin"

    def stats_path(self, party: str, piece: int) -> Path:
        return self.root / "stats" / party / f"{piece}.bin"

    def stats_signature_path(self, party: str) -> Path:
        return self.root / "stats" / party / "signature.sig"

    def charter_path(self) -> Path:
        return self.root / "charter.pb"

    def column_path(self, party: str, block: int, column: int) -> Path:
        return self.root / "columns" / party / f"{block}-{column}.bin"

    def label_term_path(self, party: str) -> Path:
        return self.root / "label_terms" / f"{party}.bin"

    def model_path(self, party: str) -> Path:
        return self.root / "models" / f"{party}.bin"

    def report_path(self) -> Path:
        return self.root / "report.json"


def job_roots(workdir: Path) -> list[Path]:
    jobs = workdir / "jobs"
    if not jobs.is_dir():
        return []
    return sorted(p for p in jobs.iterdir() if (p / "job.json").is_file())
