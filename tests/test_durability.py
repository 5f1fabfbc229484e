"""Durability: writes that survive a crash whole, and a restore that verifies every file a job
relies on, failing that job (named file and all) and never the coordinator or another job."""

from __future__ import annotations

import os
import shutil
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tenseal as ts

from coordinator.inprocess_pool import in_process_pool_factory
from coordinator.limits import Limits
from coordinator.persistence import restore_job
from coordinator.store import TMP_SUFFIX, JobRecord, JobStore, PartyRecord, atomic_write
from hefl import sealio
from hefl.errors import InvalidArgument
from hefl.params import PARAMETER_SETS
from hefl.v1 import hefl_pb2 as pb
from tests.conftest import RunningCoordinator
from tests.helpers import (
    FEATURES,
    column,
    create_job,
    key_holder,
    start_key_holder,
    to_uploading,
    watch_until,
    whole_upload,
)

# ----- atomic, durable writes -------------------------------------------------------------------


def test_concurrent_writers_of_one_path_each_write_a_whole_file(tmp_path: Path) -> None:
    """Temporary names are unique per write, not per process: threads of one coordinator
    writing the same file (a party re-sending a column) never trip over each other."""
    path = tmp_path / "columns" / "h2" / "0-0.bin"
    payloads = [bytes([i]) * (64 * 1024 + i) for i in range(8)]
    errors: list[BaseException] = []

    def write(data: bytes) -> None:
        try:
            for _ in range(25):
                atomic_write(path, data)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert path.read_bytes() in payloads
    assert [p.name for p in path.parent.iterdir()] == ["0-0.bin"]


def test_a_write_is_fsynced_file_then_directory_and_so_are_new_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What reaches the disk, in order (os.fsync and os.replace still do their work; the spy
    only records what they were given)."""
    events: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def spy_replace(src: str | Path, dst: str | Path) -> None:
        events.append(("rename", str(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    path = tmp_path / "stats" / "h2" / "0.bin"

    atomic_write(path, b"ciphertext")

    root = str(tmp_path)
    temporary = events[2][1]
    assert events == [
        ("fsync", root),  # stats/ created
        ("fsync", f"{root}/stats"),  # stats/h2/ created
        ("fsync", temporary),  # the data, under its temporary name
        ("rename", str(path)),
        ("fsync", f"{root}/stats/h2"),  # the rename
    ]
    assert Path(temporary).parent == path.parent and temporary.endswith(TMP_SUFFIX)
    assert path.read_bytes() == b"ciphertext"


def test_the_job_record_round_trips_and_names_what_does_not_parse() -> None:
    hello = pb.PartyHello(name="kh", features=["a"], seal_public_key=b"k" * 32)
    record = JobRecord(
        job_id="job-1",
        parameter_set="n8192-depth4",
        features=("a",),
        expected_parties=2,
        key_holder="kh",
        options=pb.TrainingOptions(iterations=2, learning_rate=0.5),
        phase=pb.UPLOADING,
        message="",
        parties=(PartyRecord(name="kh", hello=hello, stats=True, rows=3, upload_complete=False),),
        standardization=pb.Standardization(count=3, mean=[1.0], std=[2.0], curvature=1.0),
        layout_slots=4096,
        chartered=False,
    )

    assert JobRecord.from_json(record.to_json()) == record
    broken = record.to_json().replace(b'"rows": 3', b'"rows": "3"')
    with pytest.raises(InvalidArgument, match=r"parties\[0\]\.rows is str, expected int"):
        JobRecord.from_json(broken)
    with pytest.raises(InvalidArgument, match="not JSON"):
        JobRecord.from_json(record.to_json()[:40])


# ----- restore ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(
    tmp_path_factory: pytest.TempPathFactory,
    private_context: ts.Context,
    public_context: ts.Context,
    public_context_bytes: bytes,
) -> Path:
    """A work directory as a coordinator left it: job-1 uploading (kh's upload complete, two of
    h2's columns in), job-2 uploading (one of kh's columns in), job-3 done."""
    workdir = tmp_path_factory.mktemp("pristine") / "work"
    running = RunningCoordinator(workdir, in_process_pool_factory(workers=1))
    options = pb.TrainingOptions(iterations=2)
    sessions = []
    try:
        for job_id in ("job-1", "job-2", "job-3"):
            create_job(running.stub, public_context_bytes, job_id=job_id, options=options)
            sessions.append(
                start_key_holder(running.stub, key_holder(private_context, job_id), job_id)
            )
            to_uploading(running.stub, public_context, job_id)
        running.stub.Upload(whole_upload(public_context, "kh", "job-1"))
        running.stub.Upload(_columns(public_context, "job-1", "h2", [0, 1]))
        running.stub.Upload(_columns(public_context, "job-2", "kh", [0]))
        for party in ("kh", "h2"):
            running.stub.Upload(whole_upload(public_context, party, "job-3"))
        watch_until(running.stub, pb.DONE, job_id="job-3")
    finally:
        for session in sessions:
            session.stop()
        running.stop()
    return workdir


def _columns(
    context: ts.Context, job_id: str, party: str, features: list[int]
) -> Iterator[pb.UploadChunk]:
    for seq, feature in enumerate(features):
        yield pb.UploadChunk(
            job_id=job_id, party=party, seq=seq, columns=[column(context, feature=feature)]
        )


@pytest.fixture
def workdir(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "work"
    shutil.copytree(pristine, copy)
    return copy


def _vector(context: ts.Context, values: int) -> bytes:
    return sealio.serialize(ts.ckks_vector(context, np.zeros(values)))


def _sizes_only(values: int) -> bytes:
    """A CKKS vector proto that declares ``values`` slots and holds no ciphertext: it loads,
    and adding it to another crashes SEAL (issue 12's SubmitStats crash)."""
    size = bytes([0x80 | (values & 0x7F), values >> 7])
    return b"\x0a" + bytes([len(size)]) + size + b"\x19" + struct.pack("<d", 2.0**30)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_record(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new))


