"""The job directory: every accepted byte is on disk before the party hears "accepted".

Layout under ``<workdir>/jobs/<job_id>/``::

    job.json                      job state (:class:`JobRecord`: phase, parties, options, ...)
    context.bin                   the public context
    charter.pb                    the charter and its key holder's signature (jobs over TLS)
    stats/<party>/<piece>.bin     encrypted statistics (and signature.sig, the party's)
    columns/<party>/<b>-<j>.bin   encrypted column j of block b, this party's rows only
    label_terms/<party>.bin       encrypted label term
    label_terms/<party>.sig       the party's signature over it (collective mode)
    models/<party>.bin            the sealed model (a serialized SealedModel)
    report.json                   timings and traffic of the training run
    training/, collective/        the training journal, key holder's or collective
                                  (:mod:`coordinator.checkpoint`)

Every write is atomic and durable (:func:`atomic_write`): after a crash a file holds either its
previous content or the whole new one, and a write that returned survives a crash. The
coordinator reads the columns from here to give Ray workers their shards (again, to a worker
Ray restarted); workers never read this directory, so it need not be on shared storage.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hefl.errors import InvalidArgument
from hefl.identity import check_name
from hefl.v1 import hefl_pb2 as pb

__all__ = [
    "JobRecord",
    "JobStore",
    "PartyRecord",
    "atomic_write",
    "check_name",
    "job_roots",
    "remove_temporaries",
]

# Temporary files are ".<name>.<random><TMP_SUFFIX>" next to their target.
TMP_SUFFIX = ".hefl-tmp"


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path``'s content by ``data``, atomically and durably.

    The bytes go to a temporary file of a name unique to this call, which is fsynced and then
    renamed over ``path``; the directory is fsynced after the rename (and every directory this
    call creates, after its creation), so once this returns the new content survives a crash of
    the process or the machine. Concurrent writers of one path each write whole files: the last
    rename wins.
    """
    _make_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}{TMP_SUFFIX}")
    # Created as open() would (0666 less the umask, not mkstemp's 0600): an operator's tools
    # (backups, a copy to another machine) read these as any other file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _make_dirs(directory: Path) -> None:
    if directory.is_dir():
        return
    _make_dirs(directory.parent)
    try:
        directory.mkdir()
    except FileExistsError:
        return
    _fsync_dir(directory.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_temporaries(root: Path) -> list[Path]:
    """Delete what writes interrupted by a crash left under ``root``; returns the paths."""
    stale = sorted(p for p in root.rglob(f".*{TMP_SUFFIX}") if p.is_file())
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


@dataclass(frozen=True)
class PartyRecord:
    name: str
    # The party's PartyHello as it sent it (sealing key, signing key, the signature binding them).
    hello: pb.PartyHello
    stats: bool
    rows: int
    upload_complete: bool


@dataclass(frozen=True)
class JobRecord:
    """What ``job.json`` holds: the job's state, apart from the files it names."""

    job_id: str
    parameter_set: str
    features: tuple[str, ...]
    expected_parties: int
    key_holder: str
    options: pb.TrainingOptions
    phase: pb.Phase
    message: str
    parties: tuple[PartyRecord, ...]
    standardization: pb.Standardization | None
    layout_slots: int | None
    # Whether the job has a charter.pb: a restored job must not lose its roster with a file.
    # None in records written before this field existed (then charter.pb decides).
    chartered: bool | None

    def to_json(self) -> bytes:
        options = self.options
        state: dict[str, Any] = {
            "job_id": self.job_id,
            "parameter_set": self.parameter_set,
            "features": list(self.features),
            "expected_parties": self.expected_parties,
            "key_holder": self.key_holder,
            "options": {
                "iterations": options.iterations,
                "learning_rate": options.learning_rate,
                "l2": options.l2,
                "sigmoid_interval": options.sigmoid_interval,
                "reveal_intermediate": options.reveal_intermediate,
                "model": options.model,
                "classes": options.classes,
            },
            "phase": pb.Phase.Name(self.phase),
            "message": self.message,
            "parties": [
                {
                    "name": p.name,
                    "hello": p.hello.SerializeToString().hex(),
                    "stats": p.stats,
                    "rows": p.rows,
                    "upload_complete": p.upload_complete,
                }
                for p in self.parties
            ],
            "standardization": None
            if self.standardization is None
            else {
                "count": self.standardization.count,
                "mean": list(self.standardization.mean),
                "std": list(self.standardization.std),
                "curvature": self.standardization.curvature,
            },
            "layout_slots": self.layout_slots,
            "chartered": self.chartered,
        }
        return json.dumps(state, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> JobRecord:
        """Parse ``job.json`` strictly.

        Raises:
            InvalidArgument: Not JSON, or a field missing or of the wrong type; the message
                names the field.
        """
        try:
            state = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InvalidArgument(f"not JSON ({err})") from err
        read = _Fields(state, "job.json")
        options = _Fields(read.get("options", dict), "options")
        parties = []
        for index, entry in enumerate(read.get("parties", list)):
            party = _Fields(entry, f"parties[{index}]")
            try:
                hello = pb.PartyHello.FromString(bytes.fromhex(party.get("hello", str)))
            except Exception as err:  # protobuf's DecodeError, or bad hex
                raise InvalidArgument(f"parties[{index}].hello does not parse ({err})") from err
            parties.append(
                PartyRecord(
                    name=check_name("party", party.get("name", str)),
                    hello=hello,
                    stats=party.get("stats", bool),
                    rows=party.get("rows", int),
                    upload_complete=party.get("upload_complete", bool),
                )
            )
        standardization = None
        if state.get("standardization") is not None:
            given = _Fields(read.get("standardization", dict), "standardization")
            standardization = pb.Standardization(
                count=given.get("count", int),
                mean=given.get("mean", list),
                std=given.get("std", list),
                curvature=given.get("curvature", float),
            )
        phase_name = read.get("phase", str)
        if phase_name not in pb.Phase.keys():
            raise InvalidArgument(f"job.json: unknown phase {phase_name!r}")
        layout_slots = state.get("layout_slots")
        if layout_slots is not None and (type(layout_slots) is not int or layout_slots <= 0):
            raise InvalidArgument(f"job.json: layout_slots {layout_slots!r} is not a slot count")
        chartered = state.get("chartered")
        if chartered is not None and type(chartered) is not bool:
            raise InvalidArgument("job.json: chartered is not a boolean")
        features = read.get("features", list)
        if not all(isinstance(name, str) for name in features):
            raise InvalidArgument("job.json: features are not all strings")
        return cls(
            job_id=check_name("job", read.get("job_id", str)),
            parameter_set=read.get("parameter_set", str),
            features=tuple(features),
            expected_parties=read.get("expected_parties", int),
            key_holder=read.get("key_holder", str),
            options=pb.TrainingOptions(
                iterations=options.get("iterations", int),
                learning_rate=options.get("learning_rate", float),
                l2=options.get("l2", float),
                sigmoid_interval=options.get("sigmoid_interval", float),
                reveal_intermediate=options.get("reveal_intermediate", bool),
                # Jobs stored before models existed are logistic.
                model=options.get("model", str) if options.has("model") else "",
                classes=options.get("classes", int) if options.has("classes") else 0,
            ),
            phase=pb.Phase.Value(phase_name),
            message=read.get("message", str),
            parties=tuple(parties),
            standardization=standardization,
            layout_slots=layout_slots,
            chartered=chartered,
        )


class _Fields:
    """Typed access to one JSON object's fields, naming the field that is wrong."""

    def __init__(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise InvalidArgument(f"{where} is not a JSON object")
        self._value = value
        self._where = where

    def has(self, name: str) -> bool:
        return name in self._value

    def get(self, name: str, kind: type) -> Any:
        if name not in self._value:
            raise InvalidArgument(f"{self._where} lacks {name!r}")
        value = self._value[name]
        # JSON writes 1.0 as 1.0 but a hand-edited file may say 1: accept ints for floats.
        if kind is float and type(value) is int:
            value = float(value)
        if type(value) is not kind:
            raise InvalidArgument(
                f"{self._where}.{name} is {type(value).__name__}, expected {kind.__name__}"
            )
        return value


class JobStore:
    """Files of one job."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write_record(self, record: JobRecord) -> None:
        atomic_write(self.record_path(), record.to_json())

    def read_record(self) -> JobRecord:
        """Raises: InvalidArgument: ``job.json`` does not parse (the message says where)."""
        return JobRecord.from_json(self.record_path().read_bytes())

    def record_path(self) -> Path:
        return self.root / "job.json"

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

    def label_term_signature_path(self, party: str) -> Path:
        return self.root / "label_terms" / f"{party}.sig"

    def model_path(self, party: str) -> Path:
        return self.root / "models" / f"{party}.bin"

    def report_path(self) -> Path:
        return self.root / "report.json"

    def collective_path(self) -> Path:
        """The collective setup's record and training journal (:mod:`coordinator.checkpoint`)."""
        return self.root / "collective"

    def relative(self, path: Path) -> str:
        """``path`` as the job directory's operators see it in messages."""
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)


def job_roots(workdir: Path) -> list[Path]:
    jobs = workdir / "jobs"
    if not jobs.is_dir():
        return []
    return sorted(p for p in jobs.iterdir() if (p / "job.json").is_file())
