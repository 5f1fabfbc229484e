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

Collective jobs keep theirs the same way under ``<workdir>/jobs/<job_id>/collective/``
(:class:`CollectiveFileJournal`)::

    keys.json             once the roster made the keys: the agreed seed (the common random
                          string), every party's signature over the context, keygen's cost
    journal.json          the commit point: the step in flight, the masked state it was made
                          from, the SHA-256 of each party's task blob
    blobs/<sha256>.bin    each party's task of the step in flight, as sent
    setup/journal.json    until uploads open: every setup step sent (keys, statistics, label
                          terms), the SHA-256 of each party's task and, once all are in, of
                          each party's answer (:class:`SetupFileJournal`)
    setup/blobs/          those tasks and answers

Neither holds a key share or a party's mask: only what the parties sent or were sent, and the
coordinator's masked state (w + A, v + B, C + sum c_i).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coordinator.collective import STEP_ORDER, CollectiveCheckpoint, KeyGeneration, SetupStep
from coordinator.store import atomic_write
from coordinator.training import Checkpoint, PendingTask
from hefl.errors import FailedPrecondition, HeflError
from hefl.params import CkksParameters
from hefl.protocols.collective.crs import CommonRandomString
from hefl.protocols.collective.shares import CollectiveJob
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
            state = _read_journal(self._journal)
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
        _write_journal(self._journal, self._blobs, state, keep=keep)

    def remove(self) -> None:
        """Forget the journal (the job is over)."""
        _remove_journal(self._journal, self._blobs)

    def _put(self, data: bytes) -> str:
        return _put(self._blobs, data)

    def _blob(self, digest: str) -> bytes:
        return _blob(self._blobs, digest)