Corruption = Callable[[Path, ts.Context, ts.Context], object]

# (what is done to job-1's directory, what the FAILED message must say)
CORRUPTIONS: dict[str, tuple[Corruption, str]] = {
    "truncated column": (
        lambda root, pub, priv: _truncate(root / "columns/kh/0-2.bin"),
        "columns/kh/0-2.bin does not load",
    ),
    "garbage column of a partial upload": (
        lambda root, pub, priv: (root / "columns/h2/0-1.bin").write_bytes(b"\x00garbage"),
        "columns/h2/0-1.bin does not load",
    ),
    "missing column of a complete upload": (
        lambda root, pub, priv: (root / "columns/kh/0-0.bin").unlink(),
        "columns/kh/0-0.bin is missing",
    ),
    "column of the wrong shape": (
        lambda root, pub, priv: (root / "columns/kh/0-3.bin").write_bytes(_vector(pub, 10)),
        "columns/kh/0-3.bin is not one fresh ciphertext of 4096 values",
    ),
    "column of slot sizes and no ciphertext": (
        lambda root, pub, priv: (root / "columns/kh/0-1.bin").write_bytes(_sizes_only(4096)),
        "columns/kh/0-1.bin holds 0 ciphertexts of 1 sizes; expected exactly one ciphertext",
    ),
    "column over a ciphertext's size": (
        lambda root, pub, priv: (root / "columns/h2/0-0.bin").write_bytes(b"\0" * 2**21),
        "columns/h2/0-0.bin has 2,097,152 bytes, more than the",
    ),
    "label term of the wrong size": (
        lambda root, pub, priv: (root / "label_terms/kh.bin").write_bytes(_vector(pub, 4096)),
        "label_terms/kh.bin is not one fresh ciphertext of 4 values",
    ),
    "truncated statistics": (
        lambda root, pub, priv: _truncate(root / "stats/h2/0.bin"),
        "stats/h2/0.bin does not load",
    ),
    "missing statistics signature": (
        lambda root, pub, priv: (root / "stats/kh/signature.sig").unlink(),
        "stats/kh/signature.sig is missing",
    ),
    "truncated context": (
        lambda root, pub, priv: _truncate(root / "context.bin"),
        "context.bin does not load as a TenSEAL context",
    ),
    "secret context": (
        lambda root, pub, priv: (root / "context.bin").write_bytes(
            priv.serialize(save_secret_key=True)
        ),
        "context.bin: the context carries a secret key",
    ),
    "context of other parameters": (
        lambda root, pub, priv: (root / "context.bin").write_bytes(
            PARAMETER_SETS["n16384-depth4"].make_context().serialize(save_secret_key=False)
        ),
        "context.bin has",
    ),
    "truncated job.json": (
        lambda root, pub, priv: _truncate(root / "job.json"),
        "job.json does not parse: not JSON",
    ),
    "job.json of the wrong types": (
        lambda root, pub, priv: _edit_record(
            root / "job.json", b'"expected_parties": 2', b'"expected_parties": "2"'
        ),
        "job.json does not parse: job.json.expected_parties is str, expected int",
    ),
    "job.json of another job": (
        lambda root, pub, priv: _edit_record(root / "job.json", b'"job-1"', b'"job-9"'),
        "job.json names job 'job-9' but lies in 'job-1'",
    ),
    "charter lost": (
        lambda root, pub, priv: _edit_record(
            root / "job.json", b'"chartered": false', b'"chartered": true'
        ),
        "charter.pb is missing",
    ),
    "rows beyond the limits": (
        lambda root, pub, priv: _edit_record(
            root / "job.json", b'"rows": 7', b'"rows": 1099511627776'
        ),
        "party 'h2' declares 1,099,511,627,776 rows, over this coordinator's max_rows_per_party",
    ),
}


