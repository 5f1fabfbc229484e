"""The training journal on disk: what a restarted coordinator resumes from
(:class:`coordinator.training.TrainingJournal`).

Layout under ``<workdir>/jobs/<job_id>/training/``::

    journal.json          the commit point: the masks, iterations refreshed and revealed, the
                          kind and iteration of the task in flight, and the SHA-256 of its blobs
    blobs/<sha256>.bin    the task in flight (a serialized KeyHolderTask, as sent) and, ahead
                          of a reveal, the fresh weights (a serialized Ciphertexts)

A save writes the blobs it needs first, then replaces ``journal.json`` atomically, then removes
the blobs it no longer names: a crash at any point leaves the previous or the new checkpoint,
whole. Loading checks every blob against its hash. The training loop saves once per key-holder
task, before sending it.

The masks are the coordinator's secret against the key holder (they hide the gradients and
the iterates from it); they stay on the coordinator's disk like everything else the
coordinator keeps, and the journal holds nothing the coordinator does not already know.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from coordinator.store import atomic_write
from coordinator.training import Checkpoint, PendingTask
from hefl.errors import FailedPrecondition
from hefl.protocols.refresh import RefreshMasks
from hefl.v1 import hefl_pb2 as pb

VERSION = 1


class JournalDamaged(FailedPrecondition):
    """The journal cannot be read back whole; the message names the file."""


class FileJournal:
    """A :class:`coordinator.training.TrainingJournal` in one job directory.

    Args:
        root: The journal's directory (``<job>/training``).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._journal = root / "journal.json"
        self._blobs = root / "blobs"

    def exists(self) -> bool:
        return self._journal.is_file()

    def load(self) -> Checkpoint | None:
        """Raises: JournalDamaged: unreadable journal, or a blob missing or not its hash."""
        if not self._journal.is_file():
            return None
        try:
            state = json.loads(self._journal.read_text())
            if state["version"] != VERSION:
                raise JournalDamaged(
                    f"{self._journal} is version {state['version']}, expected {VERSION}"
                )
            masks = RefreshMasks(
                label=_floats(state["masks"]["label"]),
                weights=_floats(state["masks"]["weights"]),
                velocity=_floats(state["masks"]["velocity"]),
            )
            weights: tuple[bytes, ...] = ()
            if state["weights"] is not None:
                weights = tuple(pb.Ciphertexts.FromString(self._blob(state["weights"])).ciphertexts)
            pending = None
            if state["pending"] is not None:
                entry = state["pending"]
                pending = PendingTask(
                    kind=str(entry["kind"]),
                    iteration=int(entry["iteration"]),
                    payload=self._blob(entry["payload"]),
                )
            return Checkpoint(
                masks=masks,
                done=int(state["done"]),
                revealed=int(state["revealed"]),
                weights=weights,
                pending=pending,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise JournalDamaged(f"{self._journal} cannot be read back ({err!r})") from err

    def save(self, checkpoint: Checkpoint) -> None:
        state: dict[str, Any] = {
            "version": VERSION,
            "masks": {
                "label": list(checkpoint.masks.label),
                "weights": list(checkpoint.masks.weights),
                "velocity": list(checkpoint.masks.velocity),
            },
            "done": checkpoint.done,
            "revealed": checkpoint.revealed,
            "weights": None,
            "pending": None,
        }
        keep = set()
        if checkpoint.weights:
            data = pb.Ciphertexts(ciphertexts=checkpoint.weights).SerializeToString()
            state["weights"] = self._put(data)
            keep.add(state["weights"])
        if checkpoint.pending is not None:
            state["pending"] = {
                "kind": checkpoint.pending.kind,
                "iteration": checkpoint.pending.iteration,
                "payload": self._put(checkpoint.pending.payload),
            }
            keep.add(state["pending"]["payload"])
        atomic_write(self._journal, json.dumps(state).encode())
        for blob in self._blobs.iterdir():
            if blob.stem not in keep:
                blob.unlink(missing_ok=True)

    def remove(self) -> None:
        """Forget the journal (the job is over)."""
        self._journal.unlink(missing_ok=True)
        if self._blobs.is_dir():
            for blob in self._blobs.iterdir():
                blob.unlink(missing_ok=True)

    def _put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self._blobs / f"{digest}.bin"
        if not path.is_file():
            atomic_write(path, data)
        return digest

    def _blob(self, digest: str) -> bytes:
        path = self._blobs / f"{digest}.bin"
        try:
            data = path.read_bytes()
        except OSError as err:
            raise JournalDamaged(f"{path} is missing ({err.strerror})") from err
        if hashlib.sha256(data).hexdigest() != digest:
            raise JournalDamaged(f"{path} does not match its hash")
        return data


def _floats(values: list[Any]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)
