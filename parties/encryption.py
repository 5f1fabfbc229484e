"""What a party encrypts and what it opens, without any network: its upload (its standardized
columns packed into the job's layout and its label term, encrypted under the job's public
context) and the model the key holder sealed for it.

The statistics share is made by :class:`hefl.protocols.stats.StatsProtocol` itself
(``gen_share``); the orchestration (:mod:`parties.client`) signs and sends it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tenseal as ts

from hefl import chunks, sealio, signed
from hefl.algorithm import add_bias, standardize
from hefl.codec import PackingLayout
from hefl.errors import ProtocolError
from hefl.models import Model, get_model
from hefl.v1 import hefl_pb2 as pb
from parties.data import Dataset
from parties.identity import SigningKey
from parties.keyholder import associated_data
from parties.sealing import SealedBox, SealingKey
from parties.trust import Trust


def layout_of(status: pb.JobStatus) -> PackingLayout:
    """The packing layout the coordinator published with the job's status."""
    return PackingLayout.assign(
        slots=status.layout.slots,
        party_rows=[(p.party, p.rows) for p in status.layout.parties],
    )


class Upload:
    """One party's upload: every ciphertext of its rows in the job's layout, then its label
    term, in chunks of whole ciphertexts under :data:`hefl.chunks.UPLOAD_CHUNK_BYTES`.
    Columns are encrypted as the chunks are taken, so encryption overlaps with sending.

    Args:
        job_id: The job.
        party: This party's name (its rows' place in ``layout``).
        context: The job's public context.
        layout: Where every party's rows sit.
        dataset: This party's rows.
        standardization: The job's published mean and std.
        model: The job's model (its label term); logistic if not given.
        signing_key: Signs the label term (collective mode: parties EncToShare only the sum of
            signed label terms).
        label_term: The label term, encrypted already (collective mode: the one this party
            committed to before any party's went out).

    Attributes:
        encrypt_s: Time spent encrypting so far.
    """

    def __init__(
        self,
        *,
        job_id: str,
        party: str,
        context: ts.Context,
        layout: PackingLayout,
        dataset: Dataset,
        standardization: pb.Standardization,
        model: Model | None = None,
        signing_key: SigningKey | None = None,
        label_term: bytes | None = None,
    ) -> None:
        self._signing_key = signing_key
        self._label_term = label_term
        self._job_id = job_id
        self._model = model or get_model("logistic")
        self._party = party
        self._context = context
        self._layout = layout
        mean = np.asarray(standardization.mean)
        std = np.asarray(standardization.std)
        self._columns = add_bias(standardize(dataset.features, mean, std))
        self._labels = dataset.labels
        self.encrypt_s = 0.0

    def chunks(self) -> Iterator[pb.UploadChunk]:
        label = self._label_term or sealio.serialize(
            ts.ckks_vector(self._context, self._model.label_term(self._columns, self._labels))
        )
        seq, size = 0, 0
        pending: list[pb.EncryptedColumn] = []
        for block, column, vector in self._layout.pack(self._party, self._columns):
            tick = time.perf_counter()
            data = sealio.serialize(ts.ckks_vector(self._context, vector))
            self.encrypt_s += time.perf_counter() - tick
            if pending and size + len(data) > chunks.UPLOAD_CHUNK_BYTES:
                yield self._chunk(seq, pending)
                seq, pending, size = seq + 1, [], 0
            pending.append(pb.EncryptedColumn(block=block, feature=column, ciphertext=data))
            size += len(data)
        yield self._chunk(seq, pending, label_term=label)

    def _chunk(
        self, seq: int, columns: Sequence[pb.EncryptedColumn], *, label_term: bytes | None = None
    ) -> pb.UploadChunk:
        chunk = pb.UploadChunk(job_id=self._job_id, party=self._party, seq=seq, columns=columns)
        if label_term is not None:
            chunk.label_term, chunk.last = label_term, True
            if self._signing_key is not None:
                chunk.label_term_signature = self._signing_key.sign(
                    signed.LABEL_TERM,
                    signed.label_term_parts(self._job_id, self._party, label_term),
                )
        return chunk


def open_model(
    sealed: pb.SealedModel,
    *,
    job_id: str,
    party: str,
    features: Sequence[str],
    trust: Trust,
    sealing_key: SealingKey,
) -> dict[str, Any]:
    """The model the key holder sealed for ``party``, once its signature is checked.

    Raises:
        ProtocolError: Another party's model, or a model of other features.
        PermissionDenied: Not signed by the job's key holder (``trust``).
    """
    if sealed.party != party:
        raise ProtocolError(f"the coordinator sent {sealed.party!r}'s model instead")
    trust.check_model(sealed)
    box = SealedBox(sealed.ephemeral_public_key, sealed.nonce, sealed.ciphertext)
    model: dict[str, Any] = json.loads(
        sealing_key.open(box, associated=associated_data(job_id, party))
    )
    if model["features"] != list(features):
        raise ProtocolError("the delivered model is for other features")
    return model