def test_its_parties_see_the_failure_when_they_watch(workdir: Path) -> None:
    _truncate(workdir / "jobs" / "job-1" / "columns" / "kh" / "0-2.bin")

    running = RunningCoordinator(workdir, in_process_pool_factory(workers=1))
    try:
        failed = watch_until(running.stub, pb.FAILED, job_id="job-1", party="h2")
    finally:
        running.stop()

    assert "columns/kh/0-2.bin does not load" in failed.message


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupted_job_fails_naming_the_file_and_another_job_goes_on(
    corruption: str,
    workdir: Path,
    private_context: ts.Context,
    public_context: ts.Context,
) -> None:
    corrupt, expected = CORRUPTIONS[corruption]
    corrupt(workdir / "jobs" / "job-1", public_context, private_context)

    running = RunningCoordinator(workdir, in_process_pool_factory(workers=1))
    try:
        # The other jobs are restored and served: job-2 takes the rest of its upload.
        running.stub.Upload(_columns(public_context, "job-2", "kh", [1, 2]))
        statuses = {s.job_id: s for s in running.stub.ListJobs(pb.ListJobsRequest()).jobs}
        model = running.stub.GetModel(pb.GetModelRequest(job_id="job-3", party="h2"))
        code = _code(lambda: running.stub.Upload(_columns(public_context, "job-1", "h2", [2])))
    finally:
        running.stop()

    failed = statuses["job-1"]
    assert failed.phase == pb.FAILED
    assert failed.message.startswith("the coordinator could not restore this job: ")
    assert expected in failed.message
    assert (statuses["job-2"].phase, statuses["job-3"].phase) == (pb.UPLOADING, pb.DONE)
    assert model.party == "h2"
    # Refused: the job failed (or, when job.json did not parse, nobody is its member).
    assert code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED)
    # The files stay as found, for an operator to repair.
    assert (workdir / "jobs" / "job-1" / "job.json").is_file()


@pytest.mark.parametrize(
    ("file", "expected"),
    [
        ("models/h2.bin", "models/h2.bin does not parse"),
        ("report.json", "report.json does not parse"),
    ],
)
def test_a_done_job_with_a_corrupted_model_or_report_fails_naming_it(
    file: str, expected: str, workdir: Path
) -> None:
    (workdir / "jobs" / "job-3" / file).write_bytes(b"\xff\x00garbage")

    running = RunningCoordinator(workdir, in_process_pool_factory(workers=1))
    try:
        failed = watch_until(running.stub, pb.FAILED, job_id="job-3", party="h2")
        code = _code(lambda: running.stub.GetModel(pb.GetModelRequest(job_id="job-3", party="kh")))
    finally:
        running.stop()

    assert expected in failed.message
    assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_a_job_directory_with_nothing_readable_fails_under_its_directory_name(
    workdir: Path,
) -> None:
    (workdir / "jobs" / "job-1" / "job.json").write_bytes(b"\x00\x01")

    job = restore_job(workdir / "jobs" / "job-1", limits=Limits())

    assert job.job_id == "job-1" and job.phase == pb.FAILED
    assert "job.json does not parse" in job.message
    assert job.parties == {}


