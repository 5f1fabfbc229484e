"""Every wait of a job has a deadline; past it the job fails with a message that names what is
missing, and every party watching the job receives it. A real coordinator on loopback whose
workers run in its own process, the real key holder, deadlines of a second."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts

from coordinator.driver import Deadlines
from coordinator.inprocess_pool import in_process_pool_factory
from coordinator.limits import Limits
from hefl import sealio
from hefl.v1 import hefl_pb2 as pb
from parties.identity import SigningKey
from parties.keyholder import KeyHolder
from parties.session import KeyHolderSession
from tests.conftest import RunningCoordinator
from tests.helpers import FEATURES, create_job, hello, stats_request, watch_until

SHORT = Deadlines(key_holder_s=1.0)


@pytest.fixture
def running(
    request: pytest.FixtureRequest, tmp_path: Path, public_context_bytes: bytes
) -> Iterator[RunningCoordinator]:
    # Only the test of the uploads' deadline runs with an upload deadline of a second: on a
    # loaded host, encrypting and sending two uploads can take longer than that, and the key
    # holder's deadline is what the other test is about.
    upload_timeout_s = 1.0 if "never_uploads" in request.node.name else 60.0
    coordinator = RunningCoordinator(
        tmp_path / "coordinator",
        in_process_pool_factory(workers=1),
        limits=Limits(upload_timeout_s=upload_timeout_s),
        deadlines=SHORT,
    )
    create_job(coordinator.stub, public_context_bytes, options=pb.TrainingOptions(iterations=2))
    yield coordinator
    coordinator.stop()


def _session(running: RunningCoordinator, private_context: ts.Context) -> KeyHolderSession:
    keyholder = KeyHolder(
        context=private_context,
        job_id="job-1",
        features=FEATURES,
        options=pb.TrainingOptions(iterations=2),
        signing_key=SigningKey.generate(),
    )
    session = KeyHolderSession(running.stub, keyholder, job_id="job-1", party="kh")
    session.start()
    return session


def _to_uploading(running: RunningCoordinator, public_context: ts.Context) -> None:
    running.stub.JoinJob(pb.JoinJobRequest(job_id="job-1", party=hello("h2")))
    for party, rows in (("kh", 5), ("h2", 7)):
        running.stub.SubmitStats(stats_request(public_context, "job-1", party, rows=rows))
    watch_until(running.stub, pb.UPLOADING)


def _upload(running: RunningCoordinator, context: ts.Context, party: str) -> None:
    running.stub.Upload(iter([_upload_chunk(context, party)]))


def _upload_chunk(context: ts.Context, party: str) -> pb.UploadChunk:
    """Every ciphertext of a party of this 12-row job (one block) and its label term."""
    columns = [
        pb.EncryptedColumn(
            block=0, feature=j, ciphertext=sealio.serialize(ts.ckks_vector(context, np.zeros(4096)))
        )
        for j in range(len(FEATURES) + 1)
    ]
    label = sealio.serialize(ts.ckks_vector(context, np.zeros(len(FEATURES) + 1)))
    return pb.UploadChunk(
        job_id="job-1", party=party, seq=0, columns=columns, label_term=label, last=True
    )


def test_a_party_that_never_uploads_fails_the_job_for_everyone(
    running: RunningCoordinator, private_context: ts.Context, public_context: ts.Context
) -> None:
    session = _session(running, private_context)
    upload = _upload_chunk(public_context, "kh")  # encrypted ahead: the deadline is a second
    try:
        _to_uploading(running, public_context)
        running.stub.Upload(iter([upload]))

        for party in ("kh", "h2"):
            failed = watch_until(running.stub, pb.FAILED, party=party)
            assert failed.message.startswith(
                "DeadlineExceeded: job job-1 expired: the uploads did not complete within 1 s "
                "(upload_timeout_s): waiting for h2's upload"
            )
    finally:
        session.stop()


def test_a_key_holder_that_is_gone_when_training_starts_fails_the_job(
    running: RunningCoordinator, private_context: ts.Context, public_context: ts.Context
) -> None:
    # Encrypted beforehand: both uploads must arrive within the uploads' 1 s deadline, which
    # encrypting them on a busy machine could overrun.
    chunks = {party: _upload_chunk(public_context, party) for party in ("kh", "h2")}
    session = _session(running, private_context)
    _to_uploading(running, public_context)
    session.stop()  # the key holder leaves during the uploads

    for chunk in chunks.values():
        running.stub.Upload(iter([chunk]))
    failed = watch_until(running.stub, pb.FAILED, party="h2")

    # Whether the coordinator noticed the stream close before training or while it waited for
    # the first answer, the message names the key holder and the deadline.
    assert failed.message in (
        "DeadlinePassed: the key holder 'kh' did not connect within 1 s",
        "KeyHolderTimeout: the key holder did not answer task 'setup' within 1 s "
        "(it is not connected)",
    )