class CollectiveFileJournal:
    """A :class:`coordinator.collective.CollectiveJournal` in one job directory, and the
    record of the job's collective keys (module docstring).

    Args:
        root: The collective state's directory (``<job>/collective``).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._journal = root / "journal.json"
        self._keys = root / "keys.json"
        self._blobs = root / "blobs"

    def has_keys(self) -> bool:
        """Whether the roster's keys were made (and :meth:`save_keys` kept them)."""
        return self._keys.is_file()

    def setup(self) -> SetupFileJournal:
        """The setup's journal, under ``setup/``."""
        return SetupFileJournal(self.root / "setup")

    def save_keys(self, keys: KeyGeneration) -> None:
        """Keep what a restarted coordinator needs of the collective setup (all public)."""
        state = {
            "version": VERSION,
            "seed": keys.job.crs.seed.hex(),
            "parties": list(keys.job.parties),
            "context_signatures": {p: s.hex() for p, s in keys.context_signatures.items()},
            "keygen_s": keys.seconds,
            "keygen_bytes_per_party": keys.bytes_per_party,
        }
        atomic_write(self._keys, json.dumps(state).encode())

    def load_keys(
        self, *, params: CkksParameters, job_id: str, context_bytes: bytes
    ) -> KeyGeneration:
        """The collective setup as :meth:`save_keys` kept it, around the job's context.

        Raises:
            JournalDamaged: ``keys.json`` is missing or cannot be read back.
        """
        try:
            state = json.loads(self._keys.read_text())
            if state["version"] != VERSION:
                raise JournalDamaged(
                    f"{self._keys} is version {state['version']}, expected {VERSION}"
                )
            job = CollectiveJob(
                params,
                job_id,
                tuple(str(p) for p in state["parties"]),
                CommonRandomString(bytes.fromhex(state["seed"])),
            )
            return KeyGeneration(
                job=job,
                context_bytes=context_bytes,
                seconds=float(state["keygen_s"]),
                bytes_per_party={
                    str(p): int(n) for p, n in state["keygen_bytes_per_party"].items()
                },
                context_signatures={
                    str(p): bytes.fromhex(s) for p, s in state["context_signatures"].items()
                },
            )
        except OSError as err:
            raise JournalDamaged(f"{self._keys} cannot be read ({err.strerror})") from err
        except (KeyError, TypeError, ValueError, HeflError) as err:
            raise JournalDamaged(f"{self._keys} cannot be read back ({err!r})") from err

    def load(self) -> CollectiveCheckpoint | None:
        """Raises: JournalDamaged: unreadable journal, or a blob missing or not its hash."""
        if not self._journal.is_file():
            return None
        try:
            state = _read_journal(self._journal)
            step = str(state["step"])
            if step not in STEP_ORDER:
                raise JournalDamaged(f"{self._journal} names no training step: {step!r}")
            return CollectiveCheckpoint(
                step=step,
                tasks={str(p): _blob(self._blobs, d) for p, d in state["tasks"].items()},
                done=int(state["done"]),
                label=_floats(state["label"]),
                weights=_floats(state["weights"]),
                velocity=_floats(state["velocity"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise JournalDamaged(f"{self._journal} cannot be read back ({err!r})") from err

    def save(self, checkpoint: CollectiveCheckpoint) -> None:
        tasks = {p: _put(self._blobs, task) for p, task in checkpoint.tasks.items()}
        state: dict[str, Any] = {
            "version": VERSION,
            "step": checkpoint.step,
            "done": checkpoint.done,
            "label": list(checkpoint.label),
            "weights": list(checkpoint.weights),
            "velocity": list(checkpoint.velocity),
            "tasks": tasks,
        }
        _write_journal(self._journal, self._blobs, state, keep=set(tasks.values()))

    def remove(self) -> None:
        """Forget the journal (the job is over); the keys' record stays with the job."""
        _remove_journal(self._journal, self._blobs)


class SetupFileJournal:
    """A :class:`coordinator.collective.SetupJournal` in one job directory.

    Args:
        root: Its directory (``<job>/collective/setup``).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._journal = root / "journal.json"
        self._blobs = root / "blobs"

    def load(self) -> list[SetupStep]:
        """Raises: JournalDamaged: unreadable journal, or a blob missing or not its hash."""
        if not self._journal.is_file():
            return []
        try:
            state = _read_journal(self._journal)
            return [
                SetupStep(
                    step=str(entry["step"]),
                    tasks={str(p): _blob(self._blobs, d) for p, d in entry["tasks"].items()},
                    answers=None
                    if entry["answers"] is None
                    else {str(p): _blob(self._blobs, d) for p, d in entry["answers"].items()},
                )
                for entry in state["steps"]
            ]
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise JournalDamaged(f"{self._journal} cannot be read back ({err!r})") from err

    def save(self, steps: Sequence[SetupStep]) -> None:
        entries: list[dict[str, Any]] = []
        keep: set[str] = set()
        for step in steps:
            tasks = {p: _put(self._blobs, d) for p, d in step.tasks.items()}
            answers = (
                None
                if step.answers is None
                else {p: _put(self._blobs, d) for p, d in step.answers.items()}
            )
            keep |= set(tasks.values()) | set((answers or {}).values())
            entries.append({"step": step.step, "tasks": tasks, "answers": answers})
        state = {"version": VERSION, "steps": entries}
        _write_journal(self._journal, self._blobs, state, keep=keep)

    def remove(self) -> None:
        """Forget the setup (uploads are open: a restart resumes from the keys' record)."""
        _remove_journal(self._journal, self._blobs)
        for folder in (self._blobs, self.root):
            if folder.is_dir():
                folder.rmdir()


def _read_journal(journal: Path) -> dict[str, Any]:
    """A journal's state, of this version.

    Raises:
        JournalDamaged: Another version.
    """
    state: dict[str, Any] = json.loads(journal.read_text())
    if state["version"] != VERSION:
        raise JournalDamaged(f"{journal} is version {state['version']}, expected {VERSION}")
    return state


def _write_journal(journal: Path, blobs: Path, state: dict[str, Any], *, keep: set[str]) -> None:
    """Replace the journal with ``state``, then drop the blobs it no longer names (``keep``)."""
    atomic_write(journal, json.dumps(state).encode())
    for blob in blobs.iterdir():
        if blob.stem not in keep:
            blob.unlink(missing_ok=True)


def _remove_journal(journal: Path, blobs: Path) -> None:
    journal.unlink(missing_ok=True)
    if blobs.is_dir():
        for blob in blobs.iterdir():
            blob.unlink(missing_ok=True)


def _put(blobs: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    path = blobs / f"{digest}.bin"
    if not path.is_file():
        atomic_write(path, data)
    return digest


def _blob(blobs: Path, digest: str) -> bytes:
    path = blobs / f"{digest}.bin"
    try:
        data = path.read_bytes()
    except OSError as err:
        raise JournalDamaged(f"{path} is missing ({err.strerror})") from err
    if hashlib.sha256(data).hexdigest() != digest:
        raise JournalDamaged(f"{path} does not match its hash")
    return data


def _floats(values: list[Any]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)