def test_interrupted_writes_are_cleared_and_the_job_restores_whole(workdir: Path) -> None:
    root = workdir / "jobs" / "job-1"
    leftover = root / "columns" / "h2" / f".0-2.bin.x1y2z3{TMP_SUFFIX}"
    leftover.write_bytes(b"half a ciphertext")

    job = restore_job(root, limits=Limits())

    assert not leftover.exists()
    assert job.phase == pb.UPLOADING
    assert job.parties["kh"].upload_complete
    assert job.parties["h2"].received == {(0, 0), (0, 1)}
    assert job.parties["h2"].upload_bytes == sum(
        (root / "columns" / "h2" / f"0-{j}.bin").stat().st_size for j in (0, 1)
    )


def test_a_party_uploading_again_after_a_restart_replaces_what_its_broken_stream_left(
    workdir: Path, public_context: ts.Context
) -> None:
    """h2's first upload broke after two columns; restarted, the coordinator takes its whole
    upload again, each ciphertext replacing the stored one. Against the job's byte budget the
    second upload counts whole (the budget bounds what a party sends: tests/test_limits.py)."""
    root = workdir / "jobs" / "job-1"
    left = {f.name: f.read_bytes() for f in (root / "columns" / "h2").glob("*.bin")}
    running = RunningCoordinator(workdir, in_process_pool_factory(workers=1))
    try:
        restored = running.registry.get("job-1").parties["h2"].upload_bytes
        summary = running.stub.Upload(whole_upload(public_context, "h2", "job-1"))
        party = running.registry.get("job-1").parties["h2"]
    finally:
        running.stop()

    stored = {f.name: f.read_bytes() for f in (root / "columns" / "h2").glob("*.bin")}
    assert summary.complete and party.upload_complete
    assert sorted(left) == ["0-0.bin", "0-1.bin"] and len(stored) == len(FEATURES) + 1
    assert all(stored[name] != data for name, data in left.items())  # replaced
    assert restored == sum(map(len, left.values()))
    assert party.upload_bytes == restored + summary.bytes_accepted


def test_a_done_job_is_restored_without_its_context(workdir: Path) -> None:
    job = restore_job(workdir / "jobs" / "job-3", limits=Limits())

    assert job.phase == pb.DONE and job.report is not None
    assert job.context_bytes == b""
    with pytest.raises(Exception, match="job-3 is DONE: it holds no context"):
        job.context  # noqa: B018


def test_jobs_store_reads_back_what_it_wrote(workdir: Path) -> None:
    store = JobStore(workdir / "jobs" / "job-2")
    record = store.read_record()

    store.write_record(record)

    assert store.read_record() == record


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_a_restored_job_whose_key_holder_never_returns_expires(workdir: Path) -> None:
    """job-3's uploads are all there: restored as training, it waits for its key holder, who
    never connects; it fails once idle, and says whom it waited for."""
    _edit_record(workdir / "jobs" / "job-3" / "job.json", b'"DONE"', b'"TRAINING"')

    running = RunningCoordinator(
        workdir, in_process_pool_factory(workers=1), limits=Limits(idle_timeout_s=0.3)
    )
    try:
        failed = watch_until(running.stub, pb.FAILED, job_id="job-3")
    finally:
        running.stop()

    assert failed.message == (
        "DeadlineExceeded: job job-3 expired: nothing happened in it for 0.3 s "
        "(idle_timeout_s): waiting for the key holder 'kh' to connect"
    )


def test_a_multiclass_job_restores_with_its_label_term_of_outputs_x_columns(
    tmp_path: Path,
    private_context: ts.Context,
    public_context: ts.Context,
    public_context_bytes: bytes,
) -> None:
    """A k-class job's label term holds k x columns values; the restore verifies it at that
    size (it once expected one value per column and failed every multiclass job)."""
    workdir = tmp_path / "work"
    running = RunningCoordinator(workdir, in_process_pool_factory(workers=1))
    options = pb.TrainingOptions(iterations=2, model="multiclass", classes=3)
    create_job(running.stub, public_context_bytes, options=options)
    session = start_key_holder(running.stub, key_holder(private_context))
    try:
        to_uploading(running.stub, public_context)
        upload = list(whole_upload(public_context, "kh"))
        columns = len(upload) - 1
        upload[-1].label_term = sealio.serialize(
            ts.ckks_vector(public_context, np.zeros(3 * columns))
        )
        running.stub.Upload(iter(upload))
    finally:
        session.stop()
        running.stop()

    job = restore_job(workdir / "jobs" / "job-1", limits=Limits())

    assert job.phase == pb.UPLOADING, job.message
    assert job.parties["kh"].upload_complete and job.parties["kh"].label_term
