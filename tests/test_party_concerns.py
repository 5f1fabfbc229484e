"""A party's concerns one by one, without a network: the upload it encrypts, the model it
opens, and what it checks on its own rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tenseal as ts

from hefl import chunks, sealio
from hefl.algorithm import add_bias, label_term, standardize
from hefl.codec import AggregateStats
from hefl.errors import ProtocolError
from hefl.models import get_model
from hefl.params import DEFAULT_PARAMETER_SET, PARAMETER_SETS
from hefl.v1 import hefl_pb2 as pb
from parties.data import Dataset
from parties.encryption import Upload, layout_of, open_model
from parties.evaluation import evaluate, margins_on
from parties.keyholder import associated_data
from parties.sealing import SealingKey, seal
from parties.trust import Unverified

PARAMS = PARAMETER_SETS[DEFAULT_PARAMETER_SET]


def _dataset(rows: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, 3)) * [1.0, 4.0, 0.2] + [0.0, 10.0, -1.0]
    labels = (features[:, 0] > 0).astype(float)
    return Dataset(features, labels, ("a", "b", "c"), "label")


def _status(party_rows: list[tuple[str, int]], stats: AggregateStats) -> pb.JobStatus:
    status = pb.JobStatus(
        job_id="job-1",
        phase=pb.UPLOADING,
        standardization=pb.Standardization(
            count=stats.count, mean=stats.mean, std=stats.std, curvature=stats.curvature
        ),
    )
    status.layout.slots = PARAMS.slots
    offset = 0
    for name, rows in party_rows:
        status.layout.parties.add(party=name, rows=rows, offset=offset)
        offset += rows
    return status


def test_the_upload_holds_the_partys_standardized_rows_in_its_place(private_context):
    """The second party of a job whose first has 4000 rows: its 300 rows straddle two blocks."""
    public = ts.context_from(private_context.serialize(save_secret_key=False))
    mine = _dataset(300, seed=2)
    stats = AggregateStats.of_rows(np.vstack([_dataset(4000, seed=1).features, mine.features]))
    status = _status([("h1", 4000), ("h2", 300)], stats)
    upload = Upload(
        job_id="job-1",
        party="h2",
        context=public,
        layout=layout_of(status),
        dataset=mine,
        standardization=status.standardization,
    )

    sent = list(upload.chunks())

    columns = add_bias(standardize(mine.features, stats.mean, stats.std))
    got = {(c.block, c.feature): c.ciphertext for chunk in sent for c in chunk.columns}
    assert sorted(got) == [(b, j) for b in (0, 1) for j in range(4)]
    first = 4096 - 4000  # rows of h2 in block 0
    for j in range(4):
        block0 = sealio.deserialize(private_context, got[(0, j)], what="column").decrypt()
        block1 = sealio.deserialize(private_context, got[(1, j)], what="column").decrypt()
        np.testing.assert_allclose(block0[4000:], columns[:first, j], atol=1e-3)
        np.testing.assert_allclose(block0[:4000], 0.0, atol=1e-3)  # the other party's slots
        np.testing.assert_allclose(block1[: 300 - first], columns[first:, j], atol=1e-3)
    assert [c.seq for c in sent] == list(range(len(sent)))
    assert all(
        sum(len(c.ciphertext) for c in chunk.columns) <= chunks.UPLOAD_CHUNK_BYTES
        or len(chunk.columns) == 1
        for chunk in sent
    )
    *body, last = sent
    assert last.last and not any(c.last or c.label_term for c in body)
    label = sealio.deserialize(private_context, last.label_term, what="label term").decrypt()
    np.testing.assert_allclose(label, label_term(columns, mine.labels), atol=1e-2)
    assert upload.encrypt_s > 0


def _sealed(key: SealingKey, party: str, features: list[str]) -> pb.SealedModel:
    model = {"job_id": "job-1", "features": features, "mean": [0.0] * 3, "std": [1.0] * 3,
             "weights": [0.5, -0.25, 0.0, 0.1], "intermediate": []}  # fmt: skip
    box = seal(
        key.public_bytes, json.dumps(model).encode(), associated=associated_data("job-1", party)
    )
    return pb.SealedModel(
        party=party, ephemeral_public_key=box.ephemeral_public_key, nonce=box.nonce,
        ciphertext=box.ciphertext,
    )  # fmt: skip


def test_a_party_opens_its_own_model_only():
    key = SealingKey()
    trust = Unverified()
    opened = open_model(
        _sealed(key, "h2", ["a", "b", "c"]),
        job_id="job-1",
        party="h2",
        features=("a", "b", "c"),
        trust=trust,
        sealing_key=key,
    )
    assert opened["weights"] == [0.5, -0.25, 0.0, 0.1]

    with pytest.raises(ProtocolError, match="sent 'h3''s model instead"):
        open_model(
            _sealed(key, "h3", ["a", "b", "c"]),
            job_id="job-1", party="h2", features=("a", "b", "c"), trust=trust, sealing_key=key,
        )  # fmt: skip
    with pytest.raises(ProtocolError, match="for other features"):
        open_model(
            _sealed(key, "h2", ["a", "b", "x"]),
            job_id="job-1", party="h2", features=("a", "b", "c"), trust=trust, sealing_key=key,
        )  # fmt: skip


def test_a_party_evaluates_the_model_on_its_own_rows():
    test = _dataset(200, seed=5)
    model = {"mean": [0.0] * 3, "std": [1.0] * 3, "weights": [8.0, 0.0, 0.0, 0.0]}

    accuracy, auc = evaluate(model, test)
    check = margins_on(model, test, get_model("logistic", interval=16.0))

    assert accuracy == 1.0 and auc == 1.0  # the label is the sign of the first feature
    assert 0 < check.max_margin < 32 and check.interval == 16.0
